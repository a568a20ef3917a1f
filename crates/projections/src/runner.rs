//! The runner: one tokio task per projection, following a subscription from
//! its checkpoint and folding events in batches.
//!
//! A batch is folded in three steps: the script picks each event's document
//! id; the documents not yet in memory are read in one read transaction; the
//! script folds the events over them (on a blocking thread, since a script may
//! burn its whole CPU budget). Then one write transaction upserts or deletes
//! the changed documents *and* moves the checkpoint with a compare-and-set on
//! the old position — so either both land or neither does, and a runner that
//! lost its place (the transaction failed, or another process moved the
//! checkpoint) drops what it folded, re-reads the checkpoint and folds again
//! from there. No event is ever applied twice to the read model.
//!
//! Every change to a projection's state (pause, resume, reset, new script)
//! goes through its task as a [`Command`], so those changes never interleave
//! with a batch in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use rhai::Dynamic;
use tokio::sync::{mpsc, oneshot, watch};
use trellis_events::{EventStore, RecordedEvent, StartFrom, SubscriptionOptions};
use trellis_store::StoreError;

use crate::definition::ProjectionDefinition;
use crate::error::ProjectionError;
use crate::repo::{self, BatchWrite, Fault, RunState};
use crate::script::{document_value, Outcome, Script, ScriptError};

/// How runners batch and retry.
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// Most events folded per transaction.
    pub batch_size: usize,
    /// How often a runner looks for appends by other processes (PostgreSQL).
    pub poll_interval: Duration,
    /// First wait after a storage error; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<(), ProjectionError>>;

pub(crate) enum Command {
    Pause(Reply),
    Resume(Reply),
    /// Clear the read model and checkpoint, then pause (`false`) or run (`true`).
    Reset {
        run: bool,
        reply: Reply,
    },
    Update {
        definition: ProjectionDefinition,
        script: Arc<Script>,
        reply: Reply,
    },
    Stop,
}

/// What the task knows, shared with status readers.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub definition: ProjectionDefinition,
    pub state: RunState,
    pub position: u64,
    pub processed: u64,
    pub fault: Option<Fault>,
    /// The last storage error, cleared by the next successful batch.
    pub transient: Option<String>,
}

pub(crate) struct Shared {
    pub live: Mutex<Live>,
    /// The checkpoint, for callers waiting to read their own writes.
    pub position: watch::Sender<u64>,
    /// Test hook: this many batch transactions fail after writing documents.
    pub failpoint: AtomicU32,
}

pub(crate) struct Runner {
    pub name: String,
    pub events: EventStore,
    pub script: Option<Arc<Script>>,
    pub shared: Arc<Shared>,
    pub commands: mpsc::Receiver<Command>,
    pub options: RunnerOptions,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Stops the read-ahead task when the runner re-subscribes or stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Step {
    Continue,
    Restart,
    Stop,
}

impl Runner {
    fn state(&self) -> RunState {
        self.shared.live.lock().state
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = self.options.min_backoff;
        loop {
            if self.state() != RunState::Running {
                match self.commands.recv().await {
                    Some(cmd) => {
                        if let Step::Stop = self.command(cmd).await {
                            return;
                        }
                        continue;
                    }
                    None => return,
                }
            }
            let Some(script) = self.script.clone() else {
                let fault = Fault {
                    message: "the stored script does not compile; update it".into(),
                    position: self.shared.live.lock().position + 1,
                };
                self.fault_without_batch(fault).await;
                continue;
            };
            let (definition, position) = {
                let live = self.shared.live.lock();
                (live.definition.clone(), live.position)
            };
            let mut opts =
                SubscriptionOptions::new(definition.source.target(), StartFrom::After(position));
            opts.types = definition.event_types.clone();
            opts.page_size = self.options.batch_size;
            opts.poll_interval = self.options.poll_interval;
            // The subscription reads ahead on its own task, so reading the next
            // page overlaps folding and committing this one.
            let (ahead, mut sub) = mpsc::channel(self.options.batch_size.max(1) * 2);
            let events = self.events.subscribe(opts);
            let _reader = AbortOnDrop(tokio::spawn(async move {
                let mut events = Box::pin(events);
                while let Some(item) = events.next().await {
                    let failed = item.is_err();
                    if ahead.send(item).await.is_err() || failed {
                        break;
                    }
                }
            }));
            loop {
                tokio::select! {
                    biased;
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => match self.command(cmd).await {
                            Step::Continue => {}
                            Step::Restart => break,
                            Step::Stop => return,
                        },
                        None => return,
                    },
                    first = sub.recv() => {
                        let mut batch = Vec::new();
                        let mut failed = None;
                        match first {
                            Some(Ok(e)) => batch.push(e),
                            Some(Err(e)) => failed = Some(e.to_string()),
                            None => return,
                        }
                        while failed.is_none() && batch.len() < self.options.batch_size {
                            match sub.try_recv() {
                                Ok(Ok(e)) => batch.push(e),
                                Ok(Err(e)) => failed = Some(e.to_string()),
                                Err(_) => break,
                            }
                        }
                        let result = if batch.is_empty() {
                            Ok(())
                        } else {
                            self.fold(&script, batch).await
                        };
                        let error = match (result, failed) {
                            (Err(e), _) => Some(e.to_string()),
                            (Ok(()), Some(e)) => Some(e),
                            (Ok(()), None) => None,
                        };
                        if let Some(error) = error {
                            tracing::warn!(projection = %self.name, %error, "projection batch failed; retrying from the checkpoint");
                            self.shared.live.lock().transient = Some(error);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(self.options.max_backoff);
                            self.reload().await;
                            break;
                        }
                        backoff = self.options.min_backoff;
                        if self.state() != RunState::Running {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Re-reads the checkpoint and state after a failed batch.
    async fn reload(&mut self) {
        let name = self.name.clone();
        let stored = self
            .events
            .namespace()
            .read(move |tx| Box::pin(async move { repo::load(tx, &name).await }))
            .await;
        if let Ok(Some(s)) = stored {
            let mut live = self.shared.live.lock();
            live.position = s.position;
            live.processed = s.processed;
            live.state = s.state;
            live.fault = s.fault;
        }
    }

    async fn fault_without_batch(&mut self, fault: Fault) {
        let position = self.shared.live.lock().position;
        let (name, f) = (self.name.clone(), fault.clone());
        let ok = self
            .events
            .namespace()
            .write(move |tx| {
                Box::pin(async move {
                    repo::advance(tx, &name, position, position, 0, Some(&f), now_ms()).await
                })
            })
            .await;
        let mut live = self.shared.live.lock();
        live.state = RunState::Faulted;
        live.fault = Some(fault);
        if let Err(e) = ok {
            live.transient = Some(e.to_string());
        }
    }

    async fn command(&mut self, cmd: Command) -> Step {
        let name = self.name.clone();
        let ns = self.events.namespace().clone();
        match cmd {
            Command::Stop => Step::Stop,
            Command::Pause(reply) => {
                let current = self.state();
                if current != RunState::Running {
                    let _ = reply.send(Ok(()));
                    return Step::Continue;
                }
                let result = ns
                    .write(move |tx| {
                        Box::pin(async move {
                            repo::set_state(tx, &name, RunState::Paused, now_ms()).await
                        })
                    })
                    .await;
                if result.is_ok() {
                    self.shared.live.lock().state = RunState::Paused;
                }
                let _ = reply.send(result.map_err(Into::into));
                Step::Restart
            }
            Command::Resume(reply) => {
                let result = ns
                    .write(move |tx| {
                        Box::pin(async move {
                            repo::set_state(tx, &name, RunState::Running, now_ms()).await
                        })
                    })
                    .await;
                if result.is_ok() {
                    let mut live = self.shared.live.lock();
                    live.state = RunState::Running;
                    live.fault = None;
                }
                let _ = reply.send(result.map_err(Into::into));
                Step::Restart
            }
            Command::Reset { run, reply } => {
                let state = if run {
                    RunState::Running
                } else {
                    RunState::Paused
                };
                let result = ns
                    .write(move |tx| {
                        Box::pin(async move { repo::reset(tx, &name, state, now_ms()).await })
                    })
                    .await;
                if result.is_ok() {
                    let mut live = self.shared.live.lock();
                    live.state = state;
                    live.position = 0;
                    live.processed = 0;
                    live.fault = None;
                    live.transient = None;
                    self.shared.position.send_replace(0);
                }
                let _ = reply.send(result.map_err(Into::into));
                Step::Restart
            }
            Command::Update {
                definition,
                script,
                reply,
            } => {
                let def = definition.clone();
                let keep_paused = self.state() == RunState::Paused;
                let state = if keep_paused {
                    RunState::Paused
                } else {
                    RunState::Running
                };
                let result = ns
                    .write(move |tx| {
                        Box::pin(async move {
                            repo::set_definition(tx, &def, now_ms()).await?;
                            repo::set_state(tx, &def.name, state, now_ms()).await?;
                            Ok::<_, ProjectionError>(())
                        })
                    })
                    .await;
                if result.is_ok() {
                    self.script = Some(script);
                    let mut live = self.shared.live.lock();
                    live.definition = definition;
                    live.state = state;
                    live.fault = None;
                }
                let _ = reply.send(result);
                Step::Restart
            }
        }
    }

    /// Folds one batch and commits it with the checkpoint.
    async fn fold(
        &mut self,
        script: &Arc<Script>,
        batch: Vec<RecordedEvent>,
    ) -> Result<(), ProjectionError> {
        let from = self.shared.live.lock().position;
        // Events at or before the checkpoint were folded already (the
        // subscription may repeat the boundary after a restart).
        let batch: Vec<RecordedEvent> = batch.into_iter().filter(|e| e.position > from).collect();
        if batch.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(batch);
        let (s, b) = (script.clone(), batch.clone());
        let keyed = tokio::task::spawn_blocking(move || pick_ids(&s, &b))
            .await
            .map_err(|_| StoreError::Panicked)?;
        let (items, mut fault) = keyed;
        let mut ids: Vec<String> = items.iter().filter_map(|(id, _)| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let name = self.name.clone();
        let loaded = if ids.is_empty() {
            Vec::new()
        } else {
            self.events
                .namespace()
                .read(move |tx| {
                    Box::pin(async move { repo::load_documents(tx, &name, &ids).await })
                })
                .await?
        };
        let (s, b) = (script.clone(), batch.clone());
        let folded = tokio::task::spawn_blocking(move || fold_items(&s, &b, items, loaded))
            .await
            .map_err(|_| StoreError::Panicked)?;
        let (write, folded_until, fold_fault) = folded;
        if fold_fault.is_some() {
            fault = fold_fault;
        }
        let applied = folded_until;
        let to = if applied == 0 {
            from
        } else {
            batch[applied - 1].position
        };
        let fault = fault.map(|(i, e): (usize, ScriptError)| {
            let e_at = &batch[i];
            Fault {
                message: format!(
                    "event {} (`{}` in stream `{}`): {e}",
                    e_at.position, e_at.event_type, e_at.stream
                ),
                position: e_at.position,
            }
        });
        let name = self.name.clone();
        let shared = self.shared.clone();
        let f = fault.clone();
        let moved = self
            .events
            .namespace()
            .write(move |tx| {
                Box::pin(async move {
                    let now = now_ms();
                    repo::write_documents(tx, &name, &write, now).await?;
                    if shared
                        .failpoint
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return Err(StoreError::CommitFailed(
                            "injected failure after the read-model write".into(),
                        ));
                    }
                    let ok =
                        repo::advance(tx, &name, from, to, applied as u64, f.as_ref(), now).await?;
                    if !ok {
                        return Err(StoreError::CommitFailed(
                            "the checkpoint moved under this runner (another runner, or a reset)"
                                .into(),
                        ));
                    }
                    Ok(())
                })
            })
            .await;
        moved?;
        let mut live = self.shared.live.lock();
        live.position = to;
        live.processed += applied as u64;
        live.transient = None;
        if let Some(fault) = fault {
            tracing::warn!(projection = %self.name, error = %fault.message, "projection faulted");
            live.state = RunState::Faulted;
            live.fault = Some(fault);
        }
        drop(live);
        self.shared.position.send_replace(to);
        Ok(())
    }
}

type Keyed = (Vec<(Option<String>, Dynamic)>, Option<(usize, ScriptError)>);

/// Runs `id(event)` over the batch, stopping at the first failure.
fn pick_ids(script: &Script, batch: &[RecordedEvent]) -> Keyed {
    let mut items = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        if !script.handles(&e.event_type) {
            items.push((None, Dynamic::UNIT));
            continue;
        }
        let picked =
            Script::event_value(e).and_then(|v| script.document_id(e, &v).map(|id| (id, v)));
        match picked {
            Ok(item) => items.push(item),
            Err(err) => return (items, Some((i, err))),
        }
    }
    (items, None)
}

/// Folds the events over the loaded documents; returns the writes, how many
/// events were folded, and the failure that stopped the fold early, if any.
fn fold_items(
    script: &Script,
    batch: &[RecordedEvent],
    items: Vec<(Option<String>, Dynamic)>,
    loaded: Vec<(String, String)>,
) -> (BatchWrite, usize, Option<(usize, ScriptError)>) {
    let mut docs: HashMap<String, Option<Dynamic>> = HashMap::with_capacity(loaded.len());
    let mut dirty: HashMap<String, (Option<String>, u64)> = HashMap::new();
    let mut stored = HashMap::with_capacity(loaded.len());
    for (id, json) in loaded {
        stored.insert(id, json);
    }
    let n = items.len();
    let mut stop = None;
    for (i, (id, value)) in items.into_iter().enumerate() {
        let Some(id) = id else { continue };
        let event = &batch[i];
        let current = match docs.get(&id) {
            Some(d) => d.clone(),
            None => match stored.remove(&id).map(|j| document_value(&j)).transpose() {
                Ok(d) => d,
                Err(e) => {
                    stop = Some((i, e));
                    break;
                }
            },
        };
        match script.apply(&event.event_type, current, value) {
            Ok(Outcome::Skip) => {}
            Ok(Outcome::Upsert { doc, json }) => {
                docs.insert(id.clone(), Some(doc));
                dirty.insert(id, (Some(json), event.position));
            }
            Ok(Outcome::Delete) => {
                docs.insert(id.clone(), None);
                dirty.insert(id, (None, event.position));
            }
            Err(e) => {
                stop = Some((i, e));
                break;
            }
        }
    }
    let folded = stop.as_ref().map_or(n, |(i, _)| *i);
    let mut write = BatchWrite::default();
    for (id, (json, position)) in dirty {
        match json {
            Some(json) => write.upserts.push((id, json, position)),
            None => write.deletes.push(id),
        }
    }
    (write, folded, stop)
}
