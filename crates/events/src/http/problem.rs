//! RFC 9457 problem details: every error of the REST API is
//! `application/problem+json` with `type`, `title`, `status`, `detail` and a
//! stable machine-readable `code`.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::error::{AppendError, ReadError};

/// One problem response.
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

fn store_problem(e: &trellis_store::StoreError) -> Problem {
    tracing::error!(error = %e, "event store storage error");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "Storage unavailable",
        "the event store could not reach its storage; retry later",
    )
}

impl From<AppendError> for Problem {
    fn from(e: AppendError) -> Self {
        let detail = e.to_string();
        match e {
            AppendError::WrongExpectedVersion {
                expected, actual, ..
            } => Problem::new(
                StatusCode::CONFLICT,
                "wrong_expected_version",
                "Wrong expected version",
                detail,
            )
            .with("expectedVersion", json!(expected))
            .with("actualVersion", json!(actual)),
            AppendError::StreamDeleted { .. } => {
                Problem::new(StatusCode::GONE, "stream_deleted", "Stream deleted", detail)
            }
            AppendError::StreamNotFound { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "stream_not_found",
                "Stream not found",
                detail,
            ),
            AppendError::DuplicateEventId { id } => Problem::new(
                StatusCode::CONFLICT,
                "duplicate_event_id",
                "Duplicate event id",
                detail,
            )
            .with("eventId", json!(id)),
            AppendError::InvalidStreamName { .. } => {
                Problem::bad_request("invalid_stream_name", detail)
            }
            AppendError::InvalidEvent { index, .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                "Invalid event",
                detail,
            )
            .with("index", json!(index)),
            AppendError::EventTooLarge { index, limit, .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                "Event too large",
                detail,
            )
            .with("index", json!(index))
            .with("limit", json!(limit)),
            AppendError::TooManyEvents { limit, .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_events",
                "Too many events",
                detail,
            )
            .with("limit", json!(limit)),
            AppendError::BatchTooLarge { limit, .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                "Batch too large",
                detail,
            )
            .with("limit", json!(limit)),
            AppendError::EmptyBatch => Problem::bad_request("empty_batch", detail),
            AppendError::InvalidSnapshot { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_snapshot",
                "Invalid snapshot",
                detail,
            ),
            AppendError::Store(e) => store_problem(&e),
        }
    }
}

impl From<ReadError> for Problem {
    fn from(e: ReadError) -> Self {
        let detail = e.to_string();
        match e {
            ReadError::StreamNotFound { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "stream_not_found",
                "Stream not found",
                detail,
            ),
            ReadError::StreamDeleted { .. } => {
                Problem::new(StatusCode::GONE, "stream_deleted", "Stream deleted", detail)
            }
            ReadError::InvalidStreamName { .. } => {
                Problem::bad_request("invalid_stream_name", detail)
            }
            ReadError::InvalidRequest(_) => Problem::bad_request("invalid_request", detail),
            ReadError::Store(e) => store_problem(&e),
        }
    }
}

/// The request body, or the problem that kept it from being read (`413`
/// past the body limit, `400` otherwise).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                e.body_text(),
            )
        } else {
            Problem::bad_request("unreadable_body", e.body_text())
        }
    })
}

/// Parses a JSON body strictly (no trailing data); a failure is a `400`
/// naming the path at fault, `malformed_json` or `invalid_body`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "malformed_json"
        } else {
            "invalid_body"
        };
        Problem::bad_request(code, format!("at `{path}`: {inner}")).with("path", json!(path))
    })?;
    de.end()
        .map_err(|e| Problem::bad_request("malformed_json", format!("trailing characters: {e}")))?;
    Ok(value)
}

/// A JSON request body: [`body_bytes`] then [`parse_json`], for every REST
/// API built on the event store (projections, persistent subscriptions).
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Problem> {
    parse_json(&body_bytes(body)?)
}
