//! A generic bridge from component event streams to metrics.
//!
//! Resilience layers (breakers, bulkheads, limiters, retries) publish what
//! happens to them on a `tokio::sync::broadcast` channel and expose a
//! `snapshot()` of their state. This module knows nothing of their types: the
//! wiring code supplies a function from an event to label pairs, and
//! [`EventCounters::follow`] counts events by those labels until the stream
//! closes or the process shuts down. [`StateGauges`] holds the snapshot side
//! (e.g. breaker state as 0/1/2 per upstream).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;

use super::Metrics;
use crate::shutdown::Shutdown;

/// Label pairs, e.g. `[("upstream", "users"), ("event", "opened")]`.
pub type Labels = Vec<(String, String)>;

/// Counts events by labels: `trellis_<name>_total{...}`, plus
/// `trellis_<name>_lagged_total` for events the follower missed because it
/// fell behind the channel (so lost counts are visible, not silent).
#[derive(Clone, Debug)]
pub struct EventCounters {
    events: Family<Labels, Counter>,
    lagged: Counter,
}

impl EventCounters {
    /// Registers the counters as `trellis_<name>`.
    pub fn register(metrics: &Metrics, name: &str, help: &str) -> Self {
        let events = Family::<Labels, Counter>::default();
        let lagged = Counter::default();
        metrics.register(name, help, events.clone());
        metrics.register(
            &format!("{name}_lagged"),
            "Events missed because the metrics follower fell behind",
            lagged.clone(),
        );
        EventCounters { events, lagged }
    }

    /// Counts one event.
    pub fn record(&self, labels: &Labels) {
        self.events.get_or_create(labels).inc();
    }

    /// The count for `labels` so far.
    pub fn count(&self, labels: &Labels) -> u64 {
        self.events.get_or_create(labels).get()
    }

    /// Events missed by lagging.
    pub fn lagged(&self) -> u64 {
        self.lagged.get()
    }

    /// Follows `events` in a task, counting each by `labels(&event)`; events
    /// for which `labels` returns `None` are not counted. Ends when the
    /// channel closes or shutdown starts.
    pub fn follow<E, F>(
        &self,
        mut events: broadcast::Receiver<E>,
        shutdown: Shutdown,
        labels: F,
    ) -> JoinHandle<()>
    where
        E: Clone + Send + 'static,
        F: Fn(&E) -> Option<Labels> + Send + 'static,
    {
        let counters = self.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = events.recv() => next,
                    () = shutdown.triggered() => return,
                };
                match next {
                    Ok(event) => {
                        if let Some(l) = labels(&event) {
                            counters.record(&l);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        counters.lagged.inc_by(missed);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }
}

/// Gauges set from state snapshots: `trellis_<name>{...}`.
#[derive(Clone, Debug)]
pub struct StateGauges {
    gauges: Family<Labels, Gauge>,
}

impl StateGauges {
    /// Registers the gauges as `trellis_<name>`.
    pub fn register(metrics: &Metrics, name: &str, help: &str) -> Self {
        let gauges = Family::<Labels, Gauge>::default();
        metrics.register(name, help, gauges.clone());
        StateGauges { gauges }
    }

    /// Sets the gauge for `labels`.
    pub fn set(&self, labels: &Labels, value: i64) {
        self.gauges.get_or_create(labels).set(value);
    }

    /// Removes the series for `labels` (e.g. an upstream that went away).
    pub fn remove(&self, labels: &Labels) {
        self.gauges.remove(labels);
    }
}

/// Builds a [`Labels`] from string pairs.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Clone, Debug)]
    enum BreakerEvent {
        Opened(&'static str),
        Closed(&'static str),
        CallPermitted,
    }

    fn classify(e: &BreakerEvent) -> Option<Labels> {
        match e {
            BreakerEvent::Opened(u) => Some(labels([("upstream", u), ("event", "opened")])),
            BreakerEvent::Closed(u) => Some(labels([("upstream", u), ("event", "closed")])),
            BreakerEvent::CallPermitted => None,
        }
    }

    #[tokio::test]
    async fn follows_a_stream_into_labelled_counters() {
        let metrics = Metrics::new();
        let counters = EventCounters::register(&metrics, "breaker_events", "Breaker events");
        let (tx, rx) = broadcast::channel(16);
        let task = counters.follow(rx, Shutdown::new(Duration::ZERO), classify);
        for e in [
            BreakerEvent::Opened("users"),
            BreakerEvent::CallPermitted,
            BreakerEvent::Opened("users"),
            BreakerEvent::Closed("orders"),
        ] {
            tx.send(e).unwrap();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(
            counters.count(&labels([("upstream", "users"), ("event", "opened")])),
            2
        );
        assert_eq!(
            counters.count(&labels([("upstream", "orders"), ("event", "closed")])),
            1
        );
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"trellis_breaker_events_total{upstream="users",event="opened"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn counts_what_it_missed_when_lagging() {
        let metrics = Metrics::new();
        let counters = EventCounters::register(&metrics, "breaker_events", "Breaker events");
        let (tx, rx) = broadcast::channel(2);
        for _ in 0..5 {
            tx.send(BreakerEvent::Opened("users")).unwrap();
        }
        drop(tx);
        counters
            .follow(rx, Shutdown::new(Duration::ZERO), classify)
            .await
            .unwrap();
        assert_eq!(counters.lagged(), 3);
        assert_eq!(
            counters.count(&labels([("upstream", "users"), ("event", "opened")])),
            2
        );
    }

    #[tokio::test]
    async fn stops_following_at_shutdown() {
        let metrics = Metrics::new();
        let counters = EventCounters::register(&metrics, "e", "e");
        let (_tx, rx) = broadcast::channel::<BreakerEvent>(2);
        let shutdown = Shutdown::new(Duration::ZERO);
        let task = counters.follow(rx, shutdown.clone(), classify);
        shutdown.trigger();
        task.await.unwrap();
    }

    #[test]
    fn state_gauges_render_and_can_be_removed() {
        let metrics = Metrics::new();
        let gauges = StateGauges::register(&metrics, "breaker_state", "0 closed, 1 open");
        let users = labels([("upstream", "users")]);
        gauges.set(&users, 1);
        assert!(metrics
            .encode()
            .unwrap()
            .contains(r#"trellis_breaker_state{upstream="users"} 1"#));
        gauges.remove(&users);
        assert!(!metrics.encode().unwrap().contains("upstream=\"users\""));
    }
}
