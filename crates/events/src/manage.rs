//! Stream management inside transactions: retention metadata, soft delete and
//! tombstone, snapshots.

use std::time::Duration;

use serde_json::value::RawValue;
use trellis_store::{Tx, Value};

use crate::append::{lock_stream, DELETED_SOFT, DELETED_TOMBSTONE};
use crate::error::{AppendError, ReadError};
use crate::read::{raw, time_of};
use crate::types::{DeleteMode, ExpectedVersion, Snapshot, StreamMetadata};

pub(crate) async fn set_metadata_in(
    tx: &Tx<'_>,
    stream: &str,
    meta: &StreamMetadata,
    now_ms: i64,
) -> Result<(), AppendError> {
    let row = lock_stream(tx, stream).await?;
    if row.as_ref().is_some_and(|r| r.deleted == DELETED_TOMBSTONE) {
        return Err(AppendError::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    let as_i64 = |v: Option<u64>| Value::from(v.map(|v| v.min(i64::MAX as u64) as i64));
    tx.execute(
        "INSERT INTO {ns}streams (name, version, deleted, truncate_before, max_count, max_age_ms, custom, updated_ms)
         VALUES ($1, -1, 0, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE SET truncate_before = excluded.truncate_before, max_count = excluded.max_count,
           max_age_ms = excluded.max_age_ms, custom = excluded.custom, updated_ms = excluded.updated_ms",
        &[
            stream.into(),
            as_i64(meta.truncate_before),
            as_i64(meta.max_count),
            as_i64(meta.max_age.map(|d| d.as_millis().min(i64::MAX as u128) as u64)),
            meta.custom.as_ref().map(|c| c.get()).into(),
            Value::Int(now_ms),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn metadata_in(tx: &Tx<'_>, stream: &str) -> Result<StreamMetadata, ReadError> {
    let row = tx
        .query_opt(
            "SELECT deleted, truncate_before, max_count, max_age_ms, custom FROM {ns}streams WHERE name = $1",
            &[stream.into()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(StreamMetadata::default());
    };
    if row.int(0)? == DELETED_TOMBSTONE {
        return Err(ReadError::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    Ok(StreamMetadata {
        truncate_before: row.opt_int(1)?.map(|v| v as u64),
        max_count: row.opt_int(2)?.map(|v| v as u64),
        max_age: row.opt_int(3)?.map(|v| Duration::from_millis(v as u64)),
        custom: row.opt_text(4)?.map(|s| raw(s.to_owned())).transpose()?,
    })
}

pub(crate) async fn delete_in(
    tx: &Tx<'_>,
    stream: &str,
    expected: ExpectedVersion,
    mode: DeleteMode,
    now_ms: i64,
) -> Result<(), AppendError> {
    let row = lock_stream(tx, stream).await?;
    if row.as_ref().is_some_and(|r| r.deleted == DELETED_TOMBSTONE) {
        return Err(AppendError::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    let current = row.as_ref().and_then(|r| r.current());
    if !expected.accepts(current) {
        return Err(AppendError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: current,
        });
    }
    let version = row.as_ref().map_or(-1, |r| r.version);
    match mode {
        DeleteMode::Soft => {
            if current.is_none() {
                return Err(AppendError::StreamNotFound {
                    stream: stream.to_owned(),
                });
            }
            // Hide everything written so far; a later append recreates the
            // stream with the next version, and the old events stay hidden.
            tx.execute(
                "UPDATE {ns}streams SET deleted = $1, truncate_before = $2, updated_ms = $3 WHERE name = $4",
                &[Value::Int(DELETED_SOFT), Value::Int(version + 1), Value::Int(now_ms), stream.into()],
            )
            .await?;
        }
        DeleteMode::Tombstone => {
            tx.execute(
                "INSERT INTO {ns}streams (name, version, deleted, updated_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET deleted = excluded.deleted, updated_ms = excluded.updated_ms",
                &[stream.into(), Value::Int(version), Value::Int(DELETED_TOMBSTONE), Value::Int(now_ms)],
            )
            .await?;
        }
    }
    tx.execute(
        "DELETE FROM {ns}snapshots WHERE stream = $1",
        &[stream.into()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn save_snapshot_in(
    tx: &Tx<'_>,
    stream: &str,
    version: u64,
    data: &RawValue,
    now_ms: i64,
) -> Result<(), AppendError> {
    let row = lock_stream(tx, stream).await?;
    let bad = |reason| AppendError::InvalidSnapshot {
        stream: stream.to_owned(),
        version,
        reason,
    };
    match row {
        Some(r) if r.deleted == DELETED_TOMBSTONE => {
            return Err(AppendError::StreamDeleted {
                stream: stream.to_owned(),
            })
        }
        Some(r) if r.current().is_some_and(|v| version <= v) => {}
        Some(r) if r.current().is_some() => {
            return Err(bad("the stream has no event with that version yet"))
        }
        _ => {
            return Err(AppendError::StreamNotFound {
                stream: stream.to_owned(),
            })
        }
    }
    // Keep the newest: a late writer of an older snapshot must not replace a newer one.
    tx.execute(
        "INSERT INTO {ns}snapshots (stream, version, data, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (stream) DO UPDATE SET version = excluded.version, data = excluded.data, created_ms = excluded.created_ms
         WHERE excluded.version >= {ns}snapshots.version",
        &[stream.into(), Value::Int(version as i64), data.get().into(), Value::Int(now_ms)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn snapshot_in(tx: &Tx<'_>, stream: &str) -> Result<Option<Snapshot>, ReadError> {
    let row = tx
        .query_opt(
            "SELECT version, data, created_ms FROM {ns}snapshots WHERE stream = $1",
            &[stream.into()],
        )
        .await?;
    let Some(mut row) = row else { return Ok(None) };
    Ok(Some(Snapshot {
        stream: stream.to_owned(),
        version: row.int(0)? as u64,
        data: raw(row.take_text(1)?)?,
        time: time_of(row.int(2)?),
    }))
}
