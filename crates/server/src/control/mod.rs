//! The control-plane HTTP API: one axum router on its own listener, composed
//! from the [`ControlRoutes`] each component contributes, documented at
//! `/openapi.json`, and guarded by a bearer token when one is configured
//! (probes `/healthz` and `/readyz` stay open so orchestrators need no
//! secret).
//!
//! A component contributes endpoints one by one, or a whole router under a
//! prefix, always with their OpenAPI description:
//!
//! ```
//! use axum::extract::Path;
//! use serde_json::json;
//! use trellis::control::{ApiError, ControlRoutes};
//!
//! let routes = ControlRoutes::new().get(
//!     "/v1/services/{name}",
//!     |Path(name): Path<String>| async move {
//!         if name == "users" {
//!             Ok(axum::Json(json!({"name": name, "instances": 3})))
//!         } else {
//!             Err(ApiError::not_found(format!("no service {name:?}")))
//!         }
//!     },
//!     json!({"summary": "One service and its instances", "tags": ["registry"]}),
//! );
//! // In `up`: `wiring.control.mount(routes)?;`
//! # drop(routes);
//! ```

mod admin;
mod auth;
mod error;
mod health;
mod metrics;
mod routes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::{middleware, Router};
use http::Method;
use serde_json::Value;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use health::{ComponentHandle, ComponentState, Readiness, ReadinessReport};
pub use routes::ControlRoutes;

use crate::config::Secret;
use crate::shutdown::{Reload, Shutdown};
use crate::telemetry::{LogHandle, Metrics};
use routes::{Endpoint, Nested, OpenApi};

/// What the built-in control endpoints need from the rest of the process.
#[derive(Debug, Clone)]
pub struct ControlContext {
    /// The shared metrics registry.
    pub metrics: Metrics,
    /// Component readiness behind `/readyz`.
    pub readiness: Readiness,
    /// Lifecycle, for `/v1/status`.
    pub shutdown: Shutdown,
    /// Reload requests, for `POST /v1/reload`.
    pub reload: Reload,
    /// The log filter, for `/v1/logging`; `None` when the embedding program
    /// manages logging itself.
    pub log: Option<LogHandle>,
    /// When the process started, for uptime.
    pub started: Instant,
}

/// Two contributions claimed the same method and path.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The same method and path were contributed twice.
    #[error("control route {method} {path} is contributed twice")]
    DuplicateRoute {
        /// HTTP method.
        method: Method,
        /// Path template.
        path: String,
    },
    /// A path that axum cannot route.
    #[error("control route path {0:?} must start with '/'")]
    InvalidPath(String),
    /// A nested router's prefix that axum cannot nest under.
    #[error("control router prefix {0:?} must be a literal path like \"/v1/events\"")]
    InvalidPrefix(String),
    /// A path or prefix overlaps a router already mounted under a prefix.
    #[error("control path {path} overlaps the router mounted at {prefix}")]
    Overlap {
        /// The new path or prefix.
        path: String,
        /// The prefix it overlaps.
        prefix: String,
    },
}

/// Builds the control router from the built-in endpoints plus every
/// component's contribution.
pub struct ControlApi {
    token: Option<Secret>,
    endpoints: Vec<Endpoint>,
    nested: Vec<Nested>,
    seen: BTreeSet<(String, String)>,
    openapi: OpenApi,
    http_metrics: metrics::HttpMetrics,
}

impl ControlApi {
    /// The built-in endpoints (`/healthz`, `/readyz`, `/metrics`,
    /// `/openapi.json`, `/v1/status`, `/v1/reload`, `/v1/logging`); `token`,
    /// when set, is required on all but the probes.
    pub fn new(ctx: ControlContext, token: Option<Secret>) -> Self {
        let mut api = ControlApi {
            token,
            endpoints: Vec::new(),
            nested: Vec::new(),
            seen: BTreeSet::from([("GET".to_owned(), OPENAPI_PATH.to_owned())]),
            openapi: OpenApi::default(),
            http_metrics: metrics::HttpMetrics::register(&ctx.metrics),
        };
        let builtin = [
            health::routes(ctx.readiness.clone()),
            admin::routes(ctx),
            ControlRoutes::new().schema("Error", ApiError::schema()),
        ];
        for routes in builtin {
            // The built-in paths are distinct by construction.
            let _ = api.mount(routes);
        }
        api
    }

    /// Adds a component's endpoints. Fails, leaving the API unchanged, if any
    /// method and path is already taken.
    pub fn mount(&mut self, routes: ControlRoutes) -> Result<(), ControlError> {
        let mut prefixes: Vec<&str> = self.nested.iter().map(|n| n.prefix.as_str()).collect();
        for n in &routes.nested {
            let p = n.prefix.as_str();
            let literal = p.starts_with('/')
                && p.len() > 1
                && !p.ends_with('/')
                && !p.contains(['{', '}', '*']);
            if !literal {
                return Err(ControlError::InvalidPrefix(n.prefix.clone()));
            }
            if let Some(taken) = prefixes.iter().find(|q| under(p, q) || under(q, p)) {
                return Err(ControlError::Overlap {
                    path: n.prefix.clone(),
                    prefix: (*taken).to_owned(),
                });
            }
            prefixes.push(p);
        }
        let mut claimed = BTreeSet::new();
        for (path, method) in self
            .endpoints
            .iter()
            .chain(&routes.endpoints)
            .map(|e| (&e.path, &e.method))
            .chain([(&OPENAPI_PATH.to_owned(), &Method::GET)])
        {
            if let Some(prefix) = prefixes.iter().find(|p| under(path, p)) {
                return Err(ControlError::Overlap {
                    path: format!("{method} {path}"),
                    prefix: (*prefix).to_owned(),
                });
            }
        }
        for e in &routes.endpoints {
            if !e.path.starts_with('/') {
                return Err(ControlError::InvalidPath(e.path.clone()));
            }
            let key = (e.method.to_string(), e.path.clone());
            if self.seen.contains(&key) || !claimed.insert(key) {
                return Err(ControlError::DuplicateRoute {
                    method: e.method.clone(),
                    path: e.path.clone(),
                });
            }
        }
        self.seen.extend(claimed);
        for e in &routes.endpoints {
            self.openapi.add(&e.method, &e.path, &e.operation, e.public);
        }
        for n in &routes.nested {
            self.openapi.add_fragment(&n.doc);
        }
        self.openapi.add_schemas(&routes.schemas);
        self.endpoints.extend(routes.endpoints);
        self.nested.extend(routes.nested);
        Ok(())
    }

    /// The OpenAPI document for everything mounted so far.
    pub fn openapi(&self) -> Value {
        let mut doc = self.openapi.clone();
        doc.add(&Method::GET, OPENAPI_PATH, &openapi_operation(), false);
        doc.to_json(self.token.is_some())
    }

    /// The finished router.
    pub fn into_router(self) -> Router {
        let doc = axum::body::Bytes::from(self.openapi().to_string());
        let mut public = Router::new();
        let mut protected = Router::new().route(
            OPENAPI_PATH,
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(http::header::CONTENT_TYPE, "application/json")], doc) }
            }),
        );
        for n in self.nested {
            protected = protected.nest(&n.prefix, n.router);
        }
        for e in self.endpoints {
            if e.public {
                public = public.route(&e.path, e.handler);
            } else {
                protected = protected.route(&e.path, e.handler);
            }
        }
        if let Some(token) = self.token {
            protected = protected.layer(middleware::from_fn_with_state(
                Arc::new(token),
                auth::require_bearer,
            ));
        }
        public
            .merge(protected)
            .fallback(|method: Method, uri: http::Uri| async move {
                ApiError::not_found(format!("no control endpoint {method} {}", uri.path()))
            })
            .layer(middleware::from_fn_with_state(
                self.http_metrics,
                metrics::track,
            ))
            .layer(tower_http::trace::TraceLayer::new_for_http())
    }
}

const OPENAPI_PATH: &str = "/openapi.json";

/// True when `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn openapi_operation() -> Value {
    serde_json::json!({
        "summary": "This document",
        "tags": ["node"],
        "responses": {"200": {"description": "OpenAPI 3.1 document"}}
    })
}

/// Serves `router` on `listener` until `stop` completes, then stops
/// accepting and returns once in-flight requests have finished (bound the
/// wait with [`Shutdown::drain`]). `up` stops the control API last, after
/// the other components have drained, so probes see `/readyz` report
/// `draining` and metrics stay scrapeable while they do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

#[cfg(test)]
mod tests;
