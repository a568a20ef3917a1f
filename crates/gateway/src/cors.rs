//! CORS on the request path: a route's [`CorsPolicy`] (from `trellis-auth`)
//! answers preflights before auth (browsers send them without credentials)
//! and before any upstream sees them; the CORS headers of an actual request
//! are put on whatever response it gets, the gateway's own errors included,
//! so a page can read why it was refused.

use crate::body::Body;
use crate::proxy::GatewayError;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use trellis_auth::{apply_cors_headers, CorsDecision, CorsPolicy};

/// Decides a request on a route with `policy`: either the answer to a
/// preflight, or the CORS headers its response will carry (`None`: no
/// policy, or not a cross-origin request).
pub(crate) fn begin(
    policy: Option<&CorsPolicy>,
    method: &Method,
    headers: &HeaderMap,
    grpc: bool,
    request_id: &HeaderValue,
) -> (Option<HeaderMap>, Option<Response<Body>>) {
    let Some(policy) = policy else {
        return (None, None);
    };
    match policy.decide(method, headers) {
        CorsDecision::NotCors => (None, None),
        CorsDecision::Forward(h) => (Some(h), None),
        CorsDecision::Preflight {
            allowed: true,
            headers,
        } => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            resp.headers_mut()
                .insert(crate::proxy::X_REQUEST_ID, request_id.clone());
            (None, Some(resp))
        }
        CorsDecision::Preflight {
            allowed: false,
            headers,
        } => {
            // A refused preflight carries no CORS headers, only `Vary`, so
            // the browser blocks the request and caches nothing wrong.
            let mut resp = GatewayError::CorsRejected.response(grpc, Some(request_id));
            resp.headers_mut().extend(headers);
            (None, Some(resp))
        }
    }
}

/// Puts a forwarded request's CORS headers on its response.
pub(crate) fn finish(response: &mut Response<Body>, cors: Option<HeaderMap>) {
    if let Some(h) = cors {
        apply_cors_headers(response.headers_mut(), h);
    }
}
