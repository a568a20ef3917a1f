//! The embedded registry's behaviour on tokio's paused clock: TTLs, active
//! checks with thresholds, deregister grace, validation, watches and the feed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::time::advance;
use trellis_discovery::*;

fn config() -> RegistryConfig {
    RegistryConfig {
        deregister_after: Duration::from_secs(30),
        ..RegistryConfig::default()
    }
}

/// Lets spawned supervisors run to their next timer.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn discovery_serves_healthy_instances_filtered_by_tags_and_metadata() {
    let r = Registry::in_memory(config());
    r.register(
        "orders",
        "a",
        Registration::new("10.0.0.1", 80)
            .with_tag("v2")
            .with_meta("zone", "eu"),
    )
    .await
    .unwrap();
    r.register(
        "orders",
        "b",
        Registration::new("10.0.0.2", 80)
            .with_tag("v1")
            .with_meta("zone", "us"),
    )
    .await
    .unwrap();
    r.register("billing", "x", Registration::new("billing.internal", 90))
        .await
        .unwrap();

    let (_, all) = r.discover("orders", &Filter::default());
    assert_eq!(
        all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let v2 = Filter {
        tags: vec!["v2".into()],
        ..Filter::default()
    };
    assert_eq!(r.discover("orders", &v2).1.len(), 1);
    let us = Filter {
        meta: [("zone".to_owned(), "us".to_owned())].into(),
        ..Filter::default()
    };
    let found = r.discover("orders", &us).1;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].authority(), "10.0.0.2:80");
    assert!(r.discover("nobody", &Filter::default()).1.is_empty());

    let (_, services) = r.services();
    assert_eq!(services.len(), 2);
    let orders = services.iter().find(|s| s.name == "orders").unwrap();
    assert_eq!(
        (orders.instances, orders.passing, orders.critical),
        (2, 2, 0)
    );
    assert_eq!(orders.tags, ["v1", "v2"]);
}

#[tokio::test(start_paused = true)]
async fn lapsed_ttl_stops_serving_heartbeat_restores_and_grace_removes() {
    let r = Registry::in_memory(config());
    r.register(
        "api",
        "a",
        Registration::new("127.0.0.1", 8080).with_ttl(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    settle().await;
    advance(Duration::from_secs(9)).await;
    r.heartbeat("api", "a", Status::Passing, None).unwrap();
    advance(Duration::from_secs(9)).await;
    settle().await;
    assert_eq!(
        r.discover("api", &Filter::default()).1.len(),
        1,
        "renewed TTL still running"
    );

    advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(
        r.discover("api", &Filter::default()).1.is_empty(),
        "TTL lapsed: not served"
    );
    let all = Filter {
        include_unhealthy: true,
        ..Filter::default()
    };
    let listed = r.discover("api", &all).1;
    assert_eq!(listed[0].status, Status::Critical);
    assert!(listed[0].output.contains("TTL"), "{}", listed[0].output);

    // A late heartbeat brings it back before the grace ends.
    r.heartbeat("api", "a", Status::Passing, None).unwrap();
    assert_eq!(r.discover("api", &Filter::default()).1.len(), 1);

    // Silent again: critical after the TTL, removed 30 s (the grace) later.
    advance(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(r.instance("api", "a").unwrap().status, Status::Critical);
    advance(Duration::from_secs(29)).await;
    settle().await;
    assert!(r.instance("api", "a").is_some(), "still within the grace");
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(r.instance("api", "a").is_none(), "removed after the grace");
    assert!(r.services().1.is_empty());
}

#[tokio::test(start_paused = true)]
async fn instance_can_report_itself_warning_and_stays_served() {
    let r = Registry::in_memory(config());
    r.register(
        "api",
        "a",
        Registration::new("127.0.0.1", 1).with_ttl(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    r.heartbeat("api", "a", Status::Warning, Some("slow disk".into()))
        .unwrap();
    let i = r.discover("api", &Filter::default()).1.remove(0);
    assert_eq!(
        (i.status, i.output.as_str()),
        (Status::Warning, "slow disk")
    );
    r.heartbeat("api", "a", Status::Critical, None).unwrap();
    assert!(r.discover("api", &Filter::default()).1.is_empty());
}

#[tokio::test(start_paused = true)]
async fn heartbeat_errors_are_typed() {
    let r = Registry::in_memory(config());
    r.register("api", "static", Registration::new("127.0.0.1", 1))
        .await
        .unwrap();
    assert!(matches!(
        r.heartbeat("api", "static", Status::Passing, None),
        Err(RegistryError::NoTtl { .. })
    ));
    assert!(matches!(
        r.heartbeat("api", "ghost", Status::Passing, None),
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        r.deregister("api", "ghost").await,
        Err(RegistryError::NotFound { .. })
    ));
}

/// A prober that answers from a script, then repeats its last answer.
struct Scripted {
    answers: Mutex<VecDeque<Status>>,
    calls: Mutex<u32>,
}

impl Scripted {
    fn new(answers: &[Status]) -> Arc<Self> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.iter().copied().collect()),
            calls: Mutex::new(0),
        })
    }
    fn set(&self, status: Status) {
        let mut a = self.answers.lock();
        a.clear();
        a.push_back(status);
    }
}

impl Prober for Scripted {
    fn probe<'a>(&'a self, _: &'a str, _: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        *self.calls.lock() += 1;
        let mut a = self.answers.lock();
        let status = if a.len() > 1 {
            a.pop_front()
        } else {
            a.front().copied()
        }
        .unwrap_or(Status::Critical);
        Box::pin(async move {
            ProbeResult {
                status,
                output: format!("scripted {status:?}"),
            }
        })
    }
}

fn http_check() -> HealthCheck {
    HealthCheck {
        kind: CheckKind::Http,
        grpc_service: None,
        path: Some("/healthz".into()),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        success_threshold: 2,
        failure_threshold: 3,
    }
}

#[tokio::test(start_paused = true)]
async fn active_checks_apply_thresholds_and_remove_after_grace() {
    let prober = Scripted::new(&[Status::Passing]);
    let r = Registry::in_memory_with_prober(config(), prober.clone());
    r.register(
        "api",
        "a",
        Registration::new("127.0.0.1", 9).with_check(http_check()),
    )
    .await
    .unwrap();
    assert!(
        r.discover("api", &Filter::default()).1.is_empty(),
        "unchecked instances are not served"
    );
    settle().await;
    assert!(
        r.discover("api", &Filter::default()).1.is_empty(),
        "one pass of two needed"
    );
    advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        r.discover("api", &Filter::default()).1.len(),
        1,
        "two passes: served"
    );

    prober.set(Status::Critical);
    for _ in 0..2 {
        advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(
            r.instance("api", "a").unwrap().status,
            Status::Passing,
            "below failure threshold"
        );
    }
    advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        r.instance("api", "a").unwrap().status,
        Status::Critical,
        "third failure"
    );

    // Back for one probe only: still critical (needs two), then down again.
    prober.set(Status::Passing);
    advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(r.instance("api", "a").unwrap().status, Status::Critical);
    prober.set(Status::Critical);
    for _ in 0..6 {
        advance(Duration::from_secs(5)).await;
        settle().await;
    }
    assert!(
        r.instance("api", "a").is_none(),
        "critical for the 30 s grace: removed"
    );
    let calls = *prober.calls.lock();
    advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(*prober.calls.lock(), calls, "no probes after removal");
}

#[tokio::test(start_paused = true)]
async fn invalid_registrations_name_the_field_and_write_nothing() {
    let r = Registry::in_memory(config());
    let ok = || Registration::new("10.1.2.3", 80);
    let mut big_meta = ok();
    for i in 0..65 {
        big_meta.meta.insert(format!("k{i}"), "v".into());
    }
    let long_id = "x".repeat(129);
    let cases: Vec<(&str, &str, Registration, &str)> = vec![
        ("svc", "a", Registration::new("http://x", 80), "address"),
        ("svc", "a", Registration::new("10.0.0.1:80", 80), "address"),
        ("svc", "a", Registration::new("", 80), "address"),
        ("svc", "a", Registration::new("bad host", 80), "address"),
        ("svc", "a", Registration::new("10.0.0.1", 0), "port"),
        ("svc", "a", ok().with_ttl(Duration::from_millis(10)), "ttl"),
        (
            "svc",
            "a",
            ok().with_ttl(Duration::from_secs(90_000)),
            "ttl",
        ),
        (
            "svc",
            "a",
            ok().with_meta("zone", "x".repeat(513)),
            "meta.zone",
        ),
        ("svc", "a", ok().with_meta("bad key", "v"), "meta.bad key"),
        ("svc", "a", big_meta, "meta"),
        ("svc", "a", ok().with_tag(""), "tags[0]"),
        (
            "svc",
            "a",
            ok().with_ttl(Duration::from_secs(5))
                .with_check(http_check()),
            "check",
        ),
        (
            "svc",
            "a",
            ok().with_check(HealthCheck {
                path: None,
                ..http_check()
            }),
            "check.path",
        ),
        (
            "svc",
            "a",
            ok().with_check(HealthCheck {
                interval: Duration::from_millis(1),
                ..http_check()
            }),
            "check.interval",
        ),
        (
            "svc",
            "a",
            ok().with_check(HealthCheck {
                timeout: Duration::from_secs(9),
                ..http_check()
            }),
            "check.timeout",
        ),
        (
            "svc",
            "a",
            ok().with_check(HealthCheck {
                failure_threshold: 0,
                ..http_check()
            }),
            "check.failure_threshold",
        ),
        ("bad/name", "a", ok(), "service"),
        ("", "a", ok(), "service"),
        ("svc", "../etc", ok(), "id"),
        ("svc", long_id.as_str(), ok(), "id"),
    ];
    for (service, id, reg, field) in cases {
        let err = r.register(service, id, reg.clone()).await.unwrap_err();
        assert_eq!(err.field(), Some(field), "{reg:?} -> {err}");
    }
    assert_eq!(r.index(), 0, "nothing was written");
    assert!(r.services().1.is_empty());
    r.register("svc", "a", Registration::new("::1", 80))
        .await
        .unwrap();
    assert_eq!(r.instance("svc", "a").unwrap().authority(), "[::1]:80");
}

#[tokio::test(start_paused = true)]
async fn registry_refuses_registrations_beyond_its_capacity() {
    let r = Registry::in_memory(RegistryConfig {
        max_instances: 2,
        ..config()
    });
    r.register("s", "a", Registration::new("10.0.0.1", 1))
        .await
        .unwrap();
    r.register("s", "b", Registration::new("10.0.0.2", 1))
        .await
        .unwrap();
    assert!(matches!(
        r.register("s", "c", Registration::new("10.0.0.3", 1)).await,
        Err(RegistryError::Full(2))
    ));
    // Replacing an existing instance is not growth.
    r.register("s", "a", Registration::new("10.0.0.9", 1))
        .await
        .unwrap();
    r.deregister("s", "b").await.unwrap();
    r.register("s", "c", Registration::new("10.0.0.3", 1))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn reregistering_replaces_and_keeps_create_index() {
    let r = Registry::in_memory(config());
    let first = r
        .register("s", "a", Registration::new("10.0.0.1", 1))
        .await
        .unwrap();
    let second = r
        .register("s", "a", Registration::new("10.0.0.2", 2))
        .await
        .unwrap();
    assert!(second > first);
    let i = r.instance("s", "a").unwrap();
    assert_eq!((i.create_index, i.modify_index, i.port), (first, second, 2));
    assert_eq!(r.discover("s", &Filter::default()).1.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn blocking_query_wakes_on_a_change_to_its_service_or_times_out() {
    let r = Registry::in_memory(config());
    r.register("a", "1", Registration::new("10.0.0.1", 1))
        .await
        .unwrap();
    let idx = r.service_index("a");

    // A change to another service does not wake a watcher of "a".
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move {
            r.wait_for_change(Some("a"), idx, Duration::from_secs(30))
                .await
        })
    };
    settle().await;
    r.register("b", "1", Registration::new("10.0.0.1", 1))
        .await
        .unwrap();
    settle().await;
    assert!(!waiter.is_finished());
    let changed = r
        .register("a", "2", Registration::new("10.0.0.2", 1))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), changed);

    // Nothing changes: the wait runs out and returns the same index.
    let started = tokio::time::Instant::now();
    let same = r
        .wait_for_change(Some("a"), changed, Duration::from_secs(7))
        .await;
    assert_eq!(same, changed);
    assert_eq!(started.elapsed(), Duration::from_secs(7));

    // Any-change scope, and an index from the future answers at once.
    let all = r.index();
    assert_eq!(
        r.wait_for_change(None, all + 100, Duration::from_secs(30))
            .await,
        all
    );
    let (idx2, list) = r
        .discover_blocking("a", &Filter::default(), Some(0), Duration::from_secs(30))
        .await;
    assert_eq!((idx2, list.len()), (changed, 2));
}

#[tokio::test(start_paused = true)]
async fn change_stream_reports_every_change_in_index_order() {
    let r = Registry::in_memory(config());
    let mut changes = Box::pin(r.changes());
    r.register(
        "s",
        "a",
        Registration::new("10.0.0.1", 1).with_ttl(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    settle().await;
    advance(Duration::from_secs(3)).await;
    settle().await;
    r.deregister("s", "a").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(changes.next().await.unwrap());
    }
    let kinds: Vec<_> = got.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Registered,
            ChangeKind::Health,
            ChangeKind::Deregistered
        ]
    );
    assert!(got.windows(2).all(|w| w[0].index < w[1].index));
    assert_eq!(got[1].instance.as_ref().unwrap().status, Status::Critical);
    assert!(got[2].instance.is_none());
}

#[tokio::test(start_paused = true)]
async fn feed_follows_new_and_removed_instances_within_a_second() {
    let r = Registry::in_memory(config());
    r.register("api", "a", Registration::new("10.0.0.1", 80))
        .await
        .unwrap();
    let mut feed = Box::pin(follow(&r, "api", Filter::default()));
    let first = feed.next().await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(),
        ["10.0.0.1:80"]
    );

    r.register(
        "api",
        "b",
        Registration::new("10.0.0.2", 80).with_meta("weight", "5"),
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), feed.next())
        .await
        .unwrap()
        .unwrap();
    let pairs: Vec<(String, u32)> = next.into_iter().map(Into::into).collect();
    assert_eq!(
        pairs,
        [("10.0.0.1:80".to_owned(), 1), ("10.0.0.2:80".to_owned(), 5)]
    );

    // A change elsewhere yields nothing new.
    r.register("other", "x", Registration::new("10.0.0.3", 80))
        .await
        .unwrap();
    r.deregister("api", "a").await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), feed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(),
        ["10.0.0.2:80"]
    );

    // An instance that turns critical leaves the feed too.
    r.register(
        "api",
        "t",
        Registration::new("10.0.0.4", 80).with_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert_eq!(feed.next().await.unwrap().len(), 2);
    let expired = tokio::time::timeout(Duration::from_secs(2), feed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>(),
        ["10.0.0.2:80"]
    );
}
