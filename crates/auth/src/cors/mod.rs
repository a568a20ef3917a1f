//! Cross-origin resource sharing per route: the `[cors]` table, compiled into
//! a [`CorsPolicy`], and the [`CorsLayer`] that answers preflights itself and
//! adds CORS headers to the inner service's responses.
//!
//! CORS is not access control: a request from an origin that is not allowed
//! is still forwarded (a browser simply will not let the page read the
//! answer); only preflights, which exist to ask permission, are answered
//! here, with `403` when the answer is no.

mod decide;
mod service;

pub use decide::{apply_cors_headers, CorsDecision};
pub use service::{Cors, CorsFuture, CorsLayer};

use crate::config::{duration, ConfigErrors};
use http::header::{HeaderName, HeaderValue};
use http::Method;
use serde::Deserialize;
use std::time::Duration;

/// The CORS policy of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `"https://app.example.com"`, `"https://*.example.com"` (any subdomain,
    /// not the apex), `"http://localhost:3000"`, or `"*"` (any origin; not
    /// with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a cross-origin request may use; `"*"` for any.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a cross-origin request may send; `"*"` allows whatever
    /// the preflight asks for. CORS-safelisted headers are always allowed.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers the page may read beyond the safelisted ones.
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin requests.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default, with = "duration::option")]
    pub max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

impl CorsConfig {
    /// Checks origins, methods and header names.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if self.allowed_origins.is_empty() {
            errors.push("allowed_origins", "list at least one origin, or \"*\"");
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            match OriginRule::parse(origin) {
                Err(message) => errors.push(format!("allowed_origins[{i}]"), message),
                Ok(OriginRule::Any) if self.allow_credentials => errors.push(
                    format!("allowed_origins[{i}]"),
                    "\"*\" cannot be combined with allow_credentials = true (browsers refuse it); list the origins",
                ),
                Ok(_) => {}
            }
        }
        for (i, method) in self.allowed_methods.iter().enumerate() {
            if method != "*" && Method::from_bytes(method.as_bytes()).is_err() {
                errors.push(
                    format!("allowed_methods[{i}]"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
        }
        for (key, list) in [
            ("allowed_headers", &self.allowed_headers),
            ("exposed_headers", &self.exposed_headers),
        ] {
            for (i, header) in list.iter().enumerate() {
                if header != "*" && HeaderName::from_bytes(header.as_bytes()).is_err() {
                    errors.push(
                        format!("{key}[{i}]"),
                        format!("{header:?} is not a valid header name"),
                    );
                }
            }
        }
        if self.allow_credentials && self.exposed_headers.iter().any(|h| h == "*") {
            errors.push(
                "exposed_headers",
                "\"*\" is taken literally with credentials; list the headers",
            );
        }
        errors.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    /// A whole origin, lowercased.
    Exact(String),
    /// `scheme://*.domain[:port]`: `prefix` is `scheme://`, `suffix` is `.domain[:port]`.
    Subdomain {
        prefix: String,
        suffix: String,
    },
}

impl OriginRule {
    fn parse(text: &str) -> Result<OriginRule, String> {
        if text == "*" {
            return Ok(OriginRule::Any);
        }
        if text == "null" {
            return Ok(OriginRule::Exact("null".to_owned()));
        }
        let lower = text.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "{text:?} is not an origin like \"https://app.example.com\""
            ));
        };
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(format!("{text:?} has an invalid scheme"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "{text:?}: an origin is scheme://host[:port], with no path or trailing slash"
            ));
        }
        if let Some(domain) = rest.strip_prefix("*.") {
            if domain.contains('*')
                || domain.is_empty()
                || !domain.contains('.') && !domain.starts_with("localhost")
            {
                return Err(format!("{text:?}: a wildcard must cover subdomains of a domain, e.g. https://*.example.com"));
            }
            return Ok(OriginRule::Subdomain {
                prefix: format!("{scheme}://"),
                suffix: format!(".{domain}"),
            });
        }
        if rest.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard is allowed only as the first label (https://*.example.com)"
            ));
        }
        Ok(OriginRule::Exact(lower))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Subdomain { prefix, suffix } => {
                let origin = origin.to_ascii_lowercase();
                let Some(rest) = origin.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                let Some(label) = rest.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                !label.is_empty()
                    && !label.starts_with('.')
                    && !label.ends_with('.')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

/// A compiled [`CorsConfig`].
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<OriginRule>,
    any_origin: bool,
    any_method: bool,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    any_header: bool,
    headers: Vec<HeaderName>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

impl CorsPolicy {
    /// Validates and compiles `config`.
    pub fn from_config(config: &CorsConfig) -> Result<Self, ConfigErrors> {
        config.validate()?;
        let origins: Vec<OriginRule> = config
            .allowed_origins
            .iter()
            .filter_map(|o| OriginRule::parse(o).ok())
            .collect();
        let any_method = config.allowed_methods.iter().any(|m| m == "*");
        let methods: Vec<Method> = config
            .allowed_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let any_header = config.allowed_headers.iter().any(|h| h == "*");
        let headers: Vec<HeaderName> = config
            .allowed_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let joined_value = |items: Vec<&str>| {
            if items.is_empty() {
                Ok(None)
            } else {
                HeaderValue::from_str(&items.join(", ")).map(Some)
            }
        };
        let invalid = |key: &str| ConfigErrors::single(key, "cannot be sent as a header value");
        let allow_methods = joined_value(methods.iter().map(Method::as_str).collect())
            .map_err(|_| invalid("allowed_methods"))?
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let allow_headers = joined_value(headers.iter().map(HeaderName::as_str).collect())
            .map_err(|_| invalid("allowed_headers"))?;
        let expose_headers =
            joined_value(config.exposed_headers.iter().map(String::as_str).collect())
                .map_err(|_| invalid("exposed_headers"))?;
        Ok(CorsPolicy {
            any_origin: origins.contains(&OriginRule::Any),
            origins,
            any_method,
            methods,
            allow_methods,
            any_header,
            headers,
            allow_headers,
            expose_headers,
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|d| HeaderValue::from(d.as_secs())),
        })
    }

    /// Whether a request from `origin` may be read by the page.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|rule| rule.matches(origin))
    }

    fn allows_method(&self, method: &str) -> bool {
        self.any_method || self.methods.iter().any(|m| m.as_str() == method)
    }

    fn allows_header(&self, header: &str) -> bool {
        const SAFELISTED: &[&str] = &[
            "accept",
            "accept-language",
            "content-language",
            "content-type",
            "range",
        ];
        self.any_header
            || SAFELISTED.contains(&header)
            || self
                .headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(header))
    }
}
