//! JWT verification cost per request: `JwtVerifier::verify` with keys parsed
//! once and cached (plus this crate's own header, kid, claim and time
//! checks), and with a verified-token cache hit, against two peers run in the
//! same process: `jsonwebtoken::decode` with a key parsed once, and
//! `jsonwebtoken::decode` with the key parsed from PEM on every request
//! (what code without a key cache does).
//!
//! Run: cargo bench -p trellis-auth --bench jwt_verify -- --warm-up-time 1 --measurement-time 3

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use trellis_auth::{AuthConfig, Authenticator};

const SECRET: &str = "an-hs256-secret-that-is-at-least-32-bytes-long";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Case {
    name: &'static str,
    alg: Algorithm,
    token: String,
    config: String,
    public: Box<dyn Fn() -> DecodingKey>,
}

fn cases() -> Vec<Case> {
    let claims = json!({
        "sub": "user-42", "iss": "https://id.example.test/", "aud": "orders-api",
        "exp": now() + 3600, "tenant": "acme",
    });
    let sign = |alg: Algorithm, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let rsa_pem = fixture("rsa_public.pem");
    let ec_pem = fixture("ec_public.pem");
    let config = |alg: &str, key: &str| {
        format!(
            "[jwt]\nissuer = \"https://id.example.test/\"\naudiences = [\"orders-api\"]\nalgorithms = [\"{alg}\"]\n\
             required_claims = [\"tenant\"]\nforward_claims = {{ sub = \"x-user-id\" }}\nkeys = [{{ kid = \"k1\", {key} }}]\n"
        )
    };
    vec![
        Case {
            name: "HS256",
            alg: Algorithm::HS256,
            token: sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
            config: config("HS256", &format!("secret = \"{SECRET}\"")),
            public: Box::new(|| DecodingKey::from_secret(SECRET.as_bytes())),
        },
        Case {
            name: "RS256",
            alg: Algorithm::RS256,
            token: sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap(),
            ),
            config: config("RS256", &format!("public_key_pem = '''{rsa_pem}'''")),
            public: Box::new(move || DecodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap()),
        },
        Case {
            name: "ES256",
            alg: Algorithm::ES256,
            token: sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap(),
            ),
            config: config("ES256", &format!("public_key_pem = '''{ec_pem}'''")),
            public: Box::new(move || DecodingKey::from_ec_pem(ec_pem.as_bytes()).unwrap()),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("jwt_verify");
    for case in cases() {
        let config: AuthConfig = toml::from_str(&case.config).unwrap();
        let authenticator = runtime
            .block_on(Authenticator::from_config(&config))
            .unwrap();
        let verifier = authenticator.jwt().unwrap();
        assert!(runtime.block_on(verifier.verify(&case.token)).is_ok());
        assert_eq!(verifier.cached_tokens(), 1);
        let uncached_text = case
            .config
            .replace("[jwt]\n", "[jwt]\ntoken_cache_size = 0\n");
        let uncached_config: AuthConfig = toml::from_str(&uncached_text).unwrap();
        let uncached_authenticator = runtime
            .block_on(Authenticator::from_config(&uncached_config))
            .unwrap();
        let uncached = uncached_authenticator.jwt().unwrap();
        assert!(runtime.block_on(uncached.verify(&case.token)).is_ok());
        assert_eq!(uncached.cached_tokens(), 0);

        let mut validation = Validation::new(case.alg);
        validation.set_issuer(&["https://id.example.test/"]);
        validation.set_audience(&["orders-api"]);
        let cached = (case.public)();
        jsonwebtoken::decode::<Map<String, Value>>(&case.token, &cached, &validation).unwrap();

        group.bench_with_input(
            BenchmarkId::new("trellis_keys_cached", case.name),
            &case.token,
            |b, token| {
                b.to_async(&runtime)
                    .iter(|| async { black_box(uncached.verify(black_box(token)).await.unwrap()) })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("trellis_token_cache_hit", case.name),
            &case.token,
            |b, token| {
                b.to_async(&runtime)
                    .iter(|| async { black_box(verifier.verify(black_box(token)).await.unwrap()) })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("jsonwebtoken_prebuilt_key", case.name),
            &case.token,
            |b, token| {
                b.iter(|| {
                    black_box(
                        jsonwebtoken::decode::<Map<String, Value>>(
                            black_box(token),
                            &cached,
                            &validation,
                        )
                        .unwrap(),
                    )
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("jsonwebtoken_key_per_request", case.name),
            &case.token,
            |b, token| {
                b.iter(|| {
                    let key = (case.public)();
                    black_box(
                        jsonwebtoken::decode::<Map<String, Value>>(
                            black_box(token),
                            &key,
                            &validation,
                        )
                        .unwrap(),
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
