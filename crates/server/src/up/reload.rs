//! Config reload: on each reload request, re-read the config file; if it
//! validates, install it in [`LiveConfig`] and apply what can change live;
//! if not, log every located problem and keep running on the old config.

use std::path::PathBuf;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::{Config, ConfigError, LiveConfig};
use crate::shutdown::{ReloadRequests, Shutdown};
use crate::telemetry::{LogHandle, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Everything the reload loop needs.
pub(crate) struct Reloader {
    pub file: Option<PathBuf>,
    pub live: LiveConfig,
    pub requests: ReloadRequests,
    pub log: Option<LogHandle>,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
}

impl Reloader {
    pub async fn run(mut self) -> anyhow::Result<()> {
        let reloads = Family::<ReloadLabels, Counter>::default();
        self.metrics.register(
            "config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        loop {
            let request = tokio::select! {
                r = self.requests.next() => r,
                () = self.shutdown.triggered() => return Ok(()),
            };
            let Some(request) = request else {
                // No more requests can come; stay until shutdown like any
                // other task so the node does not mistake this for a failure.
                self.shutdown.triggered().await;
                return Ok(());
            };
            let result = match self.reload_once() {
                Ok(()) => "success",
                Err(e) => {
                    for line in e.to_string().lines() {
                        tracing::error!(request, "config reload rejected: {line}");
                    }
                    "failure"
                }
            };
            reloads.get_or_create(&ReloadLabels { result }).inc();
        }
    }

    fn reload_once(&self) -> Result<(), ConfigError> {
        let Some(file) = &self.file else {
            tracing::info!("reload requested, but the node runs without a config file");
            return Ok(());
        };
        let new = Config::load(file)?;
        self.apply_live_changes(&self.live.current(), &new);
        self.live.replace(new);
        tracing::info!(file = %file.display(), "config reloaded");
        Ok(())
    }

    /// Applies what this crate's own sections can change without a
    /// restart, and says which changes wait for one.
    fn apply_live_changes(&self, old: &Config, new: &Config) {
        if old.log.level != new.log.level {
            match &self.log {
                Some(log) if log.set_by_env() => {
                    tracing::warn!("log.level changed, but RUST_LOG is set and takes precedence")
                }
                Some(log) => match log.set_filter(&new.log.level) {
                    Ok(()) => tracing::info!(filter = %new.log.level, "log filter changed"),
                    Err(e) => tracing::error!("cannot apply log.level: {e}"),
                },
                None => {}
            }
        }
        let restart_only = [
            ("control", old.control != new.control),
            ("log.format", old.log.format != new.log.format),
            ("data", old.data != new.data),
            ("telemetry", old.telemetry != new.telemetry),
            // Turning watching off applies live; turning it on needs the
            // watcher that was not started.
            ("reload.watch", !old.reload.watch && new.reload.watch),
        ];
        for (key, changed) in restart_only {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the config file; takes effect after a restart"
                );
            }
        }
    }
}
