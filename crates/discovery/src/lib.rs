//! Trellis's service registry: where services say they are, and how
//! everything else finds the healthy ones.
//!
//! Patterns: **service registry / client- and server-side discovery**,
//! **health check** (TTL heartbeats and active HTTP/TCP probes with
//! thresholds), **watch / blocking query** (Consul semantics), and the feed
//! that lets a gateway upstream **follow the registry** live.
//!
//! # How it works
//!
//! - A [`Registry`] holds instances (service, id, address, port, tags,
//!   metadata) with a [`Status`]. Registration validates everything first
//!   ([`RegistryError::Invalid`] names the field) and writes the store before
//!   the instance becomes visible, so a failure leaves nothing half-written.
//! - Each instance with a TTL or a [`HealthCheck`] has a supervisor task on
//!   tokio's clock: a lapsed TTL or `failure_threshold` failed probes make it
//!   critical (no longer served); after `deregister_after` critical it is removed.
//! - Every change bumps one index. [`Registry::wait_for_change`] and
//!   [`Registry::discover_blocking`] are blocking queries on it;
//!   [`Registry::changes`] is a stream of [`Change`]s; [`follow`] turns a
//!   service into a stream of endpoint lists for a load balancer.
//! - [`router`] and [`openapi`] are the REST API for the control port.
//! - [`Registry::open`] persists registrations in a store namespace; a
//!   restart reloads and re-checks them (see there for TTL instances).

mod config;
pub mod duration;
mod error;
mod etcd;
mod feed;
mod grpc_health;
mod health;
mod http;
mod model;
mod openapi;
mod persist;
mod registry;
pub mod testing;
mod watch;

pub use config::RegistryConfig;
pub use error::RegistryError;
pub use etcd::EtcdConfig;
pub use feed::{endpoints, follow, FeedEndpoint};
pub use health::{network_prober, ProbeResult, Prober};
pub use http::{router, Problem, INDEX_HEADER};
pub use model::{
    validate_name, Change, ChangeKind, CheckKind, Filter, HealthCheck, Instance, Registration,
    ServiceSummary, Status,
};
pub use openapi::openapi;
pub use registry::Registry;
