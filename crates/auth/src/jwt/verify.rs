//! The JWT verifier: picks the keys a token may be verified with (by `kid`
//! and by algorithm binding), checks the signature with `jsonwebtoken`, then
//! issuer, audience, `exp`/`nbf` against an injectable clock, and required
//! claims.

use super::jwks::{JwksLocation, JwksSource};
use super::keys::{load_single_key, VerificationKey};
use super::{
    JwksStatus, JwtConfig, DEFAULT_FETCH_TIMEOUT, DEFAULT_MIN_REFRESH_INTERVAL,
    DEFAULT_REFRESH_INTERVAL,
};
use crate::config::{join_path, ConfigErrors};
use crate::error::AuthError;
use base64::Engine;
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// At most this many keys are tried for one token without a usable `kid`,
/// bounding the signature checks a single request can cost.
const MAX_CANDIDATE_KEYS: usize = 8;

/// The wall clock `exp` and `nbf` are checked against, in Unix seconds;
/// replaceable so expiry can be tested without waiting.
#[derive(Clone)]
pub struct UnixClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl UnixClock {
    /// The system clock.
    pub fn system() -> Self {
        UnixClock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// Any function returning Unix seconds.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        UnixClock(Arc::new(f))
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for UnixClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnixClock")
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// All of its claims.
    pub claims: Arc<Map<String, Value>>,
    /// The `kid` from its header.
    pub kid: Option<String>,
    /// The algorithm it was signed with.
    pub algorithm: Algorithm,
}

/// Verifies bearer tokens against one [`JwtConfig`].
#[derive(Debug)]
pub struct JwtVerifier {
    allowed: Vec<Algorithm>,
    static_keys: Vec<Arc<VerificationKey>>,
    jwks: Vec<Arc<JwksSource>>,
    validations: HashMap<Algorithm, Validation>,
    leeway: u64,
    require_exp: bool,
    required_claims: Vec<String>,
    pub(crate) forward: Vec<(String, HeaderName)>,
    pub(crate) subject_claim: String,
    pub(crate) from_cookie: Option<String>,
    pub(crate) from_query: Option<String>,
    pub(crate) hide_credentials: bool,
    clock: UnixClock,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl JwtVerifier {
    /// Validates `config`, loads its keys (reading files, and fetching each
    /// JWKS URL once; a URL that fails now is retried in the background and
    /// tokens are refused until it loads) and starts the JWKS reloaders.
    pub async fn from_config(config: &JwtConfig) -> Result<Self, ConfigErrors> {
        config.validate()?;
        let allowed = config.allowed_algorithms();
        let mut errors = ConfigErrors::default();
        let mut static_keys = Vec::new();
        let mut jwks = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            let location = match (&key.jwks_file, &key.jwks_url) {
                (Some(path), _) => Some(JwksLocation::File(path.clone())),
                (None, Some(url)) => match reqwest::Url::parse(url) {
                    Ok(url) => Some(JwksLocation::Url(url)),
                    Err(e) => {
                        errors.push(join_path(&at, "jwks_url"), format!("not a URL: {e}"));
                        continue;
                    }
                },
                (None, None) => None,
            };
            let Some(location) = location else {
                match load_single_key(key, &allowed).await {
                    Ok(loaded) => static_keys.push(Arc::new(loaded)),
                    Err((field, message)) => errors.push(join_path(&at, &field), message),
                }
                continue;
            };
            let is_file = matches!(location, JwksLocation::File(_));
            let source = match JwksSource::new(
                location,
                allowed.clone(),
                key.refresh_interval.unwrap_or(DEFAULT_REFRESH_INTERVAL),
                key.min_refresh_interval
                    .unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL),
                key.fetch_timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT),
            ) {
                Ok(source) => source,
                Err(message) => {
                    errors.push(at, message);
                    continue;
                }
            };
            if let Err(message) = source.reload().await {
                if is_file {
                    // A file is under the operator's control: a bad one is a config error.
                    errors.push(join_path(&at, "jwks_file"), message);
                    continue;
                }
            }
            source.spawn_refresher();
            jwks.push(source);
        }
        errors.into_result()?;

        let validations = allowed
            .iter()
            .map(|alg| {
                let mut validation = Validation::new(*alg);
                // Times are checked here against the injectable clock.
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.required_spec_claims.clear();
                if config.issuer.is_empty() {
                    validation.iss = None;
                } else {
                    validation.set_issuer(&config.issuer);
                    validation.required_spec_claims.insert("iss".to_owned());
                }
                if config.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&config.audiences);
                    validation.required_spec_claims.insert("aud".to_owned());
                }
                (*alg, validation)
            })
            .collect();
        let forward = config
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .ok()
                    .map(|h| (claim.clone(), h))
            })
            .collect();
        Ok(JwtVerifier {
            allowed,
            static_keys,
            jwks,
            validations,
            leeway: config.leeway.as_secs(),
            require_exp: config.require_exp,
            required_claims: config.required_claims.clone(),
            forward,
            subject_claim: config.subject_claim.clone(),
            from_cookie: config.from_cookie.clone(),
            from_query: config.from_query.clone(),
            hide_credentials: config.hide_credentials,
            clock: UnixClock::system(),
        })
    }

    /// Replaces the clock used for `exp` and `nbf`.
    pub fn with_clock(mut self, clock: UnixClock) -> Self {
        self.clock = clock;
        self
    }

    /// The state of each JWKS source, in config order.
    pub fn jwks_status(&self) -> Vec<JwksStatus> {
        self.jwks.iter().map(|s| s.status()).collect()
    }

    /// Reloads every JWKS source now, ignoring the rate limit; a source that
    /// fails keeps its last good keys.
    pub async fn reload_jwks(&self) -> Vec<Result<usize, String>> {
        let mut results = Vec::with_capacity(self.jwks.len());
        for source in &self.jwks {
            results.push(source.reload().await);
        }
        results
    }

    /// Verifies a compact JWS token and its claims.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::MalformedToken);
        }
        let header = parse_header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::UnsignedToken);
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthError::AlgorithmNotAllowed)?;
        if !self.allowed.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if header.crit.is_some() {
            // We implement no JWS extensions, and RFC 7515 says a token
            // naming ones we do not understand must be refused.
            return Err(AuthError::MalformedToken);
        }
        let kid = header.kid.as_deref();
        let mut candidates = self.candidates(kid, alg);
        if candidates.is_empty() && kid.is_some() && !self.jwks.is_empty() {
            let mut changed = false;
            for source in &self.jwks {
                let seen = source.generation();
                if !source.keys().iter().any(|k| k.kid.as_deref() == kid) {
                    changed |= source.reload_for_unknown_kid(seen).await;
                }
            }
            if changed {
                candidates = self.candidates(kid, alg);
            }
        }
        if candidates.is_empty() {
            return Err(AuthError::NoMatchingKey);
        }
        let validation = self
            .validations
            .get(&alg)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let mut failure = AuthError::BadSignature;
        for key in candidates.iter().take(MAX_CANDIDATE_KEYS) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => {
                    self.check_claims(&data.claims)?;
                    return Ok(VerifiedToken {
                        claims: Arc::new(data.claims),
                        kid: header.kid,
                        algorithm: alg,
                    });
                }
                Err(e) => match e.kind() {
                    // Another key of the same kind may have signed it.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidAlgorithm => failure = AuthError::BadSignature,
                    // The signature was good; the claims are not.
                    ErrorKind::InvalidIssuer => return Err(AuthError::WrongIssuer),
                    ErrorKind::InvalidAudience => return Err(AuthError::WrongAudience),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        return Err(AuthError::MissingClaim(claim.clone()))
                    }
                    ErrorKind::InvalidClaimFormat(claim) => {
                        return Err(AuthError::InvalidClaim(claim.clone()))
                    }
                    _ => return Err(AuthError::MalformedToken),
                },
            }
        }
        Err(failure)
    }

    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerificationKey>> {
        let fits = |key: &Arc<VerificationKey>| {
            key.accepts(alg)
                && match (kid, key.kid.as_deref()) {
                    (Some(wanted), Some(have)) => wanted == have,
                    _ => true,
                }
        };
        let mut found: Vec<Arc<VerificationKey>> = self
            .static_keys
            .iter()
            .filter(|k| fits(k))
            .cloned()
            .collect();
        for source in &self.jwks {
            found.extend(source.keys().iter().filter(|k| fits(k)).cloned());
        }
        // Keys whose kid matches exactly go first.
        found.sort_by_key(|k| k.kid.is_none() || kid.is_none());
        found
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let now = self.clock.now();
        match claims.get("exp") {
            Some(exp) => {
                let exp =
                    numeric_date(exp).ok_or_else(|| AuthError::InvalidClaim("exp".to_owned()))?;
                if now >= exp.saturating_add(self.leeway) {
                    return Err(AuthError::Expired);
                }
            }
            None if self.require_exp => return Err(AuthError::MissingClaim("exp".to_owned())),
            None => {}
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or_else(|| AuthError::InvalidClaim("nbf".to_owned()))?;
            if now.saturating_add(self.leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        for claim in &self.required_claims {
            if claims.get(claim).is_none_or(Value::is_null) {
                return Err(AuthError::MissingClaim(claim.clone()));
            }
        }
        Ok(())
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional.
fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    value
        .as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f as u64)
}

fn parse_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::MalformedToken);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::MalformedToken)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::MalformedToken)
}
