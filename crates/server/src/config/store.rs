//! `[store]`: where durable state (events, registrations, projections) lives.
//!
//! The default is embedded SQLite in the data directory; a fleet points every
//! node at one PostgreSQL schema instead, without changing its services.

use serde::Deserialize;

use super::validate::{Validate, Validator};

/// Which database backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One SQLite file, `trellis.db`, in `data.dir` (WAL mode, group commit).
    #[default]
    Sqlite,
    /// A schema in a PostgreSQL database.
    Postgres,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (embedded, the default) or `postgres`.
    pub backend: StoreBackend,
    /// PostgreSQL connection string, e.g. `postgres://trellis@db:5432/trellis`.
    /// Required with `backend = "postgres"`.
    pub url: Option<String>,
    /// PostgreSQL schema holding Trellis's tables; created if missing.
    pub schema: String,
    /// PostgreSQL connections in the pool.
    pub pool_size: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Sqlite,
            url: None,
            schema: "trellis".to_owned(),
            pool_size: 16,
        }
    }
}

impl Validate for StoreSection {
    fn validate(&self, v: &mut Validator) {
        if self.backend == StoreBackend::Postgres {
            match &self.url {
                None => v.invalid("url", "required when store.backend is \"postgres\""),
                Some(url)
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
                {
                    v.invalid("url", format!("{url:?} is not a postgres:// URL"))
                }
                Some(_) => {}
            }
        }
        if self.schema.is_empty()
            || self.schema.len() > 63
            || !self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || self.schema.starts_with(|c: char| c.is_ascii_digit())
        {
            v.invalid(
                "schema",
                format!(
                    "{:?} is not a schema name (lowercase letters, digits and _, at most 63, not starting with a digit)",
                    self.schema
                ),
            );
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            v.invalid("pool_size", "must be between 1 and 1024");
        }
    }
}
