//! Request heads for the native HTTP/1.1 engine: a client's request head
//! judged and parsed with `httparse` (the parser hyper uses), and the
//! writers both directions share (an upstream's response head is in
//! `response.rs`).
//!
//! A request head is only taken by the native engine when it is plain:
//! HTTP/1.1, origin-form target, no `Transfer-Encoding`, at most one valid
//! `Content-Length`, no `Expect`, no upgrade, not gRPC. Anything else — or
//! anything malformed — is [`Scan::Fallback`], and hyper serves the
//! connection from that request on, with its own answers to bad input.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use std::mem::MaybeUninit;
use std::ops::Range;

/// What the bytes gathered so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Not a whole head yet.
    Partial,
    /// A plain request head of `len` bytes.
    Ready(RequestShape),
    /// Something the native engine leaves to hyper.
    Fallback,
}

/// What the scan learned of a plain request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestShape {
    pub(crate) len: usize,
    pub(crate) body_len: u64,
    /// The client asked to close the connection after this request.
    pub(crate) close: bool,
    /// A hop-by-hop field may be present (so the head must be cleaned).
    pub(crate) hop_by_hop: bool,
}

/// Positions of the parts of a scanned head, reused from request to request.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    method: Range<usize>,
    target: Range<usize>,
    pub(super) headers: Vec<(Range<usize>, Range<usize>)>,
}

pub(super) fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Judges the start of `buf` as a request head, recording where its parts
/// lie in `fields`. `max_headers` and `max_head` are the listener's limits;
/// past them the request goes to hyper, which answers `431`.
pub(crate) fn scan(buf: &[u8], max_headers: usize, max_head: usize, fields: &mut Fields) -> Scan {
    // Left uninitialised: httparse writes the slots it fills, and zeroing
    // 128 of them cost more than parsing a typical head.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap;
    let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= storage.len() {
        &mut storage[..max_headers]
    } else {
        heap = Vec::with_capacity(max_headers);
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Scan::Partial,
        _ => return Scan::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Scan::Fallback;
    };
    if len > max_head || !target.starts_with('/') {
        return Scan::Fallback;
    }
    let mut body_len = None;
    let mut close = false;
    let mut hop_by_hop = false;
    let mut connection_options = 0;
    fields.headers.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if body_len.is_some() {
                return Scan::Fallback;
            }
            match parse_length(h.value) {
                Some(n) => body_len = Some(n),
                None => return Scan::Fallback,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Scan::Fallback;
        } else if name.eq_ignore_ascii_case(b"connection") {
            hop_by_hop = true;
            for token in h.value.split(|b| *b == b',') {
                // Each field is checked against every option named, so a
                // long list would cost fields × options; hyper's path,
                // which hashes the names, takes such a request.
                connection_options += 1;
                if connection_options > MAX_CONNECTION_OPTIONS {
                    return Scan::Fallback;
                }
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Scan::Fallback;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-type")
            && h.value.starts_with(b"application/grpc")
        {
            // gRPC's errors are statuses in trailers, which hyper's path writes.
            return Scan::Fallback;
        } else if is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"proxy-authorization") {
            hop_by_hop = true;
        }
        fields.headers.push((span(buf, name), span(buf, h.value)));
    }
    fields.method = span(buf, method.as_bytes());
    fields.target = span(buf, target.as_bytes());
    Scan::Ready(RequestShape {
        len,
        body_len: body_len.unwrap_or(0),
        close,
        hop_by_hop,
    })
}

/// Most options all `Connection` fields of a request the engine takes may
/// list together (real clients send one or two).
const MAX_CONNECTION_OPTIONS: usize = 16;

/// A `Content-Length` value: digits only, as RFC 9110 §8.6 has it.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Builds the request's parts from a scanned head, sharing its bytes. `None`
/// when a part is not valid for the `http` types (hyper then judges it).
pub(crate) fn parts(head: &Bytes, fields: &Fields) -> Option<http::request::Parts> {
    let method = Method::from_bytes(&head[fields.method.clone()]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(fields.target.clone())).ok()?;
    // Room for the forwarding and tracing fields the proxy adds.
    let mut headers = HeaderMap::with_capacity(fields.headers.len() + 8);
    for (name, value) in &fields.headers {
        let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    Some(parts)
}

/// Writes the head of a request to send upstream.
pub(crate) fn write_request(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, headers);
    out.extend_from_slice(b"\r\n");
}

fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

pub(super) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes a whole response the gateway produced itself (an error).
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    close: bool,
) {
    write_status_line(
        out,
        status.as_u16(),
        status.canonical_reason().unwrap_or("").as_bytes(),
    );
    write_fields(out, headers);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

pub(super) fn write_status_line(out: &mut Vec<u8>, code: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is a hop-by-hop field that never passes a proxy (RFC
/// 9110 §7.6.1), besides those a `Connection` field names. By length first:
/// this runs for every field of every message.
pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    let candidate: &[u8] = match name.len() {
        2 => b"te",
        7 => b"upgrade",
        10 if name[0].eq_ignore_ascii_case(&b'c') => b"connection",
        10 => b"keep-alive",
        16 => b"proxy-connection",
        17 => b"transfer-encoding",
        18 => b"proxy-authenticate",
        _ => return false,
    };
    name.eq_ignore_ascii_case(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_str(s: &str) -> Scan {
        scan(s.as_bytes(), 100, 32 * 1024, &mut Fields::default())
    }

    #[test]
    fn a_plain_request_is_ready_with_its_body_length() {
        let head = "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            scan_str(head),
            Scan::Ready(RequestShape {
                len: head.len() - 5,
                body_len: 5,
                close: false,
                hop_by_hop: false,
            })
        );
        let close = "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n";
        assert!(matches!(
            scan_str(close),
            Scan::Ready(RequestShape { close: true, .. })
        ));
    }

    #[test]
    fn a_long_list_of_connection_options_goes_to_hyper() {
        let names: Vec<String> = (0..17).map(|i| format!("x-{i}")).collect();
        let long = format!("GET / HTTP/1.1\r\nConnection: {}\r\n\r\n", names.join(", "));
        assert_eq!(scan_str(&long), Scan::Fallback);
        let short = format!(
            "GET / HTTP/1.1\r\nConnection: {}\r\n\r\n",
            names[..16].join(", ")
        );
        assert!(matches!(scan_str(&short), Scan::Ready(_)));
    }

    #[test]
    fn what_hyper_should_judge_falls_back() {
        for head in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-type: application/grpc\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n",
            "\x00\x01\x02 garbage\r\n\r\n",
        ] {
            assert_eq!(scan_str(head), Scan::Fallback, "{head:?}");
        }
    }

    #[test]
    fn limits_hand_the_request_to_hyper_which_answers_431() {
        let many: String = (0..20).map(|i| format!("x-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            scan(head.as_bytes(), 100, 32 * 1024, &mut Fields::default()),
            Scan::Ready(_)
        ));
        assert_eq!(
            scan(head.as_bytes(), 10, 32 * 1024, &mut Fields::default()),
            Scan::Fallback
        );
        assert_eq!(
            scan(head.as_bytes(), 100, 64, &mut Fields::default()),
            Scan::Fallback
        );
        // Incomplete and already past the limit: no point waiting for more.
        assert_eq!(
            scan(&head.as_bytes()[..100], 100, 64, &mut Fields::default()),
            Scan::Fallback
        );
        assert_eq!(
            scan(&head.as_bytes()[..50], 100, 64, &mut Fields::default()),
            Scan::Partial
        );
    }

    #[test]
    fn parts_share_the_head_and_keep_repeated_fields() {
        let raw =
            Bytes::from_static(b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\n");
        let mut fields = Fields::default();
        assert!(matches!(scan(&raw, 100, 1024, &mut fields), Scan::Ready(_)));
        let parts = parts(&raw, &fields).unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/p");
        assert_eq!(parts.uri.query(), Some("q=1"));
        let tags: Vec<_> = parts.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["1", "2"]);
        let mut out = Vec::new();
        write_request(&mut out, &parts.method, "/p?q=1", &parts.headers);
        assert_eq!(
            out,
            b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\nx-tag: 1\r\nx-tag: 2\r\n\r\n"
        );
    }
}
