//! A request body that can be sent again.
//!
//! A retry must replay the body byte for byte, but a body is a stream that
//! is gone once sent. So a retryable request's body is read into memory up
//! to a bound before the first attempt (as nginx and Envoy buffer request
//! bodies for retries). A body over the bound is never truncated: what was
//! read is sent first and the rest streams behind it — once, unretried.

use crate::BoxError;
use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// A body read whole into memory, shared by every replay.
#[derive(Debug, Default)]
pub struct Buffered {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: u64,
}

pin_project! {
    /// The body a retried HTTP request is sent with: either fully buffered
    /// (replayable) or streamed once.
    #[project = ReplayBodyProj]
    #[derive(Debug)]
    pub enum ReplayBody<B> {
        /// Read whole; `sent` counts the frames already produced.
        Replayable { buffered: Arc<Buffered>, sent: usize },
        /// Never buffered (not retryable, or larger than the bound by its
        /// declared length): streamed as is.
        Streaming { #[pin] body: B },
        /// Outgrew the bound while being read: the read part, then the rest.
        Overflowed { prefix: VecDeque<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Reads `body` into memory if it is at most `limit` bytes; otherwise
    /// returns a body that sends every byte once. Fails only if `body` does.
    pub async fn buffer(body: B, limit: usize) -> Result<Self, BoxError> {
        if body.size_hint().lower() > limit as u64 {
            return Ok(ReplayBody::Streaming { body });
        }
        let mut body = Box::pin(body);
        let mut buffered = Buffered::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Into::into)?;
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    buffered.len += chunk.len() as u64;
                    buffered.chunks.push(chunk);
                    if buffered.len > limit as u64 {
                        return Ok(ReplayBody::Overflowed {
                            prefix: buffered.chunks.into(),
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        buffered
                            .trailers
                            .get_or_insert_with(HeaderMap::new)
                            .extend(trailers);
                    }
                }
            }
        }
        Ok(ReplayBody::Replayable {
            buffered: Arc::new(buffered),
            sent: 0,
        })
    }
}

impl<B> ReplayBody<B> {
    /// A body sent once, never buffered.
    pub fn streaming(body: B) -> Self {
        ReplayBody::Streaming { body }
    }

    /// An empty body, replayable.
    pub fn empty() -> Self {
        ReplayBody::Replayable {
            buffered: Arc::default(),
            sent: 0,
        }
    }

    /// A fresh copy from the first byte, if the body was buffered whole.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            ReplayBody::Replayable { buffered, .. } => Some(ReplayBody::Replayable {
                buffered: Arc::clone(buffered),
                sent: 0,
            }),
            _ => None,
        }
    }

    /// Whether this body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self, ReplayBody::Replayable { .. })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ReplayBodyProj::Replayable { buffered, sent } => {
                let index = *sent;
                *sent += 1;
                if let Some(chunk) = buffered.chunks.get(index) {
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                match &buffered.trailers {
                    Some(trailers) if index == buffered.chunks.len() => {
                        Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            ReplayBodyProj::Streaming { body } => poll_stream(body, cx),
            ReplayBodyProj::Overflowed { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => poll_stream(rest.as_mut(), cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplayBody::Replayable { buffered, sent } => {
                *sent > buffered.chunks.len()
                    || (*sent == buffered.chunks.len() && buffered.trailers.is_none())
            }
            ReplayBody::Streaming { body } => body.is_end_stream(),
            ReplayBody::Overflowed { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplayBody::Replayable { buffered, sent } => {
                let left: usize = buffered.chunks.iter().skip(*sent).map(Bytes::len).sum();
                SizeHint::with_exact(left as u64)
            }
            ReplayBody::Streaming { body } => body.size_hint(),
            ReplayBody::Overflowed { prefix, rest } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

fn poll_stream<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    Poll::Ready(match ready!(body.poll_frame(cx)) {
        Some(Ok(frame)) => Some(Ok(frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))),
        Some(Err(error)) => Some(Err(error.into())),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunked(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_small_body_replays_whole_every_time() {
        let body = ReplayBody::buffer(chunked(&["ab", "cd", "e"]), 5)
            .await
            .unwrap();
        assert!(body.is_replayable());
        let copy = body.try_clone().unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcde");
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "abcde");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_sent_whole_once() {
        let body = ReplayBody::buffer(chunked(&["abc", "def", "ghi"]), 4)
            .await
            .unwrap();
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_bound_is_not_read_ahead() {
        let body = ReplayBody::buffer(Full::new(Bytes::from_static(b"0123456789")), 3)
            .await
            .unwrap();
        assert!(matches!(body, ReplayBody::Streaming { .. }));
        assert_eq!(body.size_hint().exact(), Some(10));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "42".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hi"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = ReplayBody::buffer(StreamBody::new(futures_util::stream::iter(frames)), 10)
            .await
            .unwrap();
        let copy = body.try_clone().unwrap();
        let collected = copy.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "hi");
    }
}
