//! The etcd backend against a real etcd (Debian's etcd-server) that each
//! test starts on free ports: two registries on one etcd are one registry.
//! Lease expiry is etcd's, on real time, so these tests wait for real.

use std::time::{Duration, Instant};

use trellis_discovery::testing::TestEtcd;
use trellis_discovery::{EtcdConfig, Filter, Registration, Registry, RegistryConfig, Status};

fn free_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

async fn node(etcd: &TestEtcd) -> Registry {
    let config = EtcdConfig {
        endpoints: vec![etcd.url().to_owned()],
        session_ttl: Duration::from_secs(2),
        ..EtcdConfig::default()
    };
    let registry = RegistryConfig {
        min_check_interval: Duration::from_millis(100),
        ..RegistryConfig::default()
    };
    Registry::open_etcd(registry, &config).await.unwrap()
}

fn instance(port: u16) -> Registration {
    Registration {
        address: "127.0.0.1".into(),
        port,
        tags: vec!["v1".into()],
        meta: Default::default(),
        ttl: None,
        check: None,
        deregister_after: None,
    }
}

async fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn served(r: &Registry, service: &str) -> Vec<String> {
    r.discover(service, &Filter::default())
        .1
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_registry_with_one_index() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let (a, b) = (node(&etcd).await, node(&etcd).await);

    // A blocking query on b wakes when a registers.
    let since = b.index();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait_for_change(Some("orders"), since, Duration::from_secs(10))
                .await
        })
    };
    let index = a.register("orders", "o-1", instance(8081)).await.unwrap();
    assert_eq!(
        served(&a, "orders"),
        ["o-1"],
        "a reads its own write at once"
    );
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        woke, index,
        "both nodes speak of the change by etcd's revision"
    );
    assert_eq!(served(&b, "orders"), ["o-1"]);
    assert_eq!(b.instance("orders", "o-1").unwrap().tags, ["v1"]);

    // Deregistered on b: gone on a.
    b.deregister("orders", "o-1").await.unwrap();
    eventually("a sees the deregistration", Duration::from_secs(5), || {
        served(&a, "orders").is_empty()
    })
    .await;
    assert!(matches!(
        b.deregister("orders", "o-1").await,
        Err(trellis_discovery::RegistryError::NotFound { .. })
    ));

    // A third node started later reads what is there.
    a.register("billing", "b-1", instance(9001)).await.unwrap();
    let c = node(&etcd).await;
    assert_eq!(served(&c, "billing"), ["b-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_ttl_makes_the_instance_critical_then_removes_it_after_its_grace() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let (a, b) = (node(&etcd).await, node(&etcd).await);
    let mut r = instance(8081);
    r.ttl = Some(Duration::from_secs(2));
    r.deregister_after = Some(Duration::from_secs(3));
    a.register("orders", "o-1", r).await.unwrap();
    eventually("b sees it", Duration::from_secs(5), || {
        served(&b, "orders").len() == 1
    })
    .await;
    let status = |r: &Registry| r.instance("orders", "o-1").map(|i| i.status);

    // Heartbeats through b keep it past its TTL, and carry its status to a.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        b.renew("orders", "o-1", Status::Passing, None)
            .await
            .unwrap();
    }
    assert_eq!(
        served(&a, "orders"),
        ["o-1"],
        "alive after 2.8s of a 2s TTL"
    );
    b.renew("orders", "o-1", Status::Warning, Some("slow".into()))
        .await
        .unwrap();
    eventually("a sees the warning", Duration::from_secs(5), || {
        status(&a) == Some(Status::Warning)
    })
    .await;

    // No heartbeat for a TTL: critical on both nodes, no longer served, still listed.
    let stopped = Instant::now();
    eventually("the TTL lapses on a", Duration::from_secs(6), || {
        status(&a) == Some(Status::Critical)
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "lapsed early: {:?}",
        stopped.elapsed()
    );
    eventually("and on b", Duration::from_secs(2), || {
        status(&b) == Some(Status::Critical)
    })
    .await;
    assert!(served(&a, "orders").is_empty());

    // A heartbeat within the grace brings it back.
    b.renew("orders", "o-1", Status::Passing, None)
        .await
        .unwrap();
    eventually("a serves it again", Duration::from_secs(5), || {
        served(&a, "orders") == ["o-1"]
    })
    .await;

    // Silent for TTL + grace: removed everywhere, and a late heartbeat is refused.
    let stopped = Instant::now();
    eventually("removed on a", Duration::from_secs(10), || {
        status(&a).is_none()
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(4),
        "removed before its grace: {:?}",
        stopped.elapsed()
    );
    eventually("and on b", Duration::from_secs(2), || status(&b).is_none()).await;
    let late = b.renew("orders", "o-1", Status::Passing, None).await;
    assert!(
        matches!(late, Err(trellis_discovery::RegistryError::NotFound { .. })),
        "{late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_a_node_registered_leave_with_its_session() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let (a, b) = (node(&etcd).await, node(&etcd).await);
    a.register("orders", "static-1", instance(8081))
        .await
        .unwrap();
    eventually("b sees it", Duration::from_secs(5), || {
        served(&b, "orders").len() == 1
    })
    .await;
    drop(a);
    // a's session lease (2s) is revoked or lapses; its instance goes with it.
    eventually("the instance leaves with a", Duration::from_secs(8), || {
        served(&b, "orders").is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_checks_and_every_node_sees_the_health() {
    let Some(etcd) = TestEtcd::start() else {
        return;
    };
    let (a, b) = (node(&etcd).await, node(&etcd).await);
    // Something that accepts TCP connections, then stops.
    let listener = free_listener();
    let port = listener.local_addr().unwrap().port();
    let mut r = instance(port);
    r.check = Some(
        serde_json::from_value(serde_json::json!({
            "kind": "tcp", "interval": "200ms", "timeout": "150ms", "failure_threshold": 1
        }))
        .unwrap(),
    );
    a.register("orders", "o-1", r).await.unwrap();
    assert_eq!(
        a.instance("orders", "o-1").unwrap().status,
        Status::Critical,
        "unchecked yet"
    );
    eventually("b sees it pass", Duration::from_secs(5), || {
        b.instance("orders", "o-1")
            .is_some_and(|i| i.status == Status::Passing)
    })
    .await;
    drop(listener);
    eventually("b sees it fail", Duration::from_secs(5), || {
        b.instance("orders", "o-1")
            .is_some_and(|i| i.status == Status::Critical)
    })
    .await;
    assert!(served(&b, "orders").is_empty());
}
