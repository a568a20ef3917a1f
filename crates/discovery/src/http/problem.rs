//! RFC 9457 problem details: every error of the registry API is
//! `application/problem+json` with `type`, `title`, `status`, `detail` and a
//! stable machine-readable `code` (and `field` for bad input).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::RegistryError;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    /// A `400` naming the offending field.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Problem::bad_request("invalid_field", detail).with("field", json!(field))
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://trellis.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<RegistryError> for Problem {
    fn from(e: RegistryError) -> Self {
        let detail = e.to_string();
        match e {
            RegistryError::Invalid { field, .. } => Problem::invalid(&field, detail),
            RegistryError::NotFound { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "instance_not_found",
                "Not found",
                detail,
            ),
            RegistryError::NoTtl { .. } => Problem::new(
                StatusCode::CONFLICT,
                "no_ttl",
                "Instance has no TTL",
                detail,
            ),
            RegistryError::Full(_) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "registry_full",
                "Registry full",
                detail,
            ),
            RegistryError::Store(_) | RegistryError::Corrupt { .. } | RegistryError::Backend(_) => {
                tracing::error!(error = %detail, "registry storage error");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Storage unavailable",
                    "the registry could not reach its storage; retry later",
                )
            }
        }
    }
}
