//! Trellis's event store: the **event sourcing** pattern, and the write and
//! subscription side on which **CQRS** projections are built.
//!
//! Streams of JSON events with per-stream versions and a global, gap-free
//! position; appends with an [`ExpectedVersion`] (optimistic concurrency) and
//! idempotent event ids; reads of a stream, of a category and of `$all`;
//! retention metadata, soft delete and tombstones; snapshots; live
//! subscriptions; CloudEvents conversion; and a REST + SSE API ([`http::router`]).
//! Storage is reached only through `trellis-store`, so the same code runs on
//! embedded SQLite and on PostgreSQL.
//!
//! # How it works
//!
//! - **Appends** run in one store transaction: lock the stream's row (`SELECT
//!   … FOR UPDATE` on PostgreSQL; on SQLite the single writer thread already
//!   serialises writes), recognise a retry by its event ids (then return the
//!   original positions and write nothing), check the expected version, take
//!   positions from a one-row counter, insert, update the stream row. Of many
//!   concurrent writers expecting the same version, the first to lock the row
//!   wins; the others then see the new version and get
//!   [`AppendError::WrongExpectedVersion`] carrying it.
//! - **Group commit** (SQLite): appends from many tasks share one durable
//!   commit on the store's writer thread, each in its own savepoint — see
//!   `trellis-store`.
//! - **Gap-free positions.** A naive PostgreSQL event store takes positions
//!   from a sequence: a transaction holding position 10 may commit after one
//!   holding 11, and a reader that saw 11 and checkpointed it never sees 10.
//!   Here positions come from the counter row `positions`, updated as the last
//!   step before the inserts: the row lock is held until commit, so the next
//!   append gets its positions only after the previous one is visible (or has
//!   rolled back, releasing the same numbers). Positions are therefore
//!   assigned in commit order with no holes, and a reader that has seen N has
//!   seen everything below N. The price is that appends serialise on that row
//!   for the duration of their commit — the same as SQLite's single writer.
//! - **Subscriptions** ([`subscribe`]) read pages from storage after their last
//!   delivered position and, once caught up, sleep on a `watch` of the last
//!   committed position. An append reports its commit from the thread that
//!   saw it (on SQLite the writer thread, right after the fsync), which puts
//!   the events on a short in-memory tail of contiguous committed positions
//!   and bumps the `watch`; a woken subscription takes the events after its
//!   checkpoint from that tail when it holds the next position, and from
//!   storage otherwise, so the catch-up → live switch can neither skip nor
//!   repeat (see `live.rs`).
//! - **Transactional writes** for projections and outboxes: [`append_in`]
//!   appends inside a caller's own [`trellis_store::Tx`], and positions make
//!   natural checkpoints ([`StartFrom::After`]).
//!
//! `$all` and category reads return every event by position, including those
//! a stream's retention or soft delete hides from stream reads (as
//! EventStoreDB does before a scavenge).

pub mod append;
pub mod error;
pub mod http;
mod live;
mod manage;
pub mod persistent;
pub mod read;
mod schema;
pub mod subscribe;
pub mod types;

use std::sync::Arc;

use futures::Stream;
use serde_json::value::RawValue;
use trellis_store::{Namespace, StoreError};

pub use append::{append_in, validate_batch};
pub use error::{AppendError, ReadError};
pub use subscribe::{StartFrom, SubscriptionOptions, SubscriptionTarget};
pub use types::{
    category_of, validate_stream_name, AppendResult, DeleteMode, Direction, EventData,
    ExpectedVersion, Limits, ReadAll, ReadStream, RecordedEvent, Snapshot, StreamMetadata,
    StreamSlice,
};

/// The component name under which the event store's migrations are recorded.
pub const COMPONENT: &str = "events";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Inner {
    ns: Namespace,
    limits: Limits,
    live: Arc<live::Live>,
}

/// The event store of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("namespace", &self.inner.ns.name())
            .finish()
    }
}

fn check_name<E: From<AppendError>>(stream: &str) -> Result<(), E> {
    validate_stream_name(stream).map_err(E::from)
}

impl From<AppendError> for ReadError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::InvalidStreamName { name, reason } => {
                ReadError::InvalidStreamName { name, reason }
            }
            AppendError::Store(e) => ReadError::Store(e),
            other => ReadError::InvalidRequest(other.to_string()),
        }
    }
}

impl EventStore {
    /// Opens the event store in `ns`, creating or upgrading its tables, with default limits.
    pub async fn open(ns: Namespace) -> Result<Self, StoreError> {
        Self::open_with(ns, Limits::default()).await
    }

    pub async fn open_with(ns: Namespace, limits: Limits) -> Result<Self, StoreError> {
        ns.migrate(COMPONENT, schema::MIGRATIONS).await?;
        let head = ns
            .read(|tx| Box::pin(async move { read::head_in(tx).await }))
            .await?;
        Ok(EventStore {
            inner: Arc::new(Inner {
                ns,
                limits,
                live: Arc::new(live::Live::new(head)),
            }),
        })
    }

    pub(crate) fn live(&self) -> &live::Live {
        &self.inner.live
    }

    pub fn namespace(&self) -> &Namespace {
        &self.inner.ns
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Wakes live subscribers after events were appended through [`append_in`]
    /// in a caller's own transaction (which has committed).
    pub fn notify_appended(&self, last_position: u64) {
        self.inner.live.notify(last_position);
    }

    /// Appends `events` to `stream` atomically, if `expected` holds.
    ///
    /// Returns once the events are durable. Retrying with the same event ids
    /// returns the original result with `idempotent: true`.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, AppendError> {
        validate_batch(stream, &events, &self.inner.limits)?;
        // The body and the commit report share the batch; the report takes it
        // once the body is done (see `live`).
        let events = Arc::new(events);
        let (body_stream, body_events) = (stream.to_owned(), events.clone());
        let (stream, live) = (stream.to_owned(), self.inner.live.clone());
        let (result, _) = self
            .inner
            .ns
            .write_then(
                move |tx| {
                    Box::pin(async move {
                        // The time is taken as the append runs, so it follows commit order.
                        let now = now_ms();
                        let r = append_in(tx, &body_stream, expected, &body_events, now).await?;
                        Ok::<_, AppendError>((r, now))
                    })
                },
                // Wakes live subscriptions at the durable commit, from the thread that saw it.
                move |(r, now): &(AppendResult, i64)| live.committed(r, &stream, events, *now),
            )
            .await?;
        Ok(result)
    }

    /// Reads one stream by version, honouring its retention metadata.
    pub async fn read_stream(
        &self,
        stream: &str,
        opts: ReadStream,
    ) -> Result<StreamSlice, ReadError> {
        check_name::<ReadError>(stream)?;
        let stream = stream.to_owned();
        self.inner
            .ns
            .read(move |tx| {
                Box::pin(async move { read::read_stream_in(tx, &stream, &opts, now_ms()).await })
            })
            .await
    }

    /// Reads `$all` by global position.
    pub async fn read_all(&self, opts: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        self.inner
            .ns
            .read(move |tx| {
                Box::pin(async move { read::read_by_position(tx, None, &opts, None).await })
            })
            .await
    }

    /// Reads a category (`order` for streams `order-…`) by global position.
    pub async fn read_category(
        &self,
        category: &str,
        opts: ReadAll,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        check_name::<ReadError>(category)?;
        let category = category.to_owned();
        self.inner
            .ns
            .read(move |tx| {
                Box::pin(async move {
                    read::read_by_position(tx, Some(("category", &category)), &opts, None).await
                })
            })
            .await
    }

    /// The position of the last committed event (0 when empty).
    pub async fn head_position(&self) -> Result<u64, ReadError> {
        Ok(self
            .inner
            .ns
            .read(|tx| Box::pin(async move { read::head_in(tx).await }))
            .await?)
    }

    /// Sets a stream's retention and custom metadata (replacing what was there).
    pub async fn set_stream_metadata(
        &self,
        stream: &str,
        meta: StreamMetadata,
    ) -> Result<(), AppendError> {
        check_name::<AppendError>(stream)?;
        if let Some(c) = &meta.custom {
            if c.get().len() > self.inner.limits.max_event_bytes {
                return Err(AppendError::EventTooLarge {
                    index: 0,
                    size: c.get().len(),
                    limit: self.inner.limits.max_event_bytes,
                });
            }
        }
        let stream = stream.to_owned();
        self.inner
            .ns
            .write(move |tx| {
                Box::pin(async move { manage::set_metadata_in(tx, &stream, &meta, now_ms()).await })
            })
            .await
    }

    /// A stream's metadata (defaults when none was set).
    pub async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, ReadError> {
        check_name::<ReadError>(stream)?;
        let stream = stream.to_owned();
        self.inner
            .ns
            .read(move |tx| Box::pin(async move { manage::metadata_in(tx, &stream).await }))
            .await
    }

    /// Soft-deletes (recreatable) or tombstones (never writable again) a stream.
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<(), AppendError> {
        check_name::<AppendError>(stream)?;
        let stream = stream.to_owned();
        self.inner
            .ns
            .write(move |tx| {
                Box::pin(
                    async move { manage::delete_in(tx, &stream, expected, mode, now_ms()).await },
                )
            })
            .await
    }

    /// Stores a snapshot of `stream`'s state as of `version`, keeping only the newest.
    pub async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        data: Box<RawValue>,
    ) -> Result<(), AppendError> {
        check_name::<AppendError>(stream)?;
        let limit = self.inner.limits.max_event_bytes;
        if data.get().len() > limit {
            return Err(AppendError::EventTooLarge {
                index: 0,
                size: data.get().len(),
                limit,
            });
        }
        let stream = stream.to_owned();
        self.inner
            .ns
            .write(move |tx| {
                Box::pin(async move {
                    manage::save_snapshot_in(tx, &stream, version, &data, now_ms()).await
                })
            })
            .await
    }

    /// The latest snapshot of `stream`, if any.
    pub async fn read_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, ReadError> {
        check_name::<ReadError>(stream)?;
        let stream = stream.to_owned();
        self.inner
            .ns
            .read(move |tx| Box::pin(async move { manage::snapshot_in(tx, &stream).await }))
            .await
    }

    /// A catch-up-then-live subscription, as a `Stream` of events in position order.
    pub fn subscribe(
        &self,
        opts: SubscriptionOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, ReadError>> + Send + 'static {
        let wake = self.inner.live.subscribe();
        subscribe::subscribe(self.clone(), opts, wake)
    }
}
