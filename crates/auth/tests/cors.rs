//! CORS per route: preflights answered by the layer (allowed: 204 with the
//! CORS headers; refused: 403) without reaching the upstream; simple
//! requests from allowed origins get the headers, others pass without them;
//! and CORS wraps auth so preflights need no credentials while 401s stay
//! readable by the page.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use tower::{Layer, ServiceBuilder};
use trellis_auth::{AuthLayer, CorsConfig, CorsLayer, CorsPolicy};

fn policy(text: &str) -> CorsPolicy {
    let config: CorsConfig = toml::from_str(text).unwrap();
    CorsPolicy::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
}

const APP: &str = r#"
    allowed_origins = ["https://app.example.com", "https://*.shop.example"]
    allowed_methods = ["GET", "POST", "DELETE"]
    allowed_headers = ["authorization", "x-request-id"]
    exposed_headers = ["x-trace-id"]
    allow_credentials = true
    max_age = "10m"
"#;

fn preflight(origin: &str, method: &str, headers: &str) -> Request<Full<bytes::Bytes>> {
    let mut builder = Request::builder()
        .method("OPTIONS")
        .uri("/orders")
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        builder = builder.header("access-control-request-headers", headers);
    }
    builder.body(Full::default()).unwrap()
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_layer() {
    let upstream = Upstream::default();
    let service = CorsLayer::new(policy(APP)).layer(upstream.service());
    let answer = send(
        service,
        preflight(
            "https://app.example.com",
            "DELETE",
            "Authorization, X-Request-Id",
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let h = &answer.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, x-request-id"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("origin"));
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn wildcard_subdomains_match_subdomains_only() {
    let p = policy(APP);
    assert!(p.allows_origin("https://eu.shop.example"));
    assert!(p.allows_origin("https://a.b.shop.example"));
    assert!(p.allows_origin("HTTPS://EU.SHOP.EXAMPLE"));
    for refused in [
        "https://shop.example",
        "http://eu.shop.example",
        "https://evilshop.example",
        "https://eu.shop.example.evil.test",
        "https://eu.shop.example:8443",
        "https://app.example.com.evil.test",
        "null",
    ] {
        assert!(!p.allows_origin(refused), "{refused}");
    }
}

#[tokio::test]
async fn a_preflight_that_is_not_allowed_is_refused_without_cors_headers() {
    for (origin, method, headers) in [
        ("https://evil.example", "GET", ""),
        ("https://app.example.com", "PATCH", ""),
        ("https://app.example.com", "POST", "x-admin-override"),
    ] {
        let upstream = Upstream::default();
        let service = CorsLayer::new(policy(APP)).layer(upstream.service());
        let answer = send(service, preflight(origin, method, headers)).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{origin} {method} {headers}"
        );
        assert!(!answer.headers.contains_key("access-control-allow-origin"));
        assert_eq!(upstream.calls(), 0);
    }
}

#[tokio::test]
async fn simple_requests_get_cors_headers_only_for_allowed_origins() {
    let upstream = Upstream::default();
    let service = CorsLayer::new(policy(APP)).layer(upstream.service());
    let request = get("/orders")
        .header("origin", "https://eu.shop.example")
        .body(Full::default())
        .unwrap();
    let answer = send(service.clone(), request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "upstream says hi");
    // The upstream's own header is replaced by the route's policy.
    assert_eq!(
        answer
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect::<Vec<_>>(),
        ["https://eu.shop.example"]
    );
    assert_eq!(
        answer.headers["access-control-expose-headers"],
        "x-trace-id"
    );
    assert_eq!(answer.headers["vary"], "origin");

    let request = get("/orders")
        .header("origin", "https://evil.example")
        .body(Full::default())
        .unwrap();
    let answer = send(service.clone(), request).await;
    assert_eq!(
        answer.status, 200,
        "CORS is not access control: the request is still served"
    );
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));
    assert_eq!(answer.headers["vary"], "origin");

    // Same-origin requests (no Origin header) are left alone.
    let answer = send(service, get("/orders").body(Full::default()).unwrap()).await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://upstream.invalid"
    );
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn any_origin_without_credentials_answers_star() {
    let upstream = Upstream::default();
    let service = CorsLayer::new(policy(
        r#"allowed_origins = ["*"]
allowed_headers = ["*"]
allowed_methods = ["*"]"#,
    ))
    .layer(upstream.service());
    let answer = send(
        service.clone(),
        preflight("https://anyone.example", "PUT", "x-custom, content-type"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.headers["access-control-allow-origin"], "*");
    assert_eq!(answer.headers["access-control-allow-methods"], "PUT");
    assert_eq!(
        answer.headers["access-control-allow-headers"],
        "x-custom, content-type"
    );
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));
    let request = get("/")
        .header("origin", "https://anyone.example")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(service, request).await.headers["access-control-allow-origin"],
        "*"
    );
}

#[tokio::test]
async fn cors_outside_auth_preflights_need_no_credentials_and_401s_are_readable() {
    let auth = authenticator(&format!(
        "[jwt]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]"
    ))
    .await;
    let upstream = Upstream::default();
    let service = ServiceBuilder::new()
        .layer(CorsLayer::new(policy(APP)))
        .layer(AuthLayer::new(auth))
        .service(upstream.service());

    let answer = send(
        service.clone(),
        preflight("https://app.example.com", "GET", "authorization"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);

    let request = get("/orders")
        .header("origin", "https://app.example.com")
        .body(Full::default())
        .unwrap();
    let answer = send(service.clone(), request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(answer.code(), "missing_credentials");
    assert_eq!(upstream.calls(), 0);

    let request = get("/orders")
        .header("origin", "https://app.example.com")
        .header(
            "authorization",
            format!(
                "Bearer {}",
                token(Algorithm::HS256, None, &hs_key(), &claims())
            ),
        )
        .body(Full::default())
        .unwrap();
    let answer = send(service, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.calls(), 1);
}

#[test]
fn cors_config_errors_name_the_key() {
    let cases = [
        (
            r#"allowed_origins = ["*"]
allow_credentials = true"#,
            "allowed_origins[0]",
            "cannot be combined",
        ),
        (
            r#"allowed_origins = ["https://app.example.com/"]"#,
            "allowed_origins[0]",
            "no path or trailing slash",
        ),
        (
            r#"allowed_origins = ["app.example.com"]"#,
            "allowed_origins[0]",
            "not an origin",
        ),
        (
            r#"allowed_origins = ["https://app.*.example.com"]"#,
            "allowed_origins[0]",
            "first label",
        ),
        (
            r#"allowed_origins = ["https://*.com"]"#,
            "allowed_origins[0]",
            "subdomains of a domain",
        ),
        (r#"allowed_origins = []"#, "allowed_origins", "at least one"),
        (
            r#"allowed_origins = ["*"]
allowed_methods = ["GE T"]"#,
            "allowed_methods[0]",
            "not an HTTP method",
        ),
        (
            r#"allowed_origins = ["*"]
allowed_headers = ["bad header"]"#,
            "allowed_headers[0]",
            "not a valid header name",
        ),
    ];
    for (text, path, message) in cases {
        let config: CorsConfig = toml::from_str(text).unwrap();
        let errors = config.validate().unwrap_err();
        let error = &errors.errors()[0];
        assert_eq!(error.path, path, "{text}");
        assert!(error.message.contains(message), "{text}: {error}");
    }
    let unknown = toml::from_str::<CorsConfig>("allowed_origins = [\"*\"]\nallow_origin = [\"x\"]");
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
}
