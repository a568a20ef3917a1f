//! The process-wide Prometheus registry. Every component registers its
//! metrics here under the `trellis_` prefix, and `/metrics` renders it.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

/// A shared handle on the registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry whose metric names start with `trellis_`, holding
    /// `trellis_build_info`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis");
        registry.register(
            "build",
            "Trellis build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Registers one metric as `trellis_<name>`. Keep a clone of the metric
    /// (they are `Arc`s inside) to update it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// Registers metrics under `trellis_<prefix>_`, e.g. a component's own
    /// namespace (`gateway`, `events`).
    pub fn register_in(&self, prefix: &str, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock();
        register(registry.sub_registry_with_prefix(prefix));
    }

    /// Registers a collector: metrics computed when scraped (uptime, pool
    /// sizes) rather than updated as things happen.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry.lock().register_collector(Box::new(collector));
    }

    /// Renders the registry in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock())?;
        Ok(out)
    }
}
