//! The event store's REST API, for the control port: append, read, metadata,
//! delete, snapshots, and Server-Sent-Events and WebSocket subscriptions. Errors are RFC 9457
//! problem details (see [`problem`]).
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /streams/{name}` | append; body is an array of events or `{"expectedVersion", "events"}`; header `ES-ExpectedVersion` |
//! | `GET /streams/{name}?from=&direction=&limit=&type=` | read a stream (`$all` reads every stream by position) |
//! | `GET /categories/{c}?from=&direction=&limit=&type=` | read a category by position |
//! | `GET`/`PUT /streams/{name}/metadata` | retention metadata |
//! | `DELETE /streams/{name}?mode=soft\|tombstone` | delete (`ES-ExpectedVersion` honoured) |
//! | `GET`/`PUT /streams/{name}/snapshot` | latest snapshot |
//! | `GET /streams/{name}/subscribe`, `GET /categories/{c}/subscribe` | SSE, catch-up then live; resumes from `Last-Event-ID` |
//! | `GET /streams/{name}/ws`, `GET /categories/{c}/ws` | WebSocket, catch-up then live, one JSON text frame per event; resumes with `after` (see [`ws`]) |
//!
//! With [`router_for`], a `Trellis-Namespace-Token` header selects the namespace.

pub mod openapi;
pub mod problem;
pub mod tenant;
pub mod ws;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

pub use openapi::openapi;
pub use problem::{body_bytes, json_body, parse_json, Problem};
pub use tenant::{EventStores, Tenant, NAMESPACE_TOKEN_HEADER};

use crate::read::MAX_READ_COUNT;
use crate::{
    DeleteMode, Direction, EventData, EventStore, ExpectedVersion, ReadAll, ReadStream, StartFrom,
    StreamMetadata, SubscriptionOptions, SubscriptionTarget,
};

/// The header carrying the expected version, as in EventStoreDB's HTTP API.
pub const EXPECTED_VERSION_HEADER: &str = "ES-ExpectedVersion";

/// The event store's routes over one event store; mount it under a prefix of the control API.
pub fn router(store: EventStore) -> Router {
    router_for(EventStores::single(store))
}

/// The routes over several namespaces: requests with a `Trellis-Namespace-Token`
/// header reach that namespace's event store only (see [`tenant`]).
pub fn router_for(stores: EventStores) -> Router {
    // Room for JSON framing around a maximal batch; past this the request is refused unread.
    let body_limit = stores.default_store().limits().max_batch_bytes + (1 << 20);
    Router::new()
        .route(
            "/streams/{name}",
            get(read_stream).post(append).delete(delete),
        )
        .route(
            "/streams/{name}/metadata",
            get(get_metadata).put(put_metadata),
        )
        .route(
            "/streams/{name}/snapshot",
            get(get_snapshot).put(put_snapshot),
        )
        .route("/streams/{name}/subscribe", get(subscribe_stream))
        .route("/categories/{category}", get(read_category))
        .route("/categories/{category}/subscribe", get(subscribe_category))
        .route("/streams/{name}/ws", get(ws::ws_stream))
        .route("/categories/{category}/ws", get(ws::ws_category))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "no such event store endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(stores)
}

type Result<T> = std::result::Result<T, Problem>;

fn expected_from_header(headers: &HeaderMap) -> Result<Option<ExpectedVersion>> {
    let Some(v) = headers.get(EXPECTED_VERSION_HEADER) else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        Problem::bad_request(
            "invalid_expected_version",
            "the ES-ExpectedVersion header is not text",
        )
    })?;
    s.parse()
        .map(Some)
        .map_err(|e: String| Problem::bad_request("invalid_expected_version", e))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppendBody {
    #[serde(default)]
    expected_version: Option<ExpectedVersion>,
    events: Vec<EventData>,
}

async fn append(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let bytes = body_bytes(body)?;
    let header = expected_from_header(&headers)?;
    let (from_body, events) = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => (None, parse_json::<Vec<EventData>>(&bytes)?),
        Some(b'{') => {
            let b: AppendBody = parse_json(&bytes)?;
            (b.expected_version, b.events)
        }
        _ => {
            return Err(Problem::bad_request(
                "malformed_json",
                "the body must be a JSON array of events or an object with `events`",
            ))
        }
    };
    let expected = match (header, from_body) {
        (Some(h), Some(b)) if h != b => {
            return Err(Problem::bad_request(
                "invalid_expected_version",
                format!("the header says {h} but the body says {b}"),
            ))
        }
        (h, b) => h.or(b).unwrap_or(ExpectedVersion::Any),
    };
    let result = store.append(&name, expected, events).await?;
    let status = if result.idempotent {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result)).into_response())
}

/// Query parameters of reads and subscriptions; `type` may repeat or be comma-separated.
struct ReadQuery {
    from: Option<u64>,
    from_end: bool,
    direction: Direction,
    limit: usize,
    types: Option<Vec<String>>,
    mode: Option<DeleteMode>,
}

fn read_query(
    pairs: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<ReadQuery> {
    let Query(pairs) = pairs.map_err(|e| Problem::bad_request("invalid_query", e.body_text()))?;
    let mut q = ReadQuery {
        from: None,
        from_end: false,
        direction: Direction::Forward,
        limit: 100,
        types: None,
        mode: None,
    };
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
            "from" if value == "end" => q.from_end = true,
            "from" if value == "start" => q.from = None,
            "from" => {
                q.from = Some(
                    value
                        .parse()
                        .map_err(|_| bad("a version or position (or `start`, `end`)"))?,
                )
            }
            "direction" => {
                q.direction = match value.as_str() {
                    "forward" | "forwards" => Direction::Forward,
                    "backward" | "backwards" => Direction::Backward,
                    _ => return Err(bad("`forward` or `backward`")),
                }
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_READ_COUNT).contains(n))
                    .ok_or_else(|| bad("a count from 1 to 10000"))?
            }
            "type" => q.types.get_or_insert_with(Vec::new).extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            ),
            "mode" => {
                q.mode = Some(match value.as_str() {
                    "soft" => DeleteMode::Soft,
                    "tombstone" | "hard" => DeleteMode::Tombstone,
                    _ => return Err(bad("`soft` or `tombstone`")),
                })
            }
            _ => {
                return Err(Problem::bad_request(
                    "invalid_query",
                    format!("unknown query parameter `{key}`"),
                ))
            }
        }
    }
    Ok(q)
}

impl ReadQuery {
    fn read_all(&self) -> ReadAll {
        let (from, direction) = if self.from_end {
            (None, Direction::Backward)
        } else {
            (self.from, self.direction)
        };
        ReadAll {
            from,
            direction,
            max_count: self.limit,
            types: self.types.clone(),
        }
    }
}

fn page(
    events: Vec<crate::RecordedEvent>,
    limit: usize,
    direction: Direction,
) -> serde_json::Value {
    let next = match (events.len() == limit, events.last(), direction) {
        (true, Some(e), Direction::Forward) => Some(e.position + 1),
        (true, Some(e), Direction::Backward) if e.position > 1 => Some(e.position - 1),
        _ => None,
    };
    json!({ "events": events, "next": next })
}

async fn read_stream(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    query: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response> {
    let q = read_query(query)?;
    if name == "$all" {
        let read = q.read_all();
        let direction = read.direction;
        let events = store.read_all(read).await?;
        return Ok(Json(page(events, q.limit, direction)).into_response());
    }
    let (from, direction) = if q.from_end {
        (None, Direction::Backward)
    } else {
        (q.from, q.direction)
    };
    let slice = store
        .read_stream(
            &name,
            ReadStream {
                from,
                direction,
                max_count: q.limit,
                types: q.types,
            },
        )
        .await?;
    Ok(Json(slice).into_response())
}

async fn read_category(
    Tenant(store): Tenant,
    Path(category): Path<String>,
    query: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response> {
    let q = read_query(query)?;
    let read = q.read_all();
    let direction = read.direction;
    let events = store.read_category(&category, read).await?;
    Ok(Json(page(events, q.limit, direction)).into_response())
}

async fn delete(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<StatusCode> {
    let q = read_query(query)?;
    let expected = expected_from_header(&headers)?.unwrap_or(ExpectedVersion::Any);
    store
        .delete_stream(&name, expected, q.mode.unwrap_or(DeleteMode::Soft))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_metadata(
    Tenant(store): Tenant,
    Path(name): Path<String>,
) -> Result<Json<StreamMetadata>> {
    Ok(Json(store.stream_metadata(&name).await?))
}

async fn put_metadata(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<StreamMetadata>> {
    let meta: StreamMetadata = parse_json(&body_bytes(body)?)?;
    store.set_stream_metadata(&name, meta.clone()).await?;
    Ok(Json(meta))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    version: u64,
    data: Box<RawValue>,
}

async fn get_snapshot(Tenant(store): Tenant, Path(name): Path<String>) -> Result<Response> {
    match store.read_snapshot(&name).await? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "snapshot_not_found",
            "Snapshot not found",
            format!("stream `{name}` has no snapshot"),
        )),
    }
}

async fn put_snapshot(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<StatusCode> {
    let body: SnapshotBody = parse_json(&body_bytes(body)?)?;
    store.save_snapshot(&name, body.version, body.data).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn start_from(q: &ReadQuery, headers: &HeaderMap) -> Result<StartFrom> {
    // A reconnecting EventSource sends the id of the last event it saw: resume after it.
    if let Some(last) = headers.get("last-event-id") {
        let p = last
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Problem::bad_request("invalid_last_event_id", "Last-Event-ID must be a position")
            })?;
        return Ok(StartFrom::After(p));
    }
    Ok(match (q.from_end, q.from) {
        (true, _) => StartFrom::End,
        (false, Some(p)) => StartFrom::After(p.saturating_sub(1)),
        (false, None) => StartFrom::Beginning,
    })
}

fn sse(
    store: &EventStore,
    target: SubscriptionTarget,
    q: ReadQuery,
    headers: &HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let mut opts = SubscriptionOptions::new(target, start_from(&q, headers)?);
    opts.types = q.types;
    let events = store.subscribe(opts).map(|r| match r {
        Ok(e) => Ok::<_, Infallible>(
            Event::default()
                .id(e.position.to_string())
                .event(e.event_type.clone())
                .data(serde_json::to_string(&e).unwrap_or_default()),
        ),
        Err(e) => {
            let p = Problem::from(e);
            Ok(Event::default()
                .event("error")
                .data(json!({"code": p.code, "detail": p.detail}).to_string()))
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn subscribe_stream(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response> {
    let q = read_query(query)?;
    let target = if name == "$all" {
        SubscriptionTarget::All
    } else {
        crate::validate_stream_name(&name).map_err(Problem::from)?;
        SubscriptionTarget::Stream(name)
    };
    Ok(sse(&store, target, q, &headers)?.into_response())
}

async fn subscribe_category(
    Tenant(store): Tenant,
    Path(category): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<
        Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response> {
    let q = read_query(query)?;
    crate::validate_stream_name(&category).map_err(Problem::from)?;
    Ok(sse(&store, SubscriptionTarget::Category(category), q, &headers)?.into_response())
}
