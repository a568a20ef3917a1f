//! The read side of CQRS and event-driven delivery on the control API:
//! projections under `/v1/cqrs/projections` and persistent subscriptions (push
//! to HTTP endpoints) under `/v1/persistent`. Both follow the node's event
//! store and stop with the node.

use anyhow::Context as _;
use serde_json::{json, Value};
use trellis_events::persistent::{api, PersistentSubscriptions};
use trellis_events::EventStore;
use trellis_projections::Projections;

use crate::control::ControlRoutes;
use crate::up::Wiring;

/// Starts the projection runners and the subscription workers and mounts
/// their APIs.
pub async fn start(w: &mut Wiring<'_>, events: &EventStore) -> anyhow::Result<()> {
    let ready = w.readiness.register("projections");
    let projections = Projections::open(events.clone())
        .await
        .context("cannot open the projections")?;
    let subscriptions = PersistentSubscriptions::open(events.clone())
        .await
        .context("cannot open the persistent subscriptions")?;
    w.control
        .mount(
            ControlRoutes::new()
                .nest(
                    "/v1/cqrs",
                    trellis_projections::http::router(projections.clone()),
                    projections_openapi("/v1/cqrs/projections"),
                )
                .nest(
                    "/v1/persistent",
                    api::router(subscriptions.clone()),
                    subscriptions_openapi("/v1/persistent"),
                ),
        )
        .context("cannot mount the projection and subscription APIs")?;
    let shutdown = w.shutdown.clone();
    w.spawn("projections", async move {
        shutdown.triggered().await;
        subscriptions.shutdown().await;
        projections.shutdown().await;
        Ok(())
    });
    ready.set_ready();
    Ok(())
}

/// One operation; `params` names the path parameters it takes.
fn op(id: &str, summary: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    json!({
        "operationId": id,
        "summary": summary,
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {}}},
            "default": {"description": "RFC 9457 problem details", "content": {"application/problem+json": {}}}
        }
    })
}

fn projections_openapi(prefix: &str) -> Value {
    const N: &[&str] = &["name"];
    let mut paths = serde_json::Map::new();
    paths.insert(
        prefix.to_owned(),
        json!({"get": op("listProjections", "List projections with their status", &[]),
               "post": op("createProjection", "Create a projection: name, source, Rhai script", &[])}),
    );
    paths.insert(
        format!("{prefix}/{{name}}"),
        json!({"get": op("getProjection", "A projection's status: state, position, lag, last error", N),
               "delete": op("deleteProjection", "Delete a projection and its read model", N)}),
    );
    paths.insert(
        format!("{prefix}/{{name}}/script"),
        json!({"put": op("updateProjectionScript", "Replace the script; a faulted projection goes on from the event that faulted", N)}),
    );
    for (action, id) in [
        ("pause", "pauseProjection"),
        ("resume", "resumeProjection"),
        ("reset", "resetProjection"),
        ("rebuild", "rebuildProjection"),
    ] {
        paths.insert(
            format!("{prefix}/{{name}}/{action}"),
            json!({"post": op(id, &format!("{action} the projection"), N)}),
        );
    }
    paths.insert(
        format!("{prefix}/{{name}}/documents"),
        json!({"get": op("queryProjectionDocuments", "Query the read model: equality filters, sort, limit and offset", N)}),
    );
    paths.insert(
        format!("{prefix}/{{name}}/documents/{{id}}"),
        json!({"get": op("getProjectionDocument", "One document of the read model", &["name", "id"])}),
    );
    json!({"paths": paths})
}

fn subscriptions_openapi(prefix: &str) -> Value {
    const N: &[&str] = &["name"];
    json!({"paths": {
        format!("{prefix}/subscriptions"): {
            "get": op("listPersistentSubscriptions", "List persistent subscriptions", &[]),
            "post": op("createPersistentSubscription", "Create a persistent subscription delivering to an HTTP endpoint", &[])},
        format!("{prefix}/subscriptions/{{name}}"): {
            "get": op("getPersistentSubscription", "A subscription's status and checkpoint", N),
            "delete": op("deletePersistentSubscription", "Delete a subscription", N)},
        format!("{prefix}/subscriptions/{{name}}/parked"): {
            "get": op("listParkedEvents", "Events parked after exhausting their delivery attempts", N)},
        format!("{prefix}/subscriptions/{{name}}/parked/replay"): {
            "post": op("replayParkedEvents", "Deliver the parked events again", N)}
    }})
}
