//! API keys through the tower layer: the right key passes (from the header,
//! the Authorization scheme or the query when configured), a wrong or
//! missing one is a 401 that never reaches the upstream, and the key never
//! travels upstream unless asked.

mod common;

use common::*;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use trellis_auth::{generate_api_key, hash_api_key, AuthConfig, Credential};

const MOBILE_KEY: &str = "trl_mobile-app-key-0123456789abcdef";
const PARTNER_KEY: &str = "trl_partner-key-fedcba9876543210";

fn config(extra: &str) -> String {
    format!(
        r#"
        [api_keys]
        forward_id_header = "x-api-key-id"
        {extra}
        keys = [
            {{ id = "mobile-app", hash = "{}" }},
            {{ id = "partner", hash = "{}" }},
        ]
        "#,
        hash_api_key(MOBILE_KEY),
        hash_api_key(PARTNER_KEY)
    )
}

#[test]
fn hash_format_is_sha256_hex_of_the_key() {
    // SHA-256("test"), a published test vector.
    assert_eq!(
        hash_api_key("test"),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let generated = generate_api_key();
    assert!(generated.plaintext.starts_with("trl_") && generated.plaintext.len() == 47);
    assert_eq!(generated.hash, hash_api_key(&generated.plaintext));
    assert_ne!(generate_api_key().plaintext, generated.plaintext);
    assert!(!format!("{generated:?}").contains(&generated.plaintext));
}

#[tokio::test]
async fn the_right_key_passes_and_is_not_forwarded() {
    let auth = authenticator(&config("")).await;
    for (key, id) in [(MOBILE_KEY, "mobile-app"), (PARTNER_KEY, "partner")] {
        let request = get("/orders")
            .header("x-api-key", key)
            .header("x-api-key-id", "spoofed-admin")
            .body(Full::default())
            .unwrap();
        let (answer, upstream) = through_auth(&auth, request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let headers = upstream.last_headers();
        assert_eq!(
            headers.get_all("x-api-key-id").iter().collect::<Vec<_>>(),
            [id]
        );
        assert!(
            !headers.contains_key("x-api-key"),
            "the key is hidden from the upstream"
        );
        let identity = upstream.last_identity().unwrap();
        assert_eq!(identity.api_key_id(), Some(id));
        assert_eq!(
            identity.credential,
            Credential::ApiKey {
                key_id: id.to_owned()
            }
        );
    }
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused() {
    let auth = authenticator(&config("")).await;
    let near_miss = format!("{}x", &MOBILE_KEY[..MOBILE_KEY.len() - 1]);
    for key in ["", "wrong", near_miss.as_str(), &hash_api_key(MOBILE_KEY)] {
        let request = get("/orders")
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap();
        let (answer, upstream) = through_auth(&auth, request).await;
        assert_refused(&answer, &upstream, "invalid_api_key");
        assert_eq!(
            answer.headers["www-authenticate"],
            "ApiKey realm=\"trellis\", header=\"x-api-key\""
        );
    }
    let (answer, upstream) =
        through_auth(&auth, get("/orders").body(Full::default()).unwrap()).await;
    assert_refused(&answer, &upstream, "missing_credentials");
    // Another scheme in Authorization is not an API key unless configured.
    let request = get("/orders")
        .header("authorization", format!("ApiKey {MOBILE_KEY}"))
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_refused(&answer, &upstream, "missing_credentials");
}

#[tokio::test]
async fn authorization_scheme_and_query_param_when_configured() {
    let auth = authenticator(&config(
        "authorization_scheme = \"ApiKey\"\nquery_param = \"api_key\"",
    ))
    .await;
    let request = get("/orders")
        .header("authorization", format!("apikey {PARTNER_KEY}"))
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!upstream.last_headers().contains_key("authorization"));
    assert_eq!(upstream.last_headers()["x-api-key-id"], "partner");

    let request = get(&format!("/orders?api_key={MOBILE_KEY}&page=3"))
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_uri(), "/orders?page=3");

    let request = get("/orders?api_key=nope").body(Full::default()).unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_refused(&answer, &upstream, "invalid_api_key");
}

#[tokio::test]
async fn keys_can_be_forwarded_when_asked() {
    let auth = authenticator(&config("hide_credentials = false")).await;
    let request = get("/orders")
        .header("x-api-key", MOBILE_KEY)
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last_headers()["x-api-key"], MOBILE_KEY);
}

#[tokio::test]
async fn api_keys_and_jwt_on_one_route() {
    let text = format!(
        "{}\n[jwt]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]\n",
        config("")
    );
    let auth = authenticator(&text).await;
    let request = get("/orders")
        .header("x-api-key", MOBILE_KEY)
        .body(Full::default())
        .unwrap();
    assert_eq!(through_auth(&auth, request).await.0.status, 200);
    let (answer, _) = through_auth(
        &auth,
        bearer(&token(Algorithm::HS256, None, &hs_key(), &claims())),
    )
    .await;
    assert_eq!(answer.status, 200);
    let (answer, upstream) = through_auth(&auth, get("/").body(Full::default()).unwrap()).await;
    assert_refused(&answer, &upstream, "missing_credentials");
    assert_eq!(
        answer.headers.get_all("www-authenticate").iter().count(),
        2,
        "one challenge per scheme"
    );
}

#[tokio::test]
async fn anonymous_requests_pass_only_when_allowed_and_without_spoofed_headers() {
    let auth = authenticator(&format!("allow_anonymous = true\n{}", config(""))).await;
    let request = get("/")
        .header("x-api-key-id", "spoofed")
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200);
    assert!(!upstream.last_headers().contains_key("x-api-key-id"));
    assert!(upstream.last_identity().is_none());
    // Wrong credentials are still refused.
    let request = get("/")
        .header("x-api-key", "wrong")
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_refused(&answer, &upstream, "invalid_api_key");
}

#[test]
fn hash_format_errors_in_config_are_clear_and_do_not_echo_the_value() {
    let cases = [
        (
            "trl_plaintext-key-pasted-by-mistake",
            "looks like a plaintext key",
        ),
        (
            "md5:0123456789abcdef0123456789abcdef",
            "unsupported hash scheme",
        ),
        ("sha256:abc", "found 3 characters"),
        (
            "sha256:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "must be hex digits",
        ),
    ];
    for (hash, expected) in cases {
        let text = format!("[api_keys]\nkeys = [{{ id = \"k\", hash = \"{hash}\" }}]");
        let config: AuthConfig = toml::from_str(&text).unwrap();
        let errors = config.validate().unwrap_err();
        let error = &errors.errors()[0];
        assert_eq!(error.path, "api_keys.keys[0].hash");
        assert!(error.message.contains(expected), "{error}");
        assert!(
            !errors.to_string().contains(hash),
            "the value must not be echoed: {errors}"
        );
    }
    let text = format!(
        "[api_keys]\nkeys = [{{ id = \"a\", hash = \"{0}\" }}, {{ id = \"a\", hash = \"{0}\" }}]",
        hash_api_key("k")
    );
    let errors = toml::from_str::<AuthConfig>(&text)
        .unwrap()
        .validate()
        .unwrap_err();
    let paths: Vec<_> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["api_keys.keys[1].id", "api_keys.keys[1].hash"]);
}
