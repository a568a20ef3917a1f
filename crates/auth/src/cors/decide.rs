//! The CORS decision for one request, independent of any service stack, so
//! the tower [`super::CorsLayer`] and the gateway's own request path apply
//! exactly the same rules.

use super::CorsPolicy;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

/// Response headers the policy owns: any the upstream set are replaced.
const CORS_RESPONSE_HEADERS: [header::HeaderName; 4] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// What CORS makes of one request.
#[derive(Debug, Clone)]
pub enum CorsDecision {
    /// No `Origin` header: not a cross-origin request; leave it alone.
    NotCors,
    /// A preflight, to be answered without forwarding: `204` with `headers`
    /// when `allowed`, else `403` (`headers` then carries only `Vary`).
    Preflight { allowed: bool, headers: HeaderMap },
    /// An actual request: forward it, then [`apply_cors_headers`] these to
    /// the response (only `Vary: origin` when the origin is not allowed).
    Forward(HeaderMap),
}

impl CorsPolicy {
    /// Decides a request from its method and headers.
    pub fn decide(&self, method: &Method, request: &HeaderMap) -> CorsDecision {
        let Some(origin) = request.get(header::ORIGIN) else {
            return CorsDecision::NotCors;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows_origin(o));
        if method == Method::OPTIONS && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return self.preflight(request, origin, allowed);
        }
        let mut headers = HeaderMap::new();
        if allowed {
            self.allow_origin_headers(&mut headers, origin);
            if let Some(expose) = &self.expose_headers {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        } else {
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        CorsDecision::Forward(headers)
    }

    fn allow_origin_headers(&self, headers: &mut HeaderMap, origin: &HeaderValue) {
        if self.any_origin && !self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn preflight(&self, request: &HeaderMap, origin: &HeaderValue, allowed: bool) -> CorsDecision {
        let requested_method = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let requested_headers: Vec<String> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let permitted = allowed
            && self.allows_method(requested_method)
            && requested_headers.iter().all(|h| self.allows_header(h));

        let mut headers = HeaderMap::new();
        headers.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        if !permitted {
            return CorsDecision::Preflight {
                allowed: false,
                headers,
            };
        }
        let mut cors = HeaderMap::new();
        self.allow_origin_headers(&mut cors, origin);
        cors.remove(header::VARY);
        headers.extend(cors);
        let methods = if self.any_method {
            HeaderValue::from_str(requested_method).unwrap_or_else(|_| self.allow_methods.clone())
        } else {
            self.allow_methods.clone()
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        if self.any_header {
            if !requested_headers.is_empty() {
                if let Ok(value) = HeaderValue::from_str(&requested_headers.join(", ")) {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
                }
            }
        } else if let Some(allow) = &self.allow_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow.clone());
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        CorsDecision::Preflight {
            allowed: true,
            headers,
        }
    }
}

/// Puts the headers of [`CorsDecision::Forward`] on a response: the
/// upstream's own CORS headers are replaced, and `Vary: origin` is added
/// unless the response already varies on it.
pub fn apply_cors_headers(target: &mut HeaderMap, mut cors: HeaderMap) {
    for name in CORS_RESPONSE_HEADERS {
        target.remove(&name);
    }
    for (name, value) in cors.drain() {
        if let Some(name) = name {
            if name == header::VARY {
                append_vary(target, value);
            } else {
                target.insert(name, value);
            }
        }
    }
}

fn append_vary(headers: &mut HeaderMap, value: HeaderValue) {
    let already = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|p| p.trim() == "*" || p.trim().eq_ignore_ascii_case("origin"))
            })
            .unwrap_or(false)
    });
    if !already {
        headers.append(header::VARY, value);
    }
}
