//! `kill -9` under concurrent load, many times: every acknowledged append is
//! present, none is duplicated, and `$all` has no holes.
//!
//! The test re-executes its own binary in a child mode (selected by an
//! environment variable) that appends from many tasks and prints each
//! acknowledged event id; the parent kills it with SIGKILL at a random moment,
//! restarts it, and finally checks the store. `TRELLIS_CRASH_ITERATIONS` sets
//! the number of kills (default 100).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_events::{EventData, EventStore, ExpectedVersion, ReadAll, ReadStream};
use trellis_store::{Store, StoreConfig};
use uuid::Uuid;

const CHILD_DIR: &str = "TRELLIS_CRASH_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_appends_survive_kill_9";
const WRITERS: usize = 16;

#[test]
fn acknowledged_appends_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
        return;
    }
    let iterations: usize = std::env::var("TRELLIS_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked: Vec<Uuid> = Vec::new();
    for i in 0..iterations {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (first_ack, got_first) = std::sync::mpsc::channel();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let mut signalled = false;
                // A line cut short by the kill has no newline: it was not acknowledged.
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.ends_with('\n') && line.starts_with("ACK ") {
                        lines.lock().unwrap().push(line.trim_end().to_owned());
                        if !signalled {
                            let _ = first_ack.send(());
                            signalled = true;
                        }
                    }
                    line.clear();
                }
            })
        };
        got_first
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("iteration {i}: the child never acknowledged an append"));
        // Kill at a random moment of the load, from at once to ~60 ms in.
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        acked.extend(lines.iter().map(|l| Uuid::parse_str(&l[4..]).unwrap()));
    }
    let kills_took = started.elapsed();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(StoreConfig::in_data_dir(dir.path())).await.unwrap();
        let es = EventStore::open(store.system_namespace("crash").await.unwrap()).await.unwrap();
        let mut all = Vec::new();
        loop {
            let from = all.len() as u64 + 1;
            let page = es.read_all(ReadAll { from: Some(from), max_count: 10_000, ..Default::default() }).await.unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64 + 1, "$all has a hole before position {}", e.position);
        }
        let stored: HashSet<Uuid> = all.iter().map(|e| e.id).collect();
        assert_eq!(stored.len(), all.len(), "an event is stored twice");
        let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
        assert!(missing.is_empty(), "{} acknowledged events lost, e.g. {:?}", missing.len(), missing.first());
        for w in 0..WRITERS {
            if let Ok(slice) = es.read_stream(&format!("crash-{w}"), ReadStream { max_count: 10_000, ..Default::default() }).await {
                assert!(slice.events.iter().enumerate().all(|(i, e)| e.version == i as u64), "stream crash-{w} has a version hole");
            }
        }
        println!(
            "{iterations} kill -9 restarts in {:.1}s: {} acknowledged events, {} stored (the rest committed but killed before their ack was printed)",
            kills_took.as_secs_f64(),
            acked.len(),
            all.len()
        );
        assert!(acked.len() >= iterations, "each run acknowledged at least one append");
        store.close();
    });
}

/// The child: appends from many tasks until killed, printing each acknowledged event id.
fn child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(StoreConfig::in_data_dir(dir)).await.unwrap();
        let es = EventStore::open(store.system_namespace("crash").await.unwrap())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let es = es.clone();
            tasks.push(tokio::spawn(async move {
                let stream = format!("crash-{w}");
                for i in 0u64.. {
                    let events: Vec<EventData> = (0..1 + i % 3)
                        .map(|k| {
                            EventData::new("Tick", &serde_json::json!({ "w": w, "i": i, "k": k }))
                                .unwrap()
                        })
                        .collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                    es.append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    for id in ids {
                        writeln!(out, "ACK {id}").unwrap();
                    }
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}
