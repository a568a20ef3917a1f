//! Per-route policies from the pattern crates, observed over HTTP: API-key
//! auth, rate limiting with RateLimit headers, bulkhead, circuit breaker.
mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;

fn route_with(policy: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n{policy}\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{upstream}\"]\n"
    )
}

#[tokio::test]
async fn api_keys_guard_the_route_and_never_reach_the_upstream() {
    let a = echo("a").await;
    let hash = trellis_auth::hash_api_key("s3cret-key");
    let policy = format!(
        "auth = {{ api_keys = {{ forward_id_header = \"x-key-id\", keys = [{{ id = \"shop\", hash = \"{hash}\" }}] }} }}"
    );
    let (gw, base) = start(&route_with(&policy, a.addr)).await;
    let http = client();
    let resp = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(format!("{base}/x"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let resp = http
        .get(format!("{base}/x"))
        .header("x-api-key", "s3cret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = json(resp).await["headers"].clone();
    assert_eq!(h["x-key-id"], "shop");
    assert!(
        h.get("x-api-key").is_none(),
        "the key itself is not forwarded"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn rate_limited_requests_get_429_with_ratelimit_headers() {
    let a = echo("a").await;
    let policy = "rate_limit = { requests = 3, per = \"1m\", key = \"header:x-client\" }";
    let (gw, base) = start(&route_with(policy, a.addr)).await;
    let http = client();
    for _ in 0..3 {
        let resp = http
            .get(format!("{base}/"))
            .header("x-client", "one")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = http
        .get(format!("{base}/"))
        .header("x-client", "one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let h = resp.headers().clone();
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one request every 20 s: {retry_after}"
    );
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(h.contains_key("ratelimit-policy") && h.contains_key("ratelimit-reset"));
    assert_eq!(json(resp).await["code"], "rate_limited");
    let other = http
        .get(format!("{base}/"))
        .header("x-client", "two")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "another key has its own budget");
    let grpc = http
        .post(format!("{base}/svc/M"))
        .header("x-client", "one")
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(grpc.headers()["grpc-status"], "8");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_full_bulkhead_refuses_with_503() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let up = serve(axum::Router::new().fallback(move || {
        let r = r.clone();
        async move {
            r.notified().await;
            "done"
        }
    }))
    .await;
    let (gw, base) = start(&route_with("bulkhead = { max_concurrent = 1 }", up)).await;
    let first = tokio::spawn({
        let base = base.clone();
        async move {
            client()
                .get(format!("{base}/"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Wait until the first request holds the only slot.
    let upstream = gw.upstream("u").unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while upstream.endpoints().endpoints()[0].outstanding() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let resp = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let refused = json(resp).await;
    assert_eq!(refused["code"], "upstream_overloaded");
    release.notify_one();
    assert_eq!(first.await.unwrap(), 200);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_open_breaker_fails_fast_with_circuit_open() {
    let failing =
        serve(axum::Router::new().fallback(|| async { (http::StatusCode::BAD_GATEWAY, "down") }))
            .await;
    let policy = "breaker = { minimum_calls = 4, failure_rate_percent = 50, window = \"10s\", open_for = \"1m\" }";
    let (gw, base) = start(&route_with(policy, failing)).await;
    let http = client();
    for _ in 0..4 {
        assert_eq!(
            http.get(format!("{base}/")).send().await.unwrap().status(),
            502
        );
    }
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(json(resp).await["code"], "circuit_open");
    let grpc = http
        .post(format!("{base}/svc/M"))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(
        grpc.headers()["grpc-status"],
        "14",
        "an open breaker is UNAVAILABLE"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}
