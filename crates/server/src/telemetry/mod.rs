//! Telemetry shared by every component: logging through `tracing`, one
//! Prometheus registry rendered at `/metrics`, and the bridge that turns
//! component event streams (resilience layers' breaker transitions,
//! rejections…) into metrics, and OpenTelemetry traces over OTLP.

mod logging;
mod metrics;
pub mod otlp;
mod process;
pub mod resilience;

pub use logging::{init_logging, LogHandle, LoggingError};
pub use metrics::Metrics;
pub use otlp::TelemetryConfig;
pub use process::ProcessCollector;
