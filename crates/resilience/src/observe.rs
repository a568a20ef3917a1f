//! Events: what each pattern reports as it works.
//!
//! A pattern publishes to an [`EventStream`]; anyone may [`subscribe`]. The
//! server turns events into metrics and log lines; tests use them to watch a
//! breaker trip. Publishing is a no-op without subscribers, and events are
//! only published off the fast path (transitions, rejections, retries),
//! never for an ordinary successful call.
//!
//! A slow subscriber never slows a call down: the stream is a bounded
//! broadcast, and a subscriber that falls behind skips ahead and is told how
//! many events it missed (`RecvError::Lagged`).
//!
//! [`subscribe`]: EventStream::subscribe

use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it skips ahead.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A broadcast stream of a pattern's events.
#[derive(Debug, Clone)]
pub struct EventStream<E> {
    tx: broadcast::Sender<E>,
}

impl<E: Clone> EventStream<E> {
    /// A stream that holds up to `capacity` events for a lagging subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventStream { tx }
    }

    /// Publishes an event to every current subscriber.
    pub fn emit(&self, event: E) {
        // No subscribers is the common case, not an error.
        let _ = self.tx.send(event);
    }

    /// Receives every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<E> {
        self.tx.subscribe()
    }
}

impl<E: Clone> Default for EventStream<E> {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}
