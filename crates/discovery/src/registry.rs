//! The embedded registry: instances in memory, registrations mirrored to the
//! store, one supervisor task per instance that keeps its health current, and
//! a change index that watches wait on.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use trellis_store::Namespace;

use crate::config::RegistryConfig;
use crate::error::RegistryError;
use crate::health::{self, Prober};
use crate::model::{
    validate_name, Change, ChangeKind, Filter, Instance, Registration, ServiceSummary, Status,
};
use crate::persist;

/// The service registry. Cheap to clone; clones share one registry.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("index", &self.index())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) config: RegistryConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) index_tx: watch::Sender<u64>,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) backend: Backend,
    /// Serialises writes so the store and memory apply them in one order.
    write_lock: tokio::sync::Mutex<()>,
    pub(crate) prober: Arc<dyn Prober>,
}

/// Where registrations live beyond this process.
pub(crate) enum Backend {
    Memory,
    /// The node's store: survives restarts.
    Store(Namespace),
    /// etcd, shared with other nodes; this registry mirrors it.
    Etcd(Arc<crate::etcd::Etcd>),
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) index: u64,
    pub(crate) services: BTreeMap<String, Service>,
    pub(crate) generation: u64,
    pub(crate) count: usize,
}

/// A service's instances; kept (empty) after its last instance leaves, so a
/// blocking query on it still sees the index of the removal.
#[derive(Default)]
pub(crate) struct Service {
    pub(crate) index: u64,
    pub(crate) instances: BTreeMap<String, Entry>,
}

pub(crate) struct Entry {
    pub(crate) registration: Registration,
    pub(crate) status: Status,
    pub(crate) output: String,
    pub(crate) generation: u64,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    /// When a TTL instance must next heartbeat.
    pub(crate) ttl_deadline: Option<Instant>,
    pub(crate) critical_since: Option<Instant>,
    pub(crate) passes: u32,
    pub(crate) failures: u32,
    /// Wakes the supervisor when a heartbeat moves the TTL deadline.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) supervisor: Option<AbortHandle>,
}

impl Entry {
    /// An entry without a TTL deadline or supervisor yet.
    pub(crate) fn new(
        registration: Registration,
        status: Status,
        output: String,
        generation: u64,
        create_index: u64,
        modify_index: u64,
    ) -> Entry {
        Entry {
            registration,
            status,
            output,
            generation,
            create_index,
            modify_index,
            ttl_deadline: None,
            // An instance whose checks have not run yet is not "failing":
            // the deregister grace starts at its first real failure.
            critical_since: None,
            passes: 0,
            failures: 0,
            wake: Arc::new(tokio::sync::Notify::new()),
            supervisor: None,
        }
    }

    pub(crate) fn view(&self, service: &str, id: &str) -> Instance {
        let r = &self.registration;
        let health = match (&r.ttl, &r.check) {
            (Some(_), _) => "ttl",
            (None, Some(c)) => match c.kind {
                crate::model::CheckKind::Http => "http",
                crate::model::CheckKind::Tcp => "tcp",
                crate::model::CheckKind::Grpc => "grpc",
            },
            (None, None) => "none",
        };
        Instance {
            service: service.to_owned(),
            id: id.to_owned(),
            address: r.address.clone(),
            port: r.port,
            tags: r.tags.clone(),
            meta: r.meta.clone(),
            status: self.status,
            output: self.output.clone(),
            health: health.to_owned(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }

    pub(crate) fn grace(&self, config: &RegistryConfig) -> std::time::Duration {
        self.registration
            .deregister_after
            .unwrap_or(config.deregister_after)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(s) = &self.supervisor {
            s.abort();
        }
    }
}

impl Registry {
    /// A registry held in memory only: registrations do not survive a restart.
    pub fn in_memory(config: RegistryConfig) -> Registry {
        Self::with_backend(config, Backend::Memory, health::network_prober())
    }

    /// A registry persisted in `namespace`, reloading what it held before.
    ///
    /// Reloaded instances are re-checked: actively checked ones start
    /// critical and are probed at once; TTL instances get a fresh TTL window
    /// from now, because nobody could heartbeat while the registry was down,
    /// and expiring them all at start would flap every service on each restart.
    pub async fn open(
        namespace: Namespace,
        config: RegistryConfig,
    ) -> Result<Registry, RegistryError> {
        Self::open_with_prober(namespace, config, health::network_prober()).await
    }

    /// [`Registry::open`] with a custom prober (tests, or checks over another transport).
    pub async fn open_with_prober(
        namespace: Namespace,
        config: RegistryConfig,
        prober: Arc<dyn Prober>,
    ) -> Result<Registry, RegistryError> {
        namespace.migrate("registry", persist::MIGRATIONS).await?;
        let (index, rows) = persist::load(&namespace).await?;
        let registry = Self::with_backend(config, Backend::Store(namespace), prober);
        {
            let mut st = registry.inner.state.lock();
            st.index = index;
            for (service, id, registration) in rows {
                registry.insert_locked(&mut st, service, id, registration, index);
            }
            registry.inner.index_tx.send_replace(st.index);
        }
        Ok(registry)
    }

    /// [`Registry::in_memory`] with a custom prober.
    pub fn in_memory_with_prober(config: RegistryConfig, prober: Arc<dyn Prober>) -> Registry {
        Self::with_backend(config, Backend::Memory, prober)
    }

    pub(crate) fn with_backend(
        config: RegistryConfig,
        backend: Backend,
        prober: Arc<dyn Prober>,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                index_tx: watch::Sender::new(0),
                changes: broadcast::channel(4096).0,
                backend,
                write_lock: tokio::sync::Mutex::new(()),
                prober,
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The current change index: it grows on every registration,
    /// deregistration and health change.
    pub fn index(&self) -> u64 {
        *self.inner.index_tx.borrow()
    }

    /// Registers (or replaces) an instance and returns the index of the change.
    ///
    /// The registration is validated completely first and written to the
    /// store before it becomes visible; on any error nothing has changed.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<u64, RegistryError> {
        validate_name("service", service)?;
        validate_name("id", id)?;
        registration.validate(&self.inner.config)?;
        if let Backend::Etcd(etcd) = &self.inner.backend {
            let replacing = self.instance(service, id).is_some();
            if !replacing && self.count() >= self.inner.config.max_instances {
                return Err(RegistryError::Full(self.inner.config.max_instances));
            }
            return etcd.register(self, service, id, registration).await;
        }
        let _guard = self.inner.write_lock.lock().await;
        let (replacing, next) = {
            let st = self.inner.state.lock();
            let replacing = st
                .services
                .get(service)
                .is_some_and(|s| s.instances.contains_key(id));
            (replacing, st.index + 1)
        };
        if !replacing && self.count() >= self.inner.config.max_instances {
            return Err(RegistryError::Full(self.inner.config.max_instances));
        }
        if let Backend::Store(ns) = &self.inner.backend {
            persist::upsert(ns, service, id, &registration, next).await?;
        }
        let mut st = self.inner.state.lock();
        let index = self.insert_locked(
            &mut st,
            service.to_owned(),
            id.to_owned(),
            registration,
            next,
        );
        Ok(index)
    }

    fn count(&self) -> usize {
        self.inner.state.lock().count
    }

    /// Puts an instance in memory and starts its supervisor.
    fn insert_locked(
        &self,
        st: &mut State,
        service: String,
        id: String,
        registration: Registration,
        at_least: u64,
    ) -> u64 {
        st.index = st.index.max(at_least.saturating_sub(1)) + 1;
        st.generation += 1;
        let (index, generation) = (st.index, st.generation);
        let now = Instant::now();
        let (status, output) = match (&registration.ttl, &registration.check) {
            (Some(_), _) => (
                Status::Passing,
                "registered; awaiting heartbeats".to_owned(),
            ),
            (None, Some(_)) => (Status::Critical, "not yet checked".to_owned()),
            (None, None) => (Status::Passing, String::new()),
        };
        let ttl_deadline = registration.ttl.map(|t| now + t);
        let needs_supervisor = registration.ttl.is_some() || registration.check.is_some();
        let svc = st.services.entry(service.clone()).or_default();
        let old = svc.instances.remove(&id);
        let create_index = old.as_ref().map_or(index, |o| o.create_index);
        let mut entry = Entry::new(
            registration,
            status,
            output,
            generation,
            create_index,
            index,
        );
        entry.ttl_deadline = ttl_deadline;
        if needs_supervisor {
            let task = health::supervise(
                Arc::downgrade(&self.inner),
                service.clone(),
                id.clone(),
                generation,
            );
            entry.supervisor = Some(tokio::spawn(task).abort_handle());
        }
        let view = entry.view(&service, &id);
        if old.is_none() {
            st.count += 1;
        }
        svc.instances.insert(id.clone(), entry);
        svc.index = index;
        drop(old);
        self.inner.publish(Change {
            index,
            kind: ChangeKind::Registered,
            service,
            id,
            instance: Some(view),
        });
        index
    }

    /// Removes an instance; its watchers see it leave at once.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<u64, RegistryError> {
        validate_name("service", service)?;
        validate_name("id", id)?;
        self.inner
            .remove(service, id, None)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            })
    }

    /// [`Registry::heartbeat`] on any backend: on etcd it renews the
    /// instance's lease there, which takes a round trip.
    pub async fn renew(
        &self,
        service: &str,
        id: &str,
        status: Status,
        note: Option<String>,
    ) -> Result<u64, RegistryError> {
        match &self.inner.backend {
            Backend::Etcd(etcd) => {
                etcd.heartbeat(self, service, id, status, heartbeat_output(note))
                    .await
            }
            _ => self.heartbeat(service, id, status, note),
        }
    }

    /// Renews a TTL instance's lease and sets its status (usually `Passing`;
    /// an instance may report itself `Warning` or `Critical`). On an etcd
    /// registry use [`Registry::renew`]; this only renews the local mirror.
    pub fn heartbeat(
        &self,
        service: &str,
        id: &str,
        status: Status,
        note: Option<String>,
    ) -> Result<u64, RegistryError> {
        let mut st = self.inner.state.lock();
        let not_found = || RegistryError::NotFound {
            service: service.to_owned(),
            id: id.to_owned(),
        };
        let entry = st
            .services
            .get_mut(service)
            .and_then(|s| s.instances.get_mut(id))
            .ok_or_else(not_found)?;
        let Some(ttl) = entry.registration.ttl else {
            return Err(RegistryError::NoTtl {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        };
        let now = Instant::now();
        entry.ttl_deadline = Some(now + ttl);
        entry.wake.notify_one();
        let output = heartbeat_output(note);
        let generation = entry.generation;
        Ok(self
            .inner
            .set_status_locked(&mut st, service, id, generation, status, output, now)
            .unwrap_or(0))
    }

    /// The instances of `service` that match `filter`, with the index they reflect.
    pub fn discover(&self, service: &str, filter: &Filter) -> (u64, Vec<Instance>) {
        let st = self.inner.state.lock();
        let instances = st
            .services
            .get(service)
            .map(|s| {
                s.instances
                    .iter()
                    .map(|(id, e)| e.view(service, id))
                    .filter(|i| filter.matches(i))
                    .collect()
            })
            .unwrap_or_default();
        (st.index, instances)
    }

    /// One instance, whatever its health.
    pub fn instance(&self, service: &str, id: &str) -> Option<Instance> {
        let st = self.inner.state.lock();
        st.services
            .get(service)
            .and_then(|s| s.instances.get(id))
            .map(|e| e.view(service, id))
    }

    /// Every service with at least one instance, with health counts.
    pub fn services(&self) -> (u64, Vec<ServiceSummary>) {
        let st = self.inner.state.lock();
        let list = st
            .services
            .iter()
            .filter(|(_, s)| !s.instances.is_empty())
            .map(|(name, s)| {
                let count = |want| s.instances.values().filter(|e| e.status == want).count();
                let mut tags: Vec<String> = s
                    .instances
                    .values()
                    .flat_map(|e| e.registration.tags.iter().cloned())
                    .collect();
                tags.sort();
                tags.dedup();
                ServiceSummary {
                    name: name.clone(),
                    instances: s.instances.len(),
                    passing: count(Status::Passing),
                    warning: count(Status::Warning),
                    critical: count(Status::Critical),
                    tags,
                }
            })
            .collect();
        (st.index, list)
    }

    /// The index of the last change to `service` (0 if it never existed).
    pub fn service_index(&self, service: &str) -> u64 {
        self.inner
            .state
            .lock()
            .services
            .get(service)
            .map_or(0, |s| s.index)
    }

    /// Stops every health supervisor (the registry stays readable).
    pub fn shutdown(&self) {
        let mut st = self.inner.state.lock();
        for svc in st.services.values_mut() {
            for e in svc.instances.values_mut() {
                if let Some(s) = e.supervisor.take() {
                    s.abort();
                }
            }
        }
    }
}

/// What a heartbeat leaves as the instance's check output: its note, bounded.
fn heartbeat_output(note: Option<String>) -> String {
    note.map(|n| n.chars().take(1024).collect())
        .unwrap_or_else(|| "heartbeat received".to_owned())
}

impl Inner {
    pub(crate) fn publish(&self, change: Change) {
        self.index_tx.send_replace(change.index);
        // No subscriber is fine: watches are optional.
        let _ = self.changes.send(change);
    }

    /// Applies a health result to the instance of `generation`; returns the new index if the status changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_status_locked(
        &self,
        st: &mut State,
        service: &str,
        id: &str,
        generation: u64,
        status: Status,
        output: String,
        now: Instant,
    ) -> Option<u64> {
        let next = st.index + 1;
        let svc = st.services.get_mut(service)?;
        let entry = svc
            .instances
            .get_mut(id)
            .filter(|e| e.generation == generation)?;
        entry.output = output;
        if status == Status::Critical {
            entry.critical_since.get_or_insert(now);
        } else {
            entry.critical_since = None;
        }
        if entry.status == status {
            return None;
        }
        if let Backend::Etcd(etcd) = &self.backend {
            // Shared: written to etcd, and applied here when the watch shows it.
            etcd.publish_status(service, id, entry, status, entry.output.clone());
            return None;
        }
        tracing::info!(
            service,
            id,
            from = entry.status.as_str(),
            to = status.as_str(),
            "instance health changed"
        );
        entry.status = status;
        entry.modify_index = next;
        svc.index = next;
        let view = entry.view(service, id);
        st.index = next;
        self.publish(Change {
            index: next,
            kind: ChangeKind::Health,
            service: service.to_owned(),
            id: id.to_owned(),
            instance: Some(view),
        });
        Some(next)
    }

    /// Removes an instance (only generation `only`, when given); `None` when absent.
    pub(crate) async fn remove(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        only: Option<u64>,
    ) -> Result<Option<u64>, RegistryError> {
        if let Backend::Etcd(etcd) = &self.backend {
            let created = match only {
                None => None,
                Some(g) => {
                    let st = self.state.lock();
                    let e = st.services.get(service).and_then(|s| s.instances.get(id));
                    match e.filter(|e| e.generation == g) {
                        Some(e) => Some(e.create_index),
                        None => return Ok(None),
                    }
                }
            };
            let registry = Registry {
                inner: self.clone(),
            };
            return etcd.remove(&registry, service, id, created).await;
        }
        let _guard = self.write_lock.lock().await;
        let next = {
            let st = self.state.lock();
            let present = st
                .services
                .get(service)
                .and_then(|s| s.instances.get(id))
                .is_some_and(|e| only.is_none_or(|g| e.generation == g));
            if !present {
                return Ok(None);
            }
            st.index + 1
        };
        if let Backend::Store(ns) = &self.backend {
            persist::delete(ns, service, id, next).await?;
        }
        let mut st = self.state.lock();
        st.index = next;
        let removed = st.services.get_mut(service).and_then(|svc| {
            svc.index = next;
            svc.instances.remove(id)
        });
        if removed.is_some() {
            st.count = st.count.saturating_sub(1);
        }
        drop(st);
        drop(removed);
        self.publish(Change {
            index: next,
            kind: ChangeKind::Deregistered,
            service: service.to_owned(),
            id: id.to_owned(),
            instance: None,
        });
        Ok(Some(next))
    }

    pub(crate) fn weak(self: &Arc<Self>) -> Weak<Self> {
        Arc::downgrade(self)
    }
}
