//! Active health checks: every `interval`, each endpoint gets an HTTP `GET`
//! of the check path (2xx or 3xx passes) or a TCP connect, bounded by
//! `timeout`. An endpoint leaves the pool after `unhealthy_threshold` failures
//! in a row and returns after `healthy_threshold` passes in a row.

use super::Upstream;
use crate::body::Body;
use crate::config::HealthCheckConfig;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Upstream {
    /// Starts the active health checks of this upstream, if it has any. The
    /// task ends when the upstream is dropped (after a reload replaced it).
    pub fn spawn_health_checks(self: &Arc<Self>, config: Option<&HealthCheckConfig>) {
        let Some(config) = config.cloned() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(run(weak, config));
    }
}

async fn run(upstream: Weak<Upstream>, config: HealthCheckConfig) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaks: HashMap<Arc<str>, Streak> = HashMap::new();
    loop {
        ticker.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let set = up.endpoints();
        let checks = set.endpoints.iter().map(|e| {
            let up = up.clone();
            let path = config.path.clone();
            let e = e.clone();
            async move {
                let ok =
                    tokio::time::timeout(config.timeout, probe(&up, e.address(), path.as_deref()))
                        .await
                        .unwrap_or(false);
                (e, ok)
            }
        });
        let results = futures_util::future::join_all(checks).await;
        streaks.retain(|addr, _| set.endpoints.iter().any(|e| e.address_arc() == addr));
        for (e, ok) in results {
            let s = streaks.entry(e.address_arc().clone()).or_default();
            if ok {
                s.passes += 1;
                s.failures = 0;
                if !e.is_healthy() && s.passes >= config.healthy_threshold {
                    tracing::info!(
                        upstream = up.name(),
                        endpoint = e.address(),
                        "endpoint healthy again"
                    );
                    e.set_healthy(true);
                }
            } else {
                s.failures += 1;
                s.passes = 0;
                if e.is_healthy() && s.failures >= config.unhealthy_threshold {
                    tracing::warn!(
                        upstream = up.name(),
                        endpoint = e.address(),
                        "endpoint failed health checks"
                    );
                    e.set_healthy(false);
                }
            }
        }
        drop(up);
    }
}

async fn probe(up: &Upstream, address: &str, path: Option<&str>) -> bool {
    let Some(path) = path else {
        return tokio::net::TcpStream::connect(address).await.is_ok();
    };
    let Ok(uri) = http::Uri::builder()
        .scheme("http")
        .authority(address)
        .path_and_query(path)
        .build()
    else {
        return false;
    };
    let Ok(req) = http::Request::get(uri)
        .header(http::header::USER_AGENT, "trellis-health-check")
        .body(Body::empty())
    else {
        return false;
    };
    match up.client().request(req).await {
        Ok(resp) => {
            let status = resp.status();
            status.is_success() || status.is_redirection()
        }
        Err(_) => false,
    }
}
