//! Trellis projections: the read side of **CQRS**. A projection folds the
//! events of the event store into documents of a read model, which a query
//! API separate from the command side serves by id or as filtered, sorted,
//! paginated lists — and which, living in ordinary tables, can also be read
//! with plain SQL (see [`schema`]).
//!
//! DESIGN.md places CQRS in `trellis-events`; projections live in their own
//! crate on top of it because the sandboxed script engine is a heavy,
//! separate concern that an event-store user should not have to compile.
//!
//! # How it works
//!
//! - **Scripts in Rhai.** A projection is a Rhai script ([`script`] documents
//!   its API): `id(event)` picks the document, a handler per event type folds
//!   the event into it and returns the new document or `()` to delete it.
//!   Rhai was chosen over JavaScript on QuickJS (`rquickjs`) by the benchmark
//!   in `docs/benchmarks/projections.md`: folding the same order events, with
//!   JSON in and out and equivalent sandbox limits, Rhai ran about 1.6× as
//!   fast (QuickJS pays for carrying every event into and out of a separate
//!   JS heap). Rhai also sandboxes by construction — pure Rust with no C to
//!   build, no file, network, module or clock access to take away, a
//!   deterministic operation budget per call (a CPU limit that does not
//!   depend on machine load) and size limits on strings, arrays and maps
//!   checked recursively (a memory limit).
//! - **Exactly once into the read model.** Each batch's document writes and
//!   the projection's checkpoint commit in one store transaction, the
//!   checkpoint moved by compare-and-set; a failed or raced batch is dropped
//!   and refolded from the stored checkpoint ([`runner`]).
//! - **Faults stop the projection at the event.** A script that throws, or
//!   exceeds its budget, marks the projection `faulted` with the error and the
//!   event's position, committing everything before that event. Fix the
//!   script ([`Projections::update_script`]) to go on from there, or
//!   [`Projections::reset`] / [`Projections::rebuild`] to start over.
//! - **Lifecycle.** Definitions, state and checkpoints are persisted, so a
//!   restart resumes each projection where it stopped. Status reports the
//!   position, the lag behind the head of `$all`, and the last error.
//! - **REST API**: [`http::router`].

pub mod definition;
pub mod error;
pub mod http;
pub mod query;
mod repo;
pub mod runner;
pub mod schema;
pub mod script;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use trellis_events::{Direction, EventStore, ReadAll, ReadError, ReadStream};
use trellis_store::Namespace;

pub use definition::{validate_name, ProjectionDefinition, Source};
pub use error::ProjectionError;
pub use query::{Document, DocumentPage, DocumentQuery, SortBy};
pub use repo::{Fault, RunState};
pub use runner::RunnerOptions;
pub use script::{Outcome, Script, ScriptError, ScriptLimits};

use runner::{now_ms, Command, Live, Runner, Shared};

/// A projection's status, as the API reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionStatus {
    pub name: String,
    pub state: RunState,
    /// The checkpoint: the `$all` position of the last event folded.
    pub position: u64,
    /// The head of `$all` when the status was taken.
    pub head: u64,
    /// Positions between the checkpoint and the head, when events the
    /// projection reads are waiting among them; 0 when it is caught up.
    pub lag: u64,
    pub events_processed: u64,
    /// The event the projection stopped at, when faulted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// The last storage error, while the runner retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
}

/// Settings shared by every projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectionsConfig {
    pub limits: ScriptLimits,
    pub runner: RunnerOptions,
}

struct Handle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    events: EventStore,
    config: ProjectionsConfig,
    runners: Mutex<HashMap<String, Handle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, h) in self.runners.lock().drain() {
            h.task.abort();
        }
    }
}

/// The projections of one event store: definitions, runners and queries. Cheap to clone.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections")
            .field("count", &self.inner.runners.lock().len())
            .finish()
    }
}

impl Projections {
    /// Opens the projections of `events`' namespace and starts a runner for each.
    pub async fn open(events: EventStore) -> Result<Self, ProjectionError> {
        Self::open_with(events, ProjectionsConfig::default()).await
    }

    pub async fn open_with(
        events: EventStore,
        config: ProjectionsConfig,
    ) -> Result<Self, ProjectionError> {
        let ns = events.namespace().clone();
        ns.migrate(schema::COMPONENT, schema::MIGRATIONS).await?;
        let stored = ns
            .read(|tx| Box::pin(async move { repo::load_all(tx).await }))
            .await?;
        let this = Projections {
            inner: Arc::new(Inner {
                events,
                config,
                runners: Mutex::new(HashMap::new()),
            }),
        };
        for s in stored {
            let script = match Script::compile(&s.definition.script, config.limits) {
                Ok(script) => Some(Arc::new(script)),
                Err(e) => {
                    tracing::error!(projection = %s.definition.name, error = %e, "stored projection script does not compile");
                    None
                }
            };
            this.spawn(
                Live {
                    definition: s.definition,
                    state: s.state,
                    position: s.position,
                    processed: s.processed,
                    fault: s.fault,
                    transient: None,
                },
                script,
            );
        }
        Ok(this)
    }

    fn ns(&self) -> &Namespace {
        self.inner.events.namespace()
    }

    pub fn events(&self) -> &EventStore {
        &self.inner.events
    }

    fn spawn(&self, live: Live, script: Option<Arc<Script>>) {
        let name = live.definition.name.clone();
        let (tx, rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            position: watch::channel(live.position).0,
            live: Mutex::new(live),
            failpoint: Default::default(),
        });
        let runner = Runner {
            name: name.clone(),
            events: self.inner.events.clone(),
            script,
            shared: shared.clone(),
            commands: rx,
            options: self.inner.config.runner,
        };
        let task = tokio::spawn(runner.run());
        self.inner.runners.lock().insert(
            name,
            Handle {
                commands: tx,
                shared,
                task,
            },
        );
    }

    /// Creates a projection and starts it from the first event.
    pub async fn create(
        &self,
        definition: ProjectionDefinition,
    ) -> Result<ProjectionStatus, ProjectionError> {
        definition.validate()?;
        let script = Arc::new(Script::compile(
            &definition.script,
            self.inner.config.limits,
        )?);
        let def = definition.clone();
        self.ns()
            .write(move |tx| {
                Box::pin(async move { repo::insert(tx, &def, RunState::Running, now_ms()).await })
            })
            .await?;
        let name = definition.name.clone();
        self.spawn(
            Live {
                definition,
                state: RunState::Running,
                position: 0,
                processed: 0,
                fault: None,
                transient: None,
            },
            Some(script),
        );
        self.status(&name).await
    }

    fn shared(&self, name: &str) -> Result<Arc<Shared>, ProjectionError> {
        self.inner
            .runners
            .lock()
            .get(name)
            .map(|h| h.shared.clone())
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))
    }

    async fn send(
        &self,
        name: &str,
        make: impl FnOnce(runner::Reply) -> Command,
    ) -> Result<(), ProjectionError> {
        let commands = self
            .inner
            .runners
            .lock()
            .get(name)
            .map(|h| h.commands.clone())
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        commands
            .send(make(reply))
            .await
            .map_err(|_| ProjectionError::Stopped(name.to_owned()))?;
        rx.await
            .map_err(|_| ProjectionError::Stopped(name.to_owned()))?
    }

    /// Stops folding; the checkpoint stays where it is.
    pub async fn pause(&self, name: &str) -> Result<(), ProjectionError> {
        self.send(name, Command::Pause).await
    }

    /// Goes on from the checkpoint (after a pause, or retrying a faulted event).
    pub async fn resume(&self, name: &str) -> Result<(), ProjectionError> {
        self.send(name, Command::Resume).await
    }

    /// Clears the read model and the checkpoint and leaves the projection paused.
    pub async fn reset(&self, name: &str) -> Result<(), ProjectionError> {
        self.send(name, |reply| Command::Reset { run: false, reply })
            .await
    }

    /// Clears the read model and the checkpoint and folds every event again.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        self.send(name, |reply| Command::Reset { run: true, reply })
            .await
    }

    /// Replaces the script (same name and source); a faulted projection goes
    /// on from the event it stopped at, a paused one stays paused.
    pub async fn update_script(&self, name: &str, script: &str) -> Result<(), ProjectionError> {
        let mut definition = self.shared(name)?.live.lock().definition.clone();
        definition.script = script.to_owned();
        let compiled = Arc::new(Script::compile(script, self.inner.config.limits)?);
        self.send(name, |reply| Command::Update {
            definition,
            script: compiled,
            reply,
        })
        .await
    }

    /// Stops a projection and deletes it with its read model.
    pub async fn delete(&self, name: &str) -> Result<(), ProjectionError> {
        let handle = self
            .inner
            .runners
            .lock()
            .remove(name)
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        let _ = handle.commands.send(Command::Stop).await;
        let _ = handle.task.await;
        let n = name.to_owned();
        self.ns()
            .write(move |tx| Box::pin(async move { repo::delete(tx, &n).await }))
            .await?;
        Ok(())
    }

    /// The definition of a projection.
    pub fn definition(&self, name: &str) -> Result<ProjectionDefinition, ProjectionError> {
        Ok(self.shared(name)?.live.lock().definition.clone())
    }

    /// The names of every projection.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.runners.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The status of one projection, with its lag behind the head of `$all`.
    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let live = self.shared(name)?.live.lock().clone();
        let head = self.inner.events.head_position().await?;
        let lag = if head > live.position && self.pending(&live.definition, live.position).await {
            head - live.position
        } else {
            0
        };
        Ok(ProjectionStatus {
            name: live.definition.name.clone(),
            state: live.state,
            position: live.position,
            head,
            lag,
            events_processed: live.processed,
            fault: live.fault,
            last_error: live.transient,
            source: live.definition.source.clone(),
            event_types: live.definition.event_types.clone(),
        })
    }

    /// Whether an event the projection reads lies after `position`: its
    /// newest matching event is read backwards, one row, from storage.
    async fn pending(&self, def: &ProjectionDefinition, position: u64) -> bool {
        let types = def.event_types.clone();
        let back = ReadAll {
            from: None,
            direction: Direction::Backward,
            max_count: 1,
            types: types.clone(),
        };
        let newest = match &def.source {
            Source::All => self
                .inner
                .events
                .read_all(back)
                .await
                .map(|v| v.first().map(|e| e.position)),
            Source::Category(c) => self
                .inner
                .events
                .read_category(c, back)
                .await
                .map(|v| v.first().map(|e| e.position)),
            Source::Stream(s) => self
                .inner
                .events
                .read_stream(
                    s,
                    ReadStream {
                        from: None,
                        direction: Direction::Backward,
                        max_count: 1,
                        types,
                    },
                )
                .await
                .map(|slice| slice.events.first().map(|e| e.position))
                .or_else(|e| match e {
                    // Nothing written to the stream yet: nothing to wait for.
                    ReadError::StreamNotFound { .. } => Ok(None),
                    other => Err(other),
                }),
        };
        // When in doubt (a deleted stream, a read error) report the lag.
        newest.map_or(true, |p| p.is_some_and(|p| p > position))
    }

    /// The status of every projection.
    pub async fn list(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let mut out = Vec::new();
        for name in self.names() {
            match self.status(&name).await {
                Ok(s) => out.push(s),
                Err(ProjectionError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Waits until a projection has folded everything up to `position` (for
    /// reading your own writes), or fails with a timeout.
    pub async fn wait_for(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let mut rx = self.shared(name)?.position.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProjectionError::Stopped(name.to_owned())),
            Err(_) => Err(ProjectionError::Timeout {
                name: name.to_owned(),
                position,
            }),
        }
    }

    /// One document of a projection's read model.
    pub async fn get_document(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Option<Document>, ProjectionError> {
        self.shared(name)?;
        let (n, i) = (name.to_owned(), id.to_owned());
        Ok(self
            .ns()
            .read(move |tx| Box::pin(async move { query::get_in(tx, &n, &i).await }))
            .await?)
    }

    /// A page of a projection's documents.
    pub async fn query(
        &self,
        name: &str,
        q: &DocumentQuery,
    ) -> Result<DocumentPage, ProjectionError> {
        self.shared(name)?;
        query::validate_query(q)?;
        let (n, q) = (name.to_owned(), q.clone());
        Ok(self
            .ns()
            .read(move |tx| Box::pin(async move { query::list_in(tx, &n, &q).await }))
            .await?)
    }

    /// Stops every runner (they resume from their checkpoints at the next open).
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = self.inner.runners.lock().drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.commands.send(Command::Stop).await;
            let _ = h.task.await;
        }
    }

    /// Test hook: the next `n` batch transactions of `name` fail after writing
    /// the read model and before moving the checkpoint, and roll back.
    /// Returns how many injected failures were still pending.
    #[doc(hidden)]
    pub fn inject_batch_failures(&self, name: &str, n: u32) -> Result<u32, ProjectionError> {
        Ok(self
            .shared(name)?
            .failpoint
            .swap(n, std::sync::atomic::Ordering::SeqCst))
    }
}
