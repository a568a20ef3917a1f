//! Test fixtures: projections over an event store on SQLite (temp dir) or on
//! PostgreSQL (a fresh schema per test, dropped at the end).
#![allow(dead_code)]

use std::time::Duration;

use trellis_events::{EventData, EventStore, ExpectedVersion};
use trellis_projections::{Projections, ProjectionsConfig, RunnerOptions};
use trellis_store::{Store, StoreConfig};

pub const PG_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Fixture {
    pub events: EventStore,
    pub projections: Projections,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

pub fn config() -> ProjectionsConfig {
    ProjectionsConfig {
        runner: RunnerOptions {
            batch_size: 64,
            poll_interval: Duration::from_millis(50),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

impl Fixture {
    pub async fn cleanup(self) {
        self.projections.shutdown().await;
        self.store.drop_postgres_schema().await.unwrap();
        self.store.close();
    }

    /// Opens the projections again over the same store, as after a restart.
    pub async fn reopen(&mut self) {
        self.projections.shutdown().await;
        self.projections = Projections::open_with(self.events.clone(), config())
            .await
            .unwrap();
    }
}

async fn fixture(store: Store, dir: Option<tempfile::TempDir>) -> Fixture {
    let ns = store.system_namespace("app").await.unwrap();
    let events = EventStore::open(ns).await.unwrap();
    let projections = Projections::open_with(events.clone(), config())
        .await
        .unwrap();
    Fixture {
        events,
        projections,
        store,
        _dir: dir,
    }
}

pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    fixture(store, Some(dir)).await
}

pub fn require_backends() -> bool {
    std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() == Ok("1")
}

pub async fn postgres() -> Option<Fixture> {
    let config = StoreConfig::Postgres {
        url: PG_URL.into(),
        schema: format!("trellis_test_{:016x}", rand::random::<u64>()),
        pool_size: 16,
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
    Some(fixture(store, None).await)
}

pub fn ev(event_type: &str, data: serde_json::Value) -> EventData {
    EventData::new(event_type, &data).unwrap()
}

/// Appends one event and returns its position.
pub async fn append(
    es: &EventStore,
    stream: &str,
    event_type: &str,
    data: serde_json::Value,
) -> u64 {
    es.append(stream, ExpectedVersion::Any, vec![ev(event_type, data)])
        .await
        .unwrap()
        .last_position
}

/// Runs each named `async fn(&mut Fixture)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let mut f = $crate::common::sqlite().await;
                    super::$name(&mut f).await;
                    f.cleanup().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(mut f) = $crate::common::postgres().await {
                        super::$name(&mut f).await;
                        f.cleanup().await;
                    }
                }
            )*
        }
    };
}
