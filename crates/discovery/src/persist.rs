//! Registrations on the store, so a restart keeps them. Only what the
//! services told us is stored; health is re-established after a restart.
//! The change index is stored with every write so it keeps growing across
//! restarts for registrations (health changes between writes are not stored,
//! so a watcher holding a newer index than the store's is told to resync — see
//! [`crate::watch`]).

use trellis_store::{Migration, Namespace, StoreError, Value};

use crate::error::RegistryError;
use crate::model::Registration;

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "registry instances",
    sqlite: "CREATE TABLE {ns}registry_instances (
            service TEXT NOT NULL, id TEXT NOT NULL, registration TEXT NOT NULL,
            PRIMARY KEY (service, id));
        CREATE TABLE {ns}registry_index (one INTEGER PRIMARY KEY CHECK (one = 1), idx INTEGER NOT NULL);
        INSERT INTO {ns}registry_index (one, idx) VALUES (1, 0);",
    postgres: "CREATE TABLE {ns}registry_instances (
            service TEXT NOT NULL, id TEXT NOT NULL, registration TEXT NOT NULL,
            PRIMARY KEY (service, id));
        CREATE TABLE {ns}registry_index (one INTEGER PRIMARY KEY CHECK (one = 1), idx BIGINT NOT NULL);
        INSERT INTO {ns}registry_index (one, idx) VALUES (1, 0);",
}];

fn to_i64(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

pub(crate) async fn upsert(
    ns: &Namespace,
    service: &str,
    id: &str,
    registration: &Registration,
    index: u64,
) -> Result<(), RegistryError> {
    let json = serde_json::to_string(registration).map_err(|e| RegistryError::Corrupt {
        service: service.to_owned(),
        id: id.to_owned(),
        reason: e.to_string(),
    })?;
    let (service, id) = (service.to_owned(), id.to_owned());
    ns.write(move |tx| {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO {ns}registry_instances (service, id, registration) VALUES ($1, $2, $3)
                 ON CONFLICT (service, id) DO UPDATE SET registration = excluded.registration",
                &[service.into(), id.into(), json.into()],
            )
            .await?;
            tx.execute(
                "UPDATE {ns}registry_index SET idx = $1 WHERE one = 1",
                &[Value::Int(to_i64(index))],
            )
            .await?;
            Ok::<_, StoreError>(())
        })
    })
    .await?;
    Ok(())
}

pub(crate) async fn delete(
    ns: &Namespace,
    service: &str,
    id: &str,
    index: u64,
) -> Result<(), RegistryError> {
    let (service, id) = (service.to_owned(), id.to_owned());
    ns.write(move |tx| {
        Box::pin(async move {
            tx.execute(
                "DELETE FROM {ns}registry_instances WHERE service = $1 AND id = $2",
                &[service.into(), id.into()],
            )
            .await?;
            tx.execute(
                "UPDATE {ns}registry_index SET idx = $1 WHERE one = 1",
                &[Value::Int(to_i64(index))],
            )
            .await?;
            Ok::<_, StoreError>(())
        })
    })
    .await?;
    Ok(())
}

/// The stored index and every registration, in (service, id) order.
pub(crate) async fn load(
    ns: &Namespace,
) -> Result<(u64, Vec<(String, String, Registration)>), RegistryError> {
    let (index, rows) = ns
        .read(|tx| {
            Box::pin(async move {
                let index = tx
                    .query_one("SELECT idx FROM {ns}registry_index WHERE one = 1", &[])
                    .await?
                    .int(0)?;
                let rows = tx
                    .query(
                        "SELECT service, id, registration FROM {ns}registry_instances ORDER BY service, id",
                        &[],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push((r.text(0)?.to_owned(), r.text(1)?.to_owned(), r.text(2)?.to_owned()));
                }
                Ok::<_, StoreError>((index, out))
            })
        })
        .await?;
    let mut regs = Vec::with_capacity(rows.len());
    for (service, id, json) in rows {
        match serde_json::from_str::<Registration>(&json) {
            Ok(r) => regs.push((service, id, r)),
            Err(e) => {
                // One unreadable row must not keep the whole registry down;
                // it is reported and skipped, and re-registration replaces it.
                tracing::error!(%service, %id, error = %e, "skipping unreadable stored registration");
            }
        }
    }
    Ok((u64::try_from(index).unwrap_or(0), regs))
}
