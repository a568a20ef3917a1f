//! Appending: validation against the limits, then one transaction that locks
//! the stream, recognises retries, checks the expected version, takes
//! positions from the counter row and inserts the events.

use std::borrow::Cow;
use std::collections::HashSet;

use trellis_store::{Tx, Value};
use uuid::Uuid;

use crate::error::AppendError;
use crate::types::{
    category_of, validate_stream_name, AppendResult, EventData, ExpectedVersion, Limits,
};

pub(crate) const DELETED_SOFT: i64 = 1;
pub(crate) const DELETED_TOMBSTONE: i64 = 2;

/// Checks a batch before any transaction starts, so a bad request costs no write.
pub fn validate_batch(
    stream: &str,
    events: &[EventData],
    limits: &Limits,
) -> Result<(), AppendError> {
    validate_stream_name(stream)?;
    if events.is_empty() {
        return Err(AppendError::EmptyBatch);
    }
    if events.len() > limits.max_batch_events {
        return Err(AppendError::TooManyEvents {
            count: events.len(),
            limit: limits.max_batch_events,
        });
    }
    let mut total = 0;
    let mut ids = HashSet::with_capacity(events.len());
    for (index, e) in events.iter().enumerate() {
        let invalid = |reason: String| Err(AppendError::InvalidEvent { index, reason });
        if e.event_type.trim().is_empty() {
            return invalid("the event type is empty".into());
        }
        if e.event_type.len() > limits.max_event_type_len {
            return invalid(format!(
                "the event type is longer than {} bytes",
                limits.max_event_type_len
            ));
        }
        if e.event_type.chars().any(char::is_control) {
            return invalid("the event type contains a control character".into());
        }
        if e.id.is_nil() {
            return invalid("the event id is the nil UUID".into());
        }
        if !ids.insert(e.id) {
            return invalid(format!("event id {} appears twice in the batch", e.id));
        }
        let size = e.size();
        if size > limits.max_event_bytes {
            return Err(AppendError::EventTooLarge {
                index,
                size,
                limit: limits.max_event_bytes,
            });
        }
        total += size;
    }
    if total > limits.max_batch_bytes {
        return Err(AppendError::BatchTooLarge {
            size: total,
            limit: limits.max_batch_bytes,
        });
    }
    Ok(())
}

/// The stream row, locked for the rest of the transaction on PostgreSQL.
pub(crate) struct StreamRow {
    /// Last version ever written, -1 if none.
    pub version: i64,
    pub deleted: i64,
}

impl StreamRow {
    /// The version an expectation is checked against: `None` when the stream
    /// does not exist or is soft-deleted.
    pub fn current(&self) -> Option<u64> {
        (self.version >= 0 && self.deleted == 0).then_some(self.version as u64)
    }
}

pub(crate) async fn lock_stream(
    tx: &Tx<'_>,
    stream: &str,
) -> Result<Option<StreamRow>, trellis_store::StoreError> {
    // Fixed strings, not `format!` with `tx.for_update()`: this runs for every append.
    let sql = match tx.backend() {
        trellis_store::Backend::Sqlite => {
            "SELECT version, deleted FROM {ns}streams WHERE name = $1"
        }
        trellis_store::Backend::Postgres => {
            "SELECT version, deleted FROM {ns}streams WHERE name = $1 FOR UPDATE"
        }
    };
    let row = tx.query_opt(sql, &[stream.into()]).await?;
    match row {
        Some(r) => Ok(Some(StreamRow {
            version: r.int(0)?,
            deleted: r.int(1)?,
        })),
        None if tx.backend() == trellis_store::Backend::Postgres => {
            // Create the row so there is something to lock: a concurrent
            // creator of the same stream then waits here until we commit.
            tx.execute(
                "INSERT INTO {ns}streams (name, version, updated_ms) VALUES ($1, -1, 0) ON CONFLICT (name) DO NOTHING",
                &[stream.into()],
            )
            .await?;
            let r = tx.query_one(sql, &[stream.into()]).await?;
            Ok(Some(StreamRow {
                version: r.int(0)?,
                deleted: r.int(1)?,
            }))
        }
        None => Ok(None),
    }
}

pub(crate) fn in_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recognises a retry: if any id in the batch exists, the batch is a retry
/// only when all of them exist, in this stream, consecutively and in order.
async fn find_retry(
    tx: &Tx<'_>,
    stream: &str,
    events: &[EventData],
) -> Result<Option<AppendResult>, AppendError> {
    // A single event (the common case) needs no IN list, so its statement stays
    // one fixed, cached string.
    let sql = match events.len() {
        1 => Cow::Borrowed(
            "SELECT event_id, stream, version, position FROM {ns}events WHERE event_id = $1",
        ),
        n => Cow::Owned(format!(
            "SELECT event_id, stream, version, position FROM {{ns}}events WHERE event_id IN ({}) ORDER BY position",
            in_list(1, n)
        )),
    };
    let params: Vec<Value> = events
        .iter()
        .map(|e| Value::Text(e.id.to_string()))
        .collect();
    let rows = tx.query(&sql, &params).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let first_id = Uuid::parse_str(first.text(0)?).unwrap_or_default();
    if rows.len() != events.len() {
        return Err(AppendError::DuplicateEventId { id: first_id });
    }
    for (i, (row, event)) in rows.iter().zip(events).enumerate() {
        let same = row.text(0)? == event.id.to_string()
            && row.text(1)? == stream
            && row.int(2)? == first.int(2)? + i as i64;
        if !same {
            return Err(AppendError::DuplicateEventId { id: event.id });
        }
    }
    let last = &rows[rows.len() - 1];
    Ok(Some(AppendResult {
        first_version: first.int(2)? as u64,
        last_version: last.int(2)? as u64,
        first_position: first.int(3)? as u64,
        last_position: last.int(3)? as u64,
        idempotent: true,
    }))
}

/// Appends inside the caller's transaction — for code that must commit events
/// together with its own writes (a projection's checkpoint, an outbox row).
///
/// The batch must have passed [`validate_batch`]. Call
/// [`EventStore::notify_appended`](crate::EventStore::notify_appended) after
/// the transaction commits so live subscribers wake up at once.
pub async fn append_in(
    tx: &Tx<'_>,
    stream: &str,
    expected: ExpectedVersion,
    events: &[EventData],
    now_ms: i64,
) -> Result<AppendResult, AppendError> {
    let row = lock_stream(tx, stream).await?;
    if row.as_ref().is_some_and(|r| r.deleted == DELETED_TOMBSTONE) {
        return Err(AppendError::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    if let Some(done) = find_retry(tx, stream, events).await? {
        return Ok(done);
    }
    let current = row.as_ref().and_then(StreamRow::current);
    if !expected.accepts(current) {
        return Err(AppendError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: current,
        });
    }
    let first_version = row.as_ref().map_or(0, |r| r.version + 1);
    let n = events.len() as i64;
    let last_version = first_version + n - 1;
    tx.execute(
        "INSERT INTO {ns}streams (name, version, deleted, updated_ms) VALUES ($1, $2, 0, $3)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, deleted = 0, updated_ms = excluded.updated_ms",
        &[stream.into(), Value::Int(last_version), Value::Int(now_ms)],
    )
    .await?;
    // The counter row is taken last, so it is held only for the inserts and
    // the commit: the next append waits for our commit before taking the next
    // positions, which is what keeps positions gap-free in commit order.
    // One statement binds five parameters per event; PostgreSQL allows 65,535.
    let one_statement = tx.backend() == trellis_store::Backend::Postgres && events.len() <= 10_000;
    let insert = if one_statement {
        insert_postgres(tx, stream, first_version, events, now_ms).await
    } else {
        insert_each(tx, stream, first_version, events, now_ms).await
    };
    let last_position = insert.map_err(|e| {
        if e.is_unique_violation() {
            // A concurrent append used one of our ids between our check and insert.
            AppendError::DuplicateEventId { id: events[0].id }
        } else {
            e.into()
        }
    })?;
    let first_position = last_position - n + 1;
    Ok(AppendResult {
        first_version: first_version as u64,
        last_version: last_version as u64,
        first_position: first_position as u64,
        last_position: last_position as u64,
        idempotent: false,
    })
}

/// Takes positions from the counter and inserts the batch one statement per event.
/// On SQLite the writer thread makes each statement a local call.
async fn insert_each(
    tx: &Tx<'_>,
    stream: &str,
    first_version: i64,
    events: &[EventData],
    now_ms: i64,
) -> Result<i64, trellis_store::StoreError> {
    let n = events.len() as i64;
    let last_position = tx
        .query_one(
            "UPDATE {ns}positions SET last = last + $1 WHERE id = 1 RETURNING last",
            &[Value::Int(n)],
        )
        .await?
        .int(0)?;
    let first_position = last_position - n + 1;
    let category = category_of(stream);
    for (i, e) in events.iter().enumerate() {
        let params = [
            Value::Int(first_position + i as i64),
            stream.into(),
            category.into(),
            Value::Int(first_version + i as i64),
            Value::Text(e.id.to_string()),
            e.event_type.as_str().into(),
            e.data.get().into(),
            e.metadata.as_ref().map(|m| m.get()).into(),
            Value::Int(now_ms),
        ];
        tx.execute(
            "INSERT INTO {ns}events (position, stream, category, version, event_id, event_type, data, metadata, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &params,
        )
        .await?;
    }
    Ok(last_position)
}

/// Takes positions from the counter and inserts the whole batch in one
/// statement, so the counter's row lock is held for a single round trip plus
/// the commit — not one round trip per statement, which under load is what
/// every other append is queued behind.
async fn insert_postgres(
    tx: &Tx<'_>,
    stream: &str,
    first_version: i64,
    events: &[EventData],
    now_ms: i64,
) -> Result<i64, trellis_store::StoreError> {
    const FIXED: usize = 5;
    const PER_EVENT: usize = 5;
    let rows = (0..events.len())
        .map(|i| {
            let b = FIXED + i * PER_EVENT;
            format!(
                "(${}::bigint, ${}::text, ${}::text, ${}::text, ${}::text)",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH p AS (UPDATE {{ns}}positions SET last = last + $1::bigint WHERE id = 1 RETURNING last), \
         ins AS (INSERT INTO {{ns}}events (position, stream, category, version, event_id, event_type, data, metadata, created_ms) \
         SELECT p.last - $1::bigint + v.i, $2::text, $3::text, $4::bigint + v.i - 1, v.event_id, v.event_type, v.data, v.metadata, $5::bigint \
         FROM p, (VALUES {rows}) AS v(i, event_id, event_type, data, metadata)) \
         SELECT last FROM p"
    );
    let mut params = Vec::with_capacity(FIXED + events.len() * PER_EVENT);
    params.extend([
        Value::Int(events.len() as i64),
        stream.into(),
        category_of(stream).into(),
        Value::Int(first_version),
        Value::Int(now_ms),
    ]);
    for (i, e) in events.iter().enumerate() {
        params.extend([
            Value::Int(i as i64 + 1),
            Value::Text(e.id.to_string()),
            e.event_type.as_str().into(),
            e.data.get().into(),
            e.metadata.as_ref().map(|m| m.get()).into(),
        ]);
    }
    tx.query_one(&sql, &params).await?.int(0)
}
