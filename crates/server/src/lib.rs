//! Trellis server: the `trellis` binary as a library, so that tests and the
//! wiring of other crates can drive it in-process.
//!
//! It implements the process-level patterns every component relies on:
//! externalised, validated configuration with located errors and live
//! reload ([`config`]); the control plane — health-check API (liveness and
//! readiness), OpenAPI-documented REST, bearer auth ([`control`]);
//! observability — structured logs and one Prometheus registry, plus the
//! bridge from resilience events to metrics ([`telemetry`]); and graceful
//! shutdown with connection draining and a deadline ([`shutdown`]). [`up`]
//! wires them into a running node, [`client`] talks to one, and [`cli`] is
//! the command line on top.

pub mod cli;
pub mod client;
pub mod components;
pub mod config;
pub mod control;
pub mod directory;
pub mod services;
pub mod shutdown;
pub mod sidecar;
pub mod telemetry;
pub mod up;
