//! Two `trellis up` nodes sharing one registry through a real etcd: an
//! instance registered on one is listed by the other and served by its gateway.

mod common;

use std::time::{Duration, Instant};

use common::{Trellis, Workspace};
use serde_json::json;
use trellis_discovery::testing::TestEtcd;

fn node_config(ws: &Workspace, name: &str, etcd: &str) -> std::path::PathBuf {
    let dir = ws.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trellis.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[control]
listen = "127.0.0.1:0"
[data]
dir = '{data}'
[registry.etcd]
endpoints = ["{etcd}"]
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
[[upstreams]]
name = "orders"
service = "orders"
[[routes]]
name = "orders"
upstream = "orders"
"#,
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_etcd_share_registrations_and_route_to_them() {
    let ws = Workspace::new();
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let url = etcd.url().to_owned();
    let mut one = Trellis::up(&ws, &node_config(&ws, "one", &url));
    let mut two = Trellis::up(&ws, &node_config(&ws, "two", &url));
    let gateway_two = common::gateway_addr(&mut two);
    let (control_one, control_two) = (one.control_addr(), two.control_addr());

    let upstream = common::upstream().await;
    let client = reqwest::Client::new();
    let resp = client
        .put(format!(
            "http://{control_one}/v1/registry/services/orders/instances/o-1"
        ))
        .json(&json!({"address": "127.0.0.1", "port": upstream.port()}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    // Node two lists it and its gateway routes to it, by watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .get(format!("http://{gateway_two}/hello"))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            assert_eq!(r.text().await.unwrap(), "upstream saw /hello");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node two never routed to the instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = common::run(&["services", "--addr", &control_two.to_string()]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stdout).contains("o-1"),
        "{}",
        common::text(&out.stdout)
    );

    // Deregistered through node two: node one's registry forgets it too.
    let resp = client
        .delete(format!(
            "http://{control_two}/v1/registry/services/orders/instances/o-1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // Node one hears of it by its own watch, a moment later at most.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = client
            .get(format!("http://{control_one}/v1/registry/services/orders"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        if listed["instances"] == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node one still lists it: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
