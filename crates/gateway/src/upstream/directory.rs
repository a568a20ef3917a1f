//! Upstreams by service name, for routes whose request names the service
//! (`service_from`): the ambassador's `/v1/invoke/<service>/…` and
//! header- or host-addressed calls.
//!
//! The first request for a service makes its upstream from the template's
//! settings and asks the [`ServiceResolver`] for its instances; a task feeds
//! every list the resolver yields into the upstream until the directory
//! drops it. Requests wait (briefly) for that first list, so the first call
//! to a service does not fail merely for being first.

use super::Upstream;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::proxy::GatewayError;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Where the gateway learns the instances of a service. The `trellis`
/// binary implements it on its registry (embedded or remote).
pub trait ServiceResolver: Send + Sync + 'static {
    /// The endpoints (`host:port`, weight) of `service`: the current list as
    /// soon as it is known, then a new list whenever it changes. The stream
    /// is dropped when the gateway no longer needs the service.
    fn follow(&self, service: &str) -> BoxStream<'static, Vec<(String, u32)>>;
}

/// Most services one directory keeps; past it, upstreams of services without
/// instances (typos, probes) are forgotten first, and if every one has
/// instances the request is refused rather than growing without bound.
const MAX_SERVICES: usize = 4096;

/// How long a request waits for the resolver's first list for a new service.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(2);

struct Entry {
    upstream: Arc<Upstream>,
    /// Dropping it stops the feeding task.
    _feed: oneshot::Sender<()>,
}

/// The per-service upstreams of one service-by-name upstream config.
pub(crate) struct ServiceDirectory {
    template: UpstreamConfig,
    metrics: Metrics,
    resolver: Arc<dyn ServiceResolver>,
    services: parking_lot::RwLock<HashMap<Box<str>, Entry>>,
}

impl std::fmt::Debug for ServiceDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDirectory")
            .field("template", &self.template.name)
            .field("services", &self.services.read().len())
            .finish()
    }
}

/// Service names as the registry accepts them: letters, digits, `-`, `_`
/// and `.`, at most 128 bytes.
fn valid_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ServiceDirectory {
    pub(crate) fn protocol(&self) -> crate::config::UpstreamProtocol {
        self.template.protocol
    }

    pub(crate) fn new(
        template: &UpstreamConfig,
        metrics: &Metrics,
        resolver: Arc<dyn ServiceResolver>,
    ) -> ServiceDirectory {
        ServiceDirectory {
            template: template.clone(),
            metrics: metrics.clone(),
            resolver,
            services: parking_lot::RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.template.name
    }

    /// The upstream of `service`, made and fed on first use.
    pub(crate) async fn get(&self, service: &str) -> Result<Arc<Upstream>, GatewayError> {
        if let Some(e) = self.services.read().get(service) {
            return Ok(e.upstream.clone());
        }
        if !valid_service(service) {
            return Err(GatewayError::InvalidService);
        }
        let upstream = self.insert(service)?;
        if !upstream.wait_fed(FIRST_LIST_WAIT).await {
            tracing::warn!(upstream = %self.template.name, %service, "no instance list for the service yet");
        }
        Ok(upstream)
    }

    fn insert(&self, service: &str) -> Result<Arc<Upstream>, GatewayError> {
        let mut services = self.services.write();
        if let Some(e) = services.get(service) {
            return Ok(e.upstream.clone());
        }
        if services.len() >= MAX_SERVICES {
            services.retain(|_, e| !e.upstream.endpoints().endpoints.is_empty());
            if services.len() >= MAX_SERVICES {
                return Err(GatewayError::UpstreamOverloaded);
            }
        }
        let mut config = self.template.clone();
        config.name = format!("{}:{service}", self.template.name);
        config.service = Some(service.to_owned());
        let upstream = Arc::new(Upstream::new(&config, self.metrics.upstream(&config.name)));
        upstream.spawn_health_checks(config.health_check.as_ref());
        let (feed, stop) = oneshot::channel();
        tokio::spawn(feed_upstream(
            self.resolver.follow(service),
            Arc::downgrade(&upstream),
            stop,
        ));
        services.insert(
            service.into(),
            Entry {
                upstream: upstream.clone(),
                _feed: feed,
            },
        );
        tracing::info!(upstream = %self.template.name, %service, "resolving a service by name");
        Ok(upstream)
    }
}

async fn feed_upstream(
    mut lists: BoxStream<'static, Vec<(String, u32)>>,
    upstream: std::sync::Weak<Upstream>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            next = lists.next() => {
                let (Some(list), Some(up)) = (next, upstream.upgrade()) else { return };
                up.set_endpoints(list);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_registry_rules() {
        for ok in ["orders", "orders-v2", "a.b_c", &"x".repeat(128)] {
            assert!(valid_service(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "ö", "..%2f", &"x".repeat(129)] {
            assert!(!valid_service(bad), "{bad}");
        }
    }
}
