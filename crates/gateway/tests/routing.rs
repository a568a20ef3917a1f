//! Routing precedence, rewrites, header rules, forwarding headers and the
//! gateway's own problem responses, against real upstreams.
mod common;

use common::*;

async fn four_upstreams() -> (Echo, Echo, Echo, Echo) {
    (
        echo("a").await,
        echo("b").await,
        echo("c").await,
        echo("d").await,
    )
}

fn upstreams(list: &[(&str, &Echo)]) -> String {
    list.iter()
        .map(|(n, e)| {
            format!(
                "[[upstreams]]\nname = \"{n}\"\nendpoints = [\"{}\"]\n",
                e.addr
            )
        })
        .collect()
}

#[tokio::test]
async fn routes_follow_the_documented_precedence() {
    let (a, b, c, d) = four_upstreams().await;
    let cfg = format!(
        r#"{LISTENER}
        [[routes]]
        name = "catch-all"
        upstream = "a"
        [[routes]]
        name = "regex"
        upstream = "b"
        match = {{ path_regex = "/api/v[0-9]+/.*" }}
        [[routes]]
        name = "short-prefix"
        upstream = "b"
        match = {{ path_prefix = "/api" }}
        [[routes]]
        name = "long-prefix"
        upstream = "c"
        match = {{ path_prefix = "/api/v1" }}
        [[routes]]
        name = "exact"
        upstream = "d"
        match = {{ path = "/api/v1/health" }}
        [[routes]]
        name = "post-only"
        upstream = "a"
        match = {{ path_prefix = "/api/v1", methods = ["POST"] }}
        [[routes]]
        name = "wildcard-host"
        upstream = "c"
        match = {{ host = "*.example.com" }}
        [[routes]]
        name = "exact-host"
        upstream = "d"
        match = {{ host = "api.example.com", path_prefix = "/x" }}
        [[routes]]
        name = "header-and-query"
        upstream = "d"
        match = {{ path_prefix = "/api", headers = [{{ name = "x-canary", value = "1" }}], query = [{{ name = "debug" }}] }}
        {}"#,
        upstreams(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)])
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let who = |path: &'static str, host: Option<&'static str>, method: reqwest::Method| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let mut req = http.request(method, format!("{base}{path}"));
            if let Some(h) = host {
                req = req.header("host", h);
            }
            let resp = req.send().await.unwrap();
            resp.headers()["x-upstream"].to_str().unwrap().to_owned()
        }
    };
    use reqwest::Method;
    assert_eq!(
        who("/api/v1/health", None, Method::GET).await,
        "d",
        "exact beats prefixes"
    );
    assert_eq!(
        who("/api/v1/users", None, Method::GET).await,
        "c",
        "longest prefix wins"
    );
    assert_eq!(
        who("/api/v1/users", None, Method::POST).await,
        "a",
        "more conditions win at equal path rank"
    );
    assert_eq!(
        who("/api/v2/users", None, Method::GET).await,
        "b",
        "prefix beats regex"
    );
    assert_eq!(
        who("/apix", None, Method::GET).await,
        "a",
        "prefixes match on segment boundaries"
    );
    assert_eq!(who("/other", None, Method::GET).await, "a", "catch-all");
    assert_eq!(
        who("/x/1", Some("API.example.com:8080"), Method::GET).await,
        "d",
        "exact host, any case and port"
    );
    assert_eq!(
        who("/y", Some("api.example.com"), Method::GET).await,
        "c",
        "falls through to the wildcard host"
    );
    assert_eq!(
        who("/y", Some("deep.shop.example.com"), Method::GET).await,
        "c",
        "wildcard spans labels"
    );
    assert_eq!(
        who("/y", Some("example.com"), Method::GET).await,
        "a",
        "wildcard needs a label"
    );
    let resp = http
        .get(format!("{base}/api/x?debug"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-upstream"],
        "d",
        "header and query conditions"
    );
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn rewrites_and_header_rules_apply_both_ways() {
    let a = echo("a").await;
    let cfg = format!(
        r#"{LISTENER}
        [[routes]]
        name = "strip"
        upstream = "a"
        match = {{ path_prefix = "/strip" }}
        rewrite = {{ strip_prefix = true }}
        [[routes]]
        name = "replace"
        upstream = "a"
        match = {{ path_prefix = "/old/" }}
        rewrite = {{ replace_prefix = "/new" }}
        request_headers = {{ set = {{ "x-env" = "prod" }}, add = {{ "x-tag" = "gw" }}, remove = ["x-drop"] }}
        response_headers = {{ remove = ["x-internal"], set = {{ "cache-control" = "no-store" }} }}
        {}"#,
        upstreams(&[("a", &a)])
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let body = json(
        http.get(format!("{base}/strip/users/7?q=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["uri"], "/users/7?q=1");
    let body = json(http.get(format!("{base}/strip")).send().await.unwrap()).await;
    assert_eq!(body["uri"], "/");
    let resp = http
        .get(format!("{base}/old/items"))
        .header("x-drop", "1")
        .header("x-env", "dev")
        .header("x-tag", "client")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("x-internal").is_none());
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = json(resp).await;
    assert_eq!(body["uri"], "/new/items");
    assert_eq!(body["headers"]["x-env"], "prod");
    assert!(body["headers"].get("x-drop").is_none());
    assert_eq!(
        body["headers"]["x-tag"], "client, gw",
        "add appends: {body}"
    );
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn forwarding_headers_request_id_and_traceparent() {
    let a = echo("a").await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstreams(&[("a", &a)])
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let resp = http
        .get(format!("{base}/p"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let h = json(resp).await["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"shop.example.com\""
    );
    assert_eq!(h["host"], "shop.example.com", "the client's Host is kept");
    assert!(h.get("x-hop").is_none() && h.get("proxy-authorization").is_none());
    assert_eq!(h["x-request-id"], generated.as_str());
    assert_eq!(generated.len(), 32);
    let tp = h["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");

    let tp_in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = http
        .get(format!("{base}/p"))
        .header("x-request-id", "abc-123")
        .header("traceparent", tp_in)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let h = json(resp).await["headers"].clone();
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(h["traceparent"], tp_in);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn gateway_errors_are_problem_details_or_grpc_statuses() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        r#"{LISTENER}
        [[routes]]
        name = "dead"
        upstream = "dead"
        match = {{ path_prefix = "/dead" }}
        [[routes]]
        name = "empty"
        upstream = "empty"
        match = {{ path_prefix = "/empty" }}
        [[upstreams]]
        name = "dead"
        endpoints = ["{dead}"]
        [[upstreams]]
        name = "empty"
        "#
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let resp = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let p = json(resp).await;
    assert_eq!(p["code"], "no_route");
    assert_eq!(p["status"], 404);
    assert_eq!(p["request_id"], id.as_str());

    for path in ["/dead", "/empty"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 503, "{path}");
        let text = resp.text().await.unwrap();
        let p: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["code"], "upstream_unavailable");
        assert!(
            !text.contains("127.0.0.1") && !text.contains("refused"),
            "no internals: {text}"
        );
    }

    let resp = http
        .post(format!("{base}/dead/svc.Method"))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn timeouts_answer_504_and_deadline_exceeded() {
    let slow = serve(axum::Router::new().fallback(|| async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        "late"
    }))
    .await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"slow\"\nupstream = \"slow\"\ntimeout = \"100ms\"\n[[upstreams]]\nname = \"slow\"\nendpoints = [\"{slow}\"]\n"
    );
    let (gw, base) = start(&cfg).await;
    let http = client();
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(json(resp).await["code"], "upstream_timeout");
    let resp = http
        .post(format!("{base}/svc/M"))
        .header("content-type", "application/grpc+proto")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "4");
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}
