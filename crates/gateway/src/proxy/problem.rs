//! The gateway's own error responses: RFC 9457 problem details
//! (`application/problem+json`) with a stable `code`, or on a gRPC route a
//! trailers-only gRPC status. Neither ever carries internal detail (addresses,
//! error chains); those go to the log.

use crate::body::Body;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    NoRoute,
    /// No healthy endpoint, or none could be connected to, or a breaker is open.
    UpstreamUnavailable {
        retry_after: Option<Duration>,
    },
    UpstreamOverloaded,
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, protocol error).
    UpstreamError,
    /// The route's circuit breaker is open.
    CircuitOpen {
        retry_after: std::time::Duration,
    },
    RateLimited {
        decision: trellis_resilience::ratelimit::Decision,
    },
    PayloadTooLarge,
    UriTooLong,
    BadRequest,
    /// A CORS preflight the route's policy does not allow.
    CorsRejected,
    /// The service a request names (`service_from`) is not a valid name.
    InvalidService,
    /// The service a request names has no instance that is up.
    NoInstances,
}

impl GatewayError {
    /// The stable machine-readable code in the problem body.
    pub fn code(self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamOverloaded => "upstream_overloaded",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UpstreamError => "upstream_error",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::UriTooLong => "uri_too_long",
            GatewayError::BadRequest => "bad_request",
            GatewayError::CorsRejected => "cors_rejected",
            GatewayError::InvalidService => "invalid_service",
            GatewayError::NoInstances => "no_instances",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamOverloaded
            | GatewayError::CircuitOpen { .. }
            | GatewayError::NoInstances => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamError => StatusCode::BAD_GATEWAY,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::BadRequest | GatewayError::InvalidService => StatusCode::BAD_REQUEST,
            GatewayError::CorsRejected => StatusCode::FORBIDDEN,
        }
    }

    fn title(self) -> &'static str {
        match self {
            GatewayError::NoRoute => "No route matches this request",
            GatewayError::UpstreamUnavailable { .. } => "The upstream service is unavailable",
            GatewayError::UpstreamOverloaded => "The upstream service is at capacity",
            GatewayError::UpstreamTimeout => "The upstream service did not answer in time",
            GatewayError::UpstreamError => "The upstream service failed to answer",
            GatewayError::CircuitOpen { .. } => {
                "The upstream service is failing and calls to it are paused"
            }
            GatewayError::RateLimited { .. } => "Too many requests",
            GatewayError::PayloadTooLarge => "The request body is too large",
            GatewayError::UriTooLong => "The request target is too long",
            GatewayError::BadRequest => "The request is malformed",
            GatewayError::CorsRejected => "This cross-origin request is not allowed",
            GatewayError::InvalidService => "The requested service name is not valid",
            GatewayError::NoInstances => "The requested service has no available instance",
        }
    }

    /// The gRPC status code for this error on a gRPC route.
    pub fn grpc_status(self) -> u8 {
        match self {
            GatewayError::NoRoute => 12, // UNIMPLEMENTED
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamOverloaded
            | GatewayError::NoInstances => 14, // UNAVAILABLE
            GatewayError::UpstreamTimeout => 4, // DEADLINE_EXCEEDED
            GatewayError::UpstreamError | GatewayError::CircuitOpen { .. } => 14,
            GatewayError::RateLimited { .. } | GatewayError::PayloadTooLarge => 8, // RESOURCE_EXHAUSTED
            GatewayError::UriTooLong | GatewayError::BadRequest | GatewayError::InvalidService => 3, // INVALID_ARGUMENT
            GatewayError::CorsRejected => 7, // PERMISSION_DENIED
        }
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            GatewayError::UpstreamUnavailable { retry_after } => retry_after,
            GatewayError::RateLimited { decision } => Some(decision.retry_after),
            GatewayError::CircuitOpen { retry_after } => Some(retry_after),
            _ => None,
        }
    }

    /// The response for this error: gRPC status when `grpc`, else problem+json.
    pub fn response(self, grpc: bool, request_id: Option<&HeaderValue>) -> Response<Body> {
        let mut resp = if grpc {
            let mut r = Response::new(Body::empty());
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.grpc_status())),
            );
            h.insert(
                "grpc-message",
                HeaderValue::from_static(self.title_encoded()),
            );
            r
        } else {
            let body = serde_json::json!({
                "type": format!("urn:trellis:problem:{}", self.code()),
                "title": self.title(),
                "status": self.status().as_u16(),
                "code": self.code(),
                "request_id": request_id.and_then(|v| v.to_str().ok()),
            });
            let mut r = Response::new(Body::full(body.to_string()));
            *r.status_mut() = self.status();
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            r
        };
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: a client retrying early would be refused again.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(id) = request_id {
            resp.headers_mut()
                .insert(super::headers::X_REQUEST_ID, id.clone());
        }
        resp
    }

    /// The title percent-encoded as `grpc-message` requires (spaces only here).
    fn title_encoded(self) -> &'static str {
        match self {
            GatewayError::NoRoute => "No%20route%20matches%20this%20request",
            GatewayError::UpstreamUnavailable { .. } => {
                "The%20upstream%20service%20is%20unavailable"
            }
            GatewayError::UpstreamOverloaded => "The%20upstream%20service%20is%20at%20capacity",
            GatewayError::UpstreamTimeout => {
                "The%20upstream%20service%20did%20not%20answer%20in%20time"
            }
            GatewayError::UpstreamError => "The%20upstream%20service%20failed%20to%20answer",
            GatewayError::CircuitOpen { .. } => {
                "The%20upstream%20service%20is%20failing%20and%20calls%20to%20it%20are%20paused"
            }
            GatewayError::RateLimited { .. } => "Too%20many%20requests",
            GatewayError::PayloadTooLarge => "The%20request%20body%20is%20too%20large",
            GatewayError::UriTooLong => "The%20request%20target%20is%20too%20long",
            GatewayError::BadRequest => "The%20request%20is%20malformed",
            GatewayError::CorsRejected => "This%20cross-origin%20request%20is%20not%20allowed",
            GatewayError::InvalidService => "The%20requested%20service%20name%20is%20not%20valid",
            GatewayError::NoInstances => {
                "The%20requested%20service%20has%20no%20available%20instance"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_the_encoded_titles() {
        for e in [
            GatewayError::NoRoute,
            GatewayError::UpstreamUnavailable { retry_after: None },
            GatewayError::UpstreamOverloaded,
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamError,
            GatewayError::CircuitOpen {
                retry_after: Duration::ZERO,
            },
            GatewayError::RateLimited {
                decision: trellis_resilience::ratelimit::Decision {
                    allowed: false,
                    limit: 1,
                    remaining: 0,
                    reset_after: Duration::ZERO,
                    retry_after: Duration::ZERO,
                    window: Duration::ZERO,
                },
            },
            GatewayError::PayloadTooLarge,
            GatewayError::UriTooLong,
            GatewayError::BadRequest,
            GatewayError::CorsRejected,
            GatewayError::InvalidService,
            GatewayError::NoInstances,
        ] {
            assert_eq!(e.title_encoded(), e.title().replace(' ', "%20"));
        }
    }
}
