//! Which namespace a request addresses: the database-per-service pattern over HTTP.
//!
//! A request carrying `Trellis-Namespace-Token: <token>` is served by the
//! event store of the namespace that token opens (and only that one); a
//! request without it by the router's default event store. Event stores are
//! opened on first use and kept, so live subscribers of a namespace share its
//! append notifications.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use parking_lot::Mutex;
use trellis_store::{Store, StoreError};

use super::Problem;
use crate::{EventStore, Limits};

/// The header naming a namespace by its token.
pub const NAMESPACE_TOKEN_HEADER: &str = "Trellis-Namespace-Token";

/// The event stores the router serves.
#[derive(Clone)]
pub struct EventStores {
    default: EventStore,
    /// Present when requests may address other namespaces by token.
    store: Option<Store>,
    limits: Limits,
    opened: Arc<Mutex<HashMap<String, EventStore>>>,
}

impl EventStores {
    /// Only `default`; a namespace token header is refused.
    pub fn single(default: EventStore) -> Self {
        EventStores {
            limits: *default.limits(),
            default,
            store: None,
            opened: Arc::default(),
        }
    }

    /// `default` for requests without a token, and any namespace of `store` by its token.
    pub fn with_namespaces(default: EventStore, store: Store) -> Self {
        EventStores {
            store: Some(store),
            ..Self::single(default)
        }
    }

    pub fn default_store(&self) -> &EventStore {
        &self.default
    }

    /// The event store of the namespace `token` opens.
    pub async fn for_token(&self, token: &str) -> Result<EventStore, StoreError> {
        let store = self.store.as_ref().ok_or(StoreError::Unauthorized)?;
        let ns = store.namespace(token).await?;
        if let Some(es) = self.opened.lock().get(ns.name()) {
            return Ok(es.clone());
        }
        let name = ns.name().to_owned();
        let es = EventStore::open_with(ns, self.limits).await?;
        Ok(self.opened.lock().entry(name).or_insert(es).clone())
    }
}

/// The event store a request addresses.
pub struct Tenant(pub EventStore);

impl FromRequestParts<EventStores> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, stores: &EventStores) -> Result<Self, Problem> {
        let Some(token) = parts.headers.get(NAMESPACE_TOKEN_HEADER) else {
            return Ok(Tenant(stores.default.clone()));
        };
        let unauthorized = || {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_namespace_token",
                "Invalid namespace token",
                "the Trellis-Namespace-Token does not open any namespace",
            )
        };
        let token = token.to_str().map_err(|_| unauthorized())?;
        match stores.for_token(token).await {
            Ok(es) => Ok(Tenant(es)),
            Err(StoreError::Unauthorized) => Err(unauthorized()),
            Err(e) => {
                tracing::error!(error = %e, "namespace lookup failed");
                Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Storage unavailable",
                    "the namespace could not be opened; retry later",
                ))
            }
        }
    }
}
