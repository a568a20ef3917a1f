//! Following a chunked body (RFC 9112 §7.1) as it passes through unchanged,
//! to know where it ends: the native engine forwards an upstream's chunks
//! byte for byte and reuses the connection only after the last one.
//!
//! Strict: anything outside the grammar (a bare LF, a size that overflows, an
//! endless extension or trailer) is an error, and the connection is dropped
//! rather than guessed at.

/// Longest chunk extension, and total trailer section, accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; how many digits so far.
    Size {
        digits: u8,
    },
    /// After the size: extension bytes (or whitespace) up to CR.
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Where a chunked body is in its framing.
#[derive(Debug)]
pub(crate) struct ChunkedTracker {
    state: State,
    size: u64,
    /// Bytes of the current extension, or of the trailer section.
    line: usize,
}

/// The body broke the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

impl ChunkedTracker {
    pub(crate) fn new() -> Self {
        ChunkedTracker {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
        }
    }

    /// Whether the last chunk and the trailer section have been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many of them belong to the body (all of
    /// them unless it ended inside `bytes`).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(n) = self.state {
                let take = n.min((bytes.len() - i) as u64);
                i += take as usize;
                let left = n - take;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => match hex(b) {
                    Some(d) if digits < 16 => {
                        self.size = (self.size << 4) | u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err(ChunkError),
                    None if digits == 0 => return Err(ChunkError),
                    None if b == b'\r' => State::SizeLf,
                    None if matches!(b, b';' | b' ' | b'\t') => {
                        self.line = 1;
                        State::Ext
                    }
                    None => return Err(ChunkError),
                },
                State::Ext => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ if self.line >= MAX_LINE => return Err(ChunkError),
                    _ => {
                        self.line += 1;
                        State::Ext
                    }
                },
                State::SizeLf if b == b'\n' => {
                    let size = std::mem::take(&mut self.size);
                    if size == 0 {
                        self.line = 0;
                        State::TrailerStart
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::TrailerStart if b == b'\r' => State::EndLf,
                State::TrailerStart | State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError),
                    _ if self.line >= MAX_TRAILERS => return Err(ChunkError),
                    _ => {
                        self.line += 1;
                        State::TrailerLine
                    }
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(i);
                }
                State::Done => return Ok(i - 1),
                _ => return Err(ChunkError),
            };
        }
        Ok(bytes.len())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the bytes consumed and whether it ended.
    fn run(body: &[u8], step: usize) -> Result<(usize, bool), ChunkError> {
        let mut t = ChunkedTracker::new();
        let mut used = 0;
        for piece in body.chunks(step) {
            used += t.feed(piece)?;
            if t.is_done() {
                break;
            }
        }
        Ok((used, t.is_done()))
    }

    #[test]
    fn finds_the_end_of_a_body_however_it_is_split() {
        let body = b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-checksum: 1\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(run(body, step), Ok((body.len(), true)), "step {step}");
        }
    }

    #[test]
    fn stops_at_the_end_and_leaves_what_follows() {
        let mut bytes = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = bytes.len();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut t = ChunkedTracker::new();
        assert_eq!(t.feed(&bytes), Ok(end));
        assert!(t.is_done());
        assert_eq!(t.feed(b"more"), Ok(0));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(run(b"5\r\nhel", 64), Ok((6, false)));
        assert_eq!(run(b"0\r\n\r", 64), Ok((4, false)));
    }

    #[test]
    fn hostile_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],             // no size
            b"g\r\n",                 // not hex
            b"5\nhello\r\n",          // bare LF after the size
            b"5\r\nhelloX\r\n",       // data longer than its size
            b"5\r\nhello\n0\r\n\r\n", // bare LF after the data
            b"11111111111111111\r\n", // 17 digits: overflow
            b"0\r\nx: 1\n\r\n",       // bare LF in a trailer
            b"-1\r\n",                // negative
            b"5 ;ext\n",              // bare LF after an extension
        ] {
            assert_eq!(
                run(bad, 64),
                Err(ChunkError),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [b"1;".to_vec(), vec![b'x'; MAX_LINE + 1]].concat();
        assert_eq!(run(&long_ext, 512), Err(ChunkError));
        let mut trailers = b"0\r\n".to_vec();
        // Nine counted bytes a line (the CRLF is not counted).
        for _ in 0..(MAX_TRAILERS / 9 + 1) {
            trailers.extend_from_slice(b"x: 123456\r\n");
        }
        assert_eq!(run(&trailers, 4096), Err(ChunkError));
    }

    #[test]
    fn the_largest_size_is_accepted_without_overflow() {
        let mut t = ChunkedTracker::new();
        assert_eq!(t.feed(b"ffffffffffffffff\r\nab"), Ok(20));
        assert!(!t.is_done());
    }
}
