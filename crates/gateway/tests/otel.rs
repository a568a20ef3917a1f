//! OpenTelemetry traces over OTLP/HTTP: a real SDK tracer provider with the
//! OTLP exporter (HTTP/protobuf, batch) sends the gateway's request spans
//! to a tiny OTLP receiver in the test, which decodes them with
//! opentelemetry-proto. Each proxied request is one SERVER span, parented by
//! the client's `traceparent`, with the HTTP semantic-convention attributes
//! plus route, upstream and endpoint; the `traceparent` the upstream gets
//! names the gateway's span.
mod common;

use axum::body::Bytes;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::time::Duration;
use tokio::sync::mpsc;
use trellis_gateway::{Gateway, Tracing};

/// An OTLP/HTTP receiver: every span posted to `/v1/traces`.
async fn otlp_receiver() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Span>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            let _ = tx.send(span);
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    (serve(app).await, rx)
}

fn provider(receiver: std::net::SocketAddr) -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://{receiver}/v1/traces"))
        .with_headers(Default::default())
        .build()
        .unwrap();
    opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build()
}

/// Starts a gateway from `cfg` whose request spans go to `provider`.
async fn start_traced(
    cfg: &str,
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> (trellis_gateway::GatewayHandle, String) {
    let mut registry = prometheus_client::registry::Registry::default();
    let gw = Gateway::start_with_tracing(parse(cfg), &mut registry, Some(Tracing::new(provider)))
        .await
        .unwrap();
    let base = format!("http://{}", gw.local_addr("main").unwrap());
    (gw, base)
}

/// Exports every finished span now (the SDK blocks while it does).
async fn flush(provider: &opentelemetry_sdk::trace::SdkTracerProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .unwrap()
        .unwrap();
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {:#?}", span.attributes),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} in {:#?}", span.attributes),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn next_span(rx: &mut mpsc::UnboundedReceiver<Span>) -> Span {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no span exported")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_receiver_with_the_right_parents_and_attributes() {
    let (receiver, mut spans) = otlp_receiver().await;
    let provider = provider(receiver);
    let up = echo("up").await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"orders\"\nupstream = \"up\"\nmatch = {{ path_prefix = \"/orders\" }}\n[[routes]]\nname = \"down\"\nupstream = \"dead\"\nmatch = {{ path_prefix = \"/down\" }}\n[[upstreams]]\nname = \"up\"\nendpoints = [\"{}\"]\n[[upstreams]]\nname = \"dead\"\nendpoints = [\"127.0.0.1:1\"]\n",
        up.addr
    );
    let (gw, base) = start_traced(&cfg, &provider).await;
    let http = client();

    // A client that is itself traced: the gateway's span is its child.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let resp = http
        .get(format!("{base}/orders/7?full=1"))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .header("tracestate", "vendor=abc")
        .header("user-agent", "otel-test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = json(resp).await;
    let upstream_tp = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert_eq!(seen["headers"]["tracestate"], "vendor=abc");

    flush(&provider).await;
    let span = next_span(&mut spans).await;
    assert_eq!(span.name, "GET orders");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), client_span);
    // The upstream's parent is the gateway's span, in the same trace.
    assert_eq!(
        upstream_tp,
        format!("00-{trace}-{}-01", hex(&span.span_id)),
        "upstream traceparent"
    );
    assert_eq!(text(&span, "http.request.method"), "GET");
    assert_eq!(text(&span, "url.path"), "/orders/7");
    assert_eq!(text(&span, "url.query"), "full=1");
    assert_eq!(text(&span, "url.scheme"), "http");
    assert_eq!(text(&span, "server.address"), "127.0.0.1");
    assert_eq!(text(&span, "client.address"), "127.0.0.1");
    assert_eq!(text(&span, "user_agent.original"), "otel-test");
    assert_eq!(text(&span, "network.protocol.version"), "1.1");
    assert_eq!(int(&span, "http.response.status_code"), 200);
    assert_eq!(text(&span, "trellis.route"), "orders");
    assert_eq!(text(&span, "trellis.upstream"), "up");
    assert_eq!(
        text(&span, "trellis.upstream.endpoint"),
        up.addr.to_string()
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // Without a traceparent the gateway starts the trace, and the upstream
    // is told about it; a 5xx marks the span as an error.
    let resp = http.get(format!("{base}/down/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let resp = http.get(format!("{base}/orders/1")).send().await.unwrap();
    let upstream_tp = json(resp).await["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    flush(&provider).await;
    let (mut down, mut root) = (None, None);
    for _ in 0..2 {
        let s = next_span(&mut spans).await;
        if s.name == "GET down" {
            down = Some(s);
        } else {
            root = Some(s);
        }
    }
    let down = down.expect("span of the failed request");
    assert_eq!(int(&down, "http.response.status_code"), 503);
    assert_eq!(text(&down, "error.type"), "503");
    assert_eq!(
        down.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    let root = root.expect("span of the untraced request");
    assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
    assert_eq!(
        upstream_tp,
        format!("00-{}-{}-01", hex(&root.trace_id), hex(&root.span_id))
    );
    gw.shutdown(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// An upstream streaming three chunks 150 ms apart.
async fn slow_stream() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|| async {
        let chunks = futures::stream::unfold(0u32, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("chunk {i}\n"))),
                i + 1,
            ))
        });
        axum::body::Body::from_stream(chunks)
    });
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_inside_its_span_and_keeps_its_bulkhead_permit() {
    let (receiver, mut spans) = otlp_receiver().await;
    let provider = provider(receiver);
    let up = slow_stream().await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"feed\"\nupstream = \"up\"\nbulkhead = {{ max_concurrent = 1 }}\n[[upstreams]]\nname = \"up\"\nendpoints = [\"{up}\"]\n"
    );
    let (gw, base) = start_traced(&cfg, &provider).await;
    let http = client();

    let resp = http.get(format!("{base}/feed")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Headers are in, the stream is not: the bulkhead is still taken, even
    // though the response body now also carries the span.
    let second = http.get(format!("{base}/feed")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(json(second).await["code"], "upstream_overloaded");
    let body = resp.text().await.unwrap();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");

    flush(&provider).await;
    let mut feed = None;
    for _ in 0..2 {
        let s = next_span(&mut spans).await;
        if int(&s, "http.response.status_code") == 200 {
            feed = Some(s);
        }
    }
    let feed = feed.expect("span of the streamed response");
    let took = Duration::from_nanos(feed.end_time_unix_nano - feed.start_time_unix_nano);
    assert!(
        took >= Duration::from_millis(400),
        "the span ended before the stream did: {took:?}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
}
