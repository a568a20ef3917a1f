//! The one body type the gateway moves in both directions: a streamed hyper
//! body (optionally capped at a byte limit) or a small body the gateway wrote
//! itself. An enum rather than a boxed trait object keeps the hot path free of
//! a per-request allocation.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Error of a [`Body`]: the underlying stream failed, or a request body went
/// past the listener's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Stream(#[from] hyper::Error),
}

/// A request or response body passing through the gateway.
pub struct Body {
    kind: Kind,
    /// What to keep alive as long as the body streams (a bulkhead permit, a
    /// request's trace span).
    hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("kind", &self.kind).finish()
    }
}

#[derive(Debug)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        remaining: Option<u64>,
        limit: u64,
    },
}

impl Body {
    fn of(kind: Kind) -> Self {
        Body { kind, hold: None }
    }

    pub fn empty() -> Self {
        Body::of(Kind::Empty)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::of(Kind::Full(Some(bytes.into())))
    }

    /// Streams `inner` unchanged.
    pub fn stream(inner: Incoming) -> Self {
        Body::of(Kind::Stream {
            inner,
            remaining: None,
            limit: 0,
        })
    }

    /// Streams `inner`, failing with [`BodyError::TooLarge`] past `limit` bytes.
    pub fn limited(inner: Incoming, limit: u64) -> Self {
        Body::of(Kind::Stream {
            inner,
            remaining: Some(limit),
            limit,
        })
    }

    /// The bytes of a body the gateway wrote itself; empty for a stream.
    pub(crate) fn into_full_bytes(self) -> Bytes {
        match self.kind {
            Kind::Full(Some(b)) => b,
            _ => Bytes::new(),
        }
    }

    /// Keeps `guard` alive until this body is dropped, i.e. until the stream
    /// has been passed on in full or abandoned. Guards held earlier stay.
    pub(crate) fn holding(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.hold = Some(match self.hold.take() {
            None => Box::new(guard),
            Some(earlier) => Box::new((earlier, guard)),
        });
        self
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream {
                inner,
                remaining,
                limit,
            } => {
                let frame = match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => f,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                };
                if let (Some(rem), Some(data)) = (remaining.as_mut(), frame.data_ref()) {
                    let len = data.len() as u64;
                    if len > *rem {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                    }
                    *rem -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
