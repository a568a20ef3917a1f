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

fn op(summary: &str) -> Value {
    json!({
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {}}},
            "default": {"description": "RFC 9457 problem details", "content": {"application/problem+json": {}}}
        }
    })
}

fn name_param() -> Value {
    json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}])
}

fn projections_openapi(prefix: &str) -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        prefix.to_owned(),
        json!({"get": op("List projections with their status"),
               "post": op("Create a projection: name, source, Rhai script")}),
    );
    paths.insert(
        format!("{prefix}/{{name}}"),
        json!({"parameters": name_param(),
               "get": op("A projection's status: state, position, lag, last error"),
               "delete": op("Delete a projection and its read model")}),
    );
    paths.insert(
        format!("{prefix}/{{name}}/script"),
        json!({"parameters": name_param(), "put": op("Replace the script; a faulted projection goes on from the event that faulted")}),
    );
    for action in ["pause", "resume", "reset", "rebuild"] {
        paths.insert(
            format!("{prefix}/{{name}}/{action}"),
            json!({"parameters": name_param(), "post": op(&format!("{action} the projection"))}),
        );
    }
    paths.insert(
        format!("{prefix}/{{name}}/documents"),
        json!({"parameters": name_param(),
               "get": op("Query the read model: equality filters, sort, limit and offset")}),
    );
    paths.insert(
        format!("{prefix}/{{name}}/documents/{{id}}"),
        json!({"parameters": [
                   {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                   {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
               "get": op("One document of the read model")}),
    );
    json!({"paths": paths})
}

fn subscriptions_openapi(prefix: &str) -> Value {
    json!({"paths": {
        format!("{prefix}/subscriptions"): {
            "get": op("List persistent subscriptions"),
            "post": op("Create a persistent subscription delivering to an HTTP endpoint")},
        format!("{prefix}/subscriptions/{{name}}"): {
            "parameters": name_param(),
            "get": op("A subscription's status and checkpoint"),
            "delete": op("Delete a subscription")},
        format!("{prefix}/subscriptions/{{name}}/parked"): {
            "parameters": name_param(),
            "get": op("Events parked after exhausting their delivery attempts")},
        format!("{prefix}/subscriptions/{{name}}/parked/replay"): {
            "parameters": name_param(),
            "post": op("Deliver the parked events again")}
    }})
}
