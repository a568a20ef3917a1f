//! Verification keys: each one bound to the algorithms it may verify, which
//! is what defeats algorithm confusion (an HS256 token "signed" with an RSA
//! public key never reaches an RSA key, because an RSA key is bound to RSA
//! algorithms only). Loaded from inline secrets, PEM files and JWKS documents.

use super::{parse_algorithm, JwtKeyConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::sync::Arc;

/// A key and the algorithms it may verify (never empty).
pub(crate) struct VerificationKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The allowed algorithms of one family.
fn of_family(allowed: &[Algorithm], family: AlgorithmFamily) -> Vec<Algorithm> {
    allowed
        .iter()
        .copied()
        .filter(|a| a.family() == family)
        .collect()
}

/// Loads a single (non-JWKS) key. Errors name the key's own fields and never
/// contain the secret.
pub(crate) async fn load_single_key(
    config: &JwtKeyConfig,
    allowed: &[Algorithm],
) -> Result<VerificationKey, (String, String)> {
    let (decoding, family) = if let Some(secret) = &config.secret {
        (
            DecodingKey::from_secret(secret.0.as_bytes()),
            AlgorithmFamily::Hmac,
        )
    } else if let Some(var) = &config.secret_env {
        let value = std::env::var(var).map_err(|_| {
            (
                "secret_env".to_owned(),
                format!("environment variable {var} is not set"),
            )
        })?;
        check_secret_len(value.as_bytes(), "secret_env")?;
        (
            DecodingKey::from_secret(value.as_bytes()),
            AlgorithmFamily::Hmac,
        )
    } else if let Some(path) = &config.secret_file {
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            (
                "secret_file".to_owned(),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let trimmed = trim_newline(&bytes);
        check_secret_len(trimmed, "secret_file")?;
        (DecodingKey::from_secret(trimmed), AlgorithmFamily::Hmac)
    } else if let Some(pem) = &config.public_key_pem {
        decode_pem(pem.as_bytes()).map_err(|m| ("public_key_pem".to_owned(), m))?
    } else if let Some(path) = &config.public_key_file {
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            (
                "public_key_file".to_owned(),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        decode_pem(&bytes).map_err(|m| ("public_key_file".to_owned(), m))?
    } else {
        return Err((String::new(), "no single key source set".to_owned()));
    };
    let algorithms = match &config.algorithm {
        Some(name) => {
            let alg = parse_algorithm(name).map_err(|m| ("algorithm".to_owned(), m))?;
            if alg.family() != family {
                return Err((
                    "algorithm".to_owned(),
                    format!("{alg:?} cannot be used with a {family:?} key"),
                ));
            }
            vec![alg]
        }
        None => of_family(allowed, family),
    };
    if algorithms.is_empty() {
        return Err((
            String::new(),
            format!("this is a {family:?} key but jwt.algorithms allows no {family:?} algorithm"),
        ));
    }
    Ok(VerificationKey {
        kid: config.kid.clone(),
        algorithms,
        decoding,
    })
}

fn check_secret_len(secret: &[u8], field: &str) -> Result<(), (String, String)> {
    if secret.len() < 32 {
        return Err((
            field.to_owned(),
            "an HMAC secret must be at least 32 bytes".to_owned(),
        ));
    }
    Ok(())
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

fn decode_pem(pem: &[u8]) -> Result<(DecodingKey, AlgorithmFamily), String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, AlgorithmFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, AlgorithmFamily::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, AlgorithmFamily::Ed));
    }
    Err("not an RSA, EC or Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\")".to_owned())
}

/// Parses a JWKS document into the keys usable for signature verification
/// under `allowed`. Keys this crate cannot use (encryption keys, unknown
/// types, algorithms outside the allow-list) are skipped rather than failing
/// the whole set, as identity providers publish such keys alongside.
pub(crate) fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
) -> Result<Vec<Arc<VerificationKey>>, String> {
    let document: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = document
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| "not a JWKS: no \"keys\" array".to_owned())?;
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match jwk_to_key(entry, allowed) {
            Ok(key) => keys.push(Arc::new(key)),
            Err(reason) => tracing::debug!(index = i, %reason, "skipping JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "none of its {} keys can verify any of the allowed algorithms",
            entries.len()
        ));
    }
    Ok(keys)
}

fn jwk_to_key(entry: &serde_json::Value, allowed: &[Algorithm]) -> Result<VerificationKey, String> {
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|e| format!("unsupported key: {e}"))?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key".to_owned());
    }
    let family_algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => of_family(allowed, AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(ec) => {
            let alg = match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err("unsupported curve".to_owned()),
            };
            allowed.iter().copied().filter(|a| *a == alg).collect()
        }
        AlgorithmParameters::OctetKeyPair(_) => of_family(allowed, AlgorithmFamily::Ed),
        AlgorithmParameters::OctetKey(_) => of_family(allowed, AlgorithmFamily::Hmac),
        _ => return Err("unsupported key type".to_owned()),
    };
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(declared) => {
            let alg = Algorithm::try_from(declared)
                .map_err(|_| format!("algorithm {declared} is not for signatures"))?;
            if !family_algorithms.contains(&alg) {
                return Err(format!(
                    "{alg:?} is not allowed or does not fit the key type"
                ));
            }
            vec![alg]
        }
        None => family_algorithms,
    };
    if algorithms.is_empty() {
        return Err("no allowed algorithm fits this key".to_owned());
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("invalid key material: {e}"))?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        decoding,
    })
}
