//! Namespaces: the database-per-service pattern inside one store.
//!
//! A namespace owns the tables whose names start with its prefix
//! (`n_<name>__`). A service receives a token when its namespace is created;
//! presenting the token is the only way (besides the store's owner) to obtain
//! a [`Namespace`] handle, and every read and write goes through a handle,
//! whose SQL can only name its own tables (`{ns}` is filled in by the store).
//! Tokens are stored as SHA-256 hashes, never in clear.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::migrate::{self, Migration, MigrationReport};
use crate::tx::TxBody;
use crate::{Backend, Store, StoreError};

/// The longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 40;

/// The secret that opens one namespace: `<name>.<64 hex digits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct NamespaceToken(String);

impl NamespaceToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn generate(name: &str) -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        NamespaceToken(format!("{name}.{hex}"))
    }

    pub(crate) fn hash(&self) -> String {
        hash_token(&self.0)
    }
}

impl fmt::Debug for NamespaceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        let name = self.0.split('.').next().unwrap_or("");
        write!(f, "NamespaceToken({name}.…)")
    }
}

pub(crate) fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a namespace name: a lowercase letter, then lowercase letters, digits
/// and single underscores, at most [`MAX_NAMESPACE_LEN`] characters.
pub fn validate_namespace_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidNamespaceName {
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return bad("it is longer than 40 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return bad("only lowercase letters, digits and `_` are allowed");
    }
    if name.contains("__") || name.ends_with('_') {
        return bad("`__` and a trailing `_` are reserved as the table separator");
    }
    Ok(())
}

/// A handle on one namespace: every operation through it touches only its tables.
#[derive(Clone)]
pub struct Namespace {
    pub(crate) store: Store,
    pub(crate) name: Arc<str>,
    pub(crate) prefix: Arc<str>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .finish()
    }
}

impl Namespace {
    pub(crate) fn new(store: Store, name: &str) -> Self {
        Namespace {
            store,
            prefix: format!("n_{name}__").into(),
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// The physical name of one of this namespace's tables, for reading a read model with plain SQL.
    pub fn table(&self, table: &str) -> String {
        format!("{}{table}", self.prefix)
    }

    /// Runs `body` in a durable write transaction. On SQLite it joins the
    /// writer's next group commit; the result is returned only once committed.
    /// If `body` fails, its changes are rolled back and nothing else is affected.
    pub async fn write<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.store.write(self.prefix.clone(), body).await
    }

    /// Like [`write`](Self::write), and once the transaction is durably
    /// committed — before the caller is answered — runs `committed` with the
    /// body's result on the thread that saw the commit: on SQLite the writer
    /// thread, right after the group's fsync, in commit order; on PostgreSQL
    /// the calling task, right after `COMMIT` returns. It lets a notification
    /// (waking subscribers) leave at the commit instead of after the caller's
    /// task is next scheduled, and it runs even if the caller has gone away.
    /// It must be quick and must not block: on SQLite every write queued
    /// behind this group waits for it. It does not run if the body fails or
    /// the commit does.
    pub async fn write_then<T, E, F, C>(&self, body: F, committed: C) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
    {
        self.store
            .write_then(self.prefix.clone(), body, Some(Box::new(committed)))
            .await
    }

    /// Runs `body` in a read-only transaction that sees one consistent snapshot.
    pub async fn read<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.store.read(self.prefix.clone(), body).await
    }

    /// Brings `component`'s tables in this namespace up to the newest of `migrations`.
    pub async fn migrate(
        &self,
        component: &str,
        migrations: &'static [Migration],
    ) -> Result<MigrationReport, StoreError> {
        let name = self.name.to_string();
        let component = component.to_owned();
        self.write(move |tx| {
            Box::pin(async move { migrate::apply(tx, &name, &component, migrations).await })
        })
        .await
    }
}
