//! `trellis services` against a running node: what is registered over the
//! REST API is listed, with each instance's health, as a table and as JSON.

mod common;

use common::{run, text, Trellis, Workspace};
use serde_json::{json, Value};

#[tokio::test]
async fn lists_services_and_instances_with_their_health() {
    let ws = Workspace::new();
    let config = ws.up_config("", "");
    let mut node = Trellis::up(&ws, &config);
    let control = node.control_addr().to_string();

    // Nothing yet.
    let out = run(&["services", "--addr", &control]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no services registered\n");

    let client = reqwest::Client::new();
    let register = |service: &str, id: &str, body: Value| {
        let url = format!("http://{control}/v1/registry/services/{service}/instances/{id}");
        let request = client.put(url).json(&body);
        async move {
            let resp = request.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        }
    };
    register(
        "orders",
        "orders-1",
        json!({"address": "127.0.0.1", "port": 8081, "tags": ["v1"]}),
    )
    .await;
    register(
        "orders",
        "orders-2",
        json!({"address": "127.0.0.1", "port": 8082, "tags": ["v2"]}),
    )
    .await;
    // An actively checked instance is critical until a check passes, and
    // nothing listens on port 1.
    register(
        "billing",
        "billing-1",
        json!({"address": "127.0.0.1", "port": 1, "check": {"kind": "tcp", "interval": "1h"}}),
    )
    .await;

    let out = run(&["services", "--addr", &control]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} missing from:\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(line("orders-1").contains("127.0.0.1:8081") && line("orders-1").contains("passing"));
    assert!(line("orders-2").ends_with("v2"));
    assert!(line("billing-1").contains("critical"), "{table}");

    // One service, as JSON.
    let out = run(&["services", "orders", "--addr", &control, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = doc["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0]["service"], "orders");
    assert_eq!(services[0]["instances"].as_array().unwrap().len(), 2);

    // A node that is not there is a clear failure, not a hang.
    let out = run(&["services", "--addr", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
}
