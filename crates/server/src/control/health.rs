//! Liveness and readiness. `/healthz` answers while the process can serve at
//! all; `/readyz` answers 200 only once every registered component has
//! started, and 503 again as soon as shutdown begins, so load balancers stop
//! sending work before the listeners close.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use super::routes::ControlRoutes;
use crate::shutdown::Shutdown;

/// One component's readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ComponentState {
    /// Registered, not started yet.
    Starting,
    /// Serving.
    Ready,
    /// Was ready, cannot serve now (e.g. lost its store).
    NotReady(String),
}

/// The set of components whose readiness makes the node ready.
#[derive(Debug, Clone)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
    shutdown: Shutdown,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    /// True when every component is ready and the node is not shutting down.
    pub ready: bool,
    /// `ready`, `starting`, `not_ready` or `draining`.
    pub status: &'static str,
    /// Per-component state.
    pub components: BTreeMap<String, ComponentState>,
}

impl Readiness {
    /// No components yet; not ready once `shutdown` is triggered.
    pub fn new(shutdown: Shutdown) -> Self {
        Readiness {
            components: Arc::default(),
            shutdown,
        }
    }

    /// Registers a component as [`ComponentState::Starting`]; the node is not
    /// ready until the returned handle reports ready.
    pub fn register(&self, component: &str) -> ComponentHandle {
        self.components
            .lock()
            .insert(component.to_owned(), ComponentState::Starting);
        ComponentHandle {
            name: component.to_owned(),
            components: self.components.clone(),
        }
    }

    /// The current report.
    pub fn report(&self) -> ReadinessReport {
        let components = self.components.lock().clone();
        let all_ready = components.values().all(|s| *s == ComponentState::Ready);
        let status = if self.shutdown.is_triggered() {
            "draining"
        } else if all_ready {
            "ready"
        } else if components
            .values()
            .any(|s| matches!(s, ComponentState::NotReady(_)))
        {
            "not_ready"
        } else {
            "starting"
        };
        ReadinessReport {
            ready: status == "ready",
            status,
            components,
        }
    }
}

/// A component's handle on its own readiness.
#[derive(Debug, Clone)]
pub struct ComponentHandle {
    name: String,
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

impl ComponentHandle {
    /// The component can serve.
    pub fn set_ready(&self) {
        self.set(ComponentState::Ready);
    }

    /// The component cannot serve right now, and why.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(ComponentState::NotReady(reason.into()));
    }

    fn set(&self, state: ComponentState) {
        self.components.lock().insert(self.name.clone(), state);
    }
}

fn probe_response(report: ReadinessReport) -> Response {
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

/// `/healthz` and `/readyz`, open without a token.
pub(crate) fn routes(readiness: Readiness) -> ControlRoutes {
    ControlRoutes::new()
        .get(
            "/healthz",
            || async { Json(json!({"status": "ok"})) },
            json!({
                "summary": "Liveness: the process is up and serving HTTP",
                "tags": ["health"],
                "responses": {"200": {"description": "alive"}}
            }),
        )
        .get(
            "/readyz",
            move || {
                let readiness = readiness.clone();
                async move { probe_response(readiness.report()) }
            },
            json!({
                "summary": "Readiness: every component has started and the node is not draining",
                "tags": ["health"],
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "starting, a component is not ready, or draining"}
                }
            }),
        )
        .public()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ready_only_when_every_component_is_and_not_while_draining() {
        let shutdown = Shutdown::new(Duration::ZERO);
        let readiness = Readiness::new(shutdown.clone());
        let control = readiness.register("control");
        let gateway = readiness.register("gateway");
        assert_eq!(readiness.report().status, "starting");
        control.set_ready();
        assert!(!readiness.report().ready);
        gateway.set_ready();
        assert!(readiness.report().ready);
        gateway.set_not_ready("store unreachable");
        assert_eq!(readiness.report().status, "not_ready");
        gateway.set_ready();
        shutdown.trigger();
        let report = readiness.report();
        assert!(!report.ready);
        assert_eq!(report.status, "draining");
    }
}
