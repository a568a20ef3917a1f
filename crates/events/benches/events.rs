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
//! `BENCH_CELLS=64x1,16x10` runs only those append cells (writers x batch) and
//! skips the read and live sections; `BENCH_SECTIONS=appends,reads,live` picks
//! sections (default: all, or `appends` with `BENCH_CELLS`);
//! `BENCH_SQLITE_ONLY=1` skips PostgreSQL; `BENCH_LIVE_EVENTS` (default 1000)
//! sets how many events the live-latency section appends.
//!
//! **A settled disk for every measurement.** SQLite and PostgreSQL share one
//! disk here, and a PostgreSQL cell leaves it busy for seconds afterwards (its
//! background writer and checkpoints flush what the cell dirtied), which then
//! lands on whichever cell runs next — SQLite's 64 x 1 cell measured ~16.5k
//! appends/s after PostgreSQL's 16 x 100 cell against 22–26k alone. So before
//! each measured cell or section, of either backend, the bench runs a
//! PostgreSQL `CHECKPOINT` (when PostgreSQL is in the run), `sync`s, and waits
//! until the kernel has no more than [`SETTLED_DIRTY_KIB`] of dirty or
//! in-writeback pages (at most [`SETTLE_MAX`]), then [`SETTLE_PAUSE`]. This
//! changes what runs *between* measurements only; durability is untouched
//! (SQLite `synchronous=FULL`, no acknowledgement before fsync).
//! `BENCH_NO_SETTLE=1` measures as before (back to back).
//! After the append table, CPU per SQLite append is printed: the writer
//! thread's (from `/proc/self/task/*/schedstat`, in ns, so repeatable on a
//! noisy machine where wall-clock throughput is not) and the whole process's.

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

/// Dirty plus in-writeback page cache (`/proc/meminfo`) below which the disk
/// counts as settled.
const SETTLED_DIRTY_KIB: u64 = 4 * 1024;
/// The longest the bench waits for the disk to settle before a measurement.
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// A pause after settling, so writes queued in the device finish too.
const SETTLE_PAUSE: Duration = Duration::from_millis(250);
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

/// Whether `BENCH_SECTIONS` (or its default) includes `name`.
fn section(name: &str) -> bool {
    match std::env::var("BENCH_SECTIONS") {
        Ok(v) => v.split(',').any(|s| s.trim() == name),
        Err(_) => name == "appends" || std::env::var("BENCH_CELLS").is_err(),
    }
}

/// Kernel dirty + writeback page cache, in KiB (0 if unreadable).
fn dirty_kib() -> u64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Lets the disk settle before a measurement (see the module docs): a
/// PostgreSQL `CHECKPOINT` when it is in the run, `sync`, then a wait for the
/// page cache's dirty pages to drain.
async fn settle(pg: bool) {
    if std::env::var("BENCH_NO_SETTLE").is_ok_and(|v| v == "1") {
        return;
    }
    if pg {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute("CHECKPOINT").await.unwrap();
    }
    let _ = tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await;
    let start = Instant::now();
    while dirty_kib() > SETTLED_DIRTY_KIB && start.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE_PAUSE).await;
}

/// The append cells chosen by `BENCH_CELLS`, or all of them.
fn cells() -> Option<Vec<(usize, usize)>> {
    let spec = std::env::var("BENCH_CELLS").ok()?;
    let parsed = spec
        .split(',')
        .filter_map(|c| {
            let (w, b) = c.trim().split_once('x')?;
            Some((w.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    Some(parsed)
}

/// A file of the SQLite writer thread in `/proc/self/task/*/` (its name is cut
/// to 15 bytes in `comm`).
fn writer_file(name: &str) -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return String::new();
    };
    tasks
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "trellis-sqlite-")
        })
        .and_then(|t| std::fs::read_to_string(t.path().join(name)).ok())
        .unwrap_or_default()
}

/// CPU time (ns) of the SQLite writer thread.
fn writer_cpu_ns() -> u64 {
    writer_file("schedstat")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes the SQLite writer thread passed to `write` calls (WAL frames and
/// checkpoints): what each commit makes the disk absorb.
fn writer_written_bytes() -> u64 {
    writer_file("io")
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) of the whole process, from `/proc/self/stat` (10 ms ticks).
fn process_cpu_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000_000
}

fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({ "orderId": format!("order-{i}"), "sku": "SKU-12345", "quantity": 3, "price": 1999, "currency": "EUR" })
}

struct Cell {
    events_per_s: f64,
    elapsed: Duration,
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
        elapsed,
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

/// Connections of the PostgreSQL store's pool and of the peer: the same for both, and
/// few enough to leave room for others on a shared server.
const PG_CONNECTIONS: usize = 24;

async fn peer_inserts(writers: usize, batch: usize) -> Cell {
    // Writers share PG_CONNECTIONS connections, as the store's writers share its pool.
    let mut conns = Vec::new();
    for _ in 0..writers.min(PG_CONNECTIONS) {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        conns.push(Arc::new(tokio::sync::Mutex::new(client)));
    }
    let deadline = Instant::now() + secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let shared = conns[w % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let insert = shared
                .lock()
                .await
                .prepare("INSERT INTO trellis_bench_peer (stream, version, event_id, event_type, data, metadata, created_ms) VALUES ($1, $2, $3, $4, $5, NULL, $6)")
                .await
                .unwrap();
            let (mut n, mut lat, mut version) = (0usize, Vec::new(), 0i64);
            let stream = format!("peer-{w}");
            while Instant::now() < deadline {
                let rows: Vec<(String, String)> = (0..batch).map(|i| (uuid::Uuid::new_v4().to_string(), payload(i).to_string())).collect();
                let t = Instant::now();
                let mut client = shared.lock().await;
                let tx = client.transaction().await.unwrap();
                let inserts = rows.iter().map(|(id, data)| {
                    version += 1;
                    let v = version;
                    let (tx, insert, stream) = (&tx, &insert, &stream);
                    async move { tx.execute(insert, &[stream, &v, id, &"ItemAdded", data, &0i64]).await }
                });
                futures::future::try_join_all(inserts.collect::<Vec<_>>()).await.unwrap();
                tx.commit().await.unwrap();
                drop(client);
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

/// The peer of `$all` reads: paging the peer table by position with plain SELECTs through tokio-postgres.
async fn peer_read() -> (usize, f64) {
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let select = client
        .prepare("SELECT position, stream, version, event_id, event_type, data, metadata, created_ms FROM trellis_bench_peer WHERE position >= $1 ORDER BY position LIMIT 1000")
        .await
        .unwrap();
    let start = Instant::now();
    let (mut from, mut n) = (0i64, 0);
    loop {
        let rows = client.query(&select, &[&from]).await.unwrap();
        let Some(last) = rows.last() else { break };
        from = last.get::<_, i64>(0) + 1;
        for r in &rows {
            let _: (
                i64,
                String,
                i64,
                String,
                String,
                String,
                Option<String>,
                i64,
            ) = (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            );
        }
        n += rows.len();
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

/// Latency of live delivery: from the start of the append (so including its
/// durable commit) and from its acknowledgement (the subscription's own share).
async fn live_latency(es: &EventStore, count: usize) -> [(Duration, Duration); 3] {
    let times: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let sub = es.subscribe(SubscriptionOptions::new(
        SubscriptionTarget::Stream("live-1".into()),
        StartFrom::End,
    ));
    let mut sub = Box::pin(sub);
    let writer = {
        let (es, times) = (es.clone(), times.clone());
        tokio::spawn(async move {
            for i in 0..count {
                let start = Instant::now();
                es.append(
                    "live-1",
                    ExpectedVersion::Any,
                    vec![EventData::new("Tick", &i).unwrap()],
                )
                .await
                .unwrap();
                times.lock().push((start, Instant::now()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut delivered = Vec::with_capacity(count);
    for _ in 0..count {
        sub.next().await.unwrap().unwrap();
        delivered.push(Instant::now());
    }
    writer.await.unwrap();
    let times = times.lock();
    let mut from_start: Vec<Duration> = times
        .iter()
        .zip(&delivered)
        .map(|((s, _), d)| d.saturating_duration_since(*s))
        .collect();
    // Delivery may beat the acknowledgement back to the writer: that counts as 0.
    let mut from_ack: Vec<Duration> = times
        .iter()
        .zip(&delivered)
        .map(|((_, a), d)| d.saturating_duration_since(*a))
        .collect();
    // The append's own share: its durable commit and the answer.
    let mut ack: Vec<Duration> = times.iter().map(|(s, a)| a.duration_since(*s)).collect();
    from_start.sort_unstable();
    from_ack.sort_unstable();
    ack.sort_unstable();
    let q = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    [
        (q(&from_start, 0.5), q(&from_start, 0.99)),
        (q(&from_ack, 0.5), q(&from_ack, 0.99)),
        (q(&ack, 0.5), q(&ack, 0.99)),
    ]
}

/// The cells of one row of the live-latency table.
fn live_row(row: &[(Duration, Duration); 3]) -> String {
    row.iter()
        .map(|(p50, p99)| format!("{} | {}", ms(*p50), ms(*p99)))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// How many write+fsync rounds the disk takes per second: the ceiling of
/// durable commits, against which group commit is measured.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let (start, mut n) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs(1) {
        f.write_all(&[0u8; 128]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
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
    let sqlite_only = std::env::var("BENCH_SQLITE_ONLY").is_ok_and(|v| v == "1");
    let pg = if sqlite_only {
        None
    } else {
        Store::open(StoreConfig::Postgres {
            url: PG_URL.into(),
            schema: schema.clone(),
            pool_size: PG_CONNECTIONS,
        })
        .await
        .ok()
    };
    if pg.is_none() && !sqlite_only {
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

    println!(
        "this disk now: {:.0} fsyncs/s (1 s probe in the bench directory)",
        fsync_rate(dir.path())
    );
    println!("durable appends, {:.1} s per cell", secs().as_secs_f64());
    println!("| writers | batch | SQLite events/s | p50 ms | p99 ms | PostgreSQL events/s | p50 ms | p99 ms | peer: plain INSERTs events/s | p50 ms | p99 ms | SQLite / peer | PostgreSQL / peer |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let chosen = cells();
    let all_cells: Vec<(usize, usize)> = WRITERS
        .iter()
        .flat_map(|&w| BATCHES.iter().map(move |&b| (w, b)))
        .collect();
    let mut cpu = Vec::new();
    let appends_cells: &[(usize, usize)] = if section("appends") {
        chosen.as_deref().unwrap_or(&all_cells)
    } else {
        &[]
    };
    let with_pg = pg.is_some();
    for &(writers, batch) in appends_cells {
        let run = format!("{writers}x{batch}");
        settle(with_pg).await;
        let (w0, p0, g0, b0) = (
            writer_cpu_ns(),
            process_cpu_ns(),
            sqlite.group_commit_stats(),
            writer_written_bytes(),
        );
        let s = appends(&sqlite_es, writers, batch, &run).await;
        let (w1, p1, g1, b1) = (
            writer_cpu_ns(),
            process_cpu_ns(),
            sqlite.group_commit_stats(),
            writer_written_bytes(),
        );
        let appended = (s.events_per_s * s.elapsed.as_secs_f64() / batch as f64).max(1.0);
        let per_commit = match (g0, g1) {
            (Some((c0, n0)), Some((c1, n1))) if c1 > c0 => (n1 - n0) as f64 / (c1 - c0) as f64,
            _ => 0.0,
        };
        cpu.push((
            writers,
            batch,
            (w1 - w0) as f64 / 1000.0 / appended,
            p1.saturating_sub(p0) as f64 / 1000.0 / appended,
            per_commit,
            b1.saturating_sub(b0) as f64 / 1024.0 / appended,
        ));
        let (p, peer) = match &pg_es {
            Some(es) => {
                settle(with_pg).await;
                let p = appends(es, writers, batch, &run).await;
                settle(with_pg).await;
                (Some(p), Some(peer_inserts(writers, batch).await))
            }
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

    println!("\nSQLite cost per append (an append is one call, of `batch` events)");
    println!("| writers | batch | writer thread CPU µs | process CPU µs | appends per commit | KiB the writer wrote |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (w, b, wcpu, pcpu, per_commit, kib) in cpu {
        println!("| {w} | {b} | {wcpu:.1} | {pcpu:.1} | {per_commit:.1} | {kib:.1} |");
    }
    if section("reads") {
        println!("\n$all read throughput (pages of 1000)");
        settle(with_pg).await;
        let (n, rate) = read_all(&sqlite_es).await;
        println!("| SQLite | {n} events | {rate:.0} events/s |");
        if let Some(es) = &pg_es {
            settle(with_pg).await;
            let (n, rate) = read_all(es).await;
            println!("| PostgreSQL | {n} events | {rate:.0} events/s |");
            settle(with_pg).await;
            let (n, rate) = peer_read().await;
            println!("| peer: plain SELECTs from PostgreSQL | {n} rows | {rate:.0} rows/s |");
        }
    }

    if section("live") {
        let count = std::env::var("BENCH_LIVE_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(1000);
        println!("\nlive subscription latency ({count} events, one every ~1 ms)");
        println!(
            "| backend | append start → delivery p50 ms | p99 ms | ack → delivery p50 ms | p99 ms | append start → ack p50 ms | p99 ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        settle(with_pg).await;
        let row = live_latency(&sqlite_es, count).await;
        println!("| SQLite | {} |", live_row(&row));
        if let Some(es) = &pg_es {
            settle(with_pg).await;
            let row = live_latency(es, count).await;
            println!("| PostgreSQL | {} |", live_row(&row));
        }
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
