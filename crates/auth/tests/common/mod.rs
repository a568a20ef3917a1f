//! Shared test helpers: fixture keys, token minting, an inner service that
//! records what reached it, and a way to send one request through a layer.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tower::{Layer, Service, ServiceExt};
use trellis_auth::{AuthConfig, AuthLayer, Authenticator, Identity, UnixClock};

pub const NOW: u64 = 1_700_000_000;
pub const SECRET: &str = "an-hs256-secret-that-is-at-least-32-bytes-long";
pub const ISSUER: &str = "https://id.example.test/";
pub const AUDIENCE: &str = "orders-api";

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap()
}

pub fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).unwrap()
}

pub fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap()
}

pub fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

/// Claims valid at `NOW` for `ISSUER` and `AUDIENCE`.
pub fn claims() -> Value {
    json!({
        "sub": "user-42",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "exp": NOW + 300,
        "tenant": "acme",
        "roles": ["admin", "billing"],
    })
}

pub fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS document holding the public halves of `keys`.
pub fn jwks(keys: &[(&str, &EncodingKey, Algorithm)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, key, alg)| {
            let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

/// A clock fixed at `NOW` that tests can move.
pub fn test_clock() -> (UnixClock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(NOW));
    let handle = now.clone();
    (
        UnixClock::from_fn(move || handle.load(Ordering::SeqCst)),
        now,
    )
}

pub fn auth_config(toml_text: &str) -> AuthConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("config does not parse: {e}"))
}

pub async fn authenticator(toml_text: &str) -> Arc<Authenticator> {
    let (clock, _) = test_clock();
    Arc::new(
        Authenticator::from_config(&auth_config(toml_text))
            .await
            .unwrap_or_else(|e| panic!("config refused: {e}"))
            .with_clock(clock),
    )
}

/// One request as the inner service saw it: headers, URI, identity.
pub type Seen = (HeaderMap, String, Option<Identity>);

/// What reached the inner service.
#[derive(Clone, Default)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .expect("upstream was not called")
            .0
            .clone()
    }

    pub fn last_uri(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .expect("upstream was not called")
            .1
            .clone()
    }

    pub fn last_identity(&self) -> Option<Identity> {
        self.seen
            .lock()
            .unwrap()
            .last()
            .expect("upstream was not called")
            .2
            .clone()
    }

    pub fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let seen = self.seen.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((
                    request.headers().clone(),
                    request.uri().to_string(),
                    request.extensions().get::<Identity>().cloned(),
                ));
                let mut response =
                    Response::new(Full::new(Bytes::from_static(b"upstream says hi")));
                response.headers_mut().insert(
                    "access-control-allow-origin",
                    "https://upstream.invalid".parse().unwrap(),
                );
                Ok::<_, Infallible>(response)
            }
        })
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

pub async fn send<S, B>(service: S, request: Request<Full<Bytes>>) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sends `request` through an [`AuthLayer`] over a fresh recording upstream.
pub async fn through_auth(
    auth: &Arc<Authenticator>,
    request: Request<Full<Bytes>>,
) -> (Answer, Upstream) {
    let upstream = Upstream::default();
    let service = AuthLayer::new(auth.clone()).layer(upstream.service());
    (send(service, request).await, upstream)
}

pub fn get(uri: &str) -> http::request::Builder {
    Request::builder().method("GET").uri(uri)
}

pub fn bearer(token: &str) -> Request<Full<Bytes>> {
    get("/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap()
}

/// Asserts a refusal: `401`, the code, a problem body, a challenge, and an upstream never called.
pub fn assert_refused(answer: &Answer, upstream: &Upstream, code: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "body: {}",
        answer.body
    );
    assert_eq!(answer.code(), code, "body: {}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(answer.json()["status"], 401);
    assert!(answer.headers.contains_key("www-authenticate"));
    assert_eq!(upstream.calls(), 0, "the inner service must not be called");
}
