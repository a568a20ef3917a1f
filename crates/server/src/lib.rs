//! Trellis server: the `trellis` binary as a library, so that tests and the
//! wiring of other crates can drive it in-process.
//!
//! It owns the process-level patterns every component relies on: a validated
//! configuration ([`config`]), the control plane with health checks, OpenAPI
//! and bearer auth ([`control`]), observability ([`telemetry`]: logs and one
//! Prometheus registry), and graceful shutdown with drain deadlines and
//! reload requests ([`shutdown`]). [`up`] wires them into a running node, and
//! [`cli`] is the command line on top.

pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod shutdown;
pub mod telemetry;
pub mod up;
