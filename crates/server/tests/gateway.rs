//! The gateway and the registry as a user runs them with `trellis up`:
//! traffic proxied by a configured route, the gateway's own errors, a
//! SIGHUP reload applied without a restart, gateway metrics on the control
//! port, registrations over the registry's REST API, and an upstream that
//! follows the registry by watch, agreeing with the registry on health.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{gateway_addr, upstream, Trellis, Workspace};
use serde_json::{json, Value};

fn gateway_config(upstream: SocketAddr, response_header: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
name = "api"
upstream = "api"
match = {{ path_prefix = "/api" }}
rewrite = {{ strip_prefix = true }}
response_headers = {{ set = {{ "x-config" = "{response_header}" }} }}

[[routes]]
name = "orders"
upstream = "orders"
match = {{ path_prefix = "/svc" }}
rewrite = {{ strip_prefix = true }}

[[upstreams]]
name = "api"
endpoints = ["{upstream}"]

[[upstreams]]
name = "orders"
service = "orders"
"#
    )
}

#[tokio::test]
async fn proxies_reloads_on_sighup_and_serves_the_registry() {
    let up = upstream().await;
    let ws = Workspace::new();
    let config = ws.up_config("", &gateway_config(up, "one"));
    let mut node = Trellis::up(&ws, &config);
    let gateway = gateway_addr(&mut node);
    let control = node.control_addr();
    let client = reqwest::Client::new();

    let resp = client
        .get(format!("http://{gateway}/api/orders/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-config"], "one");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "upstream saw /orders/7");

    // The gateway's own errors are problem details, with a stable code.
    let resp = client
        .get(format!("http://{gateway}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "no_route");

    // Edit the file and send SIGHUP: the new route config takes over
    // without a restart.
    std::fs::write(&config, {
        let text = std::fs::read_to_string(&config).unwrap();
        text.replace("\"x-config\" = \"one\"", "\"x-config\" = \"two\"")
    })
    .unwrap();
    node.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client
            .get(format!("http://{gateway}/api/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        if resp.headers()["x-config"] == "two" {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let metrics = client
        .get(format!("http://{control}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("trellis_gateway_"),
        "gateway metrics missing: {metrics}"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1);

    // An upstream that follows the registry has nobody to send to yet.
    let status = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{gateway}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("/svc/a").await, 503);

    // The registry: register an instance, then discover it.
    let resp = client
        .put(format!(
            "http://{control}/v1/registry/services/orders/instances/orders-1"
        ))
        .json(&json!({"address": "127.0.0.1", "port": up.port(), "tags": ["v1"]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let resp = client
        .put(format!(
            "http://{control}/v1/registry/services/orders/instances/bad"
        ))
        .json(&json!({"address": "127.0.0.1", "port": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let found: Value = client
        .get(format!("http://{control}/v1/registry/services/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        found.to_string().contains("orders-1"),
        "instance missing: {found}"
    );

    // The gateway follows the registration by watch, and the deregistration.
    let eventually = |want: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = status("/svc/a").await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    eventually(200).await;
    let resp = client
        .delete(format!(
            "http://{control}/v1/registry/services/orders/instances/orders-1"
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    eventually(503).await;

    node.signal("TERM");
    let (exit, _) = node.wait_exit();
    assert!(exit.success(), "{exit:?}");
}

/// An instance whose active check fails is critical in the registry and
/// gets no traffic from the gateway that follows it; when the check passes
/// again, both agree it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_registry_agree_on_health() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let ok = flag.load(Ordering::SeqCst);
                async move {
                    if ok {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        )
        .fallback(|| async { "served" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let ws = Workspace::new();
    let config = ws.up_config(
        "",
        r#"
[registry]
min_check_interval = "100ms"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
name = "orders"
upstream = "orders"

[[upstreams]]
name = "orders"
service = "orders"
"#,
    );
    let mut node = Trellis::up(&ws, &config);
    let web = gateway_addr(&mut node);
    let control = node.control_addr();
    let client = reqwest::Client::new();
    let check = json!({"kind": "http", "path": "/health", "interval": "100ms", "timeout": "100ms",
                       "failure_threshold": 1, "success_threshold": 1});
    let resp = client
        .put(format!(
            "http://{control}/v1/registry/services/orders/instances/o-1"
        ))
        .json(&json!({"address": "127.0.0.1", "port": app_addr.port(), "check": check}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    // Both sides, polled until they say `want`.
    let agree = |want: &'static str| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status: Value = client
                    .get(format!(
                        "http://{control}/v1/registry/services/orders/instances/o-1"
                    ))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let routed = client
                    .get(format!("http://{web}/x"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                let gateway = if routed.is_success() {
                    "passing"
                } else {
                    "critical"
                };
                if status["status"] == want && gateway == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "want {want}: registry says {}, gateway answered {routed}",
                    status["status"]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    agree("passing").await;
    healthy.store(false, Ordering::SeqCst);
    agree("critical").await;
    healthy.store(true, Ordering::SeqCst);
    agree("passing").await;
}
