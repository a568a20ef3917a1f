//! Passive outlier detection: an endpoint that fails `consecutive_failures`
//! requests in a row is ejected for `base_ejection_time × ejections so far`,
//! never taking more than `max_ejection_percent` of the pool out at once. An
//! ejected endpoint returns by itself when its time is up; once it has served
//! well for as long again, its ejection count is forgiven.

use super::{Endpoint, Upstream};
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Upstream {
    /// Records a successful response from `endpoint` that took `latency`.
    pub fn record_success(&self, endpoint: &Endpoint, latency: Duration) {
        endpoint.observe_latency(latency);
        // Read first: a store on every request would bounce the cache line.
        if endpoint.consecutive_failures.load(Ordering::Relaxed) != 0 {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if let Some(od) = &self.outlier {
            let ejections = endpoint.ejections.load(Ordering::Relaxed);
            if ejections > 0 {
                // An endpoint with a history is the one that may have just returned.
                self.metrics.update_ejected(self);
                let back_at = endpoint.ejected_until();
                let forgiven_at = back_at
                    .saturating_add(od.base_ejection_time.as_nanos() as u64 * u64::from(ejections));
                if self.now() >= forgiven_at {
                    endpoint.ejections.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records a failed attempt at `endpoint` (connection failure, timeout,
    /// reset or 5xx), ejecting it when it has failed too often in a row.
    pub fn record_failure(&self, endpoint: &Endpoint, latency: Duration) {
        endpoint.observe_latency(latency);
        let Some(od) = &self.outlier else { return };
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < od.consecutive_failures {
            return;
        }
        let _guard = self.eject_lock.lock();
        let now = self.now();
        if endpoint.ejected_until() > now {
            return;
        }
        let set = self.set.load();
        let total = set.endpoints.len();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.ejected_until() > now)
            .count();
        let allowed = total * od.max_ejection_percent as usize / 100;
        if ejected >= allowed {
            return;
        }
        let ejections = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = od.base_ejection_time.as_nanos() as u64 * u64::from(ejections);
        endpoint.set_ejected_until(now + duration);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        self.metrics.ejections.inc();
        self.metrics.update_ejected(self);
        tracing::warn!(
            upstream = %self.name,
            endpoint = endpoint.address(),
            ejections,
            for_ms = duration / 1_000_000,
            "ejecting endpoint after consecutive failures"
        );
    }

    /// Endpoints ejected at this moment.
    pub fn ejected_count(&self) -> usize {
        let now = self.now();
        self.set
            .load()
            .endpoints
            .iter()
            .filter(|e| e.ejected_until() > now)
            .count()
    }
}
