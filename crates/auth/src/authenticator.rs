//! The authenticator of one route: finds the credentials in a request,
//! verifies them, and rewrites the request for the upstream (spoofable
//! headers removed, claim headers added, credentials hidden if configured,
//! the [`Identity`] in its extensions). Usable without tower through
//! [`Authenticator::authenticate`].

use crate::api_key::{query_value, strip_scheme, ApiKeyVerifier};
use crate::config::{AuthConfig, ConfigErrors};
use crate::error::{AuthError, Challenge};
use crate::identity::{claim_text, Credential, Identity};
use crate::jwt::{JwtVerifier, UnixClock};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::Response;
use http_body_util::Full;

/// Verifies the credentials of requests to one route.
#[derive(Debug)]
pub struct Authenticator {
    api_keys: Option<ApiKeyVerifier>,
    jwt: Option<JwtVerifier>,
    allow_anonymous: bool,
    challenge: Challenge,
    /// Headers only this layer may set: any client-sent copy is removed.
    reserved_headers: Vec<HeaderName>,
}

/// Where a bearer token was found.
enum TokenLocation {
    Authorization,
    Cookie(String),
    Query(String),
}

impl Authenticator {
    /// Validates `config` and loads its keys (see [`JwtVerifier::from_config`]).
    pub async fn from_config(config: &AuthConfig) -> Result<Self, ConfigErrors> {
        config.validate()?;
        let api_keys = match &config.api_keys {
            Some(c) => Some(ApiKeyVerifier::new(c).map_err(|e| e.with_prefix("api_keys"))?),
            None => None,
        };
        let jwt = match &config.jwt {
            Some(c) => Some(
                JwtVerifier::from_config(c)
                    .await
                    .map_err(|e| e.with_prefix("jwt"))?,
            ),
            None => None,
        };
        let mut reserved_headers: Vec<HeaderName> = Vec::new();
        if let Some(jwt) = &jwt {
            reserved_headers.extend(jwt.forward.iter().map(|(_, h)| h.clone()));
        }
        if let Some(header) = api_keys.as_ref().and_then(|a| a.forward_id_header.clone()) {
            reserved_headers.push(header);
        }
        reserved_headers.dedup();
        Ok(Authenticator {
            challenge: Challenge {
                realm: config.realm.clone(),
                bearer: jwt.is_some(),
                api_key_header: api_keys
                    .as_ref()
                    .map(|a| a.header_name().as_str().to_owned()),
            },
            api_keys,
            jwt,
            allow_anonymous: config.allow_anonymous,
            reserved_headers,
        })
    }

    /// Replaces the clock `exp` and `nbf` are checked against.
    pub fn with_clock(mut self, clock: UnixClock) -> Self {
        self.jwt = self.jwt.map(|j| j.with_clock(clock));
        self
    }

    /// The JWT verifier, for JWKS status and forced reloads.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Authenticates a request and rewrites it for the upstream. `Ok(None)`
    /// means an anonymous request on a route that allows them. On `Err` the
    /// request must not be forwarded; answer it with [`Self::reject`].
    pub async fn authenticate(&self, parts: &mut Parts) -> Result<Option<Identity>, AuthError> {
        for header in &self.reserved_headers {
            parts.headers.remove(header);
        }
        if let Some(jwt) = &self.jwt {
            if let Some((token, location)) = find_token(parts, jwt) {
                let verified = jwt.verify(&token).await?;
                for (claim, header) in &jwt.forward {
                    let Some(text) = verified.claims.get(claim).and_then(claim_text) else {
                        continue;
                    };
                    match HeaderValue::from_str(&text) {
                        Ok(value) => {
                            parts.headers.insert(header.clone(), value);
                        }
                        Err(_) => {
                            tracing::debug!(%claim, "claim not forwarded: not a valid header value")
                        }
                    }
                }
                if jwt.hide_credentials {
                    hide_token(parts, &location);
                }
                let identity = Identity {
                    subject: verified
                        .claims
                        .get(&jwt.subject_claim)
                        .and_then(claim_text)
                        .map(|s| s.into_owned()),
                    credential: Credential::Jwt {
                        key_id: verified.kid,
                        claims: verified.claims,
                    },
                };
                parts.extensions.insert(identity.clone());
                return Ok(Some(identity));
            }
        }
        if let Some(api_keys) = &self.api_keys {
            if let Some((presented, location)) = api_keys.extract(parts) {
                let key_id = api_keys
                    .verify(&presented)
                    .ok_or(AuthError::UnknownApiKey)?
                    .to_owned();
                if api_keys.hide_credentials {
                    api_keys.hide(parts, location);
                }
                if let Some(header) = &api_keys.forward_id_header {
                    if let Ok(value) = HeaderValue::from_str(&key_id) {
                        parts.headers.insert(header.clone(), value);
                    }
                }
                let identity = Identity {
                    subject: Some(key_id.clone()),
                    credential: Credential::ApiKey { key_id },
                };
                parts.extensions.insert(identity.clone());
                return Ok(Some(identity));
            }
        }
        if self.allow_anonymous {
            Ok(None)
        } else {
            Err(AuthError::MissingCredentials)
        }
    }

    /// The `401` answer for `error`.
    pub fn reject(&self, error: &AuthError) -> Response<Full<Bytes>> {
        self.challenge.response(error)
    }
}

fn find_token(parts: &Parts, jwt: &JwtVerifier) -> Option<(String, TokenLocation)> {
    for value in parts.headers.get_all(AUTHORIZATION) {
        if let Some(token) = strip_scheme(value.as_bytes(), "Bearer") {
            return Some((token, TokenLocation::Authorization));
        }
    }
    if let Some(name) = &jwt.from_cookie {
        for value in parts.headers.get_all(COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == name && !v.is_empty() {
                        return Some((v.to_owned(), TokenLocation::Cookie(name.clone())));
                    }
                }
            }
        }
    }
    if let Some(name) = &jwt.from_query {
        if let Some(token) = query_value(parts.uri.query(), name) {
            return Some((token, TokenLocation::Query(name.clone())));
        }
    }
    None
}

fn hide_token(parts: &mut Parts, location: &TokenLocation) {
    match location {
        TokenLocation::Authorization => {
            let kept: Vec<HeaderValue> = parts
                .headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter(|v| strip_scheme(v.as_bytes(), "Bearer").is_none())
                .cloned()
                .collect();
            parts.headers.remove(AUTHORIZATION);
            for value in kept {
                parts.headers.append(AUTHORIZATION, value);
            }
        }
        TokenLocation::Cookie(name) => {
            let rewritten: Vec<String> = parts
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|text| {
                    text.split(';')
                        .map(str::trim)
                        .filter(|pair| pair.split('=').next() != Some(name.as_str()))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|s| !s.is_empty())
                .collect();
            parts.headers.remove(COOKIE);
            for text in rewritten {
                if let Ok(value) = HeaderValue::from_str(&text) {
                    parts.headers.append(COOKIE, value);
                }
            }
        }
        TokenLocation::Query(name) => crate::api_key::remove_query_param(&mut parts.uri, name),
    }
}
