//! Authentication and CORS for the Trellis gateway and the sidecar's inbound
//! side, as tower layers over `http::Request`/`http::Response` applied per
//! route. Part of the **API gateway** pattern (and of **backend for
//! frontend** and **sidecar**, which stand on it): the gateway proves who
//! the caller is before any upstream sees the request.
//!
//! - **API keys**, stored as SHA-256 hashes in the config and compared in
//!   constant time ([`hash_api_key`], [`generate_api_key`]).
//! - **JWT** bearer tokens (HS256/384/512, RS256/384/512, PS256/384/512,
//!   ES256/384, EdDSA through `jsonwebtoken`), with keys from inline
//!   secrets, PEM files, or JWKS files and URLs (cached by `kid`, refreshed
//!   on an interval and on an unknown `kid` at a bounded rate, keeping the
//!   last good set when a refresh fails); `iss`, `aud`, `exp`, `nbf` with
//!   leeway, required claims, and claims forwarded to the upstream as
//!   headers. `alg: none` is never accepted, and every key is bound to the
//!   algorithms of its own kind, so algorithm confusion is impossible.
//! - **CORS** per route ([`CorsLayer`]), preflights answered by the layer.
//!
//! A refused request is answered `401` with a `WWW-Authenticate` challenge
//! and an RFC 9457 problem body (`application/problem+json`) whose `code`
//! is one of `missing_credentials`, `invalid_token`, `token_expired`,
//! `invalid_api_key`; the inner service is never called. An accepted request
//! reaches the inner service with every client-sent copy of the forwarded
//! headers removed (so they cannot be spoofed), the claim headers added, and
//! an [`Identity`] in its extensions for the rate limiter and access log.
//!
//! ```no_run
//! # async fn example(config: trellis_auth::AuthConfig, cors: trellis_auth::CorsConfig) -> Result<(), trellis_auth::ConfigErrors> {
//! use std::sync::Arc;
//! use tower::ServiceBuilder;
//! use trellis_auth::{AuthLayer, Authenticator, CorsLayer, CorsPolicy};
//!
//! let authenticator = Arc::new(Authenticator::from_config(&config).await?);
//! let stack = ServiceBuilder::new()
//!     .layer(CorsLayer::new(CorsPolicy::from_config(&cors)?)) // outermost: preflights first
//!     .layer(AuthLayer::new(authenticator));
//! # let _ = stack; Ok(()) }
//! ```
//!
//! # Configuration reference
//!
//! The gateway embeds [`AuthConfig`] as a route's `auth` table and
//! [`CorsConfig`] as its `cors` table. Durations are humantime strings
//! (`"30s"`, `"5m"`). Unknown keys are errors. [`AuthConfig::validate`] and
//! [`CorsConfig::validate`] return every problem with its key path.
//!
//! ## `auth`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `api_keys` | — | table below; accept API keys |
//! | `jwt` | — | table below; accept bearer JWTs |
//! | `allow_anonymous` | `false` | let requests with no credentials through without an identity (wrong credentials are still refused) |
//! | `realm` | `"trellis"` | realm in `WWW-Authenticate` |
//!
//! At least one of `api_keys` and `jwt` is required. With both, a request
//! may present either; a bearer token is checked first.
//!
//! ## `auth.api_keys`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `header` | `"x-api-key"` | header carrying the key |
//! | `authorization_scheme` | — | also accept `Authorization: <scheme> <key>`, e.g. `"ApiKey"` |
//! | `query_param` | — | also accept the key in this query parameter |
//! | `hide_credentials` | `true` | remove the key from the request before forwarding |
//! | `forward_id_header` | — | send the matched key's `id` upstream in this header |
//! | `keys` | required | list of `{ id, hash }`; `hash` is `"sha256:<64 hex>"` from `trellis auth hash-key` |
//!
//! ```toml
//! [routes.auth.api_keys]
//! forward_id_header = "x-api-key-id"
//! keys = [{ id = "mobile-app", hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }]
//! ```
//!
//! ## `auth.jwt`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `issuer` | — (not checked) | accepted `iss`, a string or a list |
//! | `audiences` (alias `audience`) | — (not checked) | accepted `aud` values; the token must name one |
//! | `algorithms` | required | allow-list, e.g. `["RS256", "ES256"]`; `"none"` is rejected |
//! | `keys` | required | list of key sources, below |
//! | `leeway` | `"30s"` | clock skew tolerated on `exp` and `nbf` (at most `"10m"`) |
//! | `require_exp` | `true` | refuse tokens without `exp` |
//! | `required_claims` | `[]` | claims that must be present and not null |
//! | `forward_claims` | `{}` | claim → header sent upstream, e.g. `{ sub = "x-user-id" }`; arrays are comma-joined |
//! | `subject_claim` | `"sub"` | the claim that becomes [`Identity::subject`] |
//! | `from_cookie` | — | also read the token from this cookie |
//! | `from_query` | — | also read the token from this query parameter |
//! | `hide_credentials` | `false` | remove the token from the request before forwarding |
//! | `token_cache_size` | `10000` | verified tokens remembered so a repeated token skips the signature check; `0` turns it off |
//! | `token_cache_ttl` | `"60s"` | how long a verified token is remembered |
//!
//! The token cache keeps only signature verdicts (keyed by the token's
//! SHA-256): `exp`, `nbf` and required claims are checked on every request,
//! and every successful JWKS reload empties it.
//!
//! A token is read from `Authorization: Bearer <token>` first. Its header's
//! `jku`, `x5u` and `jwk` are ignored (keys never come from the token), and a
//! `crit` header is refused.
//!
//! ## `auth.jwt.keys[]`
//!
//! Exactly one source per entry:
//!
//! | key | meaning |
//! |---|---|
//! | `secret` / `secret_env` / `secret_file` | HMAC secret (at least 32 bytes), inline, from an environment variable, or from a file |
//! | `public_key_pem` / `public_key_file` | RSA, EC or Ed25519 public key in PEM |
//! | `jwks_file` | JWKS document on disk (must load at startup) |
//! | `jwks_url` | JWKS endpoint, `https://` (or `http://` to loopback); if it is down at startup, tokens are refused until it loads |
//!
//! and for single keys: `kid` (match only tokens naming this kid; without
//! it the key is tried for any token) and `algorithm` (bind the key to one
//! algorithm; by default every allowed algorithm of its kind). For JWKS:
//! `refresh_interval` (default `"5m"`), `min_refresh_interval` (default
//! `"10s"`: the least time between reloads triggered by unknown kids, and
//! the first retry delay after a failed reload) and `fetch_timeout`
//! (default `"5s"`).
//!
//! ```toml
//! [routes.auth.jwt]
//! issuer = "https://id.example.com/"
//! audiences = ["orders-api"]
//! algorithms = ["RS256"]
//! required_claims = ["tenant"]
//! forward_claims = { sub = "x-user-id", tenant = "x-tenant-id" }
//! keys = [{ jwks_url = "https://id.example.com/.well-known/jwks.json", refresh_interval = "10m" }]
//! ```
//!
//! ## `cors`
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `allowed_origins` | required | `"https://app.example.com"`, `"https://*.example.com"` (subdomains, not the apex), or `"*"` |
//! | `allowed_methods` | `["GET", "HEAD", "POST"]` | or `["*"]` |
//! | `allowed_headers` | `[]` | request headers allowed beyond the safelisted ones; `["*"]` allows what the preflight asks |
//! | `exposed_headers` | `[]` | response headers the page may read |
//! | `allow_credentials` | `false` | allow cookies/`Authorization`; not with origin `"*"` |
//! | `max_age` | — | how long browsers may cache a preflight |
//!
//! A preflight from an allowed origin for an allowed method and headers gets
//! `204` with the CORS headers, any other preflight `403`; neither reaches
//! the inner service. Other requests always pass through; the response gets
//! CORS headers when the origin is allowed (any the upstream set are
//! replaced) and `Vary: origin`.

pub mod api_key;
mod authenticator;
mod config;
pub mod cors;
mod error;
mod identity;
pub mod jwt;
mod layer;

pub use api_key::{
    generate_api_key, generate_hmac_secret, hash_api_key, ApiKeyConfig, ApiKeyEntry,
    GeneratedApiKey,
};
pub use authenticator::Authenticator;
pub use config::{AuthConfig, ConfigError, ConfigErrors, Secret};
pub use cors::{apply_cors_headers, Cors, CorsConfig, CorsDecision, CorsLayer, CorsPolicy};
pub use error::{AuthError, FailureCode};
pub use identity::{Credential, Identity};
pub use jwt::{JwksStatus, JwtConfig, JwtKeyConfig, JwtVerifier, UnixClock, VerifiedToken};
pub use layer::{AuthBody, AuthLayer, AuthService, BoxError};
