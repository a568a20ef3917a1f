//! JWT authentication through the tower layer: every way a token can be
//! wrong is a 401 that never reaches the upstream; good tokens of each
//! algorithm pass with their claims forwarded and spoofed headers removed.

mod common;

use common::*;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use trellis_auth::{AuthError, Authenticator, Credential};

fn hs_config() -> String {
    format!(
        r#"
        [jwt]
        issuer = "{ISSUER}"
        audiences = ["{AUDIENCE}"]
        algorithms = ["HS256"]
        leeway = "30s"
        required_claims = ["tenant"]
        forward_claims = {{ sub = "x-user-id", tenant = "x-tenant", roles = "x-roles" }}
        keys = [{{ secret = "{SECRET}" }}]
        "#
    )
}

fn rsa_config(algorithms: &str) -> String {
    format!(
        r#"
        [jwt]
        issuer = "{ISSUER}"
        audiences = ["{AUDIENCE}"]
        algorithms = {algorithms}
        forward_claims = {{ sub = "x-user-id" }}
        keys = [{{ public_key_file = "{}" }}]
        "#,
        fixture_path("rsa_public.pem")
    )
}

#[tokio::test]
async fn missing_token_is_refused() {
    let auth = authenticator(&hs_config()).await;
    let (answer, upstream) =
        through_auth(&auth, get("/orders").body(Full::default()).unwrap()).await;
    assert_refused(&answer, &upstream, "missing_credentials");
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"trellis\""
    );
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let auth = authenticator(&hs_config()).await;
    let good = token(Algorithm::HS256, None, &hs_key(), &claims());
    let truncated = good.rsplit_once('.').unwrap().0.to_owned();
    let long = "a".repeat(20_000);
    for bad in [
        "not-a-jwt",
        "a.b.c",
        "....",
        truncated.as_str(),
        long.as_str(),
        "e30.e30.e30.e30",
    ] {
        let (answer, upstream) = through_auth(&auth, bearer(bad)).await;
        assert_refused(&answer, &upstream, "invalid_token");
        assert!(answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let auth = authenticator(&hs_config()).await;
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        let payload = b64(claims().to_string().as_bytes());
        for unsigned in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            let (answer, upstream) = through_auth(&auth, bearer(&unsigned)).await;
            assert_refused(&answer, &upstream, "invalid_token");
            let mut parts = bearer(&unsigned).into_parts().0;
            assert_eq!(
                auth.authenticate(&mut parts).await,
                Err(AuthError::UnsignedToken)
            );
        }
    }
}

#[tokio::test]
async fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The algorithm-confusion attack: the attacker uses the (public) RSA key
    // as an HMAC secret and hopes the verifier does the same.
    let public_pem = fixture("rsa_public.pem");
    let forged = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(public_pem.as_bytes()),
        &claims(),
    );
    for algorithms in [r#"["RS256"]"#, r#"["RS256", "HS256"]"#] {
        let auth = authenticator(&rsa_config(algorithms)).await;
        let (answer, upstream) = through_auth(&auth, bearer(&forged)).await;
        assert_refused(&answer, &upstream, "invalid_token");
        let mut parts = bearer(&forged).into_parts().0;
        let error = auth.authenticate(&mut parts).await.unwrap_err();
        assert!(
            matches!(
                error,
                AuthError::AlgorithmNotAllowed | AuthError::NoMatchingKey
            ),
            "{algorithms}: {error:?}"
        );
    }
}

#[tokio::test]
async fn wrong_key_is_refused() {
    let auth = authenticator(&hs_config()).await;
    let other = EncodingKey::from_secret(b"a-different-secret-of-sufficient-length!!");
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(Algorithm::HS256, None, &other, &claims())),
    )
    .await;
    assert_refused(&answer, &upstream, "invalid_token");

    let auth = authenticator(&rsa_config(r#"["RS256"]"#)).await;
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(Algorithm::RS256, None, &rsa2_key(), &claims())),
    )
    .await;
    assert_refused(&answer, &upstream, "invalid_token");

    // A valid signature over different claims: the payload was swapped.
    let good = token(Algorithm::RS256, None, &rsa_key(), &claims());
    let mut pieces: Vec<&str> = good.split('.').collect();
    let mut tampered = claims();
    tampered["sub"] = json!("admin");
    let payload = b64(tampered.to_string().as_bytes());
    pieces[1] = &payload;
    let (answer, upstream) = through_auth(&auth, bearer(&pieces.join("."))).await;
    assert_refused(&answer, &upstream, "invalid_token");
}

#[tokio::test]
async fn expired_token_is_refused_beyond_the_leeway() {
    let (clock, now) = test_clock();
    let auth = Arc::new(
        Authenticator::from_config(&auth_config(&hs_config()))
            .await
            .unwrap()
            .with_clock(clock),
    );
    let jwt = token(Algorithm::HS256, None, &hs_key(), &claims()); // exp = NOW + 300, leeway 30s

    now.store(NOW + 320, Ordering::SeqCst); // expired 20 s ago: within the leeway
    let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.calls(), 1);

    now.store(NOW + 330, Ordering::SeqCst); // exactly exp + leeway
    let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
    assert_refused(&answer, &upstream, "token_expired");
    assert!(answer.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn not_yet_valid_token_is_refused_beyond_the_leeway() {
    let (clock, now) = test_clock();
    let auth = Arc::new(
        Authenticator::from_config(&auth_config(&hs_config()))
            .await
            .unwrap()
            .with_clock(clock),
    );
    let mut future = claims();
    future["nbf"] = json!(NOW + 100);
    let jwt = token(Algorithm::HS256, None, &hs_key(), &future);

    let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
    assert_refused(&answer, &upstream, "invalid_token");

    now.store(NOW + 75, Ordering::SeqCst); // 25 s early: the issuer's clock is a little ahead
    let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn token_without_exp_is_refused_unless_allowed() {
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let jwt = token(Algorithm::HS256, None, &hs_key(), &no_exp);
    let auth = authenticator(&hs_config()).await;
    let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
    assert_refused(&answer, &upstream, "invalid_token");

    let auth = authenticator(&hs_config().replace("leeway", "require_exp = false\nleeway")).await;
    let (answer, _) = through_auth(&auth, bearer(&jwt)).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn wrong_issuer_audience_or_missing_claim_is_refused() {
    let auth = authenticator(&hs_config()).await;
    let cases = [
        (
            "iss",
            json!("https://evil.example.test/"),
            AuthError::WrongIssuer,
        ),
        ("aud", json!("billing-api"), AuthError::WrongAudience),
        (
            "aud",
            json!(["billing-api", "search-api"]),
            AuthError::WrongAudience,
        ),
    ];
    for (claim, value, expected) in cases {
        let mut bad = claims();
        bad[claim] = value;
        let jwt = token(Algorithm::HS256, None, &hs_key(), &bad);
        let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
        assert_refused(&answer, &upstream, "invalid_token");
        let mut parts = bearer(&jwt).into_parts().0;
        assert_eq!(auth.authenticate(&mut parts).await, Err(expected));
    }
    for claim in ["iss", "aud", "tenant"] {
        let mut bad = claims();
        bad.as_object_mut().unwrap().remove(claim);
        let jwt = token(Algorithm::HS256, None, &hs_key(), &bad);
        let (answer, upstream) = through_auth(&auth, bearer(&jwt)).await;
        assert_refused(&answer, &upstream, "invalid_token");
        let mut parts = bearer(&jwt).into_parts().0;
        assert_eq!(
            auth.authenticate(&mut parts).await,
            Err(AuthError::MissingClaim(claim.to_owned()))
        );
    }
}

#[tokio::test]
async fn refusal_body_does_not_leak_the_reason() {
    let auth = authenticator(&hs_config()).await;
    let mut bad = claims();
    bad["aud"] = json!("billing-api");
    let (answer, _) = through_auth(
        &auth,
        bearer(&token(Algorithm::HS256, None, &hs_key(), &bad)),
    )
    .await;
    let body = answer.body.to_lowercase();
    assert!(!body.contains("aud") && !body.contains("billing"), "{body}");
    assert_eq!(answer.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn valid_hs256_token_passes_with_claims_forwarded_and_spoofs_removed() {
    let auth = authenticator(&hs_config()).await;
    let jwt = token(Algorithm::HS256, None, &hs_key(), &claims());
    let request = get("/orders")
        .header("authorization", format!("Bearer {jwt}"))
        .header("x-user-id", "admin")
        .header("x-tenant", "someone-else")
        .header("x-tenant", "and-another")
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "upstream says hi");
    let headers = upstream.last_headers();
    assert_eq!(
        headers.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["user-42"]
    );
    assert_eq!(
        headers.get_all("x-tenant").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    assert_eq!(headers["x-roles"], "admin,billing");
    assert!(
        headers.contains_key("authorization"),
        "the token is forwarded unless hidden"
    );

    let identity = upstream.last_identity().expect("identity in extensions");
    assert_eq!(identity.subject.as_deref(), Some("user-42"));
    assert_eq!(identity.claim_text("tenant").as_deref(), Some("acme"));
    assert!(matches!(identity.credential, Credential::Jwt { .. }));
}

#[tokio::test]
async fn spoofed_claim_headers_are_removed_even_when_the_claim_is_absent() {
    let auth = authenticator(&hs_config().replace("required_claims = [\"tenant\"]", "")).await;
    let mut no_tenant = claims();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let request = get("/orders")
        .header(
            "authorization",
            format!(
                "Bearer {}",
                token(Algorithm::HS256, None, &hs_key(), &no_tenant)
            ),
        )
        .header("x-tenant", "spoofed")
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200);
    assert!(!upstream.last_headers().contains_key("x-tenant"));
}

#[tokio::test]
async fn valid_rs256_token_passes() {
    let auth = authenticator(&rsa_config(r#"["RS256"]"#)).await;
    let request = get("/orders")
        .header(
            "authorization",
            format!(
                "bearer {}",
                token(Algorithm::RS256, None, &rsa_key(), &claims())
            ),
        )
        .header("x-user-id", "spoofed")
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_headers()["x-user-id"], "user-42");
}

#[tokio::test]
async fn valid_es256_token_passes_and_hidden_credentials_are_removed() {
    let config = format!(
        r#"
        [jwt]
        audience = "{AUDIENCE}"
        algorithms = ["ES256"]
        hide_credentials = true
        forward_claims = {{ sub = "x-user-id" }}
        keys = [{{ public_key_pem = """{}""", kid = "ec-1" }}]
        "#,
        fixture("ec_public.pem")
    );
    let auth = authenticator(&config).await;
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(Algorithm::ES256, Some("ec-1"), &ec_key(), &claims())),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let headers = upstream.last_headers();
    assert_eq!(headers["x-user-id"], "user-42");
    assert!(!headers.contains_key("authorization"));

    // A kid naming a key we do not have is refused even though the key would verify.
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(Algorithm::ES256, Some("ec-2"), &ec_key(), &claims())),
    )
    .await;
    assert_refused(&answer, &upstream, "invalid_token");
}

#[tokio::test]
async fn algorithm_outside_the_allow_list_is_refused() {
    let auth = authenticator(&rsa_config(r#"["RS256"]"#)).await;
    let (answer, upstream) = through_auth(
        &auth,
        bearer(&token(Algorithm::RS512, None, &rsa_key(), &claims())),
    )
    .await;
    assert_refused(&answer, &upstream, "invalid_token");
}

#[tokio::test]
async fn token_from_cookie_or_query_when_configured() {
    let config = hs_config().replace(
        "leeway",
        "from_cookie = \"session\"\nfrom_query = \"access_token\"\nhide_credentials = true\nleeway",
    );
    let auth = authenticator(&config).await;
    let jwt = token(Algorithm::HS256, None, &hs_key(), &claims());

    let request = get("/orders")
        .header("cookie", format!("theme=dark; session={jwt}"))
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_headers()["cookie"], "theme=dark");

    let request = get(&format!("/orders?page=2&access_token={jwt}"))
        .body(Full::default())
        .unwrap();
    let (answer, upstream) = through_auth(&auth, request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.last_uri(), "/orders?page=2");
}
