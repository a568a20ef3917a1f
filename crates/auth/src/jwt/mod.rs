//! JSON Web Tokens: the `[auth.jwt]` table, the keys a token may be verified
//! with (inline secrets, PEM public keys, JWKS files and URLs), and the
//! verifier that checks signature, algorithm, issuer, audience, times and
//! required claims.

mod jwks;
mod keys;
mod verify;

pub use jwks::JwksStatus;
pub use verify::{JwtVerifier, UnixClock, VerifiedToken};

use crate::config::{duration, is_visible_ascii, one_or_many, ConfigErrors, Secret};
use http::HeaderName;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How a route verifies bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `iss` values; a token's `iss` must be one of them. Empty: not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; a token must name at least one. Empty: not checked.
    #[serde(default, deserialize_with = "one_or_many", alias = "audience")]
    pub audiences: Vec<String>,
    /// The signature algorithms accepted, e.g. `["RS256", "ES256"]`. `none` is never accepted.
    pub algorithms: Vec<String>,
    /// The keys tokens may be signed with.
    pub keys: Vec<JwtKeyConfig>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Refuse tokens without `exp` (tokens that never expire).
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Claims that must be present (any value), e.g. `["sub", "tenant"]`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims copied to request headers for the upstream: `{ sub = "x-user-id" }`.
    /// Any copy of these headers that the client sent is removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The claim that names the caller in the [`crate::Identity`].
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Also look for the token in this cookie.
    #[serde(default)]
    pub from_cookie: Option<String>,
    /// Also look for the token in this query parameter.
    #[serde(default)]
    pub from_query: Option<String>,
    /// Remove the token from the request before it is forwarded upstream.
    #[serde(default)]
    pub hide_credentials: bool,
}

/// One source of verification keys. Set exactly one of `secret`,
/// `secret_env`, `secret_file`, `public_key_pem`, `public_key_file`,
/// `jwks_file` and `jwks_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Match tokens whose header names this `kid` (single keys only; JWKS keys carry their own).
    #[serde(default)]
    pub kid: Option<String>,
    /// Bind a single key to one algorithm; by default, every allowed algorithm of its kind.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// HMAC secret (HS256/384/512), at least 32 bytes.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// An RSA or EC public key (or certificate) in PEM.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// File holding an RSA or EC public key in PEM.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document on disk, re-read every `refresh_interval`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS endpoint (`https://`, or `http://` to loopback), fetched every `refresh_interval`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often a JWKS is reloaded.
    #[serde(default, with = "duration::option")]
    pub refresh_interval: Option<Duration>,
    /// The least time between two reloads triggered by tokens with an
    /// unknown `kid`, so a flood of made-up kids cannot hammer the endpoint.
    #[serde(default, with = "duration::option")]
    pub min_refresh_interval: Option<Duration>,
    /// Deadline for one JWKS fetch.
    #[serde(default, with = "duration::option")]
    pub fetch_timeout: Option<Duration>,
}

pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_HMAC_SECRET_BYTES: usize = 32;

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

fn yes() -> bool {
    true
}

impl JwtConfig {
    /// Checks algorithms, key sources, claim and header names.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if self.algorithms.is_empty() {
            errors.push(
                "algorithms",
                "list the accepted algorithms, e.g. [\"RS256\"]",
            );
        }
        for (i, alg) in self.algorithms.iter().enumerate() {
            if let Err(message) = parse_algorithm(alg) {
                errors.push(format!("algorithms[{i}]"), message);
            }
        }
        if self.keys.is_empty() {
            errors.push("keys", "list at least one key source");
        }
        for (i, key) in self.keys.iter().enumerate() {
            errors.extend_at(&format!("keys[{i}]"), key.validate(self));
        }
        if self.leeway > Duration::from_secs(600) {
            errors.push(
                "leeway",
                "more than 10m of clock skew defeats expiry; use at most \"10m\"",
            );
        }
        for (i, claim) in self.required_claims.iter().enumerate() {
            if claim.is_empty() {
                errors.push(format!("required_claims[{i}]"), "must not be empty");
            }
        }
        if self.subject_claim.is_empty() {
            errors.push("subject_claim", "must not be empty");
        }
        for (claim, header) in &self.forward_claims {
            if claim.is_empty() {
                errors.push("forward_claims", "a claim name must not be empty");
            }
            errors.extend_at(
                &format!("forward_claims.{claim}"),
                validate_forward_header(header),
            );
        }
        for (key, value) in [
            ("from_cookie", &self.from_cookie),
            ("from_query", &self.from_query),
        ] {
            if let Some(name) = value {
                if name.is_empty()
                    || !is_visible_ascii(name)
                    || name.contains([';', '=', '&', ' ', '#'])
                {
                    errors.push(key, "must be a plain cookie or parameter name");
                }
            }
        }
        errors.into_result()
    }

    pub(crate) fn allowed_algorithms(&self) -> Vec<Algorithm> {
        self.algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a).ok())
            .collect()
    }
}

impl JwtKeyConfig {
    fn validate(&self, jwt: &JwtConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let sources = self.sources();
        match sources.len() {
            0 => errors.push(
                "",
                "set one of secret, secret_env, secret_file, public_key_pem, public_key_file, jwks_file, jwks_url",
            ),
            1 => {}
            _ => errors.push("", format!("set only one key source, found {}", sources.join(", "))),
        }
        let is_jwks = self.jwks_file.is_some() || self.jwks_url.is_some();
        if is_jwks {
            if self.kid.is_some() {
                errors.push("kid", "a JWKS names its own keys; remove `kid`");
            }
            if self.algorithm.is_some() {
                errors.push("algorithm", "a JWKS binds its own keys; remove `algorithm`");
            }
        } else {
            for key in ["refresh_interval", "min_refresh_interval", "fetch_timeout"] {
                let set = match key {
                    "refresh_interval" => self.refresh_interval.is_some(),
                    "min_refresh_interval" => self.min_refresh_interval.is_some(),
                    _ => self.fetch_timeout.is_some(),
                };
                if set {
                    errors.push(key, "only applies to jwks_file and jwks_url");
                }
            }
        }
        let allowed = jwt.allowed_algorithms();
        if let Some(alg) = &self.algorithm {
            match parse_algorithm(alg) {
                Err(message) => errors.push("algorithm", message),
                Ok(alg) if !allowed.contains(&alg) => {
                    errors.push("algorithm", format!("{alg:?} is not in jwt.algorithms"))
                }
                Ok(_) => {}
            }
        }
        let is_secret =
            self.secret.is_some() || self.secret_env.is_some() || self.secret_file.is_some();
        if is_secret
            && !allowed
                .iter()
                .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
        {
            errors.push(
                "",
                "an HMAC secret needs HS256, HS384 or HS512 in jwt.algorithms",
            );
        }
        if let Some(secret) = &self.secret {
            if secret.0.len() < MIN_HMAC_SECRET_BYTES {
                errors.push(
                    "secret",
                    format!("an HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (`trellis auth gen-secret`)"),
                );
            }
        }
        if let Some(var) = &self.secret_env {
            if var.is_empty() || var.contains('=') {
                errors.push("secret_env", "must be an environment variable name");
            }
        }
        if let Some(url) = &self.jwks_url {
            if let Err(message) = validate_jwks_url(url) {
                errors.push("jwks_url", message);
            }
        }
        if let (Some(min), Some(every)) = (self.min_refresh_interval, self.refresh_interval) {
            if min > every {
                errors.push("min_refresh_interval", "must not exceed refresh_interval");
            }
        }
        if self
            .refresh_interval
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            errors.push("refresh_interval", "must be at least 1s");
        }
        if self.fetch_timeout.is_some_and(|d| d.is_zero()) {
            errors.push("fetch_timeout", "must be more than zero");
        }
        errors.into_result()
    }

    fn sources(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        let flags = [
            ("secret", self.secret.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("public_key_pem", self.public_key_pem.is_some()),
            ("public_key_file", self.public_key_file.is_some()),
            ("jwks_file", self.jwks_file.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
        ];
        for (name, set) in flags {
            if set {
                found.push(name);
            }
        }
        found
    }
}

/// An algorithm name from the config; `none` gets its own message because
/// accepting unsigned tokens is the classic JWT vulnerability.
pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` is never accepted: an unsigned token proves nothing".to_owned());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!("unknown algorithm {name:?}; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA")
    })
}

fn validate_jwks_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("keys fetched over plain http can be swapped in transit; use https (http is allowed only to loopback)".to_owned())
            }
        }
        other => Err(format!("unsupported scheme {other:?}; use https")),
    }
}

/// Header names the auth layer may set: valid, and not one whose meaning
/// to the proxy or upstream would change (framing, routing, credentials).
pub(crate) fn validate_forward_header(name: &str) -> Result<(), ConfigErrors> {
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "authorization",
        "cookie",
    ];
    match HeaderName::from_bytes(name.as_bytes()) {
        Err(_) => Err(ConfigErrors::single(
            "",
            format!("{name:?} is not a valid header name"),
        )),
        Ok(header) if RESERVED.contains(&header.as_str()) => Err(ConfigErrors::single(
            "",
            format!(
                "{name:?} is reserved; forward into a header of your own such as \"x-user-id\""
            ),
        )),
        Ok(_) => Ok(()),
    }
}
