//! API keys: the `[auth.api_keys]` table, hashing and generation of keys (the
//! `trellis auth hash-key` / `gen-key` helpers), and the verifier that finds a
//! presented key among the configured hashes in constant time.
//!
//! Keys are long random tokens, not passwords, so an unsalted SHA-256 is the
//! right storage (as for GitHub or Stripe tokens): a leaked config reveals no
//! usable key, and a slow password hash would only cost latency.

use crate::config::{is_visible_ascii, ConfigErrors};
use base64::Engine;
use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use subtle::ConstantTimeEq;

const HASH_PREFIX: &str = "sha256:";

/// Which requests' API keys are accepted, and from where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The request header carrying the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// Also accept `Authorization: <scheme> <key>`, e.g. `"ApiKey"`.
    #[serde(default)]
    pub authorization_scheme: Option<String>,
    /// Also accept the key in this query parameter (keys in URLs end up in
    /// logs; prefer a header).
    #[serde(default)]
    pub query_param: Option<String>,
    /// Remove the key from the request before it is forwarded upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// Forward the id of the key that matched in this header; any copy the
    /// client sent is removed first.
    #[serde(default)]
    pub forward_id_header: Option<String>,
    /// The accepted keys.
    pub keys: Vec<ApiKeyEntry>,
}

/// One accepted key: a name for logs and rate limits, and its hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// A stable name for the key (who holds it), never the key itself.
    pub id: String,
    /// `sha256:` followed by 64 hex digits, as printed by `hash_api_key`.
    pub hash: String,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

fn yes() -> bool {
    true
}

impl ApiKeyConfig {
    /// Checks header names, ids and hash formats.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            errors.push(
                "header",
                format!("{:?} is not a valid header name", self.header),
            );
        }
        if let Some(scheme) = &self.authorization_scheme {
            if scheme.is_empty()
                || !scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                errors.push(
                    "authorization_scheme",
                    "must be a single token such as \"ApiKey\"",
                );
            } else if scheme.eq_ignore_ascii_case("bearer") {
                errors.push(
                    "authorization_scheme",
                    "\"Bearer\" is reserved for JWTs; use e.g. \"ApiKey\"",
                );
            }
        }
        if let Some(param) = &self.query_param {
            if param.is_empty() || !is_visible_ascii(param) || param.contains(['&', '=', '#', ' '])
            {
                errors.push("query_param", "must be a plain parameter name");
            }
        }
        if let Some(header) = &self.forward_id_header {
            errors.extend_at(
                "forward_id_header",
                crate::jwt::validate_forward_header(header),
            );
        }
        if self.keys.is_empty() {
            errors.push(
                "keys",
                "list at least one key (make one with `trellis auth gen-key`)",
            );
        }
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if key.id.is_empty() || !is_visible_ascii(&key.id) {
                errors.push(format!("keys[{i}].id"), "must be non-empty printable ASCII");
            } else if !ids.insert(key.id.as_str()) {
                errors.push(
                    format!("keys[{i}].id"),
                    format!("duplicate key id {:?}", key.id),
                );
            }
            match parse_hash(&key.hash) {
                Ok(digest) => {
                    if !hashes.insert(digest) {
                        errors.push(format!("keys[{i}].hash"), "the same hash is listed twice");
                    }
                }
                Err(message) => errors.push(format!("keys[{i}].hash"), message),
            }
        }
        errors.into_result()
    }
}

/// Parses `sha256:<64 hex>`; the error never repeats the value, which may be
/// a plaintext key pasted in by mistake.
fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(hex_part) = text.strip_prefix(HASH_PREFIX) else {
        let hint = if text.contains(':') {
            "unsupported hash scheme"
        } else {
            "this looks like a plaintext key; store its hash instead"
        };
        return Err(format!(
            "expected \"sha256:\" followed by 64 hex digits ({hint}; `trellis auth hash-key` prints it)"
        ));
    };
    if hex_part.len() != 64 {
        return Err(format!(
            "expected 64 hex digits after \"sha256:\", found {} characters",
            hex_part.len()
        ));
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut digest)
        .map_err(|_| "the part after \"sha256:\" must be hex digits (0-9, a-f)".to_owned())?;
    Ok(digest)
}

/// The value to store in `keys[].hash` for a plaintext key.
pub fn hash_api_key(plaintext: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(plaintext.as_bytes()))
    )
}

/// A freshly generated API key: hand `plaintext` to the client once, store
/// `hash` in the config.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedApiKey {
    /// `trl_` followed by 43 URL-safe characters (256 random bits).
    pub plaintext: String,
    /// `hash_api_key(&plaintext)`.
    pub hash: String,
}

impl std::fmt::Debug for GeneratedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedApiKey")
            .field("plaintext", &"<redacted>")
            .field("hash", &self.hash)
            .finish()
    }
}

/// Generates a key from the operating system's CSPRNG-seeded generator.
pub fn generate_api_key() -> GeneratedApiKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = format!(
        "trl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_api_key(&plaintext);
    GeneratedApiKey { plaintext, hash }
}

/// Generates a random HS256 secret (256 bits, base64url), for `jwt.keys[].secret`.
pub fn generate_hmac_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The compiled form of an [`ApiKeyConfig`].
#[derive(Debug)]
pub(crate) struct ApiKeyVerifier {
    header: HeaderName,
    scheme: Option<String>,
    query_param: Option<String>,
    pub(crate) hide_credentials: bool,
    pub(crate) forward_id_header: Option<HeaderName>,
    keys: Vec<(String, [u8; 32])>,
}

/// Where a presented key was found, so it can be removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyLocation {
    Header,
    Authorization,
    Query,
}

impl ApiKeyVerifier {
    pub(crate) fn new(config: &ApiKeyConfig) -> Result<Self, ConfigErrors> {
        config.validate()?;
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| ConfigErrors::single("header", "invalid header name"))?;
        let forward_id_header =
            match &config.forward_id_header {
                Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    ConfigErrors::single("forward_id_header", "invalid header name")
                })?),
                None => None,
            };
        let mut keys = Vec::with_capacity(config.keys.len());
        for (i, key) in config.keys.iter().enumerate() {
            let digest = parse_hash(&key.hash)
                .map_err(|m| ConfigErrors::single(format!("keys[{i}].hash"), m))?;
            keys.push((key.id.clone(), digest));
        }
        Ok(ApiKeyVerifier {
            header,
            scheme: config.authorization_scheme.clone(),
            query_param: config.query_param.clone(),
            hide_credentials: config.hide_credentials,
            forward_id_header,
            keys,
        })
    }

    /// The key the request presents, if any, and where.
    pub(crate) fn extract(&self, parts: &Parts) -> Option<(String, KeyLocation)> {
        if let Some(value) = parts.headers.get(&self.header) {
            return Some((
                String::from_utf8_lossy(value.as_bytes()).trim().to_owned(),
                KeyLocation::Header,
            ));
        }
        if let Some(scheme) = &self.scheme {
            for value in parts.headers.get_all(AUTHORIZATION) {
                if let Some(key) = strip_scheme(value.as_bytes(), scheme) {
                    return Some((key, KeyLocation::Authorization));
                }
            }
        }
        if let Some(param) = &self.query_param {
            if let Some(value) = query_value(parts.uri.query(), param) {
                return Some((value, KeyLocation::Query));
            }
        }
        None
    }

    /// The id of the key whose hash matches, comparing against every
    /// configured hash so the time taken does not depend on which one matched.
    pub(crate) fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&str> = None;
        for (id, stored) in &self.keys {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(id);
            }
        }
        found
    }

    /// Removes the presented key from the request so the upstream never sees it.
    pub(crate) fn hide(&self, parts: &mut Parts, location: KeyLocation) {
        match location {
            KeyLocation::Header => {
                parts.headers.remove(&self.header);
            }
            KeyLocation::Authorization => {
                if let Some(scheme) = &self.scheme {
                    let kept: Vec<_> = parts
                        .headers
                        .get_all(AUTHORIZATION)
                        .iter()
                        .filter(|v| strip_scheme(v.as_bytes(), scheme).is_none())
                        .cloned()
                        .collect();
                    parts.headers.remove(AUTHORIZATION);
                    for value in kept {
                        parts.headers.append(AUTHORIZATION, value);
                    }
                }
            }
            KeyLocation::Query => {
                if let Some(param) = &self.query_param {
                    remove_query_param(&mut parts.uri, param);
                }
            }
        }
    }

    pub(crate) fn header_name(&self) -> &HeaderName {
        &self.header
    }
}

/// `<scheme> <credentials>` with a case-insensitive scheme, per RFC 9110.
pub(crate) fn strip_scheme(value: &[u8], scheme: &str) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (given, rest) = text.split_once(' ')?;
    if !given.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let credentials = rest.trim();
    (!credentials.is_empty()).then(|| credentials.to_owned())
}

/// The percent-decoded value of the first `name=` pair in a query string.
pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn remove_query_param(uri: &mut http::Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            url::form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k != name)
                .unwrap_or(key != name)
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut builder = http::Uri::builder();
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = uri.authority() {
        builder = builder.authority(authority.clone());
    }
    if let Ok(new_uri) = builder.path_and_query(path_and_query).build() {
        *uri = new_uri;
    }
}
