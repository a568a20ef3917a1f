//! Registrations survive a restart on the store and are re-checked there.

use std::time::Duration;

use tokio::time::advance;
use trellis_discovery::*;
use trellis_store::{Store, StoreConfig};

async fn open(dir: &std::path::Path) -> (Store, Registry) {
    let store = Store::open(StoreConfig::in_data_dir(dir)).await.unwrap();
    let ns = store.system_namespace("registry").await.unwrap();
    let registry = Registry::open(ns, RegistryConfig::default()).await.unwrap();
    (store, registry)
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn restart_keeps_registrations_and_gives_ttl_instances_a_fresh_window() {
    let dir = tempfile::tempdir().unwrap();
    let (store, r) = open(dir.path()).await;
    r.register(
        "api",
        "static",
        Registration::new("10.0.0.2", 80).with_meta("zone", "eu"),
    )
    .await
    .unwrap();
    r.register("api", "gone", Registration::new("10.0.0.3", 80))
        .await
        .unwrap();
    r.deregister("api", "gone").await.unwrap();
    // Registered last: the paused clock jumps ahead while the test waits on
    // the store's writer thread, which would expire a TTL already running.
    r.register(
        "api",
        "ttl",
        Registration::new("10.0.0.1", 80)
            .with_ttl(Duration::from_secs(10))
            .with_tag("v1"),
    )
    .await
    .unwrap();
    let before = r.index();
    r.shutdown();
    drop(r);
    store.close();

    let (store, r) = open(dir.path()).await;
    assert!(r.index() >= before, "the index does not go back");
    let ids: Vec<_> = r
        .discover("api", &Filter::default())
        .1
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["static", "ttl"], "deregistered instances stay gone");
    let ttl = r.instance("api", "ttl").unwrap();
    assert_eq!(
        (ttl.status, ttl.tags.as_slice()),
        (Status::Passing, ["v1".to_owned()].as_slice())
    );
    assert_eq!(r.instance("api", "static").unwrap().meta["zone"], "eu");

    // The reloaded TTL instance is held to its TTL from the restart on.
    settle().await;
    advance(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(r.instance("api", "ttl").unwrap().status, Status::Critical);
    let next = r
        .register("api", "new", Registration::new("10.0.0.4", 80))
        .await
        .unwrap();
    assert!(next > before);
    r.shutdown();
    store.close();
}

#[tokio::test]
async fn reloaded_checked_instances_are_rechecked_before_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let check = HealthCheck {
        kind: CheckKind::Tcp,
        grpc_service: None,
        path: None,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 1,
    };
    let (store, r) = open(dir.path()).await;
    r.register(
        "db",
        "a",
        Registration::new("127.0.0.1", port).with_check(check),
    )
    .await
    .unwrap();
    r.shutdown();
    store.close();

    let (store, r) = open(dir.path()).await;
    let mut changes = Box::pin(r.changes());
    let i = r.instance("db", "a").unwrap();
    assert_eq!(
        (i.status, i.health.as_str()),
        (Status::Critical, "tcp"),
        "not served until re-checked"
    );
    use futures::StreamExt;
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.kind, ChangeKind::Health);
    assert_eq!(
        r.discover("db", &Filter::default()).1.len(),
        1,
        "the probe passed"
    );
    drop(listener);
    r.shutdown();
    store.close();
}
