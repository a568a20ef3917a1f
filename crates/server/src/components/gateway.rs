//! The gateway data plane, started from `[[listeners]]`, `[[routes]]` and
//! `[[upstreams]]`, reloaded when the config is, and drained on shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use trellis_gateway::{Gateway, GatewayHandle};

use crate::up::Wiring;

/// Starts the gateway if any listener is configured; returns its handle.
pub async fn start(w: &mut Wiring<'_>) -> anyhow::Result<Option<Arc<GatewayHandle>>> {
    let config = w.config.gateway();
    if config.listeners.is_empty() {
        return Ok(None);
    }
    let ready = w.readiness.register("gateway");
    let mut registry = Registry::default();
    let handle = Gateway::start(config, &mut registry)
        .await
        .context("cannot start the gateway")?;
    w.metrics.attach(registry);
    let handle = Arc::new(handle);

    // Apply reloads: the server has already validated the file; the gateway
    // compiles it and swaps it in atomically, or keeps the old one.
    let mut live = w.live.subscribe();
    let reloading = handle.clone();
    let shutdown = w.shutdown.clone();
    w.spawn("gateway", async move {
        let stopped = shutdown.triggered();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                changed = live.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let config = live.borrow_and_update().gateway();
                    match reloading.reload(config).await {
                        Ok(()) => tracing::info!("gateway config reloaded"),
                        Err(e) => tracing::error!(error = %e, "gateway reload refused; the previous config keeps serving"),
                    }
                }
            }
        }
        reloading.shutdown(shutdown.grace()).await;
        Ok(())
    });
    ready.set_ready();
    Ok(Some(handle))
}
