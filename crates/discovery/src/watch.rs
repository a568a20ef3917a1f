//! Watches, in two forms. Blocking queries (Consul semantics): "answer when
//! anything — for this service, or at all — changed after index N, or when
//! the wait runs out", where N is the index a previous answer carried. And a
//! [`Stream`] of every change, in index order, which the SSE endpoint and
//! the gateway feed follow.
//!
//! An index larger than the registry's own (a client that saw a registry
//! before a restart lost some unpersisted health changes) is answered at
//! once, so the client resynchronises instead of waiting for a future that
//! may never come.

use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::model::{Change, ChangeKind, Filter, Instance};
use crate::registry::Registry;

impl Registry {
    /// Waits until the index of `service` (or of the whole registry, when
    /// `None`) passes `after`, or `wait` elapses (capped at the config's
    /// `max_wait`). Returns the index then current for that scope.
    pub async fn wait_for_change(&self, service: Option<&str>, after: u64, wait: Duration) -> u64 {
        let wait = wait.min(self.inner.config.max_wait);
        let mut rx = self.inner.index_tx.subscribe();
        let scope_index = |r: &Registry| match service {
            Some(s) => r.service_index(s),
            None => r.index(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = scope_index(self);
            if current > after || after > self.index() {
                return current;
            }
            rx.borrow_and_update();
            // Re-check after marking seen, so a change between the two reads is not missed.
            let current = scope_index(self);
            if current > after {
                return current;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the registry is gone: answer with what we have.
                _ => return scope_index(self),
            }
        }
    }

    /// Discovery as a blocking query: with `after = Some(n)`, waits for a
    /// change to `service` past `n` first. Returns the service's index and the
    /// matching instances.
    pub async fn discover_blocking(
        &self,
        service: &str,
        filter: &Filter,
        after: Option<u64>,
        wait: Duration,
    ) -> (u64, Vec<Instance>) {
        if let Some(n) = after {
            self.wait_for_change(Some(service), n, wait).await;
        }
        let (_, instances) = self.discover(service, filter);
        (self.service_index(service), instances)
    }

    /// Every change from now on, in index order. A watcher that falls more
    /// than 4,096 changes behind receives one [`ChangeKind::Resync`] and
    /// should re-read what it follows.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        let rx = self.inner.changes.subscribe();
        let weak = self.inner.weak();
        futures::stream::unfold((rx, weak), |(mut rx, weak)| async move {
            match rx.recv().await {
                Ok(change) => Some((change, (rx, weak))),
                Err(RecvError::Lagged(_)) => {
                    let index = weak.upgrade().map_or(0, |i| *i.index_tx.borrow());
                    let resync = Change {
                        index,
                        kind: ChangeKind::Resync,
                        service: String::new(),
                        id: String::new(),
                        instance: None,
                    };
                    Some((resync, (rx, weak)))
                }
                Err(RecvError::Closed) => None,
            }
        })
    }
}
