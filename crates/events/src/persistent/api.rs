//! The persistent subscriptions' REST API; errors are RFC 9457 problem details.
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /subscriptions` | create: `{"name", "source", "endpoint", "eventTypes"?, "format"?, "maxAttempts"?, "minBackoff"?, "maxBackoff"?, "timeout"?, "startAfter"?}` |
//! | `GET /subscriptions` | every subscription's status |
//! | `GET /subscriptions/{name}` | one status |
//! | `DELETE /subscriptions/{name}` | stop and delete, with its parked events |
//! | `GET /subscriptions/{name}/parked` | the parked events, oldest first |
//! | `POST /subscriptions/{name}/parked/replay` | deliver them again |

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use super::{PersistentError, PersistentSubscriptions, SubscriptionDefinition};
use crate::http::{parse_json, Problem};

/// The routes; mount under a prefix of the control API.
pub fn router(subs: PersistentSubscriptions) -> Router {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route("/subscriptions/{name}", get(status).delete(delete))
        .route("/subscriptions/{name}/parked", get(parked))
        .route("/subscriptions/{name}/parked/replay", post(replay))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "no such persistent subscription endpoint",
            )
        })
        .with_state(subs)
}

impl From<PersistentError> for Problem {
    fn from(e: PersistentError) -> Self {
        let detail = e.to_string();
        match e {
            PersistentError::NotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "subscription_not_found",
                "Subscription not found",
                detail,
            ),
            PersistentError::AlreadyExists(_) => Problem::new(
                StatusCode::CONFLICT,
                "subscription_exists",
                "Subscription exists",
                detail,
            ),
            PersistentError::Invalid(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_subscription",
                "Invalid subscription",
                detail,
            ),
            PersistentError::Stopped(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "subscription_stopped",
                "Subscription stopped",
                detail,
            ),
            PersistentError::Store(e) => {
                tracing::error!(error = %e, "persistent subscription storage error");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Storage unavailable",
                    "the subscriptions could not reach their storage; retry later",
                )
            }
        }
    }
}

type Result<T> = std::result::Result<T, Problem>;

async fn create(
    State(s): State<PersistentSubscriptions>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let bytes = body.map_err(|e| Problem::bad_request("unreadable_body", e.body_text()))?;
    let def: SubscriptionDefinition = parse_json(&bytes)?;
    let status = s.create(def).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn list(State(s): State<PersistentSubscriptions>) -> Result<Response> {
    Ok(Json(json!({ "subscriptions": s.list().await? })).into_response())
}

async fn status(
    State(s): State<PersistentSubscriptions>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(s.status(&name).await?).into_response())
}

async fn delete(
    State(s): State<PersistentSubscriptions>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    s.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn parked(
    State(s): State<PersistentSubscriptions>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(json!({ "parked": s.parked(&name).await? })).into_response())
}

async fn replay(
    State(s): State<PersistentSubscriptions>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(s.replay_parked(&name).await?).into_response())
}
