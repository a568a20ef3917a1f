//! SQL over the projections' tables, written once for both backends.
//!
//! Every function runs inside a caller's transaction, so the runner can make
//! a batch's document writes and its checkpoint one atomic commit.

use serde::{Deserialize, Serialize};
use trellis_store::{Backend, StoreError, Tx, Value};

use crate::definition::ProjectionDefinition;
use crate::error::ProjectionError;

/// Where a projection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Following its source and folding events.
    Running,
    /// Stopped by request; resumes from its checkpoint.
    Paused,
    /// Stopped at an event its script could not fold; see the fault.
    Faulted,
}

impl RunState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Faulted => "faulted",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "paused" => RunState::Paused,
            "faulted" => RunState::Faulted,
            _ => RunState::Running,
        }
    }
}

/// The event a projection stopped at, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub message: String,
    /// The `$all` position of the event that could not be folded.
    pub position: u64,
}

/// A projection as persisted.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub definition: ProjectionDefinition,
    pub state: RunState,
    pub position: u64,
    pub processed: u64,
    pub fault: Option<Fault>,
}

/// The document column as text (JSONB must be cast on PostgreSQL).
pub(crate) fn doc_column(tx: &Tx<'_>) -> &'static str {
    match tx.backend() {
        Backend::Sqlite => "doc",
        Backend::Postgres => "doc::text",
    }
}

fn decode_def(s: &str) -> Result<ProjectionDefinition, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Decode(format!("stored projection: {e}")))
}

pub(crate) async fn insert(
    tx: &Tx<'_>,
    def: &ProjectionDefinition,
    state: RunState,
    now: i64,
) -> Result<(), ProjectionError> {
    let json = serde_json::to_string(def)
        .map_err(|e| ProjectionError::InvalidDefinition(e.to_string()))?;
    tx.execute(
        "INSERT INTO {ns}projections (name, definition, state, position, events_processed, created_ms, updated_ms) VALUES ($1, $2, $3, 0, 0, $4, $4)",
        &[def.name.as_str().into(), json.into(), state.as_str().into(), Value::Int(now)],
    )
    .await
    .map_err(|e| {
        if e.is_unique_violation() {
            ProjectionError::AlreadyExists(def.name.clone())
        } else {
            e.into()
        }
    })?;
    Ok(())
}

const SELECT: &str = "SELECT definition, state, position, events_processed, last_error, error_position FROM {ns}projections";

fn decode(r: &trellis_store::Row) -> Result<Stored, StoreError> {
    let fault = match (r.opt_text(4)?, r.opt_int(5)?) {
        (Some(m), Some(p)) => Some(Fault {
            message: m.to_owned(),
            position: p as u64,
        }),
        _ => None,
    };
    Ok(Stored {
        definition: decode_def(r.text(0)?)?,
        state: RunState::parse(r.text(1)?),
        position: r.int(2)? as u64,
        processed: r.int(3)? as u64,
        fault,
    })
}

pub(crate) async fn load_all(tx: &Tx<'_>) -> Result<Vec<Stored>, StoreError> {
    tx.query(&format!("{SELECT} ORDER BY name"), &[])
        .await?
        .iter()
        .map(decode)
        .collect()
}

pub(crate) async fn load(tx: &Tx<'_>, name: &str) -> Result<Option<Stored>, StoreError> {
    tx.query_opt(&format!("{SELECT} WHERE name = $1"), &[name.into()])
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Sets the state; leaving `faulted` clears the fault.
pub(crate) async fn set_state(
    tx: &Tx<'_>,
    name: &str,
    state: RunState,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE {ns}projections SET state = $2, updated_ms = $3, last_error = CASE WHEN $2 = 'faulted' THEN last_error ELSE NULL END, error_position = CASE WHEN $2 = 'faulted' THEN error_position ELSE NULL END WHERE name = $1",
        &[name.into(), state.as_str().into(), Value::Int(now)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn set_definition(
    tx: &Tx<'_>,
    def: &ProjectionDefinition,
    now: i64,
) -> Result<(), ProjectionError> {
    let json = serde_json::to_string(def)
        .map_err(|e| ProjectionError::InvalidDefinition(e.to_string()))?;
    tx.execute(
        "UPDATE {ns}projections SET definition = $2, updated_ms = $3 WHERE name = $1",
        &[def.name.as_str().into(), json.into(), Value::Int(now)],
    )
    .await?;
    Ok(())
}

/// Clears the read model and the checkpoint: the projection starts again from the first event.
pub(crate) async fn reset(
    tx: &Tx<'_>,
    name: &str,
    state: RunState,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM {ns}projection_documents WHERE projection = $1",
        &[name.into()],
    )
    .await?;
    tx.execute(
        "UPDATE {ns}projections SET state = $2, position = 0, events_processed = 0, last_error = NULL, error_position = NULL, updated_ms = $3 WHERE name = $1",
        &[name.into(), state.as_str().into(), Value::Int(now)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn delete(tx: &Tx<'_>, name: &str) -> Result<u64, StoreError> {
    tx.execute(
        "DELETE FROM {ns}projection_documents WHERE projection = $1",
        &[name.into()],
    )
    .await?;
    tx.execute(
        "DELETE FROM {ns}projections WHERE name = $1",
        &[name.into()],
    )
    .await
}

/// The stored documents among `ids`, as `(id, JSON)`.
pub(crate) async fn load_documents(
    tx: &Tx<'_>,
    projection: &str,
    ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT id, {} FROM {{ns}}projection_documents WHERE projection = $1 AND id IN ({list})",
            doc_column(tx)
        );
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
        params.push(projection.into());
        params.extend(chunk.iter().map(Value::from));
        for mut row in tx.query(&sql, &params).await? {
            let doc = row.take_text(1)?;
            out.push((row.take_text(0)?, doc));
        }
    }
    Ok(out)
}

/// One batch's effect on the read model.
#[derive(Debug, Default)]
pub(crate) struct BatchWrite {
    /// `(id, JSON, position of the event that wrote it)`.
    pub upserts: Vec<(String, String, u64)>,
    pub deletes: Vec<String>,
}

pub(crate) async fn write_documents(
    tx: &Tx<'_>,
    projection: &str,
    batch: &BatchWrite,
    now: i64,
) -> Result<(), StoreError> {
    // Multi-row upserts: one statement (one round trip on PostgreSQL) per chunk.
    for chunk in batch.upserts.chunks(200) {
        let mut sql = String::from(
            "INSERT INTO {ns}projection_documents (projection, id, doc, position, updated_ms) VALUES ",
        );
        let mut params: Vec<Value> = vec![projection.into(), Value::Int(now)];
        for (i, (id, json, position)) in chunk.iter().enumerate() {
            let p = params.len() + 1;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${p}, ${}, ${}, $2)", p + 1, p + 2));
            params.extend([
                Value::from(id),
                Value::from(json),
                Value::Int(*position as i64),
            ]);
        }
        sql.push_str(
            " ON CONFLICT (projection, id) DO UPDATE SET doc = excluded.doc, position = excluded.position, updated_ms = excluded.updated_ms",
        );
        tx.execute(&sql, &params).await?;
    }
    for chunk in batch.deletes.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let mut params: Vec<Value> = vec![projection.into()];
        params.extend(chunk.iter().map(Value::from));
        tx.execute(
            &format!(
                "DELETE FROM {{ns}}projection_documents WHERE projection = $1 AND id IN ({list})"
            ),
            &params,
        )
        .await?;
    }
    Ok(())
}

/// Moves the checkpoint from `from` to `to`, recording a fault if one stopped
/// the batch. Returns false when the checkpoint was not at `from` (another
/// runner moved it): the caller's transaction must then roll back.
pub(crate) async fn advance(
    tx: &Tx<'_>,
    name: &str,
    from: u64,
    to: u64,
    processed: u64,
    fault: Option<&Fault>,
    now: i64,
) -> Result<bool, StoreError> {
    let (state, message, position) = match fault {
        Some(f) => (
            RunState::Faulted,
            Value::from(f.message.as_str()),
            Value::Int(f.position as i64),
        ),
        None => (RunState::Running, Value::Null, Value::Null),
    };
    let n = tx
        .execute(
            "UPDATE {ns}projections SET position = $3, events_processed = events_processed + $4, state = $5, last_error = $6, error_position = $7, updated_ms = $8 WHERE name = $1 AND position = $2 AND state = 'running'",
            &[
                name.into(),
                Value::Int(from as i64),
                Value::Int(to as i64),
                Value::Int(processed as i64),
                state.as_str().into(),
                message,
                position,
                Value::Int(now),
            ],
        )
        .await?;
    Ok(n == 1)
}
