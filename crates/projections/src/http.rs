//! The projections' REST API, for the control port. Errors are RFC 9457
//! problem details, shared with the event store's API.
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /projections` | create: `{"name", "source", "eventTypes"?, "script"}` |
//! | `GET /projections` | every projection's status |
//! | `GET /projections/{name}` | status and definition |
//! | `DELETE /projections/{name}` | stop and delete with its read model |
//! | `PUT /projections/{name}/script` | replace the script: `{"script"}` |
//! | `POST /projections/{name}/pause`, `/resume`, `/reset`, `/rebuild` | lifecycle |
//! | `GET /projections/{name}/documents?sort=&limit=&offset=&filter.<field>=` | list documents |
//! | `GET /projections/{name}/documents/{id}` | one document |
//!
//! `sort` is a field name, `-field` for descending. A filter value is read as
//! JSON when it parses as a scalar (`10`, `true`, `"10"`), else as a string.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use trellis_events::http::json_body;
pub use trellis_events::http::Problem;

use crate::error::ProjectionError;
use crate::query::{DocumentQuery, SortBy};
use crate::script::ScriptError;
use crate::{ProjectionDefinition, Projections};

/// The projections' routes; mount it under a prefix of the control API.
pub fn router(projections: Projections) -> Router {
    Router::new()
        .route("/projections", get(list).post(create))
        .route("/projections/{name}", get(status).delete(delete))
        .route("/projections/{name}/script", put(update_script))
        .route("/projections/{name}/pause", post(pause))
        .route("/projections/{name}/resume", post(resume))
        .route("/projections/{name}/reset", post(reset))
        .route("/projections/{name}/rebuild", post(rebuild))
        .route("/projections/{name}/documents", get(documents))
        .route("/projections/{name}/documents/{id}", get(document))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "no such projections endpoint",
            )
        })
        // A script is at most 256 KiB by default; leave room for JSON escaping.
        .layer(DefaultBodyLimit::max(2 << 20))
        .with_state(projections)
}

type Result<T> = std::result::Result<T, Problem>;

/// The problem response for a projection error.
pub fn problem(e: ProjectionError) -> Problem {
    let detail = e.to_string();
    match e {
        ProjectionError::NotFound(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "projection_not_found",
            "Projection not found",
            detail,
        ),
        ProjectionError::AlreadyExists(_) => Problem::new(
            StatusCode::CONFLICT,
            "projection_exists",
            "Projection exists",
            detail,
        ),
        ProjectionError::InvalidName { .. } => {
            Problem::bad_request("invalid_projection_name", detail)
        }
        ProjectionError::InvalidDefinition(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_projection",
            "Invalid projection",
            detail,
        ),
        ProjectionError::Script(ScriptError::TooLarge { limit, .. }) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "script_too_large",
            "Script too large",
            detail,
        )
        .with("limit", json!(limit)),
        ProjectionError::Script(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_script",
            "Invalid script",
            detail,
        ),
        ProjectionError::InvalidQuery(_) => Problem::bad_request("invalid_query", detail),
        ProjectionError::Timeout { .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "projection_timeout",
            "Projection timeout",
            detail,
        ),
        ProjectionError::Stopped(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "projection_stopped",
            "Projection stopped",
            detail,
        ),
        ProjectionError::Read(e) => Problem::from(e),
        ProjectionError::Store(e) => {
            tracing::error!(error = %e, "projection storage error");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "Storage unavailable",
                "the projections could not reach their storage; retry later",
            )
        }
    }
}

async fn create(
    State(p): State<Projections>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let def: ProjectionDefinition = json_body(body)?;
    let status = p.create(def).await.map_err(problem)?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn list(State(p): State<Projections>) -> Result<Response> {
    let all = p.list().await.map_err(problem)?;
    Ok(Json(json!({ "projections": all })).into_response())
}

async fn status(State(p): State<Projections>, Path(name): Path<String>) -> Result<Response> {
    let status = p.status(&name).await.map_err(problem)?;
    let def = p.definition(&name).map_err(problem)?;
    Ok(Json(json!({ "status": status, "definition": def })).into_response())
}

async fn delete(State(p): State<Projections>, Path(name): Path<String>) -> Result<StatusCode> {
    p.delete(&name).await.map_err(problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    script: String,
}

async fn update_script(
    State(p): State<Projections>,
    Path(name): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: ScriptBody = json_body(body)?;
    p.update_script(&name, &body.script)
        .await
        .map_err(problem)?;
    after_command(&p, &name).await
}

async fn after_command(p: &Projections, name: &str) -> Result<Response> {
    Ok(Json(p.status(name).await.map_err(problem)?).into_response())
}

async fn pause(State(p): State<Projections>, Path(name): Path<String>) -> Result<Response> {
    p.pause(&name).await.map_err(problem)?;
    after_command(&p, &name).await
}

async fn resume(State(p): State<Projections>, Path(name): Path<String>) -> Result<Response> {
    p.resume(&name).await.map_err(problem)?;
    after_command(&p, &name).await
}

async fn reset(State(p): State<Projections>, Path(name): Path<String>) -> Result<Response> {
    p.reset(&name).await.map_err(problem)?;
    after_command(&p, &name).await
}

async fn rebuild(State(p): State<Projections>, Path(name): Path<String>) -> Result<Response> {
    p.rebuild(&name).await.map_err(problem)?;
    after_command(&p, &name).await
}

async fn document(
    State(p): State<Projections>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response> {
    match p.get_document(&name, &id).await.map_err(problem)? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            "Document not found",
            format!("projection `{name}` has no document `{id}`"),
        )),
    }
}

/// Parses the list query: `sort`, `limit`, `offset` and `filter.<field>`.
fn document_query(
    pairs: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<DocumentQuery> {
    let Query(pairs) = pairs.map_err(|e| Problem::bad_request("invalid_query", e.body_text()))?;
    let mut q = DocumentQuery::default();
    for (key, value) in pairs {
        let bad = |what: &str| {
            Problem::bad_request(
                "invalid_query",
                format!(
                    "`{key}={}` is not {what}",
                    value.chars().take(40).collect::<String>()
                ),
            )
        };
        match key.as_str() {
            "limit" => q.limit = value.parse().map_err(|_| bad("a count"))?,
            "offset" => q.offset = value.parse().map_err(|_| bad("an offset"))?,
            "sort" => {
                let (field, descending) = match value.strip_prefix('-') {
                    Some(f) => (f, true),
                    None => (value.strip_prefix('+').unwrap_or(&value), false),
                };
                q.sort = Some(SortBy {
                    field: field.to_owned(),
                    descending,
                });
            }
            k => match k.strip_prefix("filter.") {
                Some(field) => {
                    let v = serde_json::from_str::<serde_json::Value>(&value)
                        .ok()
                        .filter(|v| !v.is_array() && !v.is_object())
                        .unwrap_or_else(|| serde_json::Value::String(value.clone()));
                    q.filter.push((field.to_owned(), v));
                }
                None => {
                    return Err(Problem::bad_request(
                        "invalid_query",
                        format!("unknown query parameter `{key}`: use sort, limit, offset or filter.<field>"),
                    ))
                }
            },
        }
    }
    Ok(q)
}

async fn documents(
    State(p): State<Projections>,
    Path(name): Path<String>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    let q = document_query(query)?;
    let page = p.query(&name, &q).await.map_err(problem)?;
    Ok(Json(page).into_response())
}
