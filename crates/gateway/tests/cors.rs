//! CORS per route through the gateway: preflights answered by the gateway
//! itself (allowed: 204 with the CORS headers; refused: 403 problem+json
//! without them) and never forwarded; actual requests forwarded with CORS
//! headers for allowed origins (exact and wildcard-subdomain), none for
//! others, `Vary: Origin` on both; preflights need no credentials on a
//! route with auth, and the gateway's own errors are readable cross-origin.
mod common;

use common::*;
use std::sync::atomic::Ordering;

fn config(echo: &Echo) -> String {
    format!(
        r#"{LISTENER}
[[routes]]
name = "app"
upstream = "up"
match = {{ path_prefix = "/app" }}
cors = {{ allowed_origins = ["https://app.example.com", "https://*.example.org"], allowed_methods = ["GET", "PUT"], allowed_headers = ["x-token"], exposed_headers = ["x-upstream"], allow_credentials = true, max_age = "10m" }}

[[routes]]
name = "locked"
upstream = "up"
match = {{ path_prefix = "/locked" }}
cors = {{ allowed_origins = ["*"] }}
auth = {{ api_keys = {{ keys = [{{ id = "k", hash = "sha256:{}" }}] }} }}

[[routes]]
name = "plain"
upstream = "up"
match = {{ path_prefix = "/plain" }}

[[upstreams]]
name = "up"
endpoints = ["{}"]
"#,
        trellis_auth::hash_api_key("secret-key").trim_start_matches("sha256:"),
        echo.addr
    )
}

fn preflight(http: &reqwest::Client, url: String, origin: &str) -> reqwest::RequestBuilder {
    http.request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "X-Token")
}

#[tokio::test]
async fn allowed_preflights_are_answered_by_the_gateway() {
    let up = echo("up").await;
    let (gw, base) = start(&config(&up)).await;
    let http = client();
    for origin in ["https://app.example.com", "https://eu.shop.example.org"] {
        let resp = preflight(&http, format!("{base}/app/items"), origin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{origin}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-token");
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h["vary"].to_str().unwrap().contains("origin"));
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "a preflight must not reach the upstream"
    );
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn refused_preflights_are_403_problems_without_cors_headers() {
    let up = echo("up").await;
    let (gw, base) = start(&config(&up)).await;
    let http = client();
    let cases = [
        // Origin not listed; the apex of a wildcard; another scheme.
        ("https://evil.example.com", "PUT", "x-token"),
        ("https://example.org", "PUT", "x-token"),
        ("http://app.example.com", "PUT", "x-token"),
        // Allowed origin, but a method or header the policy does not allow.
        ("https://app.example.com", "DELETE", "x-token"),
        ("https://app.example.com", "PUT", "x-secret"),
    ];
    for (origin, method, header) in cases {
        let resp = http
            .request(reqwest::Method::OPTIONS, format!("{base}/app/items"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{origin} {method} {header}");
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/problem+json");
        assert!(h["vary"].to_str().unwrap().contains("origin"));
        for name in [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-credentials",
        ] {
            assert!(!h.contains_key(name), "{name} on a refused preflight");
        }
        assert_eq!(json(resp).await["code"], "cors_rejected");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn actual_requests_get_cors_headers_only_for_allowed_origins() {
    let up = echo("up").await;
    let (gw, base) = start(&config(&up)).await;
    let http = client();

    let resp = http
        .get(format!("{base}/app/items"))
        .header("origin", "https://a.b.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://a.b.example.org");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-upstream");
    assert_eq!(h["vary"], "origin");
    // The Origin header still reaches the upstream.
    let body = json(resp).await;
    assert_eq!(body["headers"]["origin"], "https://a.b.example.org");

    // CORS is not access control: the request is served, but the browser
    // gets no permission to read it.
    let resp = http
        .get(format!("{base}/app/items"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(!h.contains_key("access-control-allow-credentials"));
    assert_eq!(h["vary"], "origin");

    // Same-origin requests (no Origin) and routes without a policy are untouched.
    let resp = http.get(format!("{base}/app/items")).send().await.unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    assert!(!resp.headers().contains_key("vary"));
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("{base}/plain/x"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "no policy: the upstream answers OPTIONS"
    );
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    assert_eq!(up.hits.load(Ordering::SeqCst), 4);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn preflights_need_no_credentials_and_refusals_are_readable() {
    let up = echo("up").await;
    let (gw, base) = start(&config(&up)).await;
    let http = client();
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("{base}/locked/x"))
        .header("origin", "https://anywhere.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    // The 401 of a request without a key carries CORS headers, so the page
    // can read why it was refused.
    let resp = http
        .get(format!("{base}/locked/x"))
        .header("origin", "https://anywhere.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = http
        .get(format!("{base}/locked/x"))
        .header("origin", "https://anywhere.test")
        .header("x-api-key", "secret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    gw.shutdown(std::time::Duration::from_secs(1)).await;
}
