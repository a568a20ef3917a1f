//! Ambiguous HTTP/1 framing, seen in the raw bytes.
//!
//! A request with both `Content-Length` and `Transfer-Encoding`, or with
//! `Content-Length` twice, is the raw material of request smuggling: two
//! parsers on a path may disagree on where it ends. hyper resolves such a
//! request safely (chunked wins, the connection closes after it) but by the
//! time it reaches us the evidence is gone — the duplicate or conflicting
//! header was dropped during parsing. RFC 9112 §6.3 lets a server reject such
//! a message instead, and nginx, HAProxy and Envoy do, with `400`; so do we.
//!
//! [`FramingGuard`] wraps a connection's stream and follows the request
//! framing as hyper reads it — head, then a body of `Content-Length` bytes or
//! chunks, then the next head — parsing each head with `httparse` (the parser
//! hyper itself uses). It marks the ordinal of the first ambiguous request in
//! a [`Framing`] that the request handler consults. It never changes a byte,
//! and it stops following (leaving hyper to judge) on anything it does not
//! understand: HTTP/2, upgrades, heads too large or malformed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared between a connection's guard and its request handler.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Ordinal (from 1) of the first request whose framing was ambiguous; 0 for none.
    first_ambiguous: AtomicU64,
    /// Requests handled so far on the connection.
    handled: AtomicU64,
}

impl Framing {
    /// Called once per request, in order: whether this one must be refused.
    pub(crate) fn next_is_ambiguous(&self) -> bool {
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        let bad = self.first_ambiguous.load(Ordering::Acquire);
        bad != 0 && n >= bad
    }

    fn mark(&self, ordinal: u64) {
        let _ =
            self.first_ambiguous
                .compare_exchange(0, ordinal, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Where in the request stream the guard is.
#[derive(Debug)]
enum State {
    /// Gathering a request head.
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Gathering a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Gathering trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// No longer following (HTTP/2, an upgrade, something hyper will refuse).
    Off,
}

/// The longest head or chunk line the guard gathers; past it hyper refuses
/// the request on its own limits, so the guard simply stops following.
const MAX_GATHER: usize = 64 * 1024;
const MAX_HEADERS: usize = 256;

/// A stream that watches the request framing of what is read through it.
pub(crate) struct FramingGuard<T> {
    inner: T,
    /// Bytes already read from `inner` by someone else (the native HTTP/1.1
    /// engine, handing a connection over), read again before `inner`.
    replay: bytes::Bytes,
    state: State,
    /// Heads seen so far.
    heads: u64,
    framing: Arc<Framing>,
}

impl<T> FramingGuard<T> {
    pub(crate) fn new(inner: T, framing: Arc<Framing>) -> Self {
        Self::resume(inner, bytes::Bytes::new(), framing)
    }

    /// A guard over `inner` whose first bytes are `replay`, read from it earlier.
    pub(crate) fn resume(inner: T, replay: bytes::Bytes, framing: Arc<Framing>) -> Self {
        FramingGuard {
            inner,
            replay,
            state: State::Head(Vec::new()),
            heads: 0,
            framing,
        }
    }

    /// Follows `bytes`, just read from the client.
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let mut head: Option<std::borrow::Cow<'_, [u8]>> = None;
            let (used, next) = match &mut self.state {
                State::Off => return,
                State::Fixed(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    let next = (*n == 0).then(|| State::Head(Vec::new()));
                    (take as usize, next)
                }
                State::ChunkData(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    let next = (*n == 0).then(|| State::ChunkSize(Vec::new()));
                    (take as usize, next)
                }
                // A head that arrives whole in one read (the usual case) is
                // parsed where it lies, without copying.
                State::Head(buf) if buf.is_empty() => match find_end(&[], bytes, b"\r\n\r\n") {
                    Some(used) => {
                        head = Some(std::borrow::Cow::Borrowed(&bytes[..used]));
                        (used, None)
                    }
                    None => match gather(buf, bytes, b"\r\n\r\n") {
                        Gathered::More(used) => (used, None),
                        _ => (bytes.len(), Some(State::Off)),
                    },
                },
                State::Head(buf) => match gather(buf, bytes, b"\r\n\r\n") {
                    Gathered::More(used) => (used, None),
                    Gathered::TooLong => (bytes.len(), Some(State::Off)),
                    Gathered::Done(used) => {
                        head = Some(std::borrow::Cow::Owned(std::mem::take(buf)));
                        (used, None)
                    }
                },
                State::ChunkSize(buf) => match gather(buf, bytes, b"\n") {
                    Gathered::More(used) => (used, None),
                    Gathered::TooLong => (bytes.len(), Some(State::Off)),
                    Gathered::Done(used) => (used, Some(after_chunk_size(buf))),
                },
                // Trailer lines, one at a time, until an empty one ends the message.
                State::Trailers(buf) => match gather(buf, bytes, b"\n") {
                    Gathered::More(used) => (used, None),
                    Gathered::TooLong => (bytes.len(), Some(State::Off)),
                    Gathered::Done(used) => {
                        let empty = matches!(buf.as_slice(), b"\r\n" | b"\n");
                        buf.clear();
                        (used, empty.then(|| State::Head(Vec::new())))
                    }
                },
            };
            bytes = &bytes[used..];
            if let Some(head) = head {
                self.heads += 1;
                self.state = self.after_head(&head);
            } else if let Some(next) = next {
                self.state = next;
            }
        }
    }

    /// Judges a complete head and says how its body is framed.
    fn after_head(&self, head: &[u8]) -> State {
        let head = match head.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
            // Stray CRLFs before a request line are allowed and ignored.
            Some(start) => &head[start..],
            None => return State::Head(Vec::new()),
        };
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return State::Off;
        }
        let (mut lengths, mut chunked, mut encodings, mut upgrade) = (Vec::new(), false, 0, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encodings += 1;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if (encodings > 0 && !lengths.is_empty()) || lengths.len() > 1 {
            self.framing.mark(self.heads);
            // hyper closes the connection after such a request; nothing after it matters.
            return State::Off;
        }
        if upgrade {
            return State::Off;
        }
        if encodings > 0 {
            return if chunked {
                State::ChunkSize(Vec::new())
            } else {
                State::Off
            };
        }
        match lengths.first() {
            None => State::Head(Vec::new()),
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                None => State::Off,
            },
        }
    }
}

enum Gathered {
    /// All of the input was taken; the terminator is still to come.
    More(usize),
    /// The terminator ended at this many bytes into the input.
    Done(usize),
    TooLong,
}

/// Where the first `end` that is not wholly inside `prev` finishes within
/// `bytes` (as a count of bytes of `bytes`), looking across the join.
fn find_end(prev: &[u8], bytes: &[u8], end: &[u8]) -> Option<usize> {
    // Straddling the join, earliest start first.
    for k in (1..end.len()).rev() {
        if prev.ends_with(&end[..k]) && bytes.starts_with(&end[k..]) {
            return Some(end.len() - k);
        }
    }
    bytes
        .windows(end.len())
        .position(|w| w == end)
        .map(|at| at + end.len())
}

/// Appends input to `buf` up to and including `end`.
fn gather(buf: &mut Vec<u8>, bytes: &[u8], end: &[u8]) -> Gathered {
    match find_end(buf, bytes, end) {
        Some(used) => {
            buf.extend_from_slice(&bytes[..used]);
            Gathered::Done(used)
        }
        None if buf.len() + bytes.len() > MAX_GATHER => Gathered::TooLong,
        None => {
            buf.extend_from_slice(bytes);
            Gathered::More(bytes.len())
        }
    }
}

/// The state after a chunk-size line (`1a;ext=x\r\n`).
fn after_chunk_size(line: &mut Vec<u8>) -> State {
    let text = std::mem::take(line);
    let size = text
        .split(|b| matches!(b, b';' | b'\r' | b'\n'))
        .next()
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
    match size {
        Some(0) => State::Trailers(Vec::new()),
        // The data, then its CRLF, which the next size line's gathering absorbs.
        Some(n) => State::ChunkData(n.saturating_add(2)),
        None => State::Off,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = polled {
            if !matches!(this.state, State::Off) {
                this.observe(&buf.filled()[before..]);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` in pieces of `step` bytes; the ordinal of the first ambiguous request.
    fn first_ambiguous(raw: &[u8], step: usize) -> u64 {
        let framing = Arc::new(Framing::default());
        let mut g = FramingGuard::new((), framing.clone());
        for piece in raw.chunks(step) {
            g.observe(piece);
        }
        framing.first_ambiguous.load(Ordering::Relaxed)
    }

    fn every_split(raw: &[u8]) -> Vec<u64> {
        (1..=raw.len()).map(|s| first_ambiguous(raw, s)).collect()
    }

    #[test]
    fn clean_requests_pass_however_they_are_split() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(every_split(raw).iter().all(|&n| n == 0));
    }

    #[test]
    fn length_and_chunked_together_are_caught_at_their_request() {
        // The third request is the ambiguous one, whichever header comes first.
        for bad in [
            &b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            &b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"[..],
            &b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
        ] {
            let mut raw = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec();
            raw.extend_from_slice(bad);
            assert!(every_split(&raw).iter().all(|&n| n == 3), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_smuggled_head_inside_a_body_is_not_mistaken_for_a_request() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 60\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(every_split(raw).iter().all(|&n| n == 0));
    }

    #[test]
    fn it_stops_following_what_it_does_not_understand() {
        for raw in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        ] {
            assert!(every_split(raw).iter().all(|&n| n == 0), "{}", String::from_utf8_lossy(raw));
        }
        // A head longer than the guard gathers: hyper's limits answer it.
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_GATHER + 10));
        assert_eq!(first_ambiguous(&huge, 4096), 0);
    }

    #[test]
    fn terminators_are_found_across_reads() {
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n", b"\r\nX", b"\r\n\r\n"),
            Some(2)
        );
        assert_eq!(find_end(b"a\r", b"\n\r\nb", b"\r\n\r\n"), Some(3));
        assert_eq!(find_end(b"a\r\n\r", b"\nb", b"\r\n\r\n"), Some(1));
        assert_eq!(find_end(b"", b"x\r\n\r\ny", b"\r\n\r\n"), Some(5));
        assert_eq!(find_end(b"\r\n", b"x\r\n", b"\r\n\r\n"), None);
    }

    #[test]
    fn handled_requests_learn_which_one_to_refuse() {
        let f = Framing::default();
        f.mark(2);
        f.mark(3);
        assert!(!f.next_is_ambiguous());
        assert!(f.next_is_ambiguous());
    }
}
