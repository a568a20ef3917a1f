//! The store's error type: one enum for both backends, with the few cases a
//! caller branches on (unique violations, authorisation, schema age) made explicit.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres connection pool: {0}")]
    Pool(String),
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    #[error("the namespace token is not valid")]
    Unauthorized,
    #[error("namespace `{0}` already exists")]
    NamespaceExists(String),
    #[error("namespace `{0}` does not exist")]
    NamespaceNotFound(String),
    #[error("invalid namespace name `{name}`: {reason}")]
    InvalidNamespaceName { name: String, reason: &'static str },
    #[error(
        "the store's `{component}` schema is at version {found}, newer than this build knows ({known}); upgrade Trellis"
    )]
    SchemaTooNew {
        component: String,
        found: i64,
        known: i64,
    },
    #[error("column {index}: expected {expected}, found {found}")]
    Column {
        index: usize,
        expected: &'static str,
        found: String,
    },
    #[error("cannot decode value: {0}")]
    Decode(String),
    #[error("commit failed, nothing in this batch was written: {0}")]
    CommitFailed(String),
    #[error("a transaction body panicked; it was rolled back")]
    Panicked,
    #[error("the store is closed")]
    Closed,
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// True when a UNIQUE or PRIMARY KEY constraint rejected the write, on either backend.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::UniqueViolation(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            StoreError::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        }
    }
}
