//! Operations: hot reload under load with zero failed requests, refused
//! reloads, graceful shutdown, metrics and the JSON access log.
mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trellis_gateway::Gateway;

fn two_upstreams(route_to: &str, a: &Echo, b: &Echo) -> String {
    format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"{route_to}\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[upstreams]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_no_request() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (gw, base) = start(&two_upstreams("a", &a, &b)).await;
    let gw = Arc::new(gw);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, base) = (stop.clone(), ok.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http.get(format!("{base}/x")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let to = if i % 2 == 0 { "b" } else { "a" };
        gw.reload(parse(&two_upstreams(to, &a, &b))).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load was too light to mean anything"
    );
    assert!(a.hits.load(Ordering::Relaxed) > 0 && b.hits.load(Ordering::Relaxed) > 0);
    // The last reload pointed at "a".
    let resp = client().get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "a");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn invalid_reloads_are_refused_and_the_old_config_keeps_serving() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (gw, base) = start(&two_upstreams("a", &a, &b)).await;
    let err = gw
        .reload(parse(&two_upstreams("missing", &a, &b)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].upstream: unknown upstream \"missing\""),
        "{err}"
    );
    let moved = two_upstreams("b", &a, &b).replace("127.0.0.1:0", "127.0.0.1:1");
    let err = gw.reload(parse(&moved)).await.unwrap_err().to_string();
    assert!(err.contains("listeners cannot be"), "{err}");
    let resp = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "a");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unchanged_upstreams_survive_a_reload_with_their_endpoints() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (gw, base) = start(&two_upstreams("a", &a, &b)).await;
    // The registry moved upstream "a" to b's address.
    gw.upstream("a")
        .unwrap()
        .set_endpoints([(b.addr.to_string(), 1)]);
    let cfg = two_upstreams("a", &a, &b).replace("name = \"r\"", "name = \"renamed\"");
    gw.reload(parse(&cfg)).await.unwrap();
    let resp = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        resp.headers()["x-upstream"],
        "b",
        "the fed endpoint set was kept"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops_listening() {
    let slow = serve(axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "finished"
    }))
    .await;
    let cfg = format!("{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"s\"\n[[upstreams]]\nname = \"s\"\nendpoints = [\"{slow}\"]\n");
    let (gw, base) = start(&cfg).await;
    let addr = gw.local_addr("main").unwrap();
    let in_flight = tokio::spawn({
        let base = base.clone();
        async move {
            client()
                .get(format!("{base}/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown(Duration::from_secs(5)).await;
    assert_eq!(in_flight.await.unwrap(), "finished");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status() {
    let a = echo("a").await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"users\"\nupstream = \"a\"\nmatch = {{ path_prefix = \"/users\" }}\n[[upstreams]]\nname = \"a\"\nendpoints = [\"{}\"]\n",
        a.addr
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let gw = Gateway::start(parse(&cfg), &mut registry).await.unwrap();
    let base = format!("http://{}", gw.local_addr("main").unwrap());
    for _ in 0..3 {
        client()
            .get(format!("{base}/users/1"))
            .send()
            .await
            .unwrap();
    }
    client().get(format!("{base}/nope")).send().await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"trellis_gateway_requests_total{route="users",upstream="a",status="2xx"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"trellis_gateway_request_duration_seconds_count{route="users",upstream="a"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"trellis_gateway_open_connections{listener="main"}"#),
        "{text}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_request_gets_a_json_access_log_line() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .with_env_filter("trellis::access=info")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let a = echo("a").await;
    let cfg = format!("{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"a\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"{}\"]\n", a.addr);
    let (gw, base) = start(&cfg).await;
    client()
        .get(format!("{base}/logged?secret=1"))
        .header("x-request-id", "log-1")
        .send()
        .await
        .unwrap();
    gw.shutdown(Duration::from_secs(1)).await;
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("log-1"))
        .unwrap_or_else(|| panic!("no access line in {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["target"], "trellis::access");
    let f = &v["fields"];
    assert_eq!(f["route"], "r");
    assert_eq!(f["status"], 200);
    assert_eq!(
        f["path"], "/logged",
        "the query string stays out of the log"
    );
    assert_eq!(f["method"], "GET");
}
