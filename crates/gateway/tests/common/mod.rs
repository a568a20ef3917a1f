//! Shared test fixtures: real upstream servers on 127.0.0.1:0 and a gateway
//! started from a TOML snippet.
#![allow(dead_code)]

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use trellis_gateway::{Gateway, GatewayConfig, GatewayHandle};

/// An upstream that answers every request with JSON describing it and its own name.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

pub async fn echo(name: &str) -> Echo {
    let hits = Arc::new(AtomicUsize::new(0));
    let name = name.to_owned();
    let h = hits.clone();
    let app = Router::new().fallback(move |req: Request| {
        let name = name.clone();
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body_len = axum::body::to_bytes(body, usize::MAX)
                .await
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            let req = Request::from_parts(parts, ());
            // Repeated headers are joined with ", " so a test sees every value.
            let mut headers = serde_json::Map::new();
            for k in req.headers().keys() {
                let all: Vec<&str> = req
                    .headers()
                    .get_all(k)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?"))
                    .collect();
                headers.insert(
                    k.as_str().to_owned(),
                    serde_json::Value::from(all.join(", ")),
                );
            }
            let body = serde_json::json!({
                "upstream": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
                "body_len": body_len,
            });
            (
                [
                    ("x-upstream", name.clone()),
                    ("x-internal", "secret".to_owned()),
                ],
                axum::Json(body),
            )
                .into_response()
        }
    });
    let addr = serve(app).await;
    Echo { addr, hits }
}

/// Serves an axum router on a random loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

pub fn parse(toml_text: &str) -> GatewayConfig {
    let de = toml::Deserializer::new(toml_text);
    serde_path_to_error::deserialize(de).unwrap_or_else(|e| panic!("config: {e}"))
}

/// Starts a gateway from `toml_text` with one listener named "main" on a random port.
pub async fn start(toml_text: &str) -> (GatewayHandle, String) {
    let mut registry = prometheus_client::registry::Registry::default();
    let gw = Gateway::start(parse(toml_text), &mut registry)
        .await
        .unwrap();
    let addr = gw.local_addr("main").unwrap();
    (gw, format!("http://{addr}"))
}

pub const LISTENER: &str = r#"
[[listeners]]
name = "main"
bind = "127.0.0.1:0"
"#;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.unwrap()
}
