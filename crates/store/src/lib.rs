//! Trellis's storage layer: one interface over embedded SQLite (the default,
//! one file under the data directory) and PostgreSQL (for a fleet).
//!
//! Patterns: **database per service** (namespaces with their own tokens),
//! **group commit**, and **versioned schema migration**. Every other crate that
//! persists anything — the event store, projections, sagas, the outbox —
//! reaches storage only through this crate.
//!
//! # How it works
//!
//! - **One interface.** A [`Store`] hands out [`Namespace`] handles; a handle
//!   runs a closure in a read or write transaction ([`Namespace::read`],
//!   [`Namespace::write`]) through a [`Tx`] whose SQL is written once, in
//!   PostgreSQL's `$1` style with `{ns}` before table names, and rendered for
//!   the backend it runs on.
//! - **Group commit (SQLite).** SQLite allows one writer, and a durable commit
//!   costs an fsync (~0.2 ms here). All writes therefore queue to a dedicated
//!   writer thread that takes everything queued into one transaction (waiting
//!   briefly for the callers it just answered, see `writer.rs`), runs each
//!   request inside its own `SAVEPOINT` (so one failing request rolls back alone),
//!   commits once with `synchronous=FULL` and only then acknowledges each
//!   request. Under load a single fsync covers hundreds of writes; a lone write
//!   pays one fsync, as it would anyway. A second connection copies the WAL
//!   into the database in the background (`checkpoint.rs`), so the writer does
//!   not. Reads use separate connections (WAL lets them run beside the writer)
//!   and never queue behind writes.
//! - **PostgreSQL** uses a deadpool of tokio-postgres connections; the server's
//!   own group commit does the batching. We chose tokio-postgres + deadpool
//!   over sqlx because the store builds its SQL at run time (namespace
//!   prefixes, two dialects), so sqlx's compile-time checking buys nothing,
//!   while tokio-postgres gives statement caching per connection, pipelining
//!   and a much smaller dependency tree; SQLite needs a hand-run writer thread
//!   anyway for group commit, which rusqlite gives direct access to.
//! - **Migrations** are embedded per component and applied at open in one
//!   transaction; an older store opens in a newer build, a newer store is
//!   refused with [`StoreError::SchemaTooNew`].
//! - **Namespaces**: see [`namespace`].

mod checkpoint;
mod error;
pub mod migrate;
pub mod namespace;
mod postgres;
mod sqlite;
mod tx;
mod value;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::StoreError;
pub use migrate::{Migration, MigrationReport};
pub use namespace::{validate_namespace_name, Namespace, NamespaceToken};
pub use tx::{OnCommit, Tx, TxBody};
pub use value::{Row, Value};
pub use writer::MAX_GROUP;

use migrate::now_ms;
use namespace::hash_token;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a store lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// One SQLite file, created if missing.
    Sqlite { path: PathBuf },
    /// A schema in a PostgreSQL database, created if missing.
    Postgres {
        url: String,
        schema: String,
        pool_size: usize,
    },
}

impl StoreConfig {
    /// The embedded default: `trellis.db` in `data_dir`.
    pub fn in_data_dir(data_dir: impl AsRef<Path>) -> Self {
        StoreConfig::Sqlite {
            path: data_dir.as_ref().join("trellis.db"),
        }
    }
}

enum Backing {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// An open store. Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct Store {
    backing: Arc<Backing>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

const SYSTEM: &str = "";

impl Store {
    /// Opens (creating if needed) the store and applies its migrations.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let backing = match config {
            StoreConfig::Sqlite { path } => Backing::Sqlite(sqlite::Sqlite::open(&path)?),
            StoreConfig::Postgres {
                url,
                schema,
                pool_size,
            } => Backing::Postgres(postgres::Postgres::open(&url, &schema, pool_size).await?),
        };
        let store = Store {
            backing: Arc::new(backing),
        };
        store
            .write(Arc::from(SYSTEM), |tx| {
                Box::pin(async move {
                    migrate::apply(tx, SYSTEM, "store", migrate::STORE_MIGRATIONS).await
                })
            })
            .await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match *self.backing {
            Backing::Sqlite(_) => Backend::Sqlite,
            Backing::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite file, when the store is embedded.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &*self.backing {
            Backing::Sqlite(s) => Some(s.path()),
            Backing::Postgres(_) => None,
        }
    }

    /// The PostgreSQL schema, when the store is on PostgreSQL.
    pub fn postgres_schema(&self) -> Option<&str> {
        match &*self.backing {
            Backing::Sqlite(_) => None,
            Backing::Postgres(p) => Some(p.schema()),
        }
    }

    pub(crate) async fn write<T, E, F>(&self, prefix: Arc<str>, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_then(prefix, body, None).await
    }

    pub(crate) async fn write_then<T, E, F>(
        &self,
        prefix: Arc<str>,
        body: F,
        committed: Option<OnCommit<T>>,
    ) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match &*self.backing {
            Backing::Sqlite(s) => s.write(prefix, body, committed).await,
            Backing::Postgres(p) => p.write(prefix, body, committed).await,
        }
    }

    pub(crate) async fn read<T, E, F>(&self, prefix: Arc<str>, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match &*self.backing {
            Backing::Sqlite(s) => s.read(prefix, body).await,
            Backing::Postgres(p) => p.read(prefix, body).await,
        }
    }

    /// Creates a namespace and returns its token — the only time the token is shown.
    pub async fn create_namespace(&self, name: &str) -> Result<NamespaceToken, StoreError> {
        validate_namespace_name(name)?;
        let token = NamespaceToken::generate(name);
        let (n, hash) = (name.to_owned(), token.hash());
        self.write(Arc::from(SYSTEM), move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO trellis_namespaces (name, token_hash, created_ms) VALUES ($1, $2, $3)",
                    &[n.as_str().into(), hash.into(), Value::Int(now_ms())],
                )
                .await
                .map_err(|e| {
                    if e.is_unique_violation() {
                        StoreError::NamespaceExists(n.clone())
                    } else {
                        e
                    }
                })
            })
        })
        .await?;
        Ok(token)
    }

    /// Opens the namespace a token belongs to; [`StoreError::Unauthorized`] for any other token.
    pub async fn namespace(&self, token: &str) -> Result<Namespace, StoreError> {
        let name = token.split('.').next().unwrap_or_default().to_owned();
        if validate_namespace_name(&name).is_err() {
            return Err(StoreError::Unauthorized);
        }
        let presented = hash_token(token);
        let lookup = name.clone();
        let stored: Option<String> = self
            .read(Arc::from(SYSTEM), move |tx| {
                Box::pin(async move {
                    let row = tx
                        .query_opt(
                            "SELECT token_hash FROM trellis_namespaces WHERE name = $1",
                            &[lookup.into()],
                        )
                        .await?;
                    row.map(|r| r.text(0).map(str::to_owned)).transpose()
                })
            })
            .await?;
        match stored {
            Some(hash) if constant_time_eq(hash.as_bytes(), presented.as_bytes()) => {
                Ok(Namespace::new(self.clone(), &name))
            }
            _ => Err(StoreError::Unauthorized),
        }
    }

    /// Opens a namespace by name without a token, creating it if missing.
    ///
    /// For the process that owns the store (the Trellis server itself); a
    /// service is given a token instead. A namespace created here has a token
    /// nobody knows until [`Store::rotate_token`] issues one.
    pub async fn system_namespace(&self, name: &str) -> Result<Namespace, StoreError> {
        validate_namespace_name(name)?;
        match self.create_namespace(name).await {
            Ok(_) | Err(StoreError::NamespaceExists(_)) => Ok(Namespace::new(self.clone(), name)),
            Err(e) => Err(e),
        }
    }

    /// Issues a new token for a namespace; the old one stops working.
    pub async fn rotate_token(&self, name: &str) -> Result<NamespaceToken, StoreError> {
        validate_namespace_name(name)?;
        let token = NamespaceToken::generate(name);
        let (n, hash) = (name.to_owned(), token.hash());
        let changed = self
            .write(Arc::from(SYSTEM), move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE trellis_namespaces SET token_hash = $1 WHERE name = $2",
                        &[hash.into(), n.into()],
                    )
                    .await
                })
            })
            .await?;
        if changed == 0 {
            return Err(StoreError::NamespaceNotFound(name.to_owned()));
        }
        Ok(token)
    }

    /// The names of every namespace.
    pub async fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        self.read(Arc::from(SYSTEM), |tx| {
            Box::pin(async move {
                tx.query("SELECT name FROM trellis_namespaces ORDER BY name", &[])
                    .await?
                    .iter()
                    .map(|r| r.text(0).map(str::to_owned))
                    .collect()
            })
        })
        .await
    }

    /// Drops a namespace with all its tables and migration records.
    pub async fn drop_namespace(&self, name: &str) -> Result<(), StoreError> {
        validate_namespace_name(name)?;
        let n = name.to_owned();
        let found = self
            .write(Arc::from(SYSTEM), move |tx| {
                Box::pin(async move {
                    let prefix = format!("n_{n}__");
                    let list = match tx.backend() {
                        Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, length($1)) = $1",
                        Backend::Postgres => "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND left(table_name::text, length($1::text)) = $1::text",
                    };
                    let tables = tx.query(list, &[prefix.into()]).await?;
                    for t in &tables {
                        let table = t.text(0)?;
                        tx.batch(&format!("DROP TABLE IF EXISTS \"{}\"", table.replace('"', "")))
                            .await?;
                    }
                    tx.execute("DELETE FROM trellis_migrations WHERE namespace = $1", &[n.as_str().into()])
                        .await?;
                    tx.execute("DELETE FROM trellis_namespaces WHERE name = $1", &[n.into()])
                        .await
                })
            })
            .await?;
        if found == 0 {
            return Err(StoreError::NamespaceNotFound(name.to_owned()));
        }
        Ok(())
    }

    /// Group-commit counters `(durable commits, writes in them)` of the SQLite
    /// writer since open; `None` on PostgreSQL, which batches commits itself.
    pub fn group_commit_stats(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        match &*self.backing {
            Backing::Sqlite(s) => Some((
                s.counters.commits.load(Relaxed),
                s.counters.writes.load(Relaxed),
            )),
            Backing::Postgres(_) => None,
        }
    }

    /// Closes connections; on SQLite, waits for queued writes to commit first.
    pub fn close(&self) {
        match &*self.backing {
            Backing::Sqlite(s) => s.close(),
            Backing::Postgres(p) => p.close(),
        }
    }

    /// Drops the PostgreSQL schema with everything in it (test cleanup); a no-op on SQLite.
    pub async fn drop_postgres_schema(&self) -> Result<(), StoreError> {
        match &*self.backing {
            Backing::Sqlite(_) => Ok(()),
            Backing::Postgres(p) => p.drop_schema().await,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
