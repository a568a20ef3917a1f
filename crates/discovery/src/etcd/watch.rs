//! The node's two long-running etcd tasks: keeping its session lease
//! alive, and following the prefix into the mirror.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};

use super::{Etcd, Kind};
use crate::registry::{Inner, Registry};

/// Keeps the node's session lease alive while the registry lives.
pub(super) async fn keep_session(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    registry: Weak<Inner>,
) {
    let every = ttl / 3;
    loop {
        if registry.upgrade().is_none() {
            let _ = client.lease_revoke(lease).await;
            return;
        }
        match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut answers)) => loop {
                if registry.upgrade().is_none() {
                    let _ = client.lease_revoke(lease).await;
                    return;
                }
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match answers.message().await {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    _ => {
                        tracing::error!("the registry's etcd session lease expired; instances this node checks have left etcd");
                        break;
                    }
                }
                tokio::time::sleep(every).await;
            },
            Err(e) => tracing::warn!(error = %e, "cannot renew the etcd session lease"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Applies every change under the prefix to the mirror, from revision
/// `from`; after a broken or compacted watch, re-reads the prefix first.
pub(super) async fn follow(etcd: Arc<Etcd>, registry: Weak<Inner>, mut from: i64) {
    let prefix = format!("{}/", etcd.prefix);
    loop {
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let watch = etcd
            .client
            .clone()
            .watch(prefix.clone(), Some(options))
            .await;
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch etcd; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // No strong handle across the wait, so a dropped registry ends this task.
            let msg = stream.message().await;
            let Some(inner) = registry.upgrade() else {
                return;
            };
            let r = Registry { inner };
            match msg {
                Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => {
                    tracing::warn!(
                        compacted = resp.compact_revision(),
                        "etcd watch cancelled; re-reading the registry"
                    );
                    break;
                }
                Ok(Some(resp)) => {
                    // Liveness before registrations, so one response that
                    // holds both never shows the instance critical.
                    let (alive, rest): (Vec<_>, Vec<_>) = resp.events().iter().partition(|ev| {
                        ev.kv()
                            .and_then(|kv| etcd.parse_key(kv.key_str().ok()?))
                            .is_some_and(|(kind, _, _)| kind == Kind::Alive)
                    });
                    for ev in alive.into_iter().chain(rest) {
                        let Some(kv) = ev.kv() else { continue };
                        let rev = kv.mod_revision();
                        from = from.max(rev + 1);
                        match ev.event_type() {
                            EventType::Put => {
                                r.apply_put(&etcd, kv);
                            }
                            EventType::Delete => {
                                let Ok(key) = kv.key_str() else { continue };
                                if let Some((kind, service, id)) = etcd.parse_key(key) {
                                    r.apply_delete(
                                        &etcd,
                                        kind,
                                        service,
                                        id,
                                        u64::try_from(rev).unwrap_or(0),
                                    );
                                }
                            }
                        }
                    }
                    r.inner.index_tx.send_replace(r.inner.state.lock().index);
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("etcd watch ended; re-reading the registry");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        match (Registry { inner }).resync(&etcd).await {
            Ok(next) => from = next,
            Err(e) => tracing::warn!(error = %e, "cannot re-read the registry from etcd"),
        }
    }
}
