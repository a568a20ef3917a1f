//! Opens the store every durable component shares.

use anyhow::Context as _;
use trellis_store::{Store, StoreConfig};

use crate::config::{Config, StoreBackend};

/// Opens (creating and migrating if needed) the store named by `[store]`.
pub async fn open(config: &Config) -> anyhow::Result<Store> {
    let store_config = match config.store.backend {
        StoreBackend::Sqlite => StoreConfig::in_data_dir(&config.data.dir),
        StoreBackend::Postgres => StoreConfig::Postgres {
            // Validation guarantees the URL is present.
            url: config.store.url.clone().unwrap_or_default(),
            schema: config.store.schema.clone(),
            pool_size: config.store.pool_size,
        },
    };
    let what = match &store_config {
        StoreConfig::Sqlite { path } => format!("the embedded store at {}", path.display()),
        StoreConfig::Postgres { schema, .. } => format!("the PostgreSQL store (schema {schema})"),
    };
    let store = Store::open(store_config)
        .await
        .with_context(|| format!("cannot open {what}"))?;
    tracing::info!(backend = ?store.backend(), "store open");
    Ok(store)
}
