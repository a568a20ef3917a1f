//! The service registry on the control API, under `/v1/registry`, persisted
//! in the node's store so registrations survive a restart.

use anyhow::Context as _;
use trellis_discovery::Registry;
use trellis_store::Store;

use crate::control::ControlRoutes;
use crate::directory::{Directory, RemoteRegistry};
use crate::up::Wiring;

/// Where the registry's REST API is mounted.
pub const PREFIX: &str = "/v1/registry";

/// The registry this node uses: another node's when `registry.remote` is
/// set, else its own (see [`start`]); `None` when it has none.
pub async fn directory(w: &mut Wiring<'_>, store: &Store) -> anyhow::Result<Option<Directory>> {
    let config = &w.config.registry;
    if let Some(url) = &config.remote {
        tracing::info!(%url, "using a remote registry");
        let remote = RemoteRegistry::new(url, config.remote_token.clone())?;
        return Ok(Some(Directory::Remote(remote)));
    }
    Ok(start(w, store).await?.map(Directory::Local))
}

/// Opens the registry (re-checking what was registered before a restart)
/// and mounts its API; `None` when `registry.enabled` is off.
pub async fn start(w: &mut Wiring<'_>, store: &Store) -> anyhow::Result<Option<Registry>> {
    if !w.config.registry.enabled {
        return Ok(None);
    }
    let ready = w.readiness.register("registry");
    let config = w.config.registry.clone();
    let registry = if config.etcd.endpoints.is_empty() {
        let ns = store
            .system_namespace("registry")
            .await
            .context("cannot open the registry namespace")?;
        Registry::open(ns, config)
            .await
            .context("cannot open the service registry")?
    } else {
        let etcd = config.etcd.clone();
        tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "registry shared through etcd");
        Registry::open_etcd(config, &etcd)
            .await
            .context("cannot open the service registry on etcd")?
    };
    w.control
        .mount(ControlRoutes::new().nest(
            PREFIX,
            trellis_discovery::router(registry.clone()),
            trellis_discovery::openapi(PREFIX),
        ))
        .context("cannot mount the registry API")?;
    let shutdown = w.shutdown.clone();
    let stopping = registry.clone();
    w.spawn("registry", async move {
        shutdown.triggered().await;
        stopping.shutdown();
        Ok(())
    });
    ready.set_ready();
    Ok(Some(registry))
}
