//! JWKS key sources: from a file and from a URL served by a local axum
//! identity provider; rotation through a reload on an unknown `kid`; the
//! rate limit on such reloads; periodic reloads on the paused clock; and the
//! last good key set kept when the provider fails.

mod common;

use axum::extract::State;
use axum::routing::get as get_route;
use axum::Router;
use common::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A JWKS file in a directory of its own, removed on drop.
struct TempJwks {
    dir: PathBuf,
}

impl TempJwks {
    fn new(contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "trellis-auth-{}-{}",
            std::process::id(),
            fastrand_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = TempJwks { dir };
        file.write(contents);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    fn write(&self, contents: &str) {
        // Write then rename, as a deploy tool would, so a reader never sees half a file.
        let tmp = self.dir.join("jwks.json.tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

impl Drop for TempJwks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fastrand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

fn jwks_config(source: &str, extra: &str) -> String {
    format!(
        r#"
        [jwt]
        issuer = "{ISSUER}"
        audiences = ["{AUDIENCE}"]
        algorithms = ["RS256", "ES256"]
        forward_claims = {{ sub = "x-user-id" }}
        keys = [{{ {source}{extra} }}]
        "#
    )
}

/// A local identity provider whose JWKS answer the test can change.
#[derive(Clone)]
struct Idp {
    answer: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(jwks: String) -> (Idp, String) {
        let idp = Idp {
            answer: Arc::new(Mutex::new((StatusCode::OK, jwks))),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        async fn serve(State(idp): State<Idp>) -> (StatusCode, String) {
            idp.hits.fetch_add(1, Ordering::SeqCst);
            idp.answer.lock().unwrap().clone()
        }
        let app = Router::new()
            .route("/jwks.json", get_route(serve))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (idp, url)
    }

    fn set(&self, status: StatusCode, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn rsa_token(kid: &str) -> String {
    token(Algorithm::RS256, Some(kid), &rsa_key(), &claims())
}

/// A token naming `kid`, made by swapping the header of a signed one (RSA
/// signing is slow in debug builds, and these are refused before any
/// signature check anyway).
fn token_naming_kid(signed: &str, kid: &str) -> String {
    let (_, rest) = signed.split_once('.').unwrap();
    let header = b64(
        serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": kid })
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{rest}")
}

#[tokio::test]
async fn keys_from_a_jwks_file() {
    let file = TempJwks::new(&jwks(&[
        ("rsa-1", &rsa_key(), Algorithm::RS256),
        ("ec-1", &ec_key(), Algorithm::ES256),
    ]));
    let auth = authenticator(&jwks_config(&format!("jwks_file = {:?}", file.path()), "")).await;

    let (answer, upstream) = through_auth(&auth, bearer(&rsa_token("rsa-1"))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_headers()["x-user-id"], "user-42");
    let (answer, _) = through_auth(
        &auth,
        bearer(&token(Algorithm::ES256, Some("ec-1"), &ec_key(), &claims())),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The RSA key under the EC key's kid: the kid's key is bound to ES256.
    let (answer, upstream) = through_auth(&auth, bearer(&rsa_token("ec-1"))).await;
    assert_refused(&answer, &upstream, "invalid_token");
    // A key that is not in the set.
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(
            Algorithm::RS256,
            Some("rsa-1"),
            &rsa2_key(),
            &claims(),
        )),
    )
    .await;
    assert_refused(&answer, &upstream, "invalid_token");
}

#[tokio::test(start_paused = true)]
async fn jwks_file_is_reloaded_on_its_interval() {
    let file = TempJwks::new(&jwks(&[("rsa-1", &rsa_key(), Algorithm::RS256)]));
    let config = jwks_config(
        &format!("jwks_file = {:?}", file.path()),
        r#", refresh_interval = "1m", min_refresh_interval = "1m""#,
    );
    let auth = authenticator(&config).await;
    let verifier = auth.jwt().unwrap();
    assert_eq!(verifier.jwks_status()[0].fetches, 1);

    file.write(&jwks(&[("rsa-2", &rsa2_key(), Algorithm::RS256)]));
    let rotated = token(Algorithm::RS256, Some("rsa-2"), &rsa2_key(), &claims());
    // Within the minimum interval the unknown kid cannot force a reload.
    let (answer, upstream) = through_auth(&auth, bearer(&rotated)).await;
    assert_refused(&answer, &upstream, "invalid_token");
    assert_eq!(verifier.jwks_status()[0].fetches, 1);

    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..200 {
        if verifier.jwks_status()[0].fetches >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = &verifier.jwks_status()[0];
    assert_eq!(status.fetches, 2, "the background reload ran once");
    assert_eq!(status.keys, 1);
    let (answer, _) = through_auth(&auth, bearer(&rotated)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (answer, upstream) = through_auth(&auth, bearer(&rsa_token("rsa-1"))).await;
    assert_refused(&answer, &upstream, "invalid_token"); // rsa-1 was rotated out
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_kids_reloads_at_most_once_per_min_interval() {
    let file = TempJwks::new(&jwks(&[("rsa-1", &rsa_key(), Algorithm::RS256)]));
    let config = jwks_config(
        &format!("jwks_file = {:?}", file.path()),
        r#", refresh_interval = "1h", min_refresh_interval = "30s""#,
    );
    let auth = authenticator(&config).await;
    let verifier = auth.jwt().unwrap();
    let signed = rsa_token("rsa-1");
    for round in 0..3u32 {
        for i in 0..50 {
            let bogus = token_naming_kid(&signed, &format!("bogus-{round}-{i}"));
            let (answer, upstream) = through_auth(&auth, bearer(&bogus)).await;
            assert_refused(&answer, &upstream, "invalid_token");
        }
        // Startup load, then one reload per round after the first.
        assert_eq!(verifier.jwks_status()[0].fetches, 1 + u64::from(round));
        tokio::time::advance(Duration::from_secs(31)).await;
    }
}

#[tokio::test]
async fn keys_from_a_jwks_url_and_rotation_on_unknown_kid() {
    let (idp, url) = Idp::start(jwks(&[("rsa-1", &rsa_key(), Algorithm::RS256)])).await;
    let config = jwks_config(
        &format!("jwks_url = \"{url}\""),
        r#", min_refresh_interval = "1ms""#,
    );
    let auth = authenticator(&config).await;
    assert_eq!(idp.hits(), 1);

    let (answer, upstream) = through_auth(&auth, bearer(&rsa_token("rsa-1"))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_headers()["x-user-id"], "user-42");
    assert_eq!(idp.hits(), 1, "known kids are served from the cache");

    // The provider rotates: rsa-2 is published and tokens start using it.
    idp.set(
        StatusCode::OK,
        &jwks(&[
            ("rsa-1", &rsa_key(), Algorithm::RS256),
            ("rsa-2", &rsa2_key(), Algorithm::RS256),
        ]),
    );
    let rotated = token(Algorithm::RS256, Some("rsa-2"), &rsa2_key(), &claims());
    let requests = (0..20).map(|_| {
        let auth = auth.clone();
        let rotated = rotated.clone();
        async move { through_auth(&auth, bearer(&rotated)).await.0.status }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        idp.hits(),
        2,
        "concurrent requests for the new kid share one fetch"
    );
}

#[tokio::test]
async fn unknown_kids_cannot_hammer_the_jwks_url() {
    let (idp, url) = Idp::start(jwks(&[("rsa-1", &rsa_key(), Algorithm::RS256)])).await;
    let config = jwks_config(
        &format!("jwks_url = \"{url}\""),
        r#", refresh_interval = "2h", min_refresh_interval = "1h""#,
    );
    let auth = authenticator(&config).await;
    let signed = rsa_token("rsa-1");
    for i in 0..100 {
        let bogus = token_naming_kid(&signed, &format!("made-up-{i}"));
        let (answer, upstream) = through_auth(&auth, bearer(&bogus)).await;
        assert_refused(&answer, &upstream, "invalid_token");
    }
    assert_eq!(idp.hits(), 1, "only the startup fetch");
}

#[tokio::test]
async fn last_good_keys_are_kept_when_the_provider_fails() {
    let (idp, url) = Idp::start(jwks(&[("rsa-1", &rsa_key(), Algorithm::RS256)])).await;
    let auth = authenticator(&jwks_config(&format!("jwks_url = \"{url}\""), "")).await;
    let verifier = auth.jwt().unwrap();

    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, "oops"),
        (StatusCode::OK, "<html>not json</html>"),
        (StatusCode::OK, r#"{"keys": []}"#),
        (
            StatusCode::OK,
            r#"{"keys": [{"kty": "RSA", "kid": "x", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#,
        ),
    ] {
        idp.set(status, body);
        let results = verifier.reload_jwks().await;
        assert!(results[0].is_err(), "{body}: {results:?}");
        let (answer, _) = through_auth(&auth, bearer(&rsa_token("rsa-1"))).await;
        assert_eq!(answer.status, 200, "after {status} {body}: {}", answer.body);
    }
    let status = &verifier.jwks_status()[0];
    assert_eq!(status.keys, 1);
    assert_eq!(status.consecutive_failures, 4);
    assert!(status.last_error.is_some());

    // Recovery clears the failure state.
    idp.set(
        StatusCode::OK,
        &jwks(&[("rsa-2", &rsa2_key(), Algorithm::RS256)]),
    );
    assert_eq!(verifier.reload_jwks().await[0], Ok(1));
    assert_eq!(verifier.jwks_status()[0].consecutive_failures, 0);
}

#[tokio::test]
async fn unreachable_jwks_url_at_startup_refuses_tokens_until_it_loads() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let auth = authenticator(&jwks_config(
        &format!("jwks_url = \"{url}\""),
        r#", fetch_timeout = "2s""#,
    ))
    .await;
    let (answer, upstream) = through_auth(&auth, bearer(&rsa_token("rsa-1"))).await;
    assert_refused(&answer, &upstream, "invalid_token");
    let status = &auth.jwt().unwrap().jwks_status()[0];
    assert_eq!(status.keys, 0);
    assert!(status
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("request failed"));
}

#[tokio::test]
async fn a_broken_jwks_file_is_a_config_error() {
    let file = TempJwks::new("{ not json");
    let config = auth_config(&jwks_config(&format!("jwks_file = {:?}", file.path()), ""));
    let error = trellis_auth::Authenticator::from_config(&config)
        .await
        .unwrap_err();
    assert_eq!(error.errors()[0].path, "jwt.keys[0].jwks_file", "{error}");
}
