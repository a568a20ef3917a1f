//! OpenTelemetry traces of proxied requests: one `SERVER` span per request,
//! with the attributes of the OTel HTTP semantic conventions plus the route,
//! upstream and endpoint; parented by the client's W3C `traceparent`, and
//! the `traceparent` sent upstream names this span, so the upstream's spans
//! hang under the gateway's.
//!
//! The gateway holds only the `opentelemetry` API: whoever embeds it (the
//! `trellis` binary, from `[telemetry]`) builds the SDK tracer provider and
//! exporter and hands over a tracer. Without one, the request path checks
//! one `Option` and does nothing else.
//!
//! Spans are made with the OTel API directly rather than through `tracing`
//! spans and `tracing-opentelemetry`: the log filter (`log.level`) must not
//! decide whether traces exist, and the span id that goes upstream has to be
//! known before the request leaves, not after a subscriber saw the span.

use crate::body::Body;
use http::header::{HeaderName, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, Response};
use opentelemetry::global::{BoxedSpan, BoxedTracer, ObjectSafeTracerProvider};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use std::net::SocketAddr;
use std::str::FromStr as _;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracer the gateway makes request spans with.
pub struct Tracing {
    tracer: BoxedTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Request spans from `provider`'s tracer `trellis-gateway`.
    pub fn new<P>(provider: &P) -> Tracing
    where
        P: opentelemetry::trace::TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        let scope = opentelemetry::InstrumentationScope::builder("trellis-gateway")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let provider: &dyn ObjectSafeTracerProvider = &ProviderRef(provider);
        Tracing {
            tracer: BoxedTracer::new(provider.boxed_tracer(scope)),
        }
    }

    /// Starts the span of a request that `route` (if any) will serve, and
    /// rewrites its `traceparent` to name this span.
    pub(crate) fn start<B>(
        &self,
        req: &mut Request<B>,
        listener: &str,
        route: Option<&str>,
        client: SocketAddr,
        tls: bool,
    ) -> RequestSpan {
        let parent = remote_parent(req.headers());
        let method = req.method().as_str().to_owned();
        let name = match route {
            Some(r) => format!("{method} {r}"),
            None => method.clone(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
            KeyValue::new("network.protocol.version", protocol_version(req.version())),
            KeyValue::new("client.address", client.ip().to_string()),
            KeyValue::new("client.port", i64::from(client.port())),
            KeyValue::new("trellis.listener", listener.to_owned()),
        ];
        if let Some(q) = req.uri().query() {
            attributes.push(KeyValue::new("url.query", q.to_owned()));
        }
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if let Some(host) = host {
            let (name, port) = split_host(host);
            attributes.push(KeyValue::new("server.address", name.to_owned()));
            if let Some(p) = port {
                attributes.push(KeyValue::new("server.port", i64::from(p)));
            }
        }
        if let Some(ua) = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        if let Some(r) = route {
            attributes.push(KeyValue::new("trellis.route", r.to_owned()));
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context();
        if sc.is_valid() {
            let value = format!(
                "00-{:032x}-{:016x}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut().insert(TRACEPARENT, v);
            }
        }
        req.extensions_mut().insert(Traced);
        RequestSpan { span }
    }
}

/// Adapts a generic provider to the object-safe one `BoxedTracer` needs.
struct ProviderRef<'a, P>(&'a P);

impl<P> ObjectSafeTracerProvider for ProviderRef<'_, P>
where
    P: opentelemetry::trace::TracerProvider,
    P::Tracer: Send + Sync + 'static,
    <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
{
    fn boxed_tracer(
        &self,
        scope: opentelemetry::InstrumentationScope,
    ) -> Box<dyn opentelemetry::global::ObjectSafeTracer + Send + Sync> {
        Box::new(self.0.tracer_with_scope(scope))
    }
}

/// Marks a request whose span wants to know the endpoint it went to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traced;

/// The endpoint that answered, put on a traced request's response.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamEndpoint(pub(crate) http::uri::Authority);

/// A request's span, ended with what the response says.
pub(crate) struct RequestSpan {
    span: BoxedSpan,
}

impl RequestSpan {
    /// Records the response on the span, which ends when the response body
    /// has been sent in full (or abandoned), so a stream's span covers it.
    pub(crate) fn finish(mut self, response: &mut Response<Body>, upstream: Option<&str>) {
        let status = response.status();
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(u) = upstream {
            self.span
                .set_attribute(KeyValue::new("trellis.upstream", u.to_owned()));
        }
        if let Some(UpstreamEndpoint(a)) = response.extensions().get() {
            self.span.set_attribute(KeyValue::new(
                "trellis.upstream.endpoint",
                a.as_str().to_owned(),
            ));
        }
        // Server spans mark only 5xx as errors (4xx are the client's).
        if status.is_server_error() {
            self.span
                .set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            self.span.set_status(Status::error(""));
        }
        let body = std::mem::replace(response.body_mut(), Body::empty());
        *response.body_mut() = body.holding(EndOnDrop(self.span));
    }
}

/// Ends a span when the response body carrying it is dropped.
struct EndOnDrop(BoxedSpan);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The client's trace context from `traceparent`/`tracestate`, or an empty
/// context (a new trace) when there is none or it is malformed.
fn remote_parent(headers: &HeaderMap) -> Context {
    let Some(tp) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) else {
        return Context::new();
    };
    let mut parts = tp.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Context::new();
    };
    // Version 00 has exactly four fields; later versions may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return Context::new();
    }
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return Context::new();
    }
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(span),
        u8::from_str_radix(flags, 16),
    ) else {
        return Context::new();
    };
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    if !sc.is_valid() {
        return Context::new();
    }
    Context::new().with_remote_span_context(sc)
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` or `[v6]:port` into name and port.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((name, after)) = rest.split_once(']') {
            return (name, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent_of(tp: &str) -> Option<SpanContext> {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(tp).ok()?);
        let cx = remote_parent(&h);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    #[test]
    fn traceparent_parsing_accepts_only_valid_headers() {
        let sc = parent_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parent_of(bad).is_none(), "{bad:?} accepted");
        }
        // A future version may append fields.
        assert!(parent_of("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xx").is_some());
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(
            split_host("api.example.com:8080"),
            ("api.example.com", Some(8080))
        );
        assert_eq!(split_host("api.example.com"), ("api.example.com", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
    }
}
