//! Persistent subscriptions against a local HTTP endpoint the tests start, on
//! SQLite and PostgreSQL (skipped with a message when PostgreSQL is
//! unreachable, unless `TRELLIS_REQUIRE_BACKENDS=1`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower::ServiceExt;
use trellis_store::{Store, StoreConfig};

use super::*;
use crate::{EventData, EventStore, ExpectedVersion};

const PG_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";
const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    events: EventStore,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let events = EventStore::open(store.system_namespace("app").await.unwrap())
        .await
        .unwrap();
    Fixture {
        events,
        store,
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Fixture> {
    let config = StoreConfig::Postgres {
        url: PG_URL.into(),
        schema: format!("trellis_test_{:016x}", rand::random::<u64>()),
        pool_size: 8,
    };
    let store = match Store::open(config).await {
        Ok(s) => s,
        Err(e) => {
            if std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("PostgreSQL required (TRELLIS_REQUIRE_BACKENDS=1) but unreachable: {e}");
            }
            println!("skipped: PostgreSQL at 127.0.0.1:5432 unreachable: {e}");
            return None;
        }
    };
    let events = EventStore::open(store.system_namespace("app").await.unwrap())
        .await
        .unwrap();
    Some(Fixture {
        events,
        store,
        _dir: None,
    })
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Hit {
    position: u64,
    attempt: u32,
    body: Value,
    acked: bool,
}

/// A local webhook: fails each event's first `fail_first` attempts, and every
/// attempt at an event of type `Poison` while `poisoned` is set.
#[derive(Clone, Default)]
struct Endpoint {
    hits: Arc<Mutex<Vec<Hit>>>,
    fail_first: u32,
    poisoned: Arc<AtomicBool>,
}

async fn hook(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let poison = body["type"] == "Poison" && ep.poisoned.load(Ordering::SeqCst);
    let attempt = header("trellis-attempt") as u32;
    let acked = !poison && attempt > ep.fail_first;
    ep.hits.lock().push(Hit {
        position: header("trellis-position"),
        attempt,
        body,
        acked,
    });
    if acked {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Endpoint {
    async fn start(self) -> String {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn acked_positions(&self) -> Vec<u64> {
        self.hits
            .lock()
            .iter()
            .filter(|h| h.acked)
            .map(|h| h.position)
            .collect()
    }
}

fn quick(name: &str, url: &str, attempts: u32) -> SubscriptionDefinition {
    let mut d = SubscriptionDefinition::new(name, Source::All, url);
    d.max_attempts = attempts;
    d.min_backoff = Duration::from_millis(5);
    d.max_backoff = Duration::from_millis(20);
    d.timeout = Duration::from_secs(5);
    d
}

async fn append(es: &EventStore, stream: &str, ty: &str) -> u64 {
    es.append(
        stream,
        ExpectedVersion::Any,
        vec![EventData::new(ty, &json!({"s": stream})).unwrap()],
    )
    .await
    .unwrap()
    .last_position
}

async fn wait_until(
    subs: &PersistentSubscriptions,
    name: &str,
    done: impl Fn(&SubscriptionStatus) -> bool,
) -> SubscriptionStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = subs.status(name).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn retries_until_acked_and_delivers_in_order(f: &Fixture) {
    let ep = Endpoint {
        fail_first: 2,
        ..Default::default()
    };
    let url = ep.clone().start().await;
    let subs = PersistentSubscriptions::open(f.events.clone())
        .await
        .unwrap();
    for i in 0..3 {
        append(&f.events, "order-1", "Placed").await;
        append(&f.events, &format!("cart-{i}"), "Added").await;
    }
    subs.create(quick("orders", &url, 5)).await.unwrap();
    let status = wait_until(&subs, "orders", |s| s.delivered == 6).await;
    assert_eq!((status.position, status.parked), (6, 0));
    assert_eq!(
        ep.acked_positions(),
        [1, 2, 3, 4, 5, 6],
        "in order, once each"
    );
    let hits = ep.hits.lock().clone();
    assert_eq!(hits.len(), 18, "three attempts per event");
    assert!(hits.iter().filter(|h| h.acked).all(|h| h.attempt == 3));
    let first = &hits[0].body;
    assert_eq!(
        (
            first["specversion"].as_str(),
            first["type"].as_str(),
            first["subject"].as_str()
        ),
        (Some("1.0"), Some("Placed"), Some("order-1"))
    );
    assert_eq!(first["streamposition"], 1);
    subs.shutdown().await;
}

async fn a_failing_event_is_parked_the_rest_flow_and_replay_delivers_it(f: &Fixture) {
    let ep = Endpoint::default();
    ep.poisoned.store(true, Ordering::SeqCst);
    let url = ep.clone().start().await;
    let subs = PersistentSubscriptions::open(f.events.clone())
        .await
        .unwrap();
    subs.create(quick("hooks", &url, 3)).await.unwrap();
    append(&f.events, "a-1", "Fine").await;
    let poison = append(&f.events, "a-1", "Poison").await;
    let last = append(&f.events, "a-1", "Fine").await;
    let status = wait_until(&subs, "hooks", |s| s.position == last).await;
    assert_eq!((status.delivered, status.parked), (2, 1));
    assert!(
        status.last_error.is_none(),
        "cleared by the next acknowledgement"
    );
    let parked = subs.parked("hooks").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (
            parked[0].position,
            parked[0].attempts,
            parked[0].event_type.as_str()
        ),
        (poison, 3, "Poison")
    );
    assert!(
        parked[0].last_error.contains("503"),
        "{}",
        parked[0].last_error
    );
    assert_eq!(ep.acked_positions(), [1, 3]);

    // Still failing: the replay leaves it parked, one attempt more.
    assert_eq!(
        subs.replay_parked("hooks").await.unwrap(),
        ReplayReport {
            delivered: 0,
            failed: 1
        }
    );
    assert_eq!(subs.parked("hooks").await.unwrap()[0].attempts, 4);
    ep.poisoned.store(false, Ordering::SeqCst);
    assert_eq!(
        subs.replay_parked("hooks").await.unwrap(),
        ReplayReport {
            delivered: 1,
            failed: 0
        }
    );
    assert!(subs.parked("hooks").await.unwrap().is_empty());
    assert_eq!(ep.acked_positions(), [1, 3, 2]);
    subs.shutdown().await;
}

async fn a_restart_resumes_from_the_stored_checkpoint(f: &Fixture) {
    let ep = Endpoint::default();
    let url = ep.clone().start().await;
    let subs = PersistentSubscriptions::open(f.events.clone())
        .await
        .unwrap();
    append(&f.events, "x-1", "E").await;
    append(&f.events, "x-1", "E").await;
    subs.create(quick("resume", &url, 3)).await.unwrap();
    wait_until(&subs, "resume", |s| s.delivered == 2).await;
    subs.shutdown().await;
    append(&f.events, "x-2", "E").await;
    let subs = PersistentSubscriptions::open(f.events.clone())
        .await
        .unwrap();
    assert_eq!(subs.names(), ["resume"]);
    let status = wait_until(&subs, "resume", |s| s.position == 3).await;
    assert_eq!(status.delivered, 3);
    assert_eq!(ep.acked_positions(), [1, 2, 3]);
    subs.shutdown().await;
}

macro_rules! both_backends {
    ($($name:ident),*) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = super::sqlite().await;
                super::$name(&f).await;
                f.store.close();
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(f) = super::postgres().await {
                    super::$name(&f).await;
                    f.store.drop_postgres_schema().await.unwrap();
                    f.store.close();
                }
            })*
        }
    };
}

both_backends!(
    retries_until_acked_and_delivers_in_order,
    a_failing_event_is_parked_the_rest_flow_and_replay_delivers_it,
    a_restart_resumes_from_the_stored_checkpoint
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_definitions_and_the_rest_api() {
    let f = sqlite().await;
    let subs = PersistentSubscriptions::open(f.events.clone())
        .await
        .unwrap();
    for (def, what) in [
        (
            SubscriptionDefinition::new("a", Source::All, "https://example.com/"),
            "https",
        ),
        (
            SubscriptionDefinition::new("a", Source::All, "nonsense"),
            "endpoint",
        ),
        (
            SubscriptionDefinition::new("Bad Name", Source::All, "http://127.0.0.1:1/"),
            "name",
        ),
        (
            SubscriptionDefinition::new("a", Source::Stream("$all".into()), "http://127.0.0.1:1/"),
            "source",
        ),
        (quick("a", "http://127.0.0.1:1/", 0), "maxAttempts"),
    ] {
        let err = subs.create(def).await.unwrap_err();
        assert!(
            matches!(&err, PersistentError::Invalid(m) if m.contains(what)),
            "{err}"
        );
    }
    assert!(subs.names().is_empty());

    let ep = Endpoint::default();
    let url = ep.clone().start().await;
    let app = api::router(subs.clone());
    let call = |method: &str, uri: &str, body: Option<Value>| {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, body) = call("POST", "/subscriptions", Some(json!({"name": "web", "source": {"category": "order"}, "endpoint": url, "format": "json", "minBackoff": "5ms", "maxBackoff": "10ms"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["definition"]["maxAttempts"], 5);
    append(&f.events, "order-9", "Placed").await;
    append(&f.events, "cart-9", "Added").await;
    let last = append(&f.events, "order-9", "Paid").await;
    wait_until(&subs, "web", |s| s.position == last).await;
    let bodies: Vec<Value> = ep.hits.lock().iter().map(|h| h.body.clone()).collect();
    assert_eq!(bodies.len(), 2, "only the order category");
    assert_eq!(
        (
            bodies[1]["eventType"].as_str(),
            bodies[1]["stream"].as_str()
        ),
        (Some("Paid"), Some("order-9"))
    );
    let (s, body) = call("GET", "/subscriptions", None).await;
    assert_eq!(
        (s, body["subscriptions"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (s, body) = call("GET", "/subscriptions/web/parked", None).await;
    assert_eq!(
        (s, body["parked"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let (s, body) = call("POST", "/subscriptions/web/parked/replay", None).await;
    assert_eq!((s, &body["delivered"]), (StatusCode::OK, &json!(0)));
    let (s, body) = call(
        "POST",
        "/subscriptions",
        Some(json!({"name": "web", "source": "$all", "endpoint": url})),
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::CONFLICT, &json!("subscription_exists"))
    );
    let (s, body) = call(
        "POST",
        "/subscriptions",
        Some(json!({"name": "x", "source": "$all", "endpoint": url, "timeout": "soon"})),
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_body"))
    );
    let (s, body) = call(
        "POST",
        "/subscriptions",
        Some(json!({"name": "x", "source": "$all", "endpoint": "ftp://x/"})),
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("invalid_subscription")
        )
    );
    let (s, _) = call("DELETE", "/subscriptions/web", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = call("GET", "/subscriptions/web", None).await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("subscription_not_found"))
    );
    f.store.close();
}
