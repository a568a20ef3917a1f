//! The event store as a user reaches it through `trellis up`: append and read
//! over the control API, conflicts on expected versions, and acknowledged
//! events surviving a restart of the node.

mod common;

use common::{Trellis, Workspace};
use serde_json::{json, Value};

async fn append(addr: std::net::SocketAddr, stream: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/events/streams/{stream}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn read(addr: std::net::SocketAddr, path: &str) -> Value {
    let resp = reqwest::get(format!("http://{addr}/v1/events{path}"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "GET {path}");
    resp.json().await.unwrap()
}

fn event(kind: &str, n: u64) -> Value {
    json!({"type": kind, "id": uuid(n), "data": {"n": n}})
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn types_of(page: &Value) -> Vec<String> {
    let events = page
        .get("events")
        .or(Some(page))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn appends_survive_a_restart_and_conflicts_name_the_actual_version() {
    let ws = Workspace::new();
    let config = ws.up_config("", "");
    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr();

    let (status, body) = append(
        addr,
        "order-1",
        json!({"expectedVersion": "no_stream", "events": [event("OrderPlaced", 1), event("OrderPaid", 2)]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // A second writer that still expects no stream loses, and is told why.
    let (status, body) = append(
        addr,
        "order-1",
        json!({"expectedVersion": "no_stream", "events": [event("OrderPlaced", 3)]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("actual"), "{body}");

    assert_eq!(
        types_of(&read(addr, "/streams/order-1").await),
        ["OrderPlaced", "OrderPaid"]
    );

    node.signal("TERM");
    let (exit, _) = node.wait_exit();
    assert!(exit.success(), "{exit:?}");

    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr();
    assert_eq!(
        types_of(&read(addr, "/streams/order-1").await),
        ["OrderPlaced", "OrderPaid"]
    );
    assert_eq!(
        types_of(&read(addr, "/categories/order").await),
        ["OrderPlaced", "OrderPaid"]
    );
    let doc: Value = reqwest::get(format!("http://{addr}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["paths"]["/v1/events/streams/{name}"].is_object(),
        "event store paths missing from the OpenAPI document"
    );
}
