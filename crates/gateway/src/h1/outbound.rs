//! The request head sent upstream, written straight from the client's head.
//!
//! The hyper path edits a `HeaderMap` (hop-by-hop fields out, forwarding and
//! tracing fields in, the route's edits) and writes the result; each edit
//! hashes a name, and each new value is allocated and validated. Here the
//! client's fields are copied from the bytes they arrived in, minus those a
//! proxy must not pass on or replaces, and the gateway's own fields follow —
//! the same head, field for field, that [`crate::proxy::prepare_outbound`]
//! makes (the tests of header hygiene run through both), at about a quarter
//! of the cost.
//!
//! The `HeaderMap` the route's policies and load balancer read is left as
//! the client sent it, so this is used only where no decision reads a field
//! the gateway edits: not for an upstream that hashes on a header or cookie.

use super::head::{write_field, Fields};
use crate::proxy::headers;
use crate::proxy::ClientConn;
use crate::route::HeaderEdits;
use http::HeaderValue;

/// The fields whose handling differs from plain copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Forwarded,
    RequestId,
    Traceparent,
    Te,
    /// Hop-by-hop whatever its value (RFC 9110 §7.6.1), and
    /// `Proxy-Authorization`, which is for this hop's proxy only.
    HopByHop,
    Other,
}

/// By length first: this runs for every field of every request.
fn kind(name: &[u8]) -> Kind {
    let (candidate, kind): (&[u8], Kind) = match name.len() {
        2 => (b"te", Kind::Te),
        4 => (b"host", Kind::Host),
        7 => (b"upgrade", Kind::HopByHop),
        9 => (b"forwarded", Kind::Forwarded),
        10 if name[0].eq_ignore_ascii_case(&b'c') => (b"connection", Kind::HopByHop),
        10 => (b"keep-alive", Kind::HopByHop),
        11 => (b"traceparent", Kind::Traceparent),
        12 => (b"x-request-id", Kind::RequestId),
        15 => (b"x-forwarded-for", Kind::XForwardedFor),
        16 if name[0].eq_ignore_ascii_case(&b'x') => (b"x-forwarded-host", Kind::XForwardedHost),
        16 => (b"proxy-connection", Kind::HopByHop),
        17 if name[0].eq_ignore_ascii_case(&b'x') => (b"x-forwarded-proto", Kind::XForwardedProto),
        17 => (b"transfer-encoding", Kind::HopByHop),
        19 => (b"proxy-authorization", Kind::HopByHop),
        _ => return Kind::Other,
    };
    if name.eq_ignore_ascii_case(candidate) {
        kind
    } else {
        Kind::Other
    }
}

/// What the gateway knows of the request beyond its head.
pub(super) struct Context<'a> {
    pub(super) conn: &'a ClientConn,
    pub(super) route: &'a HeaderEdits,
    /// The request's id, and whether the gateway made it (so the client's
    /// `X-Request-Id`, missing or not sane, is replaced).
    pub(super) request_id: (&'a HeaderValue, bool),
    /// The scan saw a field that may be hop-by-hop.
    pub(super) hop_by_hop: bool,
}

/// Writes the head to send upstream for the client's head `raw` (whose
/// fields `fields` locates), with `target` as its request target.
pub(super) fn write_request(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    raw: &[u8],
    fields: &Fields,
    cx: &Context<'_>,
) {
    // What the first of some fields says decides what is written, as
    // `HeaderMap::get` (the first value) does on the hyper path.
    let mut host = None;
    let mut chain = None;
    let mut trace_kept = None;
    let mut te_kept = None;
    for (name, value) in &fields.headers {
        let value = &raw[value.clone()];
        match kind(&raw[name.clone()]) {
            Kind::Host => _ = host.get_or_insert(value),
            Kind::XForwardedFor => _ = chain.get_or_insert(value),
            Kind::Traceparent => {
                _ = trace_kept.get_or_insert_with(|| headers::valid_traceparent(value))
            }
            Kind::Te => _ = te_kept.get_or_insert(value == b"trailers"),
            _ => {}
        }
    }
    let trace_kept = trace_kept.unwrap_or(false);
    let te_kept = te_kept.unwrap_or(true);
    let (request_id, id_made) = cx.request_id;
    let dropped = |name: &[u8]| cx.route.drops(name);

    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &fields.headers {
        let name = &raw[name.clone()];
        let skip = match kind(name) {
            Kind::XForwardedFor | Kind::XForwardedProto => true,
            Kind::XForwardedHost => host.is_some(),
            Kind::RequestId => id_made,
            Kind::Traceparent => !trace_kept,
            Kind::HopByHop => cx.hop_by_hop,
            Kind::Te => cx.hop_by_hop && !te_kept,
            Kind::Other => cx.hop_by_hop && named_by_connection(raw, fields, name),
            Kind::Host | Kind::Forwarded => false,
        };
        if !skip && !dropped(name) {
            // Lower-cased, as the hyper path's `HeaderMap` sends names.
            let at = out.len();
            write_field(out, name, &raw[value.clone()]);
            out[at..at + name.len()].make_ascii_lowercase();
        }
    }
    // The gateway's own fields, unless the route's edits replace them.
    let mut own = |name: &'static str, write: &dyn Fn(&mut Vec<u8>)| {
        if !dropped(name.as_bytes()) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            write(out);
            out.extend_from_slice(b"\r\n");
        }
    };
    own("x-forwarded-for", &|o| {
        headers::forwarded_for(o, chain.unwrap_or(b""), cx.conn)
    });
    own("x-forwarded-proto", &|o| {
        o.extend_from_slice(headers::proto(cx.conn).as_bytes())
    });
    if let Some(host) = host {
        own("x-forwarded-host", &|o| o.extend_from_slice(host));
    }
    own("forwarded", &|o| {
        headers::forwarded_element(o, cx.conn, host)
    });
    if id_made {
        own("x-request-id", &|o| {
            o.extend_from_slice(request_id.as_bytes())
        });
    }
    if !trace_kept {
        own("traceparent", &|o| {
            o.extend_from_slice(&headers::new_traceparent())
        });
    }
    for (name, value) in cx.route.written() {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a `Connection` field of the head names `name` (other than the
/// `close` and `keep-alive` options, which name no field).
fn named_by_connection(raw: &[u8], fields: &Fields, name: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(b"close") {
        return false;
    }
    fields.headers.iter().any(|(n, v)| {
        raw[n.clone()].eq_ignore_ascii_case(b"connection")
            && raw[v.clone()]
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|t| t.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderRules;
    use crate::h1::head::{self, Scan};
    use bytes::Bytes;

    /// The head as `(name, value)` lines, sorted, with values the gateway
    /// draws at random replaced by what they must look like.
    fn normalised(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).unwrap();
        let mut lines: Vec<_> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                let v = match n {
                    "traceparent" if !v.contains("4bf92f3577b34da6a3ce929d0e0e4736") => {
                        assert!(headers::valid_traceparent(v.as_bytes()), "{v}");
                        "<new trace>".to_owned()
                    }
                    _ => v.to_owned(),
                };
                (n.to_owned(), v)
            })
            .collect();
        lines.sort();
        lines
    }

    /// The native writer and the hyper path's `HeaderMap` edits send the
    /// same fields for the same request.
    #[test]
    fn writes_what_the_header_map_path_writes() {
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let heads = [
            format!(
                "GET /a?b=1 HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1\r\n\
                 X-Forwarded-For: 10.0.0.2\r\nConnection: keep-alive, X-Secret, close\r\n\
                 X-Secret: s\r\nClose: kept\r\nKeep-Alive: 5\r\nTE: gzip\r\n\
                 Proxy-Authorization: Basic eA==\r\nX-Request-Id: abc-1\r\n\
                 Traceparent: {trace}\r\nForwarded: for=1.2.3.4\r\n\
                 X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nAccept: */*\r\n\r\n"
            ),
            "POST /up HTTP/1.1\r\nContent-Length: 0\r\nX-Forwarded-Host: from-client\r\n\
             X-Request-Id: not sane\r\ntraceparent: 00-zz-01\r\nTE: trailers\r\n\
             X-Forwarded-For:\r\nUser-Agent: t\r\n\r\n"
                .to_owned(),
            "GET / HTTP/1.1\r\nHost: \"q\"\r\nX-Extra: client\r\nAccept: a\r\n\r\n".to_owned(),
        ];
        let rules = [
            HeaderRules::default(),
            HeaderRules {
                remove: vec!["accept".into(), "X-Forwarded-For".into()],
                set: [("x-forwarded-proto".into(), "set".into())].into(),
                add: [("x-extra".into(), "route".into())].into(),
            },
        ];
        let v4 = ClientConn::new("192.0.2.7:5000".parse().unwrap(), false);
        let v6 = ClientConn::new("[2001:db8::1]:5000".parse().unwrap(), true);
        for head in &heads {
            for rules in &rules {
                for conn in [&v4, &v6] {
                    let edits = HeaderEdits::compile(rules);
                    let raw = Bytes::copy_from_slice(head.as_bytes());
                    let mut fields = Fields::default();
                    let Scan::Ready(shape) = head::scan(&raw, 100, 64 * 1024, &mut fields) else {
                        panic!("not plain: {head}");
                    };
                    let mut parts = head::parts(&raw, &fields).unwrap();
                    let (id, made) = headers::request_id_of(&parts.headers);

                    let mut native = Vec::new();
                    let cx = Context {
                        conn,
                        route: &edits,
                        request_id: (&id, made),
                        hop_by_hop: shape.hop_by_hop,
                    };
                    let target = parts.uri.path_and_query().unwrap().as_str().to_owned();
                    let method = parts.method.as_str().as_bytes();
                    write_request(&mut native, method, target.as_bytes(), &raw, &fields, &cx);

                    // What `proxy::prepare_outbound` does to the fields.
                    if made {
                        parts.headers.insert(headers::X_REQUEST_ID, id.clone());
                    }
                    let host = parts.headers.get(http::header::HOST).cloned();
                    if shape.hop_by_hop {
                        headers::strip_hop_by_hop(&mut parts.headers, false);
                    }
                    headers::set_forwarded(&mut parts.headers, conn, host.as_ref());
                    headers::ensure_traceparent(&mut parts.headers);
                    edits.apply(&mut parts.headers);
                    let mut mapped = Vec::new();
                    head::write_request(&mut mapped, &parts.method, &target, &parts.headers);

                    assert_eq!(
                        native.split(|b| *b == b'\r').next(),
                        mapped.split(|b| *b == b'\r').next()
                    );
                    assert_eq!(normalised(&native), normalised(&mapped), "{head}");
                }
            }
        }
    }
}
