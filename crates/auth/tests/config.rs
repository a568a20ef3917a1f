//! Configuration: every mistake is reported with its key path, secrets are
//! never echoed, and bad key material is caught when the route is built.

mod common;

use common::*;
use trellis_auth::{AuthConfig, Authenticator};

fn errors_of(text: &str) -> Vec<(String, String)> {
    let config: AuthConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .errors()
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect(),
    }
}

fn assert_error(text: &str, path: &str, message: &str) {
    let errors = errors_of(text);
    assert!(
        errors.iter().any(|(p, m)| p == path && m.contains(message)),
        "expected {path}: ...{message}... in {errors:?}"
    );
}

#[test]
fn jwt_mistakes_name_their_key() {
    let key = format!("keys = [{{ secret = \"{SECRET}\" }}]");
    assert_error(
        &format!("[jwt]\nalgorithms = [\"none\"]\n{key}"),
        "jwt.algorithms[0]",
        "never accepted",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"HS257\"]\n{key}"),
        "jwt.algorithms[0]",
        "unknown algorithm",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = []\n{key}"),
        "jwt.algorithms",
        "list the accepted",
    );
    assert_error(
        "[jwt]\nalgorithms = [\"HS256\"]\nkeys = []",
        "jwt.keys",
        "at least one",
    );
    assert_error(
        "[jwt]\nalgorithms = [\"HS256\"]\nkeys = [{ secret = \"short\" }]",
        "jwt.keys[0].secret",
        "at least 32 bytes",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"RS256\"]\n{key}"),
        "jwt.keys[0]",
        "needs HS256",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\", jwks_url = \"https://id.example/jwks\" }}]"),
        "jwt.keys[0]",
        "only one key source",
    );
    assert_error(
        "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ kid = \"x\" }]",
        "jwt.keys[0]",
        "set one of",
    );
    assert_error(
        "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ jwks_url = \"http://id.example/jwks\" }]",
        "jwt.keys[0].jwks_url",
        "use https",
    );
    assert_error(
        "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ jwks_url = \"https://id.example/jwks\", refresh_interval = \"1m\", min_refresh_interval = \"5m\" }]",
        "jwt.keys[0].min_refresh_interval",
        "must not exceed",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"HS256\"]\nforward_claims = {{ sub = \"host\" }}\n{key}"),
        "jwt.forward_claims.sub",
        "reserved",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"HS256\"]\nforward_claims = {{ sub = \"x user\" }}\n{key}"),
        "jwt.forward_claims.sub",
        "not a valid header name",
    );
    assert_error(
        &format!("[jwt]\nalgorithms = [\"HS256\"]\nleeway = \"1h\"\n{key}"),
        "jwt.leeway",
        "at most",
    );
    assert_error("realm = \"x\"", "", "at least one of");
}

#[test]
fn a_correct_config_has_no_errors_and_http_jwks_is_allowed_to_loopback() {
    let text = format!(
        r#"
        [jwt]
        issuer = ["{ISSUER}", "https://other-issuer.test/"]
        audience = "{AUDIENCE}"
        algorithms = ["HS256", "RS256"]
        forward_claims = {{ sub = "x-user-id" }}
        keys = [
            {{ secret = "{SECRET}", kid = "hs-1" }},
            {{ jwks_url = "http://127.0.0.1:9/jwks.json", refresh_interval = "10m", min_refresh_interval = "15s", fetch_timeout = "2s" }},
        ]
        "#
    );
    assert_eq!(errors_of(&text), Vec::<(String, String)>::new());
}

#[test]
fn unknown_keys_and_bad_durations_are_parse_errors() {
    let unknown = toml::from_str::<AuthConfig>(
        "[jwt]\nalgorithms = [\"HS256\"]\nkeys = []\naudiance = \"x\"",
    );
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown field `audiance`"));
    let bad = toml::from_str::<AuthConfig>(
        "[jwt]\nalgorithms = [\"HS256\"]\nkeys = []\nleeway = \"thirty\"",
    );
    assert!(bad.unwrap_err().to_string().contains("invalid duration"));
}

#[test]
fn secrets_never_appear_in_debug_output_or_errors() {
    let text = format!("[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]");
    let config: AuthConfig = toml::from_str(&text).unwrap();
    assert!(!format!("{config:?}").contains(SECRET));
    assert!(!config.validate().unwrap_err().to_string().contains(SECRET));
}

#[tokio::test]
async fn key_material_errors_are_reported_when_building() {
    let cases = [
        (
            "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ public_key_pem = \"-----BEGIN PUBLIC KEY-----\\nnope\\n-----END PUBLIC KEY-----\" }]",
            "jwt.keys[0].public_key_pem",
            "not an RSA, EC",
        ),
        (
            "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ public_key_file = \"/nonexistent/key.pem\" }]",
            "jwt.keys[0].public_key_file",
            "cannot read",
        ),
        (
            "[jwt]\nalgorithms = [\"HS256\"]\nkeys = [{ secret_env = \"TRELLIS_AUTH_TEST_UNSET_VARIABLE\" }]",
            "jwt.keys[0].secret_env",
            "is not set",
        ),
    ];
    for (text, path, message) in cases {
        let error = Authenticator::from_config(&auth_config(text))
            .await
            .unwrap_err();
        let first = &error.errors()[0];
        assert_eq!(first.path, path, "{error}");
        assert!(first.message.contains(message), "{error}");
    }
    // An EC key offered to an RSA-only route.
    let text = format!(
        "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{{ public_key_file = \"{}\" }}]",
        fixture_path("ec_public.pem")
    );
    let error = Authenticator::from_config(&auth_config(&text))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("allows no Ec algorithm"),
        "{error}"
    );
}

#[test]
fn errors_can_be_nested_under_the_route() {
    let config: AuthConfig = toml::from_str("[jwt]\nalgorithms = [\"none\"]\nkeys = []").unwrap();
    let errors = config
        .validate()
        .unwrap_err()
        .with_prefix("listeners[0].routes[2].auth");
    assert_eq!(
        errors.errors()[0].path,
        "listeners[0].routes[2].auth.jwt.algorithms[0]"
    );
    assert!(errors
        .to_string()
        .starts_with("listeners[0].routes[2].auth.jwt.algorithms[0]: `none`"));
}
