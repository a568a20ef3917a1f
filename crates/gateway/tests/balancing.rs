//! Each load-balancing policy's distribution over real upstreams, consistent
//! hashing's stickiness, outlier ejection and recovery, and active health checks.
mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn upstream_cfg(policy: &str, endpoints: &[String], extra: &str) -> String {
    format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\nendpoints = [{}]\nload_balancer = {{ policy = \"{policy}\" {extra} }}\n",
        endpoints.join(", ")
    )
}

fn quoted(e: &Echo) -> String {
    format!("\"{}\"", e.addr)
}

async fn tally(base: &str, n: usize, header: Option<(&str, String)>) -> HashMap<String, usize> {
    let http = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut req = http.get(format!("{base}/"));
        if let Some((k, v)) = &header {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        *seen
            .entry(resp.headers()["x-upstream"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let (gw, base) = start(&upstream_cfg(
        "round_robin",
        &[quoted(&a), quoted(&b), quoted(&c)],
        "",
    ))
    .await;
    let seen = tally(&base, 30, None).await;
    assert_eq!(
        seen,
        HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn weighted_follows_the_weights() {
    let (a, b) = (echo("a").await, echo("b").await);
    let eps = [
        format!("{{ address = \"{}\", weight = 3 }}", a.addr),
        format!("{{ address = \"{}\", weight = 1 }}", b.addr),
    ];
    let (gw, base) = start(&upstream_cfg("weighted", &eps, "")).await;
    let seen = tally(&base, 40, None).await;
    assert_eq!(seen, HashMap::from([("a".into(), 30), ("b".into(), 10)]));
    gw.shutdown(Duration::from_secs(1)).await;
}

/// An upstream that holds `/hang` requests until released, and echoes the rest.
async fn hanging(name: &'static str, release: Arc<tokio::sync::Notify>) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/hang",
            axum::routing::get(move || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    ([("x-upstream", name)], "released")
                }
            }),
        )
        .fallback(move || async move { ([("x-upstream", name)], "ok") });
    serve(app).await
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let release = Arc::new(tokio::sync::Notify::new());
    let a = hanging("a", release.clone()).await;
    let b = hanging("b", release.clone()).await;
    let (gw, base) = start(&upstream_cfg(
        "least_request",
        &[format!("\"{a}\""), format!("\"{b}\"")],
        "",
    ))
    .await;
    let http = client();
    let hung = tokio::spawn({
        let http = http.clone();
        let base = base.clone();
        async move { http.get(format!("{base}/hang")).send().await.unwrap() }
    });
    // Wait until the hanging request is in flight at one endpoint.
    let up = gw.upstream("u").unwrap();
    while up
        .endpoints()
        .endpoints()
        .iter()
        .all(|e| e.outstanding() == 0)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = up
        .endpoints()
        .endpoints()
        .iter()
        .find(|e| e.outstanding() == 1)
        .unwrap()
        .address()
        .to_owned();
    let busy_name = if busy == a.to_string() { "a" } else { "b" };
    let seen = tally(&base, 20, None).await;
    assert_eq!(
        seen.get(busy_name),
        None,
        "busy endpoint {busy_name} got traffic: {seen:?}"
    );
    release.notify_waiters();
    assert_eq!(hung.await.unwrap().headers()["x-upstream"], busy_name);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn ewma_prefers_the_faster_endpoint() {
    let slow = serve(axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        ([("x-upstream", "slow")], "ok")
    }))
    .await;
    let fast =
        serve(axum::Router::new().fallback(|| async { ([("x-upstream", "fast")], "ok") })).await;
    let (gw, base) = start(&upstream_cfg(
        "ewma",
        &[format!("\"{slow}\""), format!("\"{fast}\"")],
        "",
    ))
    .await;
    let seen = tally(&base, 40, None).await;
    // Untried endpoints cost nothing, so the slow one is tried, learnt, and avoided.
    assert!(seen.get("slow").copied().unwrap_or(0) <= 3, "{seen:?}");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn consistent_hashing_keeps_keys_on_their_shard() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let (gw, base) = start(&upstream_cfg(
        "consistent_hash",
        &[quoted(&a), quoted(&b), quoted(&c)],
        ", hash_on = { header = \"x-user\" }",
    ))
    .await;
    let mut placement = HashMap::new();
    for k in 0..60 {
        let seen = tally(&base, 3, Some(("x-user", format!("user-{k}")))).await;
        assert_eq!(seen.len(), 1, "key user-{k} went to {seen:?}");
        placement.insert(k, seen.into_keys().next().unwrap());
    }
    let per_shard = placement
        .values()
        .fold(HashMap::<&str, usize>::new(), |mut m, s| {
            *m.entry(s.as_str()).or_default() += 1;
            m
        });
    assert_eq!(per_shard.len(), 3, "every shard holds keys: {per_shard:?}");
    // Take shard "c" away: only its keys move.
    let up = gw.upstream("u").unwrap();
    up.set_endpoints([(a.addr.to_string(), 1), (b.addr.to_string(), 1)]);
    for (k, shard) in &placement {
        let seen = tally(&base, 1, Some(("x-user", format!("user-{k}")))).await;
        let now = seen.into_keys().next().unwrap();
        if shard != "c" {
            assert_eq!(&now, shard, "key user-{k} moved although its shard stayed");
        } else {
            assert_ne!(now, "c");
        }
    }
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn hashing_on_cookie_and_path_segment_is_sticky() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let eps = [quoted(&a), quoted(&b), quoted(&c)];
    let (gw, base) = start(&upstream_cfg(
        "consistent_hash",
        &eps,
        ", hash_on = { cookie = \"sid\" }",
    ))
    .await;
    for k in 0..10 {
        let seen = tally(&base, 4, Some(("cookie", format!("theme=dark; sid=s{k}")))).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
    gw.shutdown(Duration::from_secs(1)).await;
    let (gw, base) = start(&upstream_cfg(
        "consistent_hash",
        &eps,
        ", hash_on = { path_segment = 1 }",
    ))
    .await;
    let http = client();
    for tenant in ["acme", "globex", "initech"] {
        let mut shards = std::collections::HashSet::new();
        for tail in ["x", "y", "z"] {
            let resp = http
                .get(format!("{base}/tenants/{tenant}/{tail}"))
                .send()
                .await
                .unwrap();
            shards.insert(resp.headers()["x-upstream"].to_str().unwrap().to_owned());
        }
        assert_eq!(shards.len(), 1, "tenant {tenant}: {shards:?}");
    }
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn failing_endpoints_are_ejected_from_live_traffic() {
    let good = echo("good").await;
    let bad = serve(
        axum::Router::new()
            .fallback(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    )
    .await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{}\", \"{bad}\"]\noutlier_detection = {{ consecutive_failures = 3, base_ejection_time = \"1m\", max_ejection_percent = 50 }}\n",
        good.addr
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let mut failures = 0;
    for _ in 0..40 {
        if http.get(format!("{base}/")).send().await.unwrap().status() == 500 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "the bad endpoint was ejected after 3 failures in a row"
    );
    assert_eq!(gw.upstream("u").unwrap().ejected_count(), 1);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let flaky = serve(
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let ok = flag.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            http::StatusCode::OK
                        } else {
                            http::StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            )
            .fallback(|| async { ([("x-upstream", "flaky")], "ok") }),
    )
    .await;
    let steady = echo("steady").await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{flaky}\", \"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"30ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
        steady.addr
    );
    let (gw, base) = start(&cfg).await;
    let up = gw.upstream("u").unwrap();
    let flaky_state = |up: &trellis_gateway::upstream::Upstream| {
        up.endpoints()
            .endpoints()
            .iter()
            .find(|e| e.address() == flaky.to_string())
            .unwrap()
            .is_healthy()
    };
    let wait_for = |want: bool| {
        let up = up.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while flaky_state(&up) != want {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("health state did not change in time")
        }
    };
    healthy.store(false, Ordering::SeqCst);
    wait_for(false).await;
    let seen = tally(&base, 10, None).await;
    assert_eq!(seen, HashMap::from([("steady".into(), 10)]));
    healthy.store(true, Ordering::SeqCst);
    wait_for(true).await;
    let seen = tally(&base, 10, None).await;
    assert_eq!(seen.get("flaky"), Some(&5));
    gw.shutdown(Duration::from_secs(1)).await;
}
