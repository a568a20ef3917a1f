//! The etcd backend: several Trellis nodes share one registry.
//!
//! etcd is the source of truth; each node's [`Registry`] is a mirror of the
//! prefix, kept by one etcd watch, and its change index is etcd's revision,
//! so blocking-query indexes mean the same on every node. Writes go to etcd
//! and return once the node's own mirror has applied them (read your writes).
//!
//! Liveness is etcd leases:
//! - a TTL instance has two keys: `instances/…` on a lease of its TTL plus
//!   its deregister grace, and `alive/…` on a lease of its TTL. A heartbeat,
//!   on any node, renews both (recreating `alive/…` after a lapse). While
//!   `alive/…` is missing the instance is critical; when the first lease
//!   runs out etcd deletes it — the embedded registry's semantics;
//! - an actively checked (or static) instance lives on the session lease of
//!   the node that registered it. That node runs its checks and writes each
//!   health change; if the node dies, its instances leave with its session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue, PutOptions};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::model::{Change, ChangeKind, Registration, Status};
use crate::registry::{Entry, Registry, State};

mod watch;
mod writes;

use watch::{follow, keep_session};

/// How to reach etcd, from `[registry.etcd]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `["http://127.0.0.1:2379"]`; empty keeps the embedded store.
    pub endpoints: Vec<String>,
    /// Key prefix under which the registry lives.
    pub prefix: String,
    /// The node's session lease: instances it checks leave this long after it dies.
    #[serde(with = "crate::duration")]
    pub session_ttl: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: "/trellis/registry".to_owned(),
            session_ttl: Duration::from_secs(10),
        }
    }
}

/// One instance as stored in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    registration: Registration,
    status: Status,
    #[serde(default)]
    output: String,
    /// The node that registered it (and runs its active checks).
    owner: String,
    lease: i64,
}

/// A node's connection to the shared registry.
pub(crate) struct Etcd {
    client: Client,
    prefix: String,
    node: String,
    session: i64,
    /// Each mirrored instance as stored (its lease, reported status).
    stored: parking_lot::Mutex<HashMap<(String, String), Stored>>,
    /// The liveness lease of each TTL instance whose TTL has not lapsed.
    alive: parking_lot::Mutex<HashMap<(String, String), i64>>,
}

/// Which of an instance's two keys a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `instances/<service>/<id>`: the registration, on a lease that ends
    /// its life (the node's session, or TTL + deregister grace).
    Instance,
    /// `alive/<service>/<id>`: a TTL instance's liveness, on a lease of its
    /// TTL; when it lapses the instance is critical until a heartbeat.
    Alive,
}

fn pair(service: &str, id: &str) -> (String, String) {
    (service.to_owned(), id.to_owned())
}

fn etcd_err(what: &str) -> impl Fn(etcd_client::Error) -> RegistryError + '_ {
    move |e| RegistryError::Backend(format!("etcd {what}: {e}"))
}

/// Longest a write waits for the node's own mirror to show it.
const APPLY_WAIT: Duration = Duration::from_secs(5);

impl Etcd {
    fn key(&self, service: &str, id: &str) -> String {
        format!("{}/instances/{service}/{id}", self.prefix)
    }

    fn alive_key(&self, service: &str, id: &str) -> String {
        format!("{}/alive/{service}/{id}", self.prefix)
    }

    fn parse_key<'k>(&self, key: &'k str) -> Option<(Kind, &'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (kind, rest) = match (
            rest.strip_prefix("/instances/"),
            rest.strip_prefix("/alive/"),
        ) {
            (Some(r), _) => (Kind::Instance, r),
            (None, Some(r)) => (Kind::Alive, r),
            (None, None) => return None,
        };
        let (service, id) = rest.split_once('/')?;
        Some((kind, service, id))
    }

    fn lease_of(&self, service: &str, id: &str) -> Option<i64> {
        self.stored.lock().get(&pair(service, id)).map(|s| s.lease)
    }

    /// `stored` as the registry serves it: a TTL instance whose liveness
    /// key has lapsed is critical, whatever it last reported.
    fn effective(&self, service: &str, id: &str, mut stored: Stored) -> Stored {
        let lapsed = stored.registration.ttl.is_some()
            && !self.alive.lock().contains_key(&pair(service, id));
        if lapsed {
            stored.status = Status::Critical;
            stored.output = "TTL expired without a heartbeat".to_owned();
        }
        stored
    }

    /// A fresh liveness key for a TTL instance, on a lease of its TTL.
    async fn put_alive(
        &self,
        service: &str,
        id: &str,
        ttl: Duration,
    ) -> Result<u64, RegistryError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(lease_secs(ttl), None)
            .await
            .map_err(etcd_err("lease"))?
            .id();
        let options = PutOptions::new().with_lease(lease);
        let resp = client
            .put(self.alive_key(service, id), Vec::new(), Some(options))
            .await
            .map_err(etcd_err("put"))?;
        Ok(revision(resp.header()))
    }

    async fn put(&self, service: &str, id: &str, stored: &Stored) -> Result<u64, RegistryError> {
        let value = serde_json::to_vec(stored).map_err(|e| RegistryError::Corrupt {
            service: service.to_owned(),
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let options = PutOptions::new().with_lease(stored.lease);
        let resp = self
            .client
            .clone()
            .put(self.key(service, id), value, Some(options))
            .await
            .map_err(etcd_err("put"))?;
        Ok(revision(resp.header()))
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

/// Whole seconds for a lease, rounded up: etcd leases count seconds.
fn lease_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(i64::MAX)
        .max(1)
}

impl Registry {
    /// A registry shared with every node on the same etcd `prefix`; see the
    /// module docs of `etcd` for what differs from the embedded one.
    pub async fn open_etcd(
        config: crate::RegistryConfig,
        etcd: &EtcdConfig,
    ) -> Result<Registry, RegistryError> {
        let mut client = Client::connect(&etcd.endpoints, None)
            .await
            .map_err(etcd_err("connect"))?;
        let session = client
            .lease_grant(lease_secs(etcd.session_ttl), None)
            .await
            .map_err(etcd_err("session lease"))?
            .id();
        let backend = Arc::new(Etcd {
            client: client.clone(),
            prefix: etcd.prefix.trim_end_matches('/').to_owned(),
            node: format!("{:016x}", fastrand_u64()),
            session,
            stored: parking_lot::Mutex::new(HashMap::new()),
            alive: parking_lot::Mutex::new(HashMap::new()),
        });
        let registry = Registry::with_backend(
            config,
            crate::registry::Backend::Etcd(backend.clone()),
            crate::health::network_prober(),
        );
        let start = registry.resync(&backend).await?;
        tokio::spawn(keep_session(
            client.clone(),
            session,
            etcd.session_ttl,
            registry.inner.weak(),
        ));
        tokio::spawn(follow(backend, registry.inner.weak(), start));
        Ok(registry)
    }

    /// Reads the whole prefix and makes the mirror equal to it; returns the
    /// revision to watch from.
    async fn resync(&self, etcd: &Etcd) -> Result<i64, RegistryError> {
        let prefix = format!("{}/", etcd.prefix);
        let resp = etcd
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read"))?;
        let rev = revision(resp.header());
        // Liveness first, so no instance is shown critical for a moment.
        let alive: HashMap<(String, String), i64> = resp
            .kvs()
            .iter()
            .filter_map(|kv| match etcd.parse_key(kv.key_str().ok()?)? {
                (Kind::Alive, service, id) => Some((pair(service, id), kv.lease())),
                _ => None,
            })
            .collect();
        *etcd.alive.lock() = alive;
        let mut seen = std::collections::HashSet::new();
        for kv in resp.kvs() {
            if let Some((service, id)) = self.apply_put(etcd, kv) {
                seen.insert((service, id));
            }
        }
        // Whatever the mirror holds that etcd no longer does left while we were not watching.
        let gone: Vec<(String, String)> = {
            let st = self.inner.state.lock();
            st.services
                .iter()
                .flat_map(|(s, svc)| svc.instances.keys().map(move |i| (s.clone(), i.clone())))
                .filter(|k| !seen.contains(k))
                .collect()
        };
        for (service, id) in gone {
            self.apply_delete(etcd, Kind::Instance, &service, &id, rev);
        }
        let mut st = self.inner.state.lock();
        st.index = st.index.max(rev);
        self.inner.index_tx.send_replace(st.index);
        Ok(i64::try_from(rev).unwrap_or(i64::MAX) + 1)
    }

    /// Mirrors one put; returns an instance's key parts when it was readable.
    fn apply_put(&self, etcd: &Etcd, kv: &KeyValue) -> Option<(String, String)> {
        let key = kv.key_str().ok()?;
        let rev = u64::try_from(kv.mod_revision()).unwrap_or(0);
        let (service, id) = match etcd.parse_key(key)? {
            (Kind::Instance, service, id) => (service, id),
            (Kind::Alive, service, id) => {
                etcd.alive.lock().insert(pair(service, id), kv.lease());
                self.refresh(etcd, service, id, rev);
                return None;
            }
        };
        let stored: Stored = match serde_json::from_slice(kv.value()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(key, error = %e, "skipping an unreadable registration in etcd");
                return None;
            }
        };
        let (service, id) = (service.to_owned(), id.to_owned());
        etcd.stored
            .lock()
            .insert(pair(&service, &id), stored.clone());
        let stored = etcd.effective(&service, &id, stored);
        let created = u64::try_from(kv.create_revision()).unwrap_or(0);
        let mut st = self.inner.state.lock();
        self.mirror_locked(&mut st, etcd, &service, &id, stored, created, rev);
        Some((service, id))
    }

    /// Re-derives an instance's status after its liveness changed.
    fn refresh(&self, etcd: &Etcd, service: &str, id: &str, rev: u64) {
        let Some(stored) = etcd.stored.lock().get(&pair(service, id)).cloned() else {
            return;
        };
        let stored = etcd.effective(service, id, stored);
        let mut st = self.inner.state.lock();
        let Some(e) = st.services.get(service).and_then(|s| s.instances.get(id)) else {
            return;
        };
        if e.status == stored.status {
            return;
        }
        let created = e.create_index;
        self.mirror_locked(&mut st, etcd, service, id, stored, created, rev);
    }

    #[allow(clippy::too_many_arguments)]
    fn mirror_locked(
        &self,
        st: &mut State,
        etcd: &Etcd,
        service: &str,
        id: &str,
        stored: Stored,
        created: u64,
        rev: u64,
    ) {
        st.index = st.index.max(rev);
        st.generation += 1;
        let generation = st.generation;
        let svc = st.services.entry(service.to_owned()).or_default();
        svc.index = svc.index.max(rev);
        let same_life = svc
            .instances
            .get(id)
            .is_some_and(|e| e.create_index == created && e.registration == stored.registration);
        let kind = if same_life {
            ChangeKind::Health
        } else {
            ChangeKind::Registered
        };
        let view = if same_life {
            let Some(e) = svc.instances.get_mut(id) else {
                return;
            };
            e.status = stored.status;
            e.output = stored.output;
            e.modify_index = rev;
            e.view(service, id)
        } else {
            let owned = stored.owner == etcd.node;
            let check = stored.registration.check.is_some();
            let mut entry = Entry::new(
                stored.registration,
                stored.status,
                stored.output,
                generation,
                created,
                rev,
            );
            if owned && check {
                let task = crate::health::supervise(
                    self.inner.weak(),
                    service.to_owned(),
                    id.to_owned(),
                    generation,
                );
                entry.supervisor = Some(tokio::spawn(task).abort_handle());
            }
            let view = entry.view(service, id);
            if svc.instances.insert(id.to_owned(), entry).is_none() {
                st.count += 1;
            }
            view
        };
        self.inner.publish(Change {
            index: st.index,
            kind,
            service: service.to_owned(),
            id: id.to_owned(),
            instance: Some(view),
        });
    }

    fn apply_delete(&self, etcd: &Etcd, kind: Kind, service: &str, id: &str, rev: u64) {
        if kind == Kind::Alive {
            etcd.alive.lock().remove(&pair(service, id));
            self.refresh(etcd, service, id, rev);
            return;
        }
        etcd.stored.lock().remove(&pair(service, id));
        let mut st = self.inner.state.lock();
        st.index = st.index.max(rev);
        let index = st.index;
        let removed = st.services.get_mut(service).and_then(|svc| {
            svc.index = svc.index.max(rev);
            svc.instances.remove(id)
        });
        if removed.is_none() {
            self.inner.index_tx.send_replace(index);
            return;
        }
        st.count = st.count.saturating_sub(1);
        drop(st);
        drop(removed);
        self.inner.publish(Change {
            index,
            kind: ChangeKind::Deregistered,
            service: service.to_owned(),
            id: id.to_owned(),
            instance: None,
        });
    }

    /// Waits until the mirror has applied revision `rev`.
    async fn applied(&self, rev: u64) -> Result<u64, RegistryError> {
        let mut rx = self.inner.index_tx.subscribe();
        let applied = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|i| *i >= rev))
            .await
            .is_ok_and(|r| r.is_ok());
        match applied {
            true => Ok(rev),
            false => Err(RegistryError::Backend(format!(
                "etcd accepted the write (revision {rev}) but this node's watch has not shown it within {APPLY_WAIT:?}"
            ))),
        }
    }
}

/// A random node id, without a dependency for one number.
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
