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
    let proto = if client.tls { "https" } else { "http" };
    let ip = client.ip_text.as_bytes();
    // Append to any chain a trusted hop before us built, as nginx's
    // $proxy_add_x_forwarded_for does; the last entry is ours.
    let xff = match headers.get(X_FORWARDED_FOR) {
        Some(prev) if !prev.is_empty() => {
            HeaderValue::from_bytes(&[prev.as_bytes(), b", ", ip].concat()).ok()
        }
        _ => Some(client.ip_text.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let mut forwarded = Vec::with_capacity(64);
    let v6 = client.peer.is_ipv6();
    forwarded.extend_from_slice(if v6 { b"for=\"[" } else { b"for=" });
    forwarded.extend_from_slice(ip);
    if v6 {
        forwarded.extend_from_slice(b"]\"");
    }
    forwarded.extend_from_slice(b";proto=");
    forwarded.extend_from_slice(proto.as_bytes());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        let h = host.as_bytes();
        if h.iter().all(|b| b.is_ascii() && *b != b'"' && *b != b'\\') {
            forwarded.extend_from_slice(b";host=\"");
            forwarded.extend_from_slice(h);
            forwarded.push(b'"');
        }
    }
    if let Ok(v) = HeaderValue::from_bytes(&forwarded) {
        headers.append(FORWARDED, v);
    }
}

/// The request id: the client's when it is a sane token, else a new one.
pub(crate) fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let v = hex_value(&[fastrand::u64(..), fastrand::u64(..)]);
    headers.insert(X_REQUEST_ID, v.clone());
    v
}

/// Keeps a well-formed `traceparent`; otherwise starts a new trace.
pub(crate) fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers
        .get(TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()))
    {
        return;
    }
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    write_hex(&mut buf[3..35], &[fastrand::u64(1..), fastrand::u64(..)]);
    buf[35] = b'-';
    write_hex(&mut buf[36..52], &[fastrand::u64(1..)]);
    buf[52..].copy_from_slice(b"-01");
    if let Ok(v) = HeaderValue::from_bytes(&buf) {
        headers.insert(TRACEPARENT, v);
    }
}

/// `00-<32 hex trace id, not all zero>-<16 hex parent id, not all zero>-<2 hex flags>`.
fn valid_traceparent(v: &[u8]) -> bool {
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]);
    for (slot, d) in out.iter_mut().zip(digits) {
        *slot = d;
    }
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
