//! A transaction handle that speaks both dialects.
//!
//! SQL is written once in PostgreSQL's placeholder style (`$1`, `$2`, …) with
//! `{ns}` where a table name takes its namespace prefix (`{ns}events`). The
//! handle substitutes the prefix of the namespace it was opened for — so code
//! holding a namespace cannot name another namespace's tables by accident — and
//! rewrites placeholders to `?1` for SQLite.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio_postgres::types::ToSql;

use crate::value::{from_postgres, from_sqlite};
use crate::{Backend, Row, StoreError, Value};

/// The body of a transaction: a closure handed the transaction, returning a boxed future.
///
/// On SQLite the future runs on the writer (or a reader) thread and must not
/// wait on anything but the transaction itself; on PostgreSQL it runs on the
/// caller's runtime.
pub trait TxBody<T, E>:
    for<'t, 'c> FnOnce(&'t Tx<'c>) -> BoxFuture<'t, Result<T, E>> + Send + 'static
{
}
impl<T, E, F> TxBody<T, E> for F where
    F: for<'t, 'c> FnOnce(&'t Tx<'c>) -> BoxFuture<'t, Result<T, E>> + Send + 'static
{
}

/// Runs once a write transaction is durably committed, with the body's result,
/// before the caller is answered: see [`Namespace::write_then`](crate::Namespace::write_then).
pub type OnCommit<T> = Box<dyn FnOnce(&T) + Send + 'static>;

/// Runs `hook` on `value`; a panic in it is logged and contained, so it can
/// neither kill the SQLite writer thread nor turn a committed write into an error.
pub(crate) fn run_on_commit<T>(hook: Option<OnCommit<T>>, value: &T) {
    if let Some(hook) = hook {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(value))).is_err() {
            tracing::error!("an on-commit hook panicked");
        }
    }
}

pub(crate) enum TxConn<'c> {
    Sqlite(&'c Mutex<rusqlite::Connection>),
    Postgres(&'c deadpool_postgres::Transaction<'c>),
}

/// An open transaction scoped to one namespace.
pub struct Tx<'c> {
    pub(crate) prefix: &'c str,
    pub(crate) conn: TxConn<'c>,
}

/// Rendered statements kept per thread, before the cache is emptied: bounds
/// what dynamic SQL (IN lists, filters) can make it hold.
const MAX_RENDERED: usize = 512;

thread_local! {
    /// SQLite statements already rendered, by namespace prefix and source SQL.
    /// Every append runs five statements on the writer thread; rendering each
    /// anew (two allocations and a copy) was ~5% of the writer's time.
    static RENDERED: RefCell<HashMap<String, HashMap<String, Rc<str>>>> = RefCell::new(HashMap::new());
}

/// [`render`] for SQLite, through the per-thread cache.
fn render_sqlite(sql: &str, prefix: &str) -> Rc<str> {
    RENDERED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(hit) = cache.get(prefix).and_then(|m| m.get(sql)) {
            return hit.clone();
        }
        let rendered: Rc<str> = render(sql, prefix, true).into();
        if cache.values().map(HashMap::len).sum::<usize>() >= MAX_RENDERED {
            cache.clear();
        }
        cache
            .entry(prefix.to_owned())
            .or_default()
            .insert(sql.to_owned(), rendered.clone());
        rendered
    })
}

/// Substitutes the namespace prefix and, for SQLite, the placeholder style.
pub(crate) fn render(sql: &str, prefix: &str, sqlite: bool) -> String {
    let with_ns = sql.replace("{ns}", prefix);
    if !sqlite {
        return with_ns;
    }
    let mut out = String::with_capacity(with_ns.len());
    let mut chars = with_ns.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl Tx<'_> {
    /// Which backend this transaction runs on, for the rare statement that differs.
    pub fn backend(&self) -> Backend {
        match self.conn {
            TxConn::Sqlite(_) => Backend::Sqlite,
            TxConn::Postgres(_) => Backend::Postgres,
        }
    }

    /// The namespace's table prefix, for building table names in dynamic SQL.
    pub fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `FOR UPDATE` on PostgreSQL (row lock), nothing on SQLite (where the
    /// single writer already serialises every write transaction).
    pub fn for_update(&self) -> &'static str {
        match self.conn {
            TxConn::Sqlite(_) => "",
            TxConn::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Runs a statement, returning the number of rows it changed.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match self.conn {
            TxConn::Sqlite(conn) => {
                let sql = render_sqlite(sql, self.prefix);
                let conn = conn.lock();
                let mut stmt = conn.prepare_cached(&sql)?;
                let n = stmt
                    .execute(rusqlite::params_from_iter(params.iter()))
                    .map_err(map_sqlite)?;
                Ok(n as u64)
            }
            TxConn::Postgres(tx) => {
                let sql = render(sql, self.prefix, false);
                let stmt = tx.prepare_cached(&sql).await?;
                let refs = pg_params(params);
                tx.execute(&stmt, &refs).await.map_err(map_pg)
            }
        }
    }

    /// Runs a query, returning every row.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self.conn {
            TxConn::Sqlite(conn) => {
                let sql = render_sqlite(sql, self.prefix);
                let conn = conn.lock();
                let mut stmt = conn.prepare_cached(&sql)?;
                let n = stmt.column_count();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter()))
                    .map_err(map_sqlite)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(map_sqlite)? {
                    let mut vals = Vec::with_capacity(n);
                    for i in 0..n {
                        vals.push(from_sqlite(r.get_ref(i)?)?);
                    }
                    out.push(Row(vals));
                }
                Ok(out)
            }
            TxConn::Postgres(tx) => {
                let sql = render(sql, self.prefix, false);
                let stmt = tx.prepare_cached(&sql).await?;
                let refs = pg_params(params);
                let rows = tx.query(&stmt, &refs).await.map_err(map_pg)?;
                rows.iter().map(from_postgres).collect()
            }
        }
    }

    /// Runs a query expected to return at most one row.
    pub async fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs a query expected to return exactly one row.
    pub async fn query_one(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Decode(format!("expected one row from: {sql}")))
    }

    /// Runs several statements without parameters (DDL in migrations).
    pub async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self.conn {
            TxConn::Sqlite(conn) => {
                let sql = render(sql, self.prefix, true);
                conn.lock().execute_batch(&sql).map_err(map_sqlite)
            }
            TxConn::Postgres(tx) => {
                let sql = render(sql, self.prefix, false);
                tx.batch_execute(&sql).await.map_err(map_pg)
            }
        }
    }
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn map_sqlite(e: rusqlite::Error) -> StoreError {
    let err = StoreError::Sqlite(e);
    if err.is_unique_violation() {
        StoreError::UniqueViolation(err.to_string())
    } else {
        err
    }
}

fn map_pg(e: tokio_postgres::Error) -> StoreError {
    let err = StoreError::Postgres(e);
    if err.is_unique_violation() {
        let detail = match &err {
            StoreError::Postgres(e) => e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        StoreError::UniqueViolation(detail)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn render_rewrites_placeholders_and_prefix_for_sqlite_only() {
        let sql = "SELECT a FROM {ns}t WHERE x = $1 AND y = $12";
        assert_eq!(
            render(sql, "n_a__", true),
            "SELECT a FROM n_a__t WHERE x = ?1 AND y = ?12"
        );
        assert_eq!(
            render(sql, "n_a__", false),
            "SELECT a FROM n_a__t WHERE x = $1 AND y = $12"
        );
    }
}
