//! Reading: one stream by version (forward or backward, honouring its
//! retention metadata), and `$all` or a category by global position.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use trellis_store::{Row, StoreError, Tx, Value};
use uuid::Uuid;

use crate::append::{in_list, DELETED_SOFT, DELETED_TOMBSTONE};
use crate::error::ReadError;
use crate::types::{Direction, ReadAll, ReadStream, RecordedEvent, StreamSlice};

pub(crate) const EVENT_COLUMNS: &str =
    "position, stream, version, event_id, event_type, data, metadata, created_ms";

/// The most events one read returns, whatever was asked.
pub const MAX_READ_COUNT: usize = 10_000;

pub(crate) fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(crate) fn raw(s: String) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(s).map_err(|e| StoreError::Decode(format!("stored JSON: {e}")))
}

pub(crate) fn decode(mut r: Row) -> Result<RecordedEvent, StoreError> {
    let metadata = match r.opt_text(6)? {
        Some(_) => Some(raw(r.take_text(6)?)?),
        None => None,
    };
    Ok(RecordedEvent {
        position: r.int(0)? as u64,
        stream: r.take_text(1)?,
        version: r.int(2)? as u64,
        id: Uuid::parse_str(r.text(3)?).map_err(|e| StoreError::Decode(e.to_string()))?,
        event_type: r.take_text(4)?,
        data: raw(r.take_text(5)?)?,
        metadata,
        time: time_of(r.int(7)?),
    })
}

fn type_filter(sql: &mut String, params: &mut Vec<Value>, types: &Option<Vec<String>>) {
    if let Some(types) = types.as_ref().filter(|t| !t.is_empty()) {
        sql.push_str(&format!(
            " AND event_type IN ({})",
            in_list(params.len() + 1, types.len())
        ));
        params.extend(types.iter().map(|t| Value::Text(t.clone())));
    }
}

fn clamp(n: usize) -> i64 {
    n.clamp(1, MAX_READ_COUNT) as i64
}

pub(crate) async fn read_stream_in(
    tx: &Tx<'_>,
    stream: &str,
    opts: &ReadStream,
    now_ms: i64,
) -> Result<StreamSlice, ReadError> {
    let row = tx
        .query_opt(
            "SELECT version, deleted, truncate_before, max_count, max_age_ms FROM {ns}streams WHERE name = $1",
            &[stream.into()],
        )
        .await?;
    let not_found = || ReadError::StreamNotFound {
        stream: stream.to_owned(),
    };
    let row = row.ok_or_else(not_found)?;
    let (version, deleted) = (row.int(0)?, row.int(1)?);
    match deleted {
        DELETED_TOMBSTONE => {
            return Err(ReadError::StreamDeleted {
                stream: stream.to_owned(),
            })
        }
        DELETED_SOFT => return Err(not_found()),
        _ if version < 0 => return Err(not_found()),
        _ => {}
    }
    let mut min = row.opt_int(2)?.unwrap_or(0);
    if let Some(max_count) = row.opt_int(3)? {
        min = min.max(version - max_count + 1);
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM {{ns}}events WHERE stream = $1 AND version >= $2 AND version <= $3");
    let mut params: Vec<Value> = vec![stream.into()];
    let limit = clamp(opts.max_count);
    let from = opts.from.map(|v| v.min(i64::MAX as u64) as i64);
    match opts.direction {
        Direction::Forward => {
            params.extend([Value::Int(from.unwrap_or(0).max(min)), Value::Int(version)])
        }
        Direction::Backward => params.extend([
            Value::Int(min),
            Value::Int(from.unwrap_or(version).min(version)),
        ]),
    }
    if let Some(age) = row.opt_int(4)? {
        sql.push_str(&format!(" AND created_ms >= ${}", params.len() + 1));
        params.push(Value::Int(now_ms - age));
    }
    type_filter(&mut sql, &mut params, &opts.types);
    let order = match opts.direction {
        Direction::Forward => "ASC",
        Direction::Backward => "DESC",
    };
    sql.push_str(&format!(
        " ORDER BY version {order} LIMIT ${}",
        params.len() + 1
    ));
    params.push(Value::Int(limit));
    let rows = tx.query(&sql, &params).await?;
    let full = rows.len() as i64 == limit;
    let events = rows
        .into_iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let next = match (full, events.last(), opts.direction) {
        (true, Some(last), Direction::Forward) if (last.version as i64) < version => {
            Some(last.version + 1)
        }
        (true, Some(last), Direction::Backward) if last.version as i64 > min => {
            Some(last.version - 1)
        }
        _ => None,
    };
    Ok(StreamSlice {
        events,
        stream_version: version as u64,
        next,
    })
}

/// Reads `$all` (when `key` is `None`) or one category or one stream by position.
///
/// A stream is read through `UNIQUE (stream, version)`, in version order,
/// which within a stream is position order (versions only grow, even
/// across a soft delete); `stream_floor`, a version every event not yet
/// read is at or above, lets the index start there rather than at the
/// stream's first event.
pub(crate) async fn read_by_position(
    tx: &Tx<'_>,
    key: Option<(&str, &str)>,
    opts: &ReadAll,
    stream_floor: Option<u64>,
) -> Result<Vec<RecordedEvent>, ReadError> {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM {{ns}}events WHERE ");
    let mut params = Vec::new();
    let mut order_by = "position";
    if let Some((column, value)) = key {
        sql.push_str(&format!("{column} = $1 AND "));
        params.push(Value::from(value));
        if column == "stream" {
            order_by = "version";
            if let Some(floor) = stream_floor {
                sql.push_str(&format!("version >= ${} AND ", params.len() + 1));
                params.push(Value::Int(floor.min(i64::MAX as u64) as i64));
            }
        }
    }
    let (cmp, order, default) = match opts.direction {
        Direction::Forward => (">=", "ASC", 0),
        Direction::Backward => ("<=", "DESC", i64::MAX),
    };
    let from = opts.from.map_or(default, |p| p.min(i64::MAX as u64) as i64);
    sql.push_str(&format!("position {cmp} ${}", params.len() + 1));
    params.push(Value::Int(from));
    type_filter(&mut sql, &mut params, &opts.types);
    sql.push_str(&format!(
        " ORDER BY {order_by} {order} LIMIT ${}",
        params.len() + 1
    ));
    params.push(Value::Int(clamp(opts.max_count)));
    let rows = tx.query(&sql, &params).await?;
    Ok(rows
        .into_iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?)
}

/// The last position handed out (and, once the reading transaction started, committed).
pub(crate) async fn head_in(tx: &Tx<'_>) -> Result<u64, StoreError> {
    Ok(tx
        .query_one("SELECT COALESCE(MAX(position), 0) FROM {ns}events", &[])
        .await?
        .int(0)? as u64)
}
