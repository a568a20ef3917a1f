//! Test fixtures: an event store on SQLite (temp dir) or on PostgreSQL (a
//! fresh schema per test, dropped at the end).
#![allow(dead_code)]

use trellis_events::{EventData, EventStore};
use trellis_store::{Store, StoreConfig};

pub const PG_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

pub struct Fixture {
    pub events: EventStore,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    pub async fn cleanup(self) {
        self.store.drop_postgres_schema().await.unwrap();
        self.store.close();
    }
}

pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let ns = store.system_namespace("app").await.unwrap();
    let events = EventStore::open(ns).await.unwrap();
    Fixture {
        events,
        store,
        _dir: Some(dir),
    }
}

pub fn require_backends() -> bool {
    std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() == Ok("1")
}

pub async fn postgres() -> Option<Fixture> {
    let config = StoreConfig::Postgres {
        url: PG_URL.into(),
        schema: format!("trellis_test_{:016x}", rand::random::<u64>()),
        pool_size: 32,
    };
    let store = match Store::open(config).await {
        Ok(s) => s,
        Err(e) => {
            if require_backends() {
                panic!("PostgreSQL required (TRELLIS_REQUIRE_BACKENDS=1) but unreachable: {e}");
            }
            println!("skipped: PostgreSQL at 127.0.0.1:5432 unreachable: {e}");
            return None;
        }
    };
    let ns = store.system_namespace("app").await.unwrap();
    let events = EventStore::open(ns).await.unwrap();
    Some(Fixture {
        events,
        store,
        _dir: None,
    })
}

pub fn ev(event_type: &str, n: u64) -> EventData {
    EventData::new(event_type, &serde_json::json!({ "n": n })).unwrap()
}

/// Runs each named `async fn(&EventStore)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = $crate::common::sqlite().await;
                    super::$name(&f.events).await;
                    f.cleanup().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(f) = $crate::common::postgres().await {
                        super::$name(&f.events).await;
                        f.cleanup().await;
                    }
                }
            )*
        }
    };
}
