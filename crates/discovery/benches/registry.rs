//! Registry throughput and watch propagation, printed as a table.
//!
//! `cargo bench -p trellis-discovery --bench registry`
//!
//! Not criterion: watch propagation is a latency distribution across two
//! tasks, which criterion's per-iteration timing does not express. The peer
//! for reads is a plain `Mutex<BTreeMap>` lookup that clones the same
//! instances — the floor any in-process registry read pays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use trellis_discovery::{follow, Filter, Registration, Registry, RegistryConfig};
use trellis_store::{Store, StoreConfig};

const SERVICES: usize = 1_000;
const PER_SERVICE: usize = 10;

fn reg(i: usize) -> Registration {
    Registration::new(
        format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        8080,
    )
    .with_tag("v1")
    .with_meta("zone", "eu-1")
}

async fn preload(r: &Registry) {
    for s in 0..SERVICES {
        for i in 0..PER_SERVICE {
            r.register(
                &format!("svc-{s}"),
                &format!("i-{i}"),
                reg(s * PER_SERVICE + i),
            )
            .await
            .unwrap();
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let config = RegistryConfig {
        max_instances: 1_000_000,
        ..RegistryConfig::default()
    };

    // Writes, in memory.
    let r = Registry::in_memory(config.clone());
    let t = Instant::now();
    preload(&r).await;
    let mem_writes = (SERVICES * PER_SERVICE) as f64 / t.elapsed().as_secs_f64();

    // Writes, persisted on SQLite (each durable before it returns).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let ns = store.system_namespace("registry").await.unwrap();
    let persisted = Registry::open(ns, config.clone()).await.unwrap();
    let n = 2_000;
    let t = Instant::now();
    for i in 0..n {
        persisted
            .register(&format!("svc-{}", i % 100), &format!("i-{i}"), reg(i))
            .await
            .unwrap();
    }
    let sqlite_writes = n as f64 / t.elapsed().as_secs_f64();

    // Reads: discovery of one service (10 instances) vs the map-lookup floor.
    let reads = 200_000;
    let filter = Filter::default();
    let t = Instant::now();
    let mut found = 0;
    for i in 0..reads {
        found += r
            .discover(&format!("svc-{}", i % SERVICES), &filter)
            .1
            .len();
    }
    let reg_reads = reads as f64 / t.elapsed().as_secs_f64();
    assert_eq!(found, reads * PER_SERVICE);
    let floor: Mutex<BTreeMap<String, Vec<trellis_discovery::Instance>>> = Mutex::new(
        (0..SERVICES)
            .map(|s| {
                let name = format!("svc-{s}");
                let list = r.discover(&name, &filter).1;
                (name, list)
            })
            .collect(),
    );
    let t = Instant::now();
    let mut found = 0;
    for i in 0..reads {
        found += floor
            .lock()
            .get(&format!("svc-{}", i % SERVICES))
            .cloned()
            .unwrap_or_default()
            .len();
    }
    let floor_reads = reads as f64 / t.elapsed().as_secs_f64();
    assert_eq!(found, reads * PER_SERVICE);

    // Watch propagation: register → the service's feed yields the new set.
    let mut feed = Box::pin(follow(&r, "svc-7", Filter::default()));
    feed.next().await.unwrap();
    let mut lat = Vec::new();
    for round in 0..1_000 {
        let id = format!("new-{round}");
        let t = Instant::now();
        r.register("svc-7", &id, reg(round)).await.unwrap();
        let set = feed.next().await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(set.len(), PER_SERVICE + 1);
        r.deregister("svc-7", &id).await.unwrap();
        feed.next().await.unwrap();
    }
    lat.sort();

    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| registrations/s, in memory ({} instances) | {mem_writes:.0} |",
        SERVICES * PER_SERVICE
    );
    println!("| registrations/s, SQLite, sequential, each durable ({n}) | {sqlite_writes:.0} |");
    println!("| discovery reads/s (10 instances each) | {reg_reads:.0} |");
    println!("| peer: Mutex<BTreeMap> lookup + clone, reads/s | {floor_reads:.0} |");
    println!(
        "| registry read / peer ratio | {:.2} |",
        reg_reads / floor_reads
    );
    println!(
        "| watch propagation register→feed, {SERVICES}×{PER_SERVICE} registered: p50 / p99 | {:?} / {:?} |",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    persisted.shutdown();
    store.close();
}
