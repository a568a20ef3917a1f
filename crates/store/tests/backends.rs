//! Store behaviour on both backends: group commit isolation, namespaces,
//! migrations across versions. PostgreSQL tests skip (or fail under
//! TRELLIS_REQUIRE_BACKENDS=1) when the server is down.

use std::sync::Arc;

use trellis_store::{Backend, Migration, Store, StoreConfig, StoreError, Value};

struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn cleanup(self) {
        self.store.drop_postgres_schema().await.unwrap();
        self.store.close();
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    Fixture {
        store,
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Fixture> {
    let schema = format!("trellis_test_{:016x}", rand::random::<u64>());
    let config = StoreConfig::Postgres {
        url: "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3".into(),
        schema,
        pool_size: 16,
    };
    match Store::open(config).await {
        Ok(store) => Some(Fixture { store, _dir: None }),
        Err(e) => {
            if std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("PostgreSQL required but unreachable: {e}");
            }
            println!("skipped: PostgreSQL at 127.0.0.1:5432 unreachable: {e}");
            None
        }
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { let f = super::sqlite().await; super::$name(&f.store).await; f.cleanup().await; } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { if let Some(f) = super::postgres().await { super::$name(&f.store).await; f.cleanup().await; } } )* }
    };
}

both_backends!(
    failing_write_in_a_group_does_not_fail_the_others,
    namespace_tokens_grant_only_their_namespace,
    older_schema_is_migrated_and_newer_is_refused,
    dropping_a_namespace_removes_its_tables,
    write_then_reports_only_durable_commits,
);

const COUNTER: &[Migration] = &[Migration {
    version: 1,
    name: "counter",
    sqlite: "CREATE TABLE {ns}items (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE)",
    postgres: "CREATE TABLE {ns}items (id BIGINT PRIMARY KEY, label TEXT NOT NULL UNIQUE)",
}];

const COUNTER_V2: &[Migration] = &[
    COUNTER[0],
    Migration {
        version: 2,
        name: "note column",
        sqlite: "ALTER TABLE {ns}items ADD COLUMN note TEXT",
        postgres: "ALTER TABLE {ns}items ADD COLUMN note TEXT",
    },
];

async fn insert(ns: &trellis_store::Namespace, id: i64, label: &str) -> Result<u64, StoreError> {
    let label = label.to_owned();
    ns.write(move |tx| {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO {ns}items (id, label) VALUES ($1, $2)",
                &[Value::Int(id), label.into()],
            )
            .await
        })
    })
    .await
}

async fn count(ns: &trellis_store::Namespace) -> i64 {
    ns.read(|tx| {
        Box::pin(async move {
            tx.query_one("SELECT COUNT(*) FROM {ns}items", &[])
                .await?
                .int(0)
        })
    })
    .await
    .unwrap()
}

async fn failing_write_in_a_group_does_not_fail_the_others(store: &Store) {
    let ns = Arc::new(store.system_namespace("group").await.unwrap());
    ns.migrate("test", COUNTER).await.unwrap();
    // 200 concurrent writers; every tenth reuses a label and must fail alone.
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let ns = ns.clone();
        let label = if i % 10 == 9 {
            format!("l{}", i - 1)
        } else {
            format!("l{i}")
        };
        tasks.push(tokio::spawn(async move { insert(&ns, i, &label).await }));
    }
    let (mut ok, mut dup) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(1) => ok += 1,
            Err(e) if e.is_unique_violation() => dup += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, dup), (180, 20));
    assert_eq!(count(&ns).await, 180);
    if let Some((commits, writes)) = store.group_commit_stats() {
        assert!(writes >= 200, "{writes}");
        assert!(
            commits < writes,
            "concurrent writes share commits: {commits} commits for {writes} writes"
        );
    }
}

async fn namespace_tokens_grant_only_their_namespace(store: &Store) {
    let token_a = store.create_namespace("alpha").await.unwrap();
    let token_b = store.create_namespace("beta").await.unwrap();
    assert!(matches!(
        store.create_namespace("alpha").await,
        Err(StoreError::NamespaceExists(_))
    ));
    let a = store.namespace(token_a.as_str()).await.unwrap();
    let b = store.namespace(token_b.as_str()).await.unwrap();
    assert_eq!(a.name(), "alpha");
    a.migrate("test", COUNTER).await.unwrap();
    b.migrate("test", COUNTER).await.unwrap();
    insert(&a, 1, "only-in-alpha").await.unwrap();
    assert_eq!(count(&a).await, 1);
    assert_eq!(count(&b).await, 0, "beta's handle sees only beta's tables");
    // A forged token (right name, wrong secret) and a token of another shape are refused.
    let forged = format!("alpha.{}", "0".repeat(64));
    assert!(matches!(
        store.namespace(&forged).await,
        Err(StoreError::Unauthorized)
    ));
    assert!(matches!(
        store.namespace("nonsense").await,
        Err(StoreError::Unauthorized)
    ));
    assert!(matches!(
        store.namespace("").await,
        Err(StoreError::Unauthorized)
    ));
    // Rotation revokes the old token.
    let rotated = store.rotate_token("alpha").await.unwrap();
    assert!(matches!(
        store.namespace(token_a.as_str()).await,
        Err(StoreError::Unauthorized)
    ));
    assert_eq!(
        store.namespace(rotated.as_str()).await.unwrap().name(),
        "alpha"
    );
    assert!(
        !format!("{rotated:?}").contains(&rotated.as_str()[7..]),
        "Debug hides the secret"
    );
    for bad in [
        "",
        "Upper",
        "has-dash",
        "a__b",
        "trailing_",
        "9lives",
        &"x".repeat(41),
    ] {
        assert!(
            matches!(
                store.create_namespace(bad).await,
                Err(StoreError::InvalidNamespaceName { .. })
            ),
            "{bad}"
        );
    }
}

async fn older_schema_is_migrated_and_newer_is_refused(store: &Store) {
    let ns = store.system_namespace("mig").await.unwrap();
    let r = ns.migrate("test", COUNTER).await.unwrap();
    assert_eq!((r.from, r.to), (0, 1));
    insert(&ns, 1, "kept").await.unwrap();
    // A newer build brings the old schema forward, keeping the data.
    let r = ns.migrate("test", COUNTER_V2).await.unwrap();
    assert_eq!((r.from, r.to), (1, 2));
    let r = ns.migrate("test", COUNTER_V2).await.unwrap();
    assert_eq!((r.from, r.to), (2, 2), "idempotent");
    let note: Option<String> = ns
        .write(|tx| {
            Box::pin(async move {
                tx.execute("UPDATE {ns}items SET note = $1 WHERE id = 1", &["n".into()])
                    .await?;
                tx.query_one("SELECT note FROM {ns}items WHERE id = 1", &[])
                    .await?
                    .opt_text(0)
                    .map(|s| s.map(str::to_owned))
            })
        })
        .await
        .unwrap();
    assert_eq!(note.as_deref(), Some("n"));
    // An older build must refuse the newer schema rather than misread it.
    match ns.migrate("test", COUNTER).await {
        Err(StoreError::SchemaTooNew {
            found: 2, known: 1, ..
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

async fn dropping_a_namespace_removes_its_tables(store: &Store) {
    let ns = store.system_namespace("gone").await.unwrap();
    ns.migrate("test", COUNTER).await.unwrap();
    insert(&ns, 1, "x").await.unwrap();
    store.drop_namespace("gone").await.unwrap();
    assert!(!store
        .namespaces()
        .await
        .unwrap()
        .contains(&"gone".to_owned()));
    // Recreated, it starts empty from migration 0.
    let ns = store.system_namespace("gone").await.unwrap();
    assert_eq!(ns.migrate("test", COUNTER).await.unwrap().from, 0);
    assert_eq!(count(&ns).await, 0);
    assert!(matches!(
        store.drop_namespace("never").await,
        Err(StoreError::NamespaceNotFound(_))
    ));
}

#[tokio::test]
async fn sqlite_store_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    let token = store.create_namespace("svc").await.unwrap();
    let ns = store.namespace(token.as_str()).await.unwrap();
    ns.migrate("test", COUNTER).await.unwrap();
    insert(&ns, 7, "durable").await.unwrap();
    store.close();
    drop((ns, store));
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let ns = store.namespace(token.as_str()).await.unwrap();
    assert_eq!(ns.migrate("test", COUNTER).await.unwrap().from, 1);
    assert_eq!(count(&ns).await, 1);
    let journal: String = ns
        .read(|tx| {
            Box::pin(async move {
                tx.query_one("PRAGMA journal_mode", &[])
                    .await?
                    .text(0)
                    .map(str::to_owned)
            })
        })
        .await
        .unwrap();
    assert_eq!(journal, "wal");
}

async fn page_size(ns: &trellis_store::Namespace) -> i64 {
    ns.read(|tx| Box::pin(async move { tx.query_one("PRAGMA page_size", &[]).await?.int(0) }))
        .await
        .unwrap()
}

/// A new store takes 2 KiB pages (each commit writes whole pages to the WAL,
/// so a small append costs a fraction of the bytes); a store created with
/// SQLite's default 4 KiB pages, as Trellis made them before, opens with
/// its pages and its data as they were.
#[tokio::test]
async fn sqlite_new_stores_take_small_pages_and_older_stores_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let ns = store.system_namespace("pages").await.unwrap();
    assert_eq!(page_size(&ns).await, 2048);
    store.close();
    drop((ns, store));

    let old = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(old.path().join("trellis.db")).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(
            "CREATE TABLE before_us (x INTEGER); INSERT INTO before_us VALUES (42);",
        )
        .unwrap();
    }
    let store = Store::open(StoreConfig::in_data_dir(old.path()))
        .await
        .unwrap();
    let ns = store.system_namespace("pages").await.unwrap();
    ns.migrate("test", COUNTER).await.unwrap();
    insert(&ns, 1, "after").await.unwrap();
    assert_eq!(page_size(&ns).await, 4096);
    assert_eq!(count(&ns).await, 1);
    let kept = ns
        .read(|tx| {
            Box::pin(async move { tx.query_one("SELECT x FROM before_us", &[]).await?.int(0) })
        })
        .await
        .unwrap();
    assert_eq!(kept, 42);
}

#[tokio::test]
async fn a_panicking_write_is_rolled_back_and_the_writer_survives() {
    let f = sqlite().await;
    let ns = f.store.system_namespace("p").await.unwrap();
    ns.migrate("test", COUNTER).await.unwrap();
    let r: Result<(), StoreError> = ns
        .write(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO {ns}items (id, label) VALUES (1, 'a')", &[])
                    .await?;
                panic!("body bug");
            })
        })
        .await;
    assert!(matches!(r, Err(StoreError::Panicked)));
    insert(&ns, 2, "b").await.unwrap();
    assert_eq!(count(&ns).await, 1);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wal_is_checkpointed_into_the_database_in_the_background() {
    let f = sqlite().await;
    let ns = Arc::new(f.store.system_namespace("ckpt").await.unwrap());
    ns.migrate("test", COUNTER).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400i64 {
        let ns = ns.clone();
        let label = format!("{i:0>1000}");
        tasks.push(tokio::spawn(async move { insert(&ns, i, &label).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // The writer itself checkpoints only past 16,000 WAL pages; ~400 KiB of
    // rows reach the database file only through the background checkpointer.
    let db = f.store.sqlite_path().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&db).unwrap().len();
        if size > 400 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "database file still {size} bytes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count(&ns).await, 400);
    f.cleanup().await;
}

/// `write_then`'s hook runs once the write is committed (and visible), before
/// the caller is answered; never for a failed body; a panicking hook neither
/// fails the write nor, on SQLite, stops the writer.
async fn write_then_reports_only_durable_commits(store: &Store) {
    let ns = store.system_namespace("hooks").await.unwrap();
    ns.migrate("test", COUNTER).await.unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let report = seen_tx.clone();
    let id: i64 = ns
        .write_then(
            |tx| {
                Box::pin(async move {
                    tx.execute("INSERT INTO {ns}items (id, label) VALUES (1, 'a')", &[])
                        .await?;
                    Ok::<_, StoreError>(1)
                })
            },
            move |v: &i64| report.send(*v).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(seen.try_recv(), Ok(1), "ran before the caller was answered");
    let report = seen_tx.clone();
    let failed: Result<i64, StoreError> = ns
        .write_then(
            |tx| {
                Box::pin(async move {
                    // A duplicate key: the body fails.
                    tx.execute("INSERT INTO {ns}items (id, label) VALUES (1, 'b')", &[])
                        .await?;
                    Ok(2)
                })
            },
            move |v: &i64| report.send(*v).unwrap(),
        )
        .await;
    assert!(failed.is_err());
    let ok: Result<i64, StoreError> = ns
        .write_then(
            |tx| {
                Box::pin(async move {
                    tx.execute("INSERT INTO {ns}items (id, label) VALUES (3, 'c')", &[])
                        .await?;
                    Ok(3)
                })
            },
            |_: &i64| panic!("hook bug"),
        )
        .await;
    assert_eq!(ok.unwrap(), 3);
    insert(&ns, 4, "d").await.unwrap();
    assert_eq!(count(&ns).await, 3);
    assert!(seen.try_recv().is_err(), "no report for the failed body");
}
