//! Prometheus metrics per route, upstream, status class and listener. Handles
//! for each route and upstream are fetched once when the config is compiled,
//! so the hot path only bumps atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric family of the gateway, registered once and shared by every
/// config version, so counters survive a reload.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    retries: Family<RouteLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    ejections: Family<UpstreamLabels, Counter>,
    ejected: Family<UpstreamLabels, Gauge>,
    connections: Family<ListenerLabels, Gauge>,
    breaker: Family<RouteLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            errors: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            connections: Family::default(),
            breaker: Family::default(),
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Registers every family under `trellis_gateway_*`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("trellis_gateway");
        r.register(
            "requests",
            "Requests by route, upstream and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to response headers by route",
            m.latency.clone(),
        );
        r.register("retries", "Retried attempts by route", m.retries.clone());
        r.register(
            "errors",
            "Responses the gateway produced itself, by stable error code",
            m.errors.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        r.register(
            "ejected_endpoints",
            "Endpoints ejected right now",
            m.ejected.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open per listener",
            m.connections.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state per route: 0 closed, 1 half-open, 2 open, 3 forced open, 4 disabled",
            m.breaker.clone(),
        );
        m
    }

    pub(crate) fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        let labels = RouteLabels {
            route: route.to_owned(),
            upstream: upstream.to_owned(),
        };
        RouteMetrics {
            by_class: CLASSES.map(|status| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.to_owned(),
                        upstream: upstream.to_owned(),
                        status,
                    })
                    .clone()
            }),
            latency: self.latency.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            breaker: self.breaker.get_or_create(&labels).clone(),
            errors: self.errors.clone(),
            route: route.to_owned(),
        }
    }

    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
        };
        UpstreamMetrics {
            ejections: self.ejections.get_or_create(&labels).clone(),
            ejected: self.ejected.get_or_create(&labels).clone(),
        }
    }

    pub(crate) fn connections(&self, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }
}

/// Handles of one route's metrics.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
    pub(crate) retries: Counter,
    breaker: Gauge,
    errors: Family<ErrorLabels, Counter>,
    route: String,
}

impl RouteMetrics {
    pub(crate) fn observe(&self, status: http::StatusCode, seconds: f64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }

    pub(crate) fn breaker_state(&self, state: trellis_resilience::breaker::CircuitState) {
        use trellis_resilience::breaker::CircuitState;
        self.breaker.set(match state {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
            CircuitState::ForcedOpen => 3,
            CircuitState::Disabled => 4,
        });
    }

    pub(crate) fn error(&self, code: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                route: self.route.clone(),
                code,
            })
            .inc();
    }
}

/// Handles of one upstream's metrics.
#[derive(Clone, Debug, Default)]
pub struct UpstreamMetrics {
    pub(crate) ejections: Counter,
    ejected: Gauge,
}

impl UpstreamMetrics {
    pub(crate) fn update_ejected(&self, upstream: &crate::upstream::Upstream) {
        self.ejected.set(upstream.ejected_count() as i64);
    }
}
