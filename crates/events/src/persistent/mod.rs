//! Persistent subscriptions: the server keeps the checkpoint and pushes
//! events to an HTTP endpoint — **push delivery** with
//! **retry with exponential backoff** and a **dead-letter** (parked) list, as
//! EventStoreDB's persistent subscriptions and webhooks do.
//!
//! - **At least once, in order.** One worker task per subscription reads its
//!   source from the checkpoint and POSTs each event (CloudEvents structured
//!   JSON by default) and moves the checkpoint only after a 2xx; a crash
//!   between the acknowledgement and the checkpoint delivers that event again.
//!   One event is in flight at a time, so events arrive in global order, and
//!   therefore in order per stream.
//! - **Parking.** An event that fails `maxAttempts` times is written to the
//!   parked list *in the same transaction* that moves the checkpoint past it,
//!   so it is never both lost and skipped; delivery goes on with the next
//!   event. [`PersistentSubscriptions::replay_parked`] delivers parked events
//!   again (oldest first) and removes those that are acknowledged. A parked
//!   event is by nature out of order: later events of its stream were
//!   delivered before its replay (as with EventStoreDB's parked messages).
//! - **Retry policy**: `min_backoff · 2^(attempt-1)` capped at `max_backoff`,
//!   a per-attempt timeout, and `maxAttempts` tries; a stop request (delete,
//!   shutdown) interrupts a backoff at once.
//! - Definitions and checkpoints live in the store, so a restart resumes.
//! - REST API: [`api::router`].

pub mod api;
pub mod delivery;
mod schema;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use trellis_store::{StoreError, Value};

pub use delivery::{backoff, Delivered, Endpoint};
pub use schema::COMPONENT;

use crate::{now_ms, validate_stream_name, EventStore, SubscriptionTarget};

/// The events a persistent subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    #[serde(rename = "$all")]
    All,
    Category(String),
    Stream(String),
}

impl Source {
    fn target(&self) -> SubscriptionTarget {
        match self {
            Source::All => SubscriptionTarget::All,
            Source::Category(c) => SubscriptionTarget::Category(c.clone()),
            Source::Stream(s) => SubscriptionTarget::Stream(s.clone()),
        }
    }
}

/// How an event is written into the POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// CloudEvents 1.0 structured mode, `application/cloudevents+json`.
    #[default]
    Cloudevents,
    /// The event as the REST API returns it, `application/json`.
    Json,
}

fn default_attempts() -> u32 {
    5
}
fn default_min_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A persistent subscription, as created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionDefinition {
    /// `[a-z][a-z0-9_-]*`, at most 64 bytes.
    pub name: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// `http://host:port/path`
    pub endpoint: String,
    #[serde(default)]
    pub format: Format,
    /// Tries per event before it is parked (1 to 100).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_min_backoff", with = "duration")]
    pub min_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
    /// Per attempt, connect to response status.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Deliver events after this `$all` position (0: from the first event).
    #[serde(default)]
    pub start_after: u64,
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like \"250ms\": {e}"))
        })
    }
}

impl SubscriptionDefinition {
    /// A definition with the default retry policy.
    pub fn new(name: impl Into<String>, source: Source, endpoint: impl Into<String>) -> Self {
        SubscriptionDefinition {
            name: name.into(),
            source,
            event_types: None,
            endpoint: endpoint.into(),
            format: Format::default(),
            max_attempts: default_attempts(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            timeout: default_timeout(),
            start_after: 0,
        }
    }

    pub fn validate(&self) -> Result<Endpoint, PersistentError> {
        let bad = |m: String| Err(PersistentError::Invalid(m));
        let n = &self.name;
        let name_ok = n.len() <= 64
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            return bad(format!(
                "name `{}`: use a lowercase letter, then lowercase letters, digits, `_` or `-`, at most 64 bytes",
                n.chars().take(64).collect::<String>()
            ));
        }
        if let Source::Category(s) | Source::Stream(s) = &self.source {
            validate_stream_name(s)
                .map_err(|e| PersistentError::Invalid(format!("source: {e}")))?;
        }
        if let Some(types) = &self.event_types {
            if types.is_empty() || types.len() > 100 || types.iter().any(|t| t.trim().is_empty()) {
                return bad("eventTypes must list 1 to 100 non-empty types".into());
            }
        }
        if !(1..=100).contains(&self.max_attempts) {
            return bad("maxAttempts must be from 1 to 100".into());
        }
        if self.min_backoff > self.max_backoff {
            return bad("minBackoff is longer than maxBackoff".into());
        }
        if self.max_backoff > Duration::from_secs(3600) || self.timeout > Duration::from_secs(300) {
            return bad("maxBackoff is at most 1h and timeout at most 5m".into());
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive".into());
        }
        Endpoint::parse(&self.endpoint)
            .map_err(|e| PersistentError::Invalid(format!("endpoint: {e}")))
    }
}

/// An event that kept failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub position: u64,
    pub stream: String,
    pub event_id: String,
    pub event_type: String,
    pub attempts: u32,
    pub last_error: String,
    pub parked_ms: i64,
}

/// What a replay of parked events did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Acknowledged and removed from the parked list.
    pub delivered: u32,
    /// Failed again; they stay parked.
    pub failed: u32,
}

/// A subscription's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    pub definition: SubscriptionDefinition,
    /// Every event at or below this position was acknowledged or parked.
    pub position: u64,
    pub delivered: u64,
    pub parked: u64,
    /// The last failed attempt's error, until the next acknowledgement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Errors of the persistent-subscription API.
#[derive(Debug, thiserror::Error)]
pub enum PersistentError {
    #[error("persistent subscription `{0}` does not exist")]
    NotFound(String),
    #[error("persistent subscription `{0}` already exists")]
    AlreadyExists(String),
    #[error("invalid persistent subscription: {0}")]
    Invalid(String),
    #[error("persistent subscription `{0}` has stopped")]
    Stopped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) enum Command {
    Replay(oneshot::Sender<Result<ReplayReport, PersistentError>>),
}

struct Handle {
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    live: Arc<Mutex<worker::Live>>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    events: EventStore,
    workers: Mutex<HashMap<String, Handle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, h) in self.workers.lock().drain() {
            h.task.abort();
        }
    }
}

/// The persistent subscriptions of one event store. Cheap to clone.
#[derive(Clone)]
pub struct PersistentSubscriptions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PersistentSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentSubscriptions")
            .finish_non_exhaustive()
    }
}

impl PersistentSubscriptions {
    /// Opens the subscriptions of `events`' namespace and starts a worker for each.
    pub async fn open(events: EventStore) -> Result<Self, PersistentError> {
        let ns = events.namespace().clone();
        ns.migrate(COMPONENT, schema::MIGRATIONS).await?;
        let rows = ns
            .read(|tx| {
                Box::pin(async move {
                    tx.query(
                        "SELECT definition, position, delivered FROM {ns}persistent_subscriptions ORDER BY name",
                        &[],
                    )
                    .await
                })
            })
            .await?;
        let this = PersistentSubscriptions {
            inner: Arc::new(Inner {
                events,
                workers: Mutex::new(HashMap::new()),
            }),
        };
        for r in rows {
            let def: SubscriptionDefinition = serde_json::from_str(r.text(0)?)
                .map_err(|e| StoreError::Decode(format!("stored subscription: {e}")))?;
            match def.validate() {
                Ok(endpoint) => this.spawn(def, endpoint, r.int(1)? as u64, r.int(2)? as u64),
                Err(e) => {
                    tracing::error!(subscription = %def.name, error = %e, "stored persistent subscription is invalid; not started")
                }
            }
        }
        Ok(this)
    }

    fn spawn(
        &self,
        def: SubscriptionDefinition,
        endpoint: Endpoint,
        position: u64,
        delivered: u64,
    ) {
        let (commands, rx) = mpsc::channel(4);
        let (stop, stop_rx) = watch::channel(false);
        let live = Arc::new(Mutex::new(worker::Live {
            position,
            delivered,
            last_error: None,
        }));
        let name = def.name.clone();
        let w = worker::Worker {
            events: self.inner.events.clone(),
            def,
            endpoint,
            live: live.clone(),
            commands: rx,
            stop: stop_rx,
        };
        let task = tokio::spawn(w.run());
        self.inner.workers.lock().insert(
            name,
            Handle {
                commands,
                stop,
                live,
                task,
            },
        );
    }

    /// Creates a subscription and starts delivering.
    pub async fn create(
        &self,
        def: SubscriptionDefinition,
    ) -> Result<SubscriptionStatus, PersistentError> {
        let endpoint = def.validate()?;
        let json =
            serde_json::to_string(&def).map_err(|e| PersistentError::Invalid(e.to_string()))?;
        let (name, start) = (
            def.name.clone(),
            def.start_after.min(i64::MAX as u64) as i64,
        );
        self.inner
            .events
            .namespace()
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO {ns}persistent_subscriptions (name, definition, position, delivered, created_ms, updated_ms) VALUES ($1, $2, $3, 0, $4, $4)",
                        &[name.as_str().into(), json.into(), Value::Int(start), Value::Int(now_ms())],
                    )
                    .await
                    .map_err(|e| {
                        if e.is_unique_violation() {
                            PersistentError::AlreadyExists(name.clone())
                        } else {
                            e.into()
                        }
                    })
                })
            })
            .await?;
        let name = def.name.clone();
        self.spawn(def, endpoint, start as u64, 0);
        self.status(&name).await
    }

    /// Stops a subscription and deletes it with its checkpoint and parked events.
    pub async fn delete(&self, name: &str) -> Result<(), PersistentError> {
        let handle = self
            .inner
            .workers
            .lock()
            .remove(name)
            .ok_or_else(|| PersistentError::NotFound(name.to_owned()))?;
        let _ = handle.stop.send(true);
        let _ = handle.task.await;
        let n = name.to_owned();
        self.inner
            .events
            .namespace()
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "DELETE FROM {ns}parked_events WHERE subscription = $1",
                        &[n.as_str().into()],
                    )
                    .await?;
                    tx.execute(
                        "DELETE FROM {ns}persistent_subscriptions WHERE name = $1",
                        &[n.into()],
                    )
                    .await
                })
            })
            .await?;
        Ok(())
    }

    /// The names of every subscription.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.workers.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// One subscription's status.
    pub async fn status(&self, name: &str) -> Result<SubscriptionStatus, PersistentError> {
        let live = self
            .inner
            .workers
            .lock()
            .get(name)
            .map(|h| h.live.lock().clone())
            .ok_or_else(|| PersistentError::NotFound(name.to_owned()))?;
        let n = name.to_owned();
        let row = self
            .inner
            .events
            .namespace()
            .read(move |tx| {
                Box::pin(async move {
                    let def = tx
                        .query_opt(
                            "SELECT definition FROM {ns}persistent_subscriptions WHERE name = $1",
                            &[n.as_str().into()],
                        )
                        .await?;
                    let parked = tx
                        .query_one(
                            "SELECT COUNT(*) FROM {ns}parked_events WHERE subscription = $1",
                            &[n.into()],
                        )
                        .await?
                        .int(0)?;
                    Ok::<_, StoreError>((
                        def.map(|r| r.text(0).map(str::to_owned)).transpose()?,
                        parked,
                    ))
                })
            })
            .await?;
        let (Some(def), parked) = row else {
            return Err(PersistentError::NotFound(name.to_owned()));
        };
        let definition = serde_json::from_str(&def)
            .map_err(|e| StoreError::Decode(format!("stored subscription: {e}")))?;
        Ok(SubscriptionStatus {
            definition,
            position: live.position,
            delivered: live.delivered,
            parked: parked as u64,
            last_error: live.last_error,
        })
    }

    /// Every subscription's status.
    pub async fn list(&self) -> Result<Vec<SubscriptionStatus>, PersistentError> {
        let mut out = Vec::new();
        for n in self.names() {
            match self.status(&n).await {
                Ok(s) => out.push(s),
                Err(PersistentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The parked events of a subscription, oldest first.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, PersistentError> {
        if !self.inner.workers.lock().contains_key(name) {
            return Err(PersistentError::NotFound(name.to_owned()));
        }
        let n = name.to_owned();
        Ok(self
            .inner
            .events
            .namespace()
            .read(move |tx| Box::pin(async move { worker::parked_in(tx, &n).await }))
            .await?)
    }

    /// Delivers every parked event once more (oldest first), between live
    /// deliveries; acknowledged ones leave the parked list.
    pub async fn replay_parked(&self, name: &str) -> Result<ReplayReport, PersistentError> {
        let commands = self
            .inner
            .workers
            .lock()
            .get(name)
            .map(|h| h.commands.clone())
            .ok_or_else(|| PersistentError::NotFound(name.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        commands
            .send(Command::Replay(reply))
            .await
            .map_err(|_| PersistentError::Stopped(name.to_owned()))?;
        rx.await
            .map_err(|_| PersistentError::Stopped(name.to_owned()))?
    }

    /// Stops every worker; they resume from their checkpoints at the next open.
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = self.inner.workers.lock().drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.stop.send(true);
            let _ = h.task.await;
        }
    }
}
