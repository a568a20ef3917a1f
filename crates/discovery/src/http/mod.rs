//! The registry's REST API, mounted by the server under a prefix such as
//! `/v1/registry` (see [`crate::openapi`] for its document).

mod problem;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde_json::json;

pub use problem::Problem;

use crate::model::{Filter, Registration, Status};
use crate::registry::Registry;

/// The header carrying the index a response reflects, for the next blocking query.
pub const INDEX_HEADER: &str = "x-trellis-index";

/// Largest registration body accepted; past it the request is refused unread.
const MAX_BODY: usize = 64 * 1024;

/// The registry's routes (paths relative to where the server nests them).
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/services", get(list_services))
        .route("/services/{service}", get(discover))
        .route(
            "/services/{service}/instances/{id}",
            put(register).delete(deregister).get(get_instance),
        )
        .route(
            "/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route("/watch", get(watch))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "no such registry endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(registry)
}

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, Problem> {
    q.map(|Query(v)| v)
        .map_err(|e| Problem::bad_request("invalid_query", format!("unreadable query string: {e}")))
}

fn path2(p: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), Problem> {
    p.map(|Path(v)| v)
        .map_err(|e| Problem::bad_request("invalid_path", e.body_text()))
}

fn with_index(index: u64, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

/// Blocking-query parameters: `index=N` and `wait=30s`.
struct Blocking {
    index: Option<u64>,
    wait: Duration,
}

fn blocking(pairs: &[(String, String)], registry: &Registry) -> Result<Blocking, Problem> {
    let mut b = Blocking {
        index: None,
        wait: Duration::from_secs(300).min(registry.config().max_wait),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "index" => {
                b.index = Some(v.parse().map_err(|_| {
                    Problem::invalid(
                        "index",
                        "index must be a non-negative integer from X-Trellis-Index",
                    )
                })?)
            }
            "wait" => {
                b.wait = humantime::parse_duration(v)
                    .map_err(|e| {
                        Problem::invalid(
                            "wait",
                            format!("wait must be a duration such as 30s: {e}"),
                        )
                    })?
                    .min(registry.config().max_wait)
            }
            _ => {}
        }
    }
    Ok(b)
}

async fn list_services(State(registry): State<Registry>, q: Pairs) -> Result<Response, Problem> {
    let q = pairs(q)?;
    let b = blocking(&q, &registry)?;
    if let Some(n) = b.index {
        registry.wait_for_change(None, n, b.wait).await;
    }
    let (index, services) = registry.services();
    Ok(with_index(
        index,
        Json(json!({"index": index, "services": services})).into_response(),
    ))
}

async fn discover(
    State(registry): State<Registry>,
    path: Result<Path<String>, PathRejection>,
    q: Pairs,
) -> Result<Response, Problem> {
    let Path(service) = path.map_err(|e| Problem::bad_request("invalid_path", e.body_text()))?;
    crate::model::validate_name("service", &service)?;
    let q = pairs(q)?;
    let b = blocking(&q, &registry)?;
    let mut filter = Filter::default();
    for (k, v) in &q {
        if k == "tag" {
            filter.tags.push(v.clone());
        } else if let Some(key) = k.strip_prefix("meta.") {
            filter.meta.insert(key.to_owned(), v.clone());
        } else if k == "healthy" {
            filter.include_unhealthy = match v.as_str() {
                "true" | "1" | "" => false,
                "false" | "0" => true,
                _ => return Err(Problem::invalid("healthy", "healthy must be true or false")),
            };
        } else if !matches!(k.as_str(), "index" | "wait") {
            return Err(Problem::invalid(
                k,
                format!(
                    "unknown parameter {:?}; use tag, meta.KEY, healthy, index, wait",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
    }
    let (index, instances) = registry
        .discover_blocking(&service, &filter, b.index, b.wait)
        .await;
    Ok(with_index(
        index,
        Json(json!({"service": service, "index": index, "instances": instances})).into_response(),
    ))
}

fn parse_registration(body: &[u8]) -> Result<Registration, Problem> {
    // serde would also read a struct from a JSON array, field by position;
    // a registration is only ever an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::invalid("body", "a registration is a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let detail = format!("invalid registration at {field}: {}", e.inner());
        let field = if field == "." || field == "?" {
            "body".to_owned()
        } else {
            field
        };
        Problem::invalid(&field, detail)
    })
}

async fn register(
    State(registry): State<Registry>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let (service, id) = path2(path)?;
    let body = body.map_err(|e| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Payload too large",
            format!("registration body refused: {e} (limit {MAX_BODY} bytes)"),
        )
    })?;
    let registration = parse_registration(&body)?;
    let index = registry.register(&service, &id, registration).await?;
    let instance = registry.instance(&service, &id);
    Ok(with_index(
        index,
        Json(json!({"index": index, "instance": instance})).into_response(),
    ))
}

async fn deregister(
    State(registry): State<Registry>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let (service, id) = path2(path)?;
    let index = registry.deregister(&service, &id).await?;
    Ok(with_index(index, StatusCode::NO_CONTENT.into_response()))
}

async fn get_instance(
    State(registry): State<Registry>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let (service, id) = path2(path)?;
    crate::model::validate_name("service", &service)?;
    crate::model::validate_name("id", &id)?;
    match registry.instance(&service, &id) {
        Some(i) => Ok(with_index(i.modify_index, Json(i).into_response())),
        None => Err(crate::error::RegistryError::NotFound { service, id }.into()),
    }
}

async fn heartbeat(
    State(registry): State<Registry>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Pairs,
) -> Result<Response, Problem> {
    let (service, id) = path2(path)?;
    let mut status = Status::Passing;
    let mut note = None;
    for (k, v) in pairs(q)? {
        match k.as_str() {
            "status" => {
                status = match v.as_str() {
                    "passing" => Status::Passing,
                    "warning" => Status::Warning,
                    "critical" => Status::Critical,
                    _ => {
                        return Err(Problem::invalid(
                            "status",
                            "status must be passing, warning or critical",
                        ))
                    }
                }
            }
            "note" => note = Some(v),
            _ => {
                return Err(Problem::invalid(
                    &k,
                    "unknown parameter; use status and note",
                ))
            }
        }
    }
    registry.renew(&service, &id, status, note).await?;
    let instance = registry.instance(&service, &id);
    Ok(with_index(
        registry.index(),
        Json(json!({"instance": instance})).into_response(),
    ))
}

async fn watch(
    State(registry): State<Registry>,
    q: Pairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let mut service = None;
    for (k, v) in pairs(q)? {
        match k.as_str() {
            "service" => {
                crate::model::validate_name("service", &v)?;
                service = Some(v);
            }
            _ => return Err(Problem::invalid(&k, "unknown parameter; use service")),
        }
    }
    // Subscribe before reading the index, so no change falls between them.
    let changes = registry.changes();
    let hello = Event::default()
        .event("index")
        .id(registry.index().to_string())
        .data(json!({"index": registry.index()}).to_string());
    let changes = changes
        .filter(move |c| {
            let keep = service
                .as_ref()
                .is_none_or(|s| c.service == *s || c.service.is_empty());
            futures::future::ready(keep)
        })
        .map(|c| {
            let kind = serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let data = serde_json::to_string(&c).unwrap_or_default();
            Ok(Event::default()
                .event(kind)
                .id(c.index.to_string())
                .data(data))
        });
    let stream = futures::stream::once(async move { Ok(hello) }).chain(changes);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
