//! Proxy header hygiene: hop-by-hop headers removed in both directions
//! (including those a `Connection` header names), `X-Forwarded-*` and
//! `Forwarded` set, `X-Request-Id` kept or generated, W3C `traceparent`
//! propagated or started.

use super::ClientConn;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, FORWARDED, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `headers` ask for an HTTP/1.1 upgrade (WebSocket and friends).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set again, as an upgrade must reach the other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(CONNECTION) {
            for token in v.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            if !(upgrade && name == UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(http::header::PROXY_AUTHORIZATION);
    // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
    if headers.get(TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        headers.remove(TE);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Sets the forwarding headers for a request from `client` for `host`.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientConn,
    host: Option<&HeaderValue>,
) {
    // Append to any chain a trusted hop before us built, as nginx's
    // $proxy_add_x_forwarded_for does; the last entry is ours.
    let xff = match headers.get(X_FORWARDED_FOR) {
        Some(prev) if !prev.is_empty() => {
            let mut chain = Vec::with_capacity(prev.len() + 2 + client.ip_text.len());
            forwarded_for(&mut chain, prev.as_bytes(), client);
            HeaderValue::from_bytes(&chain).ok()
        }
        _ => Some(client.ip_text.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto(client)));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let mut forwarded = Vec::with_capacity(64);
    forwarded_element(&mut forwarded, client, host.map(HeaderValue::as_bytes));
    if let Ok(v) = HeaderValue::from_bytes(&forwarded) {
        headers.append(FORWARDED, v);
    }
}

/// The scheme the client used, as the forwarding headers name it.
pub(crate) fn proto(client: &ClientConn) -> &'static str {
    if client.tls {
        "https"
    } else {
        "http"
    }
}

/// Writes the `X-Forwarded-For` value: the chain a hop before us built
/// (`prev`, when not empty), then the client's address.
pub(crate) fn forwarded_for(out: &mut Vec<u8>, prev: &[u8], client: &ClientConn) {
    if !prev.is_empty() {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip_text.as_bytes());
}

/// Writes this hop's `Forwarded` element (RFC 7239) for `client` and the
/// `host` it asked for; a host that cannot sit in a quoted string is left out.
pub(crate) fn forwarded_element(out: &mut Vec<u8>, client: &ClientConn, host: Option<&[u8]>) {
    let v6 = client.peer.is_ipv6();
    out.extend_from_slice(if v6 { b"for=\"[" } else { b"for=" });
    out.extend_from_slice(client.ip_text.as_bytes());
    if v6 {
        out.extend_from_slice(b"]\"");
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto(client).as_bytes());
    if let Some(h) = host {
        if h.iter().all(|b| b.is_ascii() && *b != b'"' && *b != b'\\') {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(h);
            out.push(b'"');
        }
    }
}

/// The request id: the client's when it is a sane token, else a new one.
pub(crate) fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    let (id, made) = request_id_of(headers);
    if made {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    id
}

/// The request id `headers` carry when it is a sane token, else a new one
/// (and `true`), leaving `headers` as they are.
pub(crate) fn request_id_of(headers: &HeaderMap) -> (HeaderValue, bool) {
    match headers.get(X_REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => (v.clone(), false),
        _ => (hex_value(&[fastrand::u64(..), fastrand::u64(..)]), true),
    }
}

fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// Keeps a well-formed `traceparent`; otherwise starts a new trace.
pub(crate) fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers
        .get(TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()))
    {
        return;
    }
    if let Ok(v) = HeaderValue::from_bytes(&new_traceparent()) {
        headers.insert(TRACEPARENT, v);
    }
}

/// A `traceparent` starting a new trace, sampled.
pub(crate) fn new_traceparent() -> [u8; 55] {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    write_hex(&mut buf[3..35], &[fastrand::u64(1..), fastrand::u64(..)]);
    buf[35] = b'-';
    write_hex(&mut buf[36..52], &[fastrand::u64(1..)]);
    buf[52..].copy_from_slice(b"-01");
    buf
}

/// `00-<32 hex trace id, not all zero>-<16 hex parent id, not all zero>-<2 hex flags>`.
pub(crate) fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    v.len() == 55
        && &v[..3] == b"00-"
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..55])
}

fn write_hex(out: &mut [u8], words: &[u64]) {
    for (slot, w) in out.chunks_exact_mut(16).zip(words) {
        slot.copy_from_slice(&hex16(*w));
    }
}

/// `w` as 16 lower-case hex digits, eight at a time in a word's bytes: the
/// gateway writes 80 digits a request, and a digit at a time from a table
/// cost more than the rest of the request id and trace context together.
fn hex16(w: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex8((w >> 32) as u32));
    out[8..].copy_from_slice(&hex8(w as u32));
    out
}

fn hex8(v: u32) -> [u8; 8] {
    // One nibble per byte, the lowest nibble in the lowest byte.
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // Digits above 9 move from after '9' to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * (b'a' - b'9' - 1) as u64).to_be_bytes()
}

fn hex_value(words: &[u64]) -> HeaderValue {
    let mut buf = [0u8; 32];
    write_hex(&mut buf, words);
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed_but_upgrade_survives_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.is_empty(), "{plain:?}");
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert!(h.get("x-secret").is_none());
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        for w in [
            0,
            1,
            9,
            10,
            15,
            0xdead_beef,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            assert_eq!(hex16(w), format!("{w:016x}").as_bytes(), "{w:#x}");
        }
        for _ in 0..10_000 {
            let w = fastrand::u64(..);
            assert_eq!(hex16(w), format!("{w:016x}").as_bytes(), "{w:#x}");
        }
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_made_when_not() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(good));
        ensure_traceparent(&mut h);
        assert_eq!(h.get(TRACEPARENT).unwrap(), good);
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        ensure_traceparent(&mut h);
        let made = h.get(TRACEPARENT).unwrap().as_bytes().to_vec();
        assert!(valid_traceparent(&made));
        assert_ne!(made, good.as_bytes());
    }
}
