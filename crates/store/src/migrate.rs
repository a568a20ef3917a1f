//! Versioned, embedded schema migrations.
//!
//! Each component (the store itself, the event store, a projection's read
//! model…) ships its migrations as an ordered list compiled into the binary.
//! Opening applies, in one transaction, every migration newer than the
//! highest version recorded for that component in that namespace — so a store
//! written by an older Trellis is brought forward when a newer one opens it —
//! and refuses a store whose recorded version is newer than the binary knows.

use crate::{Backend, StoreError, Tx, Value};

/// One schema change, in both dialects. Table names take the `{ns}` prefix.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing from 1 within a component.
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// What a call to `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The version the component was at before.
    pub from: i64,
    /// The version it is at now.
    pub to: i64,
}

pub(crate) const BOOTSTRAP_SQLITE: &str = "CREATE TABLE IF NOT EXISTS trellis_migrations (
    namespace TEXT NOT NULL, component TEXT NOT NULL, version INTEGER NOT NULL,
    name TEXT NOT NULL, applied_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, component, version))";
pub(crate) const BOOTSTRAP_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS trellis_migrations (
    namespace TEXT NOT NULL, component TEXT NOT NULL, version BIGINT NOT NULL,
    name TEXT NOT NULL, applied_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, component, version))";

/// The store's own tables.
pub(crate) const STORE_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "namespaces",
    sqlite: "CREATE TABLE trellis_namespaces (
        name TEXT PRIMARY KEY, token_hash TEXT NOT NULL, created_ms INTEGER NOT NULL)",
    postgres: "CREATE TABLE trellis_namespaces (
        name TEXT PRIMARY KEY, token_hash TEXT NOT NULL, created_ms BIGINT NOT NULL)",
}];

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Applies what is missing of `migrations` inside the caller's write transaction.
pub(crate) async fn apply(
    tx: &Tx<'_>,
    namespace: &str,
    component: &str,
    migrations: &[Migration],
) -> Result<MigrationReport, StoreError> {
    match tx.backend() {
        Backend::Sqlite => tx.batch(BOOTSTRAP_SQLITE).await?,
        Backend::Postgres => {
            // Two processes opening one database at once must not both migrate it.
            tx.execute("SELECT pg_advisory_xact_lock(7366001)", &[])
                .await?;
            tx.batch(BOOTSTRAP_POSTGRES).await?;
        }
    }
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM trellis_migrations WHERE namespace = $1 AND component = $2",
            &[namespace.into(), component.into()],
        )
        .await?;
    let from = row.int(0)?;
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if from > known {
        return Err(StoreError::SchemaTooNew {
            component: component.to_owned(),
            found: from,
            known,
        });
    }
    let mut to = from;
    for m in migrations.iter().filter(|m| m.version > from) {
        if m.version <= to {
            return Err(StoreError::Config(format!(
                "migrations of `{component}` are not strictly increasing at version {}",
                m.version
            )));
        }
        let sql = match tx.backend() {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };
        tx.batch(sql).await?;
        tx.execute(
            "INSERT INTO trellis_migrations (namespace, component, version, name, applied_ms) VALUES ($1, $2, $3, $4, $5)",
            &[
                namespace.into(),
                component.into(),
                Value::Int(m.version),
                m.name.into(),
                Value::Int(now_ms()),
            ],
        )
        .await?;
        tracing::info!(
            namespace,
            component,
            version = m.version,
            name = m.name,
            "applied migration"
        );
        to = m.version;
    }
    Ok(MigrationReport { from, to })
}
