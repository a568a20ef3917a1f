//! `[telemetry] otlp_endpoint` as a user runs it with `trellis up`: the
//! gateway's request spans reach an OTLP/HTTP collector (here a receiver in
//! the test decoding opentelemetry-proto), in the client's trace, under the
//! configured service name, and are flushed when the node stops.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::{gateway_addr, upstream, Trellis, Workspace};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::sync::mpsc;

async fn otlp_receiver() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        let _ = tx.send(req);
                        axum::http::StatusCode::OK
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_spans_are_exported_over_otlp() {
    let (collector, mut exports) = otlp_receiver().await;
    let up = upstream().await;
    let ws = Workspace::new();
    let config = ws.up_config(
        "",
        &format!(
            r#"
[telemetry]
otlp_endpoint = "http://{collector}"
service_name = "edge-gateway"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
name = "api"
upstream = "api"
match = {{ path_prefix = "/api" }}

[[upstreams]]
name = "api"
endpoints = ["{up}"]
"#
        ),
    );
    let mut node = Trellis::up(&ws, &config);
    let gw = tokio::task::block_in_place(|| gateway_addr(&mut node));
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = reqwest::Client::new()
        .get(format!("http://{gw}/api/orders"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Stopping the node flushes the batch.
    node.signal("TERM");
    let (status, _) = tokio::task::block_in_place(|| node.wait_exit());
    assert!(status.success(), "log:\n{}", node.log_text());
    let export = tokio::time::timeout(Duration::from_secs(10), exports.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing exported; log:\n{}", node.log_text()))
        .unwrap();
    let rs = &export.resource_spans[0];
    let service = rs
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    assert_eq!(
        service,
        Some(&Value::StringValue("edge-gateway".to_owned()))
    );
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(
        rs.scope_spans[0].scope.as_ref().unwrap().name,
        "trellis-gateway"
    );
    assert_eq!(span.name, "GET api");
    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, trace);
}

#[test]
fn check_locates_telemetry_mistakes() {
    let ws = Workspace::new();
    let path = ws.config("[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\nsample_ratio = 2.0\n");
    let out = ws.check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = common::text(&out.stderr);
    assert!(
        err.contains("trellis.toml:2:17: telemetry.otlp_endpoint: "),
        "{err}"
    );
    assert!(
        err.contains("trellis.toml:3:16: telemetry.sample_ratio: must be between 0.0 and 1.0"),
        "{err}"
    );
}
