//! The PostgreSQL backend: a deadpool of tokio-postgres connections, each with
//! its `search_path` set to the store's schema, so one database can hold
//! several independent stores (and each test run its own).
//!
//! PostgreSQL does its own group commit across concurrent transactions, so a
//! write here is simply one transaction on a pooled connection, committed with
//! the server's durable default (`synchronous_commit = on`).

use std::str::FromStr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::tx::{run_on_commit, OnCommit, Tx, TxBody, TxConn};
use crate::StoreError;

pub(crate) struct Postgres {
    pool: Pool,
    schema: String,
}

/// Quotes an identifier for PostgreSQL.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Postgres {
    pub(crate) async fn open(
        url: &str,
        schema: &str,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Config(format!("postgres url: {e}")))?;
        // Create the schema first over a one-off connection; the pool's
        // connections then start with it on their search_path.
        let (client, conn) = config.connect(NoTls).await?;
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ))
            .await
            .or_else(|e| {
                // Two stores opening at once race on CREATE SCHEMA; losing that race is fine.
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        drop(client);
        let _ = driver.await;
        config.options(format!("-c search_path={}", quote_ident(schema)));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Postgres {
            pool,
            schema: schema.to_owned(),
        })
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) async fn write<T, E, F>(
        &self,
        prefix: Arc<str>,
        body: F,
        committed: Option<OnCommit<T>>,
    ) -> Result<T, E>
    where
        F: TxBody<T, E>,
        E: From<StoreError>,
    {
        let value = self.run(prefix, body, false).await?;
        // Right after COMMIT returned: the write is durable and visible.
        run_on_commit(committed, &value);
        Ok(value)
    }

    pub(crate) async fn read<T, E, F>(&self, prefix: Arc<str>, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        E: From<StoreError>,
    {
        self.run(prefix, body, true).await
    }

    async fn run<T, E, F>(&self, prefix: Arc<str>, body: F, read_only: bool) -> Result<T, E>
    where
        F: TxBody<T, E>,
        E: From<StoreError>,
    {
        let mut client = self.pool.get().await.map_err(|e| E::from(e.into()))?;
        let builder = client.build_transaction();
        let builder = if read_only {
            // One snapshot for every query of the read, like the SQLite reader's transaction.
            builder
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        } else {
            builder
        };
        let tx = builder
            .start()
            .await
            .map_err(|e| E::from(StoreError::from(e)))?;
        let result = {
            let handle = Tx {
                prefix: &prefix,
                conn: TxConn::Postgres(&tx),
            };
            body(&handle).await
        };
        match result {
            Ok(v) => {
                tx.commit()
                    .await
                    .map_err(|e| E::from(StoreError::from(e)))?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Drops the whole schema: the test suites' cleanup.
    pub(crate) async fn drop_schema(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&self.schema)
            ))
            .await?;
        Ok(())
    }

    pub(crate) fn close(&self) {
        self.pool.close();
    }
}
