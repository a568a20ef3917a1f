//! The delivery worker: one task per persistent subscription.
//!
//! It follows a catch-up-then-live subscription from the stored checkpoint,
//! delivers one event at a time with retries, and records the outcome — the
//! new checkpoint, or the parked event together with the new checkpoint — in
//! one transaction. If recording fails, it re-subscribes from the last stored
//! checkpoint and delivers again: duplicates are possible (at least once),
//! losses are not.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use trellis_store::{StoreError, Tx, Value};

use super::delivery::{post, with_retries, Delivered, Endpoint};
use super::{Command, Format, ParkedEvent, PersistentError, ReplayReport, SubscriptionDefinition};
use crate::{
    now_ms, Direction, EventStore, ReadAll, RecordedEvent, StartFrom, SubscriptionOptions,
};

/// Wait after a storage error before re-subscribing.
const STORE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub position: u64,
    pub delivered: u64,
    pub last_error: Option<String>,
}

pub(crate) struct Worker {
    pub events: EventStore,
    pub def: SubscriptionDefinition,
    pub endpoint: Endpoint,
    pub live: Arc<Mutex<Live>>,
    pub commands: mpsc::Receiver<Command>,
    pub stop: watch::Receiver<bool>,
}

/// One POST of `event` to the subscription's endpoint.
async fn attempt(
    def: &SubscriptionDefinition,
    endpoint: &Endpoint,
    source: &str,
    event: &RecordedEvent,
    n: u32,
) -> Result<(), String> {
    let (content_type, body) = match def.format {
        Format::Cloudevents => (
            "application/cloudevents+json",
            event.to_cloudevent(source).to_string().into_bytes(),
        ),
        Format::Json => (
            "application/json",
            serde_json::to_vec(event).map_err(|e| e.to_string())?,
        ),
    };
    let headers = [
        ("Trellis-Subscription", def.name.clone()),
        ("Trellis-Attempt", n.to_string()),
        ("Trellis-Position", event.position.to_string()),
        ("Trellis-Event-Id", event.id.to_string()),
    ];
    post(endpoint, content_type, &headers, &body, def.timeout)
        .await
        .map(|_| ())
}

impl Worker {
    fn source(&self) -> String {
        format!("/trellis/{}", self.events.namespace().name())
    }

    /// Sleeps unless asked to stop; false when stopping.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.changed() => false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let position = self.live.lock().position;
            let mut opts =
                SubscriptionOptions::new(self.def.source.target(), StartFrom::After(position));
            opts.types = self.def.event_types.clone();
            let mut sub = Box::pin(self.events.subscribe(opts));
            loop {
                let next = tokio::select! {
                    biased;
                    _ = self.stop.changed() => return,
                    Some(cmd) = self.commands.recv() => {
                        self.command(cmd).await;
                        continue;
                    }
                    next = sub.next() => next,
                };
                let event = match next {
                    None => return,
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        self.live.lock().last_error = Some(format!("reading events: {e}"));
                        if !self.pause(STORE_RETRY).await {
                            return;
                        }
                        break;
                    }
                };
                if event.position <= self.live.lock().position {
                    continue;
                }
                let source = self.source();
                let (def, endpoint) = (&self.def, &self.endpoint);
                let outcome = tokio::select! {
                    out = with_retries(def.max_attempts, def.min_backoff, def.max_backoff, |n| {
                        attempt(def, endpoint, &source, &event, n)
                    }) => out,
                    _ = self.stop.changed() => return,
                };
                if let Err(e) = self.record(&event, &outcome).await {
                    self.live.lock().last_error = Some(format!("recording the checkpoint: {e}"));
                    if !self.pause(STORE_RETRY).await {
                        return;
                    }
                    break;
                }
            }
        }
    }

    async fn record(&self, event: &RecordedEvent, outcome: &Delivered) -> Result<(), StoreError> {
        let name = self.def.name.clone();
        let position = event.position as i64;
        let parked = match outcome {
            Delivered::Acked { .. } => None,
            Delivered::Failed { attempts, error } => Some(vec![
                Value::from(name.as_str()),
                Value::Int(position),
                event.stream.as_str().into(),
                event.id.to_string().into(),
                event.event_type.as_str().into(),
                Value::Int(i64::from(*attempts)),
                error.as_str().into(),
                Value::Int(now_ms()),
            ]),
        };
        let acked = parked.is_none();
        self.events
            .namespace()
            .write(move |tx| {
                Box::pin(async move {
                    if let Some(params) = parked {
                        tx.execute(
                            "INSERT INTO {ns}parked_events (subscription, position, stream, event_id, event_type, attempts, last_error, parked_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (subscription, position) DO NOTHING",
                            &params,
                        )
                        .await?;
                    }
                    tx.execute(
                        "UPDATE {ns}persistent_subscriptions SET position = $2, delivered = delivered + $3, updated_ms = $4 WHERE name = $1",
                        &[name.into(), Value::Int(position), Value::Int(acked.into()), Value::Int(now_ms())],
                    )
                    .await?;
                    Ok::<_, StoreError>(())
                })
            })
            .await?;
        let mut live = self.live.lock();
        live.position = event.position;
        match outcome {
            Delivered::Acked { .. } => {
                live.delivered += 1;
                live.last_error = None;
            }
            Delivered::Failed { error, .. } => {
                tracing::warn!(subscription = %self.def.name, position = event.position, %error, "event parked");
                live.last_error = Some(error.clone());
            }
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Replay(reply) => {
                let _ = reply.send(self.replay().await);
            }
        }
    }

    /// One more attempt for each parked event, oldest first.
    async fn replay(&self) -> Result<ReplayReport, PersistentError> {
        let name = self.def.name.clone();
        let parked = self
            .events
            .namespace()
            .read(move |tx| Box::pin(async move { parked_in(tx, &name).await }))
            .await?;
        let mut report = ReplayReport::default();
        let source = self.source();
        for p in parked {
            let read = ReadAll {
                from: Some(p.position),
                direction: Direction::Forward,
                max_count: 1,
                types: None,
            };
            let event = self
                .events
                .read_all(read)
                .await
                .map_err(|e| PersistentError::Invalid(e.to_string()))?
                .into_iter()
                .next()
                .filter(|e| e.position == p.position);
            let result = match &event {
                Some(e) => attempt(&self.def, &self.endpoint, &source, e, p.attempts + 1).await,
                None => Err("the event is no longer in the store".to_owned()),
            };
            let (name, pos) = (self.def.name.clone(), p.position as i64);
            let ok = result.is_ok();
            let error = result.err().unwrap_or_default();
            self.events
                .namespace()
                .write(move |tx| {
                    Box::pin(async move {
                        if ok {
                            tx.execute(
                                "DELETE FROM {ns}parked_events WHERE subscription = $1 AND position = $2",
                                &[name.into(), Value::Int(pos)],
                            )
                            .await
                        } else {
                            tx.execute(
                                "UPDATE {ns}parked_events SET attempts = attempts + 1, last_error = $3 WHERE subscription = $1 AND position = $2",
                                &[name.into(), Value::Int(pos), error.into()],
                            )
                            .await
                        }
                    })
                })
                .await?;
            if ok {
                report.delivered += 1;
            } else {
                report.failed += 1;
            }
        }
        Ok(report)
    }
}

pub(crate) async fn parked_in(tx: &Tx<'_>, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
    tx.query(
        "SELECT position, stream, event_id, event_type, attempts, last_error, parked_ms FROM {ns}parked_events WHERE subscription = $1 ORDER BY position",
        &[name.into()],
    )
    .await?
    .into_iter()
    .map(|mut r| {
        Ok(ParkedEvent {
            position: r.int(0)? as u64,
            stream: r.take_text(1)?,
            event_id: r.take_text(2)?,
            event_type: r.take_text(3)?,
            attempts: r.int(4)?.clamp(0, i64::from(u32::MAX)) as u32,
            last_error: r.take_text(5)?,
            parked_ms: r.int(6)?,
        })
    })
    .collect()
}
