//! The layers in a real HTTP server (axum on hyper, 127.0.0.1:0) driven by a
//! real client: what a browser or API client sees over the wire.

mod common;

use axum::http::HeaderMap;
use axum::routing::get as get_route;
use axum::Router;
use common::*;
use jsonwebtoken::Algorithm;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceBuilder;
use trellis_auth::{AuthLayer, CorsConfig, CorsLayer, CorsPolicy, Identity};

#[tokio::test]
async fn over_the_wire() {
    let auth = authenticator(&format!(
        r#"
        [jwt]
        issuer = "{ISSUER}"
        audiences = ["{AUDIENCE}"]
        algorithms = ["HS256"]
        forward_claims = {{ sub = "x-user-id" }}
        keys = [{{ secret = "{SECRET}" }}]
        "#
    ))
    .await;
    let cors: CorsConfig = toml::from_str(
        "allowed_origins = [\"https://app.example.com\"]\nallowed_headers = [\"authorization\"]",
    )
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/whoami",
            get_route(
                move |headers: HeaderMap, identity: axum::Extension<Identity>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        format!(
                            "{} {}",
                            headers
                                .get("x-user-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                            identity.subject.clone().unwrap_or_default()
                        )
                    }
                },
            ),
        )
        .layer(
            ServiceBuilder::new()
                .layer(CorsLayer::new(CorsPolicy::from_config(&cors).unwrap()))
                .layer(AuthLayer::new(auth)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    // The real clock here: a token valid now.
    let mut now_claims = claims();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now_claims["exp"] = serde_json::json!(now + 300);
    let jwt = token(Algorithm::HS256, None, &hs_key(), &now_claims);

    let refused = client
        .get(format!("{base}/whoami"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "missing_credentials");

    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{base}/whoami"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let accepted = client
        .get(format!("{base}/whoami"))
        .bearer_auth(&jwt)
        .header("x-user-id", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(accepted.text().await.unwrap(), "user-42 user-42");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.abort();
}
