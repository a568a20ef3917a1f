//! The event store on the control API, under `/v1/events`.
//!
//! The node's own event store lives in the `events` namespace; a request
//! carrying a `Trellis-Namespace-Token` reaches that service's namespace
//! instead (database per service).

use anyhow::Context as _;
use trellis_events::http::{openapi, router_for, EventStores};
use trellis_events::EventStore;
use trellis_store::Store;

use crate::control::ControlRoutes;
use crate::up::Wiring;

/// Where the event store's REST API is mounted.
pub const PREFIX: &str = "/v1/events";

/// Opens the event store and mounts its API.
pub async fn start(w: &mut Wiring<'_>, store: &Store) -> anyhow::Result<EventStore> {
    let ready = w.readiness.register("events");
    let ns = store
        .system_namespace("events")
        .await
        .context("cannot open the events namespace")?;
    let events = EventStore::open(ns)
        .await
        .context("cannot open the event store")?;
    let stores = EventStores::with_namespaces(events.clone(), store.clone());
    w.control
        .mount(ControlRoutes::new().nest(PREFIX, router_for(stores), openapi(PREFIX)))
        .context("cannot mount the event store API")?;
    ready.set_ready();
    Ok(events)
}
