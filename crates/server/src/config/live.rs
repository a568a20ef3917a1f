//! The config in force while the node runs. Reloads (SIGHUP,
//! `POST /v1/reload`) replace it only with a config that fully validated, so
//! a broken edit never reaches a component; components watch it and apply
//! what they can change live.

use std::sync::Arc;

use tokio::sync::watch;

use super::Config;

/// A shared, watchable handle on the current [`Config`].
#[derive(Debug, Clone)]
pub struct LiveConfig {
    tx: Arc<watch::Sender<Arc<Config>>>,
}

impl LiveConfig {
    /// Starts with `config`.
    pub fn new(config: Config) -> Self {
        LiveConfig {
            tx: Arc::new(watch::Sender::new(Arc::new(config))),
        }
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Notified on every replacement; `borrow_and_update` gives the latest.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }

    /// Installs a new, already validated config and returns the old one.
    pub fn replace(&self, config: Config) -> Arc<Config> {
        self.tx.send_replace(Arc::new(config))
    }
}
