//! Writes to the shared registry: register, remove, heartbeat, and the
//! health changes this node's checks find. Each returns once this node's
//! mirror shows the write (read your writes).

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{etcd_err, lease_secs, pair, revision, Etcd, Stored};
use crate::error::RegistryError;
use crate::model::{Registration, Status};
use crate::registry::{Entry, Registry};

impl Etcd {
    /// Registers on etcd: a TTL instance on a lease of its TTL plus its
    /// deregister grace, with a liveness key on a lease of its TTL; any other
    /// on this node's session.
    pub(crate) async fn register(
        &self,
        registry: &Registry,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<u64, RegistryError> {
        let grace = registration
            .deregister_after
            .unwrap_or(registry.inner.config.deregister_after);
        let (status, output, lease) = match (&registration.ttl, &registration.check) {
            (Some(ttl), _) => {
                let lease = self
                    .client
                    .clone()
                    .lease_grant(lease_secs(*ttl + grace), None)
                    .await
                    .map_err(etcd_err("lease"))?
                    .id();
                (Status::Passing, "registered; awaiting heartbeats", lease)
            }
            (None, Some(_)) => (Status::Critical, "not yet checked", self.session),
            (None, None) => (Status::Passing, "", self.session),
        };
        let stored = Stored {
            registration,
            status,
            output: output.to_owned(),
            owner: self.node.clone(),
            lease,
        };
        // Liveness first: the mirror then never shows a new TTL instance
        // without it, which would read as a lapsed TTL for a moment.
        if let Some(ttl) = stored.registration.ttl {
            self.put_alive(service, id, ttl).await?;
        }
        let rev = self.put(service, id, &stored).await?;
        registry.applied(rev).await
    }

    /// Deletes on etcd; with `created`, only the instance of that life.
    pub(crate) async fn remove(
        &self,
        registry: &Registry,
        service: &str,
        id: &str,
        created: Option<u64>,
    ) -> Result<Option<u64>, RegistryError> {
        let key = self.key(service, id);
        let mut txn = Txn::new();
        if let Some(c) = created {
            let c = i64::try_from(c).unwrap_or(i64::MAX);
            txn = txn.when([Compare::create_revision(key.clone(), CompareOp::Equal, c)]);
        }
        let resp = self
            .client
            .clone()
            .txn(txn.and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(self.alive_key(service, id), None),
            ]))
            .await
            .map_err(etcd_err("delete"))?;
        let deleted = resp
            .op_responses()
            .iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
        if !deleted {
            return Ok(None);
        }
        registry.applied(revision(resp.header())).await.map(Some)
    }

    /// A heartbeat: renews the instance's lease, and writes its status if it changed.
    pub(crate) async fn heartbeat(
        &self,
        registry: &Registry,
        service: &str,
        id: &str,
        status: Status,
        output: String,
    ) -> Result<u64, RegistryError> {
        let not_found = || RegistryError::NotFound {
            service: service.to_owned(),
            id: id.to_owned(),
        };
        let stored = self.stored.lock().get(&pair(service, id)).cloned();
        let Some(Stored {
            registration,
            status: current,
            owner,
            lease,
            ..
        }) = stored
        else {
            return Err(not_found());
        };
        if registration.ttl.is_none() {
            return Err(RegistryError::NoTtl {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        }
        if !self.keep_alive_once(lease).await? {
            // The instance's lease is gone: it lapsed past its grace and left.
            return Err(not_found());
        }
        let mut rev = self.renew_alive(service, id, &registration).await?;
        if current != status {
            let stored = Stored {
                registration,
                status,
                output,
                owner,
                lease,
            };
            rev = rev.max(self.put(service, id, &stored).await?);
        }
        if rev == 0 {
            return Ok(registry.index());
        }
        registry.applied(rev).await
    }

    /// Keeps a TTL instance's liveness key, recreating it after a lapse;
    /// the revision of a write, or 0 when a renewal sufficed.
    async fn renew_alive(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<u64, RegistryError> {
        let Some(ttl) = registration.ttl else {
            return Ok(0);
        };
        let held = self.alive.lock().get(&pair(service, id)).copied();
        if let Some(lease) = held {
            if self.keep_alive_once(lease).await.unwrap_or(false) {
                return Ok(0);
            }
        }
        self.put_alive(service, id, ttl).await
    }

    /// Renews `lease` once; whether it still lives.
    async fn keep_alive_once(&self, lease: i64) -> Result<bool, RegistryError> {
        let (mut keeper, mut answers) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(etcd_err("keep-alive"))?;
        keeper.keep_alive().await.map_err(etcd_err("keep-alive"))?;
        let answer = answers.message().await.map_err(etcd_err("keep-alive"))?;
        Ok(answer.is_some_and(|a| a.ttl() > 0))
    }

    /// Writes a health change found by this node's checks; the watch applies it.
    pub(crate) fn publish_status(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        entry: &Entry,
        status: Status,
        output: String,
    ) {
        let Some(lease) = self.lease_of(service, id) else {
            return;
        };
        let stored = Stored {
            registration: entry.registration.clone(),
            status,
            output,
            owner: self.node.clone(),
            lease,
        };
        let (me, service, id) = (self.clone(), service.to_owned(), id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = me.put(&service, &id, &stored).await {
                tracing::warn!(%service, %id, error = %e, "cannot write a health change to etcd");
            }
        });
    }
}
