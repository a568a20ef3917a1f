//! Errors of writes and reads, each naming what was wrong so a client can act on it.

use trellis_store::StoreError;
use uuid::Uuid;

use crate::types::ExpectedVersion;

/// Why an append, delete, metadata or snapshot write was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream `{stream}`: expected version {expected}, but the stream is at {}", actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string()))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's last version; `None` when it does not exist.
        actual: Option<u64>,
    },
    #[error("stream `{stream}` is tombstoned and can never be written again")]
    StreamDeleted { stream: String },
    #[error("stream `{stream}` does not exist")]
    StreamNotFound { stream: String },
    #[error("event id {id} is already used by another event (not a retry of the same append)")]
    DuplicateEventId { id: Uuid },
    #[error("invalid stream name `{name}`: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    #[error("event {index}: {reason}")]
    InvalidEvent { index: usize, reason: String },
    #[error("event {index} is {size} bytes, over the limit of {limit}")]
    EventTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("the batch has {count} events, over the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("the batch is {size} bytes, over the limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("an append needs at least one event")]
    EmptyBatch,
    #[error("snapshot of `{stream}` at version {version}: {reason}")]
    InvalidSnapshot {
        stream: String,
        version: u64,
        reason: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream `{stream}` does not exist")]
    StreamNotFound { stream: String },
    #[error("stream `{stream}` is tombstoned")]
    StreamDeleted { stream: String },
    #[error("invalid stream name `{name}`: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    #[error("invalid read: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
