//! Event store benchmarks, printed as tables (the concurrency ones do not fit
//! criterion's one-closure model):
//!
//! - durable append throughput and latency for 1/16/64 concurrent writers and
//!   batches of 1/10/100 events, on SQLite (group commit) and PostgreSQL, beside
//!   the peer a user would write instead: plain INSERTs of the same rows into
//!   PostgreSQL through the same driver (tokio-postgres);
//! - `$all` read throughput;
//! - live subscription latency from the start of an append to delivery.
//!
//! `cargo bench -p trellis-events --bench events`; `BENCH_SECS` (default 2) per cell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use trellis_events::{
    EventData, EventStore, ExpectedVersion, ReadAll, StartFrom, SubscriptionOptions,
    SubscriptionTarget,
};
use trellis_store::{Store, StoreConfig};

const PG_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
const WRITERS: [usize; 3] = [1, 16, 64];
const BATCHES: [usize; 3] = [1, 10, 100];

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    )
}

fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({ "orderId": format!("order-{i}"), "sku": "SKU-12345", "quantity": 3, "price": 1999, "currency": "EUR" })
}

struct Cell {
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarise(events: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Cell {
    lat.sort_unstable();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Cell {
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

async fn appends(es: &EventStore, writers: usize, batch: usize, run: &str) -> Cell {
    let deadline = Instant::now() + secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (es, stream) = (es.clone(), format!("bench{run}-{w}"));
        tasks.push(tokio::spawn(async move {
            let (mut n, mut lat) = (0, Vec::new());
            while Instant::now() < deadline {
                let events = (0..batch)
                    .map(|i| EventData::new("ItemAdded", &payload(i)).unwrap())
                    .collect();
                let t = Instant::now();
                es.append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                lat.push(t.elapsed());
                n += batch;
            }
            (n, lat)
        }));
    }
    let (mut total, mut all) = (0, Vec::new());
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        total += n;
        all.extend(lat);
    }
    summarise(total, start.elapsed(), all)
}

async fn peer_inserts(writers: usize, batch: usize) -> Cell {
    let deadline = Instant::now() + secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        tasks.push(tokio::spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let insert = client
                .prepare("INSERT INTO trellis_bench_peer (stream, version, event_id, event_type, data, metadata, created_ms) VALUES ($1, $2, $3, $4, $5, NULL, $6)")
                .await
                .unwrap();
            let (mut n, mut lat, mut version) = (0usize, Vec::new(), 0i64);
            let stream = format!("peer-{w}");
            while Instant::now() < deadline {
                let rows: Vec<(String, String)> = (0..batch).map(|i| (uuid::Uuid::new_v4().to_string(), payload(i).to_string())).collect();
                let t = Instant::now();
                let tx = client.transaction().await.unwrap();
                let inserts = rows.iter().map(|(id, data)| {
                    version += 1;
                    let v = version;
                    let (tx, insert, stream) = (&tx, &insert, &stream);
                    async move { tx.execute(insert, &[stream, &v, id, &"ItemAdded", data, &0i64]).await }
                });
                futures::future::try_join_all(inserts.collect::<Vec<_>>()).await.unwrap();
                tx.commit().await.unwrap();
                lat.push(t.elapsed());
                n += batch;
            }
            (n, lat)
        }));
    }
    let (mut total, mut all) = (0, Vec::new());
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        total += n;
        all.extend(lat);
    }
    summarise(total, start.elapsed(), all)
}

async fn read_all(es: &EventStore) -> (usize, f64) {
    let start = Instant::now();
    let (mut from, mut n) = (1, 0);
    loop {
        let page = es
            .read_all(ReadAll {
                from: Some(from),
                max_count: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        n += page.len();
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

async fn live_latency(es: &EventStore, count: usize) -> (Duration, Duration, Duration) {
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let sub = es.subscribe(SubscriptionOptions::new(
        SubscriptionTarget::Stream("live-1".into()),
        StartFrom::End,
    ));
    let mut sub = Box::pin(sub);
    // The subscription resolves `End` lazily; let it settle first.
    let warm = es.append(
        "live-1",
        ExpectedVersion::Any,
        vec![EventData::new("Warm", &0).unwrap()],
    );
    let (_, first) = tokio::join!(warm, sub.next());
    first.unwrap().unwrap();
    let writer = {
        let (es, sent) = (es.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..count {
                sent.lock().push(Instant::now());
                es.append(
                    "live-1",
                    ExpectedVersion::Any,
                    vec![EventData::new("Tick", &i).unwrap()],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        sub.next().await.unwrap().unwrap();
        let t = sent.lock()[i];
        lat.push(t.elapsed());
    }
    writer.await.unwrap();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.5), q(0.99), lat[lat.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    // cargo bench passes `--bench`; nothing else to parse.
    let dir = tempfile::Builder::new()
        .prefix("trellis-bench-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let sqlite = Store::open(StoreConfig::in_data_dir(dir.path()))
        .await
        .unwrap();
    let schema = format!("trellis_bench_{:08x}", rand::random::<u32>());
    let pg = Store::open(StoreConfig::Postgres {
        url: PG_URL.into(),
        schema: schema.clone(),
        pool_size: 64,
    })
    .await
    .ok();
    if pg.is_none() {
        println!("PostgreSQL unreachable at 127.0.0.1:5432: PostgreSQL rows skipped");
    }
    let sqlite_es = EventStore::open(sqlite.system_namespace("bench").await.unwrap())
        .await
        .unwrap();
    let pg_es = match &pg {
        Some(s) => Some(
            EventStore::open(s.system_namespace("bench").await.unwrap())
                .await
                .unwrap(),
        ),
        None => None,
    };
    if pg.is_some() {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS trellis_bench_peer;
                 CREATE TABLE trellis_bench_peer (position BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL,
                   event_id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, data TEXT NOT NULL, metadata TEXT, created_ms BIGINT NOT NULL)",
            )
            .await
            .unwrap();
    }

    println!("durable appends, {:.1} s per cell", secs().as_secs_f64());
    println!("| writers | batch | SQLite events/s | p50 ms | p99 ms | PostgreSQL events/s | p50 ms | p99 ms | peer: plain INSERTs events/s | p50 ms | p99 ms | SQLite / peer | PostgreSQL / peer |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for writers in WRITERS {
        for batch in BATCHES {
            let run = format!("{writers}x{batch}");
            let s = appends(&sqlite_es, writers, batch, &run).await;
            let (p, peer) = match &pg_es {
                Some(es) => (
                    Some(appends(es, writers, batch, &run).await),
                    Some(peer_inserts(writers, batch).await),
                ),
                None => (None, None),
            };
            let cell = |c: &Option<Cell>| match c {
                Some(c) => format!("{:.0} | {} | {}", c.events_per_s, ms(c.p50), ms(c.p99)),
                None => "– | – | –".into(),
            };
            let ratio = |a: f64| {
                peer.as_ref()
                    .map_or("–".into(), |p| format!("{:.2}", a / p.events_per_s))
            };
            println!(
                "| {writers} | {batch} | {:.0} | {} | {} | {} | {} | {} | {} |",
                s.events_per_s,
                ms(s.p50),
                ms(s.p99),
                cell(&p),
                cell(&peer),
                ratio(s.events_per_s),
                p.as_ref().map_or("–".into(), |p| ratio(p.events_per_s)),
            );
        }
    }

    println!("\n$all read throughput (pages of 1000)");
    let (n, rate) = read_all(&sqlite_es).await;
    println!("| SQLite | {n} events | {rate:.0} events/s |");
    if let Some(es) = &pg_es {
        let (n, rate) = read_all(es).await;
        println!("| PostgreSQL | {n} events | {rate:.0} events/s |");
    }

    println!("\nlive subscription latency, append start → delivery (1000 events, one every ~1 ms)");
    let (p50, p99, max) = live_latency(&sqlite_es, 1000).await;
    println!(
        "| SQLite | p50 {} ms | p99 {} ms | max {} ms |",
        ms(p50),
        ms(p99),
        ms(max)
    );
    if let Some(es) = &pg_es {
        let (p50, p99, max) = live_latency(es, 1000).await;
        println!(
            "| PostgreSQL | p50 {} ms | p99 {} ms | max {} ms |",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }

    if let Some(s) = &pg {
        s.drop_postgres_schema().await.unwrap();
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("DROP TABLE IF EXISTS trellis_bench_peer")
            .await
            .unwrap();
    }
    sqlite.close();
}
