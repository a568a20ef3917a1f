//! The query side: read-model documents by id, or listed with equality
//! filters on top-level fields, a sort on one field and offset pagination.
//!
//! Queries run in read transactions and never touch the event store: the
//! command side (appends) and the query side share nothing but the tables.
//! Filters and sorts go to SQL (`json_extract` on SQLite, JSONB operators on
//! PostgreSQL) with the field names and values bound as parameters.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use trellis_store::{Backend, StoreError, Tx, Value};

use crate::error::ProjectionError;
use crate::repo::doc_column;

/// The most documents one query returns.
pub const MAX_LIMIT: usize = 1_000;
/// The most filters in one query.
pub const MAX_FILTERS: usize = 16;

/// One read-model document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub id: String,
    pub doc: Json,
    /// The `$all` position of the event that last changed it.
    pub position: u64,
    pub updated_ms: i64,
}

/// Sort order of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortBy {
    /// A top-level field of the documents, or `id`.
    pub field: String,
    pub descending: bool,
}

/// A list query over one projection's documents.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentQuery {
    /// Top-level field equals a JSON scalar (`null` matches a missing field too).
    pub filter: Vec<(String, Json)>,
    /// By id when unset.
    pub sort: Option<SortBy>,
    pub limit: usize,
    pub offset: u64,
}

impl Default for DocumentQuery {
    fn default() -> Self {
        DocumentQuery {
            filter: Vec::new(),
            sort: None,
            limit: 100,
            offset: 0,
        }
    }
}

impl DocumentQuery {
    pub fn filter(mut self, field: impl Into<String>, value: impl Into<Json>) -> Self {
        self.filter.push((field.into(), value.into()));
        self
    }

    pub fn sort(mut self, field: impl Into<String>, descending: bool) -> Self {
        self.sort = Some(SortBy {
            field: field.into(),
            descending,
        });
        self
    }

    pub fn page(mut self, limit: usize, offset: u64) -> Self {
        self.limit = limit;
        self.offset = offset;
        self
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentPage {
    pub documents: Vec<Document>,
    /// The offset of the next page, or `None` after the last.
    pub next_offset: Option<u64>,
}

/// Field names are restricted so they read the same in both SQL dialects' JSON paths.
pub fn validate_field(field: &str) -> Result<(), ProjectionError> {
    let ok = !field.is_empty()
        && field.len() <= 64
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::InvalidQuery(format!(
            "`{}` is not a field name: use 1 to 64 letters, digits, `_` or `-`",
            field.chars().take(40).collect::<String>()
        )))
    }
}

fn decode(mut r: trellis_store::Row) -> Result<Document, StoreError> {
    let text = r.take_text(1)?;
    Ok(Document {
        id: r.take_text(0)?,
        doc: serde_json::from_str(&text)
            .map_err(|e| StoreError::Decode(format!("stored document: {e}")))?,
        position: r.int(2)? as u64,
        updated_ms: r.int(3)?,
    })
}

pub(crate) async fn get_in(
    tx: &Tx<'_>,
    projection: &str,
    id: &str,
) -> Result<Option<Document>, StoreError> {
    let sql = format!(
        "SELECT id, {}, position, updated_ms FROM {{ns}}projection_documents WHERE projection = $1 AND id = $2",
        doc_column(tx)
    );
    tx.query_opt(&sql, &[projection.into(), id.into()])
        .await?
        .map(decode)
        .transpose()
}

/// Checks a query before it reaches SQL.
pub fn validate_query(q: &DocumentQuery) -> Result<(), ProjectionError> {
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(ProjectionError::InvalidQuery(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    if q.filter.len() > MAX_FILTERS {
        return Err(ProjectionError::InvalidQuery(format!(
            "at most {MAX_FILTERS} filters"
        )));
    }
    if q.offset > i64::MAX as u64 {
        return Err(ProjectionError::InvalidQuery("offset is too large".into()));
    }
    for (field, value) in &q.filter {
        validate_field(field)?;
        if value.is_array() || value.is_object() {
            return Err(ProjectionError::InvalidQuery(format!(
                "filter on `{field}`: only strings, numbers, booleans and null can be compared"
            )));
        }
    }
    if let Some(s) = &q.sort {
        validate_field(&s.field)?;
    }
    Ok(())
}

fn sqlite_scalar(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Int((*b).into()),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        _ => Value::Null,
    }
}

pub(crate) async fn list_in(
    tx: &Tx<'_>,
    projection: &str,
    q: &DocumentQuery,
) -> Result<DocumentPage, StoreError> {
    let pg = tx.backend() == Backend::Postgres;
    let mut sql = format!(
        "SELECT id, {}, position, updated_ms FROM {{ns}}projection_documents WHERE projection = $1",
        doc_column(tx)
    );
    let mut params: Vec<Value> = vec![projection.into()];
    for (field, value) in &q.filter {
        let (f, v) = (params.len() + 1, params.len() + 2);
        if pg {
            sql.push_str(&format!(
                " AND COALESCE(doc -> (${f}::text), 'null'::jsonb) = (${v}::text)::jsonb"
            ));
            params.push(field.into());
            params.push(value.to_string().into());
        } else if value.is_null() {
            sql.push_str(&format!(" AND json_extract(doc, ${f}) IS NULL"));
            params.push(format!("$.\"{field}\"").into());
        } else {
            sql.push_str(&format!(" AND json_extract(doc, ${f}) = ${v}"));
            params.push(format!("$.\"{field}\"").into());
            params.push(sqlite_scalar(value));
        }
    }
    let order = match &q.sort {
        Some(s) if s.field != "id" => {
            let dir = if s.descending { "DESC" } else { "ASC" };
            let f = params.len() + 1;
            if pg {
                params.push(s.field.as_str().into());
                format!(" ORDER BY doc -> (${f}::text) {dir}, id {dir}")
            } else {
                params.push(format!("$.\"{}\"", s.field).into());
                format!(" ORDER BY json_extract(doc, ${f}) {dir}, id {dir}")
            }
        }
        Some(s) if s.descending => " ORDER BY id DESC".to_owned(),
        _ => " ORDER BY id ASC".to_owned(),
    };
    sql.push_str(&order);
    // One row more than asked tells whether there is a next page.
    sql.push_str(&format!(
        " LIMIT ${} OFFSET ${}",
        params.len() + 1,
        params.len() + 2
    ));
    params.push(Value::Int(q.limit as i64 + 1));
    params.push(Value::Int(q.offset as i64));
    let rows = tx.query(&sql, &params).await?;
    let more = rows.len() > q.limit;
    let documents = rows
        .into_iter()
        .take(q.limit)
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let next_offset = more.then(|| q.offset + q.limit as u64);
    Ok(DocumentPage {
        documents,
        next_offset,
    })
}
