//! An upstream's response head for the native HTTP/1.1 engine: parsed with
//! `httparse` for its framing (refusing the ambiguous shapes a smuggling
//! attempt uses), and written out again for the client without the
//! hop-by-hop fields, with the route's edits and the request id.

use super::head::{is_hop_by_hop, parse_length, span, write_field, write_status_line};
use crate::route::HeaderEdits;
use http::header::HeaderValue;
use http::StatusCode;
use std::mem::MaybeUninit;
use std::ops::Range;

/// How an upstream response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (no length, not chunked).
    UntilClose,
}

/// An upstream's response head, parsed.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) len: usize,
    pub(crate) framing: Framing,
    /// The upstream will close the connection after this response.
    pub(crate) close: bool,
    reason: Range<usize>,
    /// Some field is named by a `Connection` field (other than `close` and
    /// `keep-alive`), so it must be looked for.
    connection_names: bool,
}

/// Why an upstream response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadResponse {
    Malformed,
    TooLarge,
}

/// Largest upstream response head accepted, and most fields in it.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_FIELDS: usize = 128;

/// Parses the response head at the start of `buf`; `Ok(None)` while incomplete.
/// `head_request` says the request was `HEAD`, whose response has no body.
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(BadResponse::TooLarge)
        }
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(BadResponse::Malformed)?;
    let mut length = None;
    let mut chunked = None;
    let mut close = res.version == Some(0);
    let mut connection_names = false;
    fields.clear();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        fields.push((span(buf, name), span(buf, h.value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Malformed);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                    connection_names = true;
                }
            }
        }
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (chunked, length) {
        // Both: the smuggling shape; refuse rather than pick one.
        (Some(_), Some(_)) => return Err(BadResponse::Malformed),
        _ if bodiless => Framing::Empty,
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        close: close || framing == Framing::UntilClose,
        reason: res.reason.map_or(0..0, |r| span(buf, r.as_bytes())),
        connection_names,
    }))
}

/// What to change in a response head on its way to the client.
pub(crate) struct ResponseEdits<'a> {
    /// The route's response header edits.
    pub(crate) route: &'a HeaderEdits,
    /// Replaces any `X-Request-Id` of the upstream's.
    pub(crate) request_id: &'a HeaderValue,
    /// The body is relayed chunked, so the client must be told so.
    pub(crate) chunked: bool,
    /// The connection closes after this response.
    pub(crate) close: bool,
}

/// Writes the client's copy of the upstream response head `head`, parsed
/// from `buf` by [`parse_response`] into `fields`, without hop-by-hop fields.
pub(crate) fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: &[(Range<usize>, Range<usize>)],
    edits: &ResponseEdits<'_>,
) {
    write_status_line(out, head.status.as_u16(), &buf[head.reason.clone()]);
    let named = head
        .connection_names
        .then(|| ConnectionNames::gather(buf, fields));
    for (name, value) in fields {
        let name = &buf[name.clone()];
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || edits.route.drops(name)
            || named.as_ref().is_some_and(|n| n.contains(name))
        {
            continue;
        }
        write_field(out, name, &buf[value.clone()]);
    }
    for (name, value) in edits.route.written() {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    write_field(out, b"x-request-id", edits.request_id.as_bytes());
    if edits.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if edits.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The options an upstream response's `Connection` fields list, gathered
/// once. An upstream may list thousands (the head may be 64 KiB); past a
/// few they are sorted, so that stripping the fields they name costs
/// fields × log(options) rather than fields × options.
struct ConnectionNames<'b>(Vec<&'b [u8]>);

/// Up to this many options, a linear scan is cheaper than sorting.
const SCAN_OPTIONS: usize = 16;

impl<'b> ConnectionNames<'b> {
    fn gather(buf: &'b [u8], fields: &[(Range<usize>, Range<usize>)]) -> Self {
        let mut names: Vec<&[u8]> = fields
            .iter()
            .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| buf[v.clone()].split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        if names.len() > SCAN_OPTIONS {
            names.sort_unstable_by(|a, b| cmp_ignoring_case(a, b));
        }
        ConnectionNames(names)
    }

    fn contains(&self, name: &[u8]) -> bool {
        if self.0.len() > SCAN_OPTIONS {
            self.0
                .binary_search_by(|n| cmp_ignoring_case(n, name))
                .is_ok()
        } else {
            self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
        }
    }
}

fn cmp_ignoring_case(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing_follows_rfc_9112() {
        let parse = |s: &str, head: bool| parse_response(s.as_bytes(), head, &mut Vec::new());
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.status, r.framing, r.close),
            (StatusCode::OK, Framing::Length(13), false)
        );
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((r.framing, r.close), (Framing::UntilClose, true));
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 13\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.close);
        let r = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close);
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn hostile_responses_are_refused() {
        let parse = |s: &str| {
            parse_response(s.as_bytes(), false, &mut Vec::new()).map(|r| r.map(|r| r.framing))
        };
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(BadResponse::Malformed), "{bad:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(parse(&huge), Err(BadResponse::TooLarge));
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(BadResponse::TooLarge)
        );
        // The same length twice is one length (RFC 9110 §8.6).
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"),
            Ok(Some(Framing::Length(2)))
        );
    }

    /// The client's copy of the response head `raw`, with request id "ours".
    fn client_copy(raw: &[u8], route: &HeaderEdits, chunked: bool) -> String {
        let mut fields = Vec::new();
        let head = parse_response(raw, false, &mut fields).unwrap().unwrap();
        let mut out = Vec::new();
        let edits = ResponseEdits {
            route,
            request_id: &HeaderValue::from_static("ours"),
            chunked,
            close: false,
        };
        write_response_head(&mut out, raw, &head, &fields, &edits);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_client_copy_drops_hop_by_hop_fields_and_applies_edits() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nServer: up\r\nX-Internal: secret\r\nX-Request-Id: theirs\r\nTransfer-Encoding: chunked\r\n\r\n";
        let rules: crate::config::HeaderRules =
            toml::from_str("remove = [\"x-internal\"]\nadd = { via = \"trellis\" }").unwrap();
        let route = HeaderEdits::compile(&rules);
        assert_eq!(
            client_copy(raw, &route, true),
            "HTTP/1.1 200 OK\r\nServer: up\r\nvia: trellis\r\nx-request-id: ours\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_long_connection_list_strips_exactly_the_fields_it_names() {
        let edits = HeaderEdits::default();
        let copy = |raw: &str| client_copy(raw.as_bytes(), &edits, false);
        // Past the linear scan's reach: the options are sorted and searched,
        // over two Connection fields, matched ignoring case.
        let options: Vec<String> = (0..40).map(|i| format!("opt-{i}")).collect();
        let raw = format!(
            "HTTP/1.1 200 OK\r\nConnection: {}\r\nX-Keep: 1\r\nOPT-7: gone\r\nConnection: X-Hop\r\nx-hop: gone\r\nopt-39: gone\r\nopt-40: kept\r\nContent-Length: 0\r\n\r\n",
            options.join(", ")
        );
        assert_eq!(
            copy(&raw),
            "HTTP/1.1 200 OK\r\nX-Keep: 1\r\nopt-40: kept\r\nContent-Length: 0\r\nx-request-id: ours\r\n\r\n"
        );
        // A short list, scanned: the same answer.
        let raw = "HTTP/1.1 200 OK\r\nConnection: opt-7, X-Hop\r\nX-Keep: 1\r\nOPT-7: gone\r\nx-hop: gone\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            copy(raw),
            "HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 0\r\nx-request-id: ours\r\n\r\n"
        );
    }
}
