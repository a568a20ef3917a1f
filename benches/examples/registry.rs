//! Registry benchmarks (issue: service registry and discovery).
//!
//! 1. Watch propagation: a `trellis` node (in process: registry, gateway and
//!    control API) holding 1,000 services of 10 instances each, with its
//!    gateway following every one of them by name. Each trial registers an
//!    instance of one more service over the REST API and times until the
//!    gateway routes a request to it; then deregisters it and times until
//!    the gateway stops. p50/p99 over the trials.
//! 2. Registry writes and discovery reads per second: the embedded registry
//!    (SQLite store, durable), the etcd-backed registry, and, on the same
//!    etcd in the same run, the raw puts and gets a client such as `etcdctl`
//!    makes, with the ratios.
//!
//! `cargo run --release -p trellis-benches --example registry -- [trials] [writes]`
//! (etcd comes from /usr/bin/etcd, started on free ports in a temp dir.)

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_discovery::{EtcdConfig, Filter, Registration, Registry, RegistryConfig};

const SERVICES: usize = 1000;
const PER_SERVICE: usize = 10;
const CONCURRENCY: usize = 16;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn registration(port: u16) -> Registration {
    serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": port, "tags": ["bench"], "meta": {"version": "1.2.3", "zone": "a"}
    }))
    .expect("a valid registration")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let trials = args.first().copied().unwrap_or(200);
    let writes = args.get(1).copied().unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    propagation(dir.path(), trials).await?;
    throughput(dir.path(), writes).await?;
    Ok(())
}

async fn propagation(dir: &Path, trials: usize) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let text = format!(
        r#"
[control]
listen = "127.0.0.1:0"
[data]
dir = '{}'
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
[[upstreams]]
name = "services"
service = "*"
[[routes]]
name = "invoke"
match = {{ path_prefix = "/svc" }}
upstream = "services"
service_from = "path"
"#,
        dir.join("node").display()
    );
    let config = trellis::config::Config::parse(&text, Path::new("bench.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = trellis::up::Node::start(trellis::up::NodeOptions::new(config)).await?;
    let control = node.control_addr();
    let edge = node.listener_addr("edge").expect("edge listener");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;

    eprintln!("registering {SERVICES} services x {PER_SERVICE} instances over REST...");
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, next) = (http.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= SERVICES * PER_SERVICE {
                    return;
                }
                let (s, i) = (n / PER_SERVICE, n % PER_SERVICE);
                let url = format!("http://{control}/v1/registry/services/svc-{s:04}/instances/i-{i}");
                let body = serde_json::json!({"address": "127.0.0.1", "port": 20000 + i, "tags": ["bench"]});
                let _ = http.put(url).json(&body).send().await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    eprintln!(
        "  {} registrations in {:?}",
        SERVICES * PER_SERVICE,
        started.elapsed()
    );
    // The gateway follows every service by name.
    for s in 0..SERVICES {
        let _ = http
            .get(format!("http://{edge}/svc/svc-{s:04}/"))
            .send()
            .await;
    }

    let (mut up, mut down) = (Vec::new(), Vec::new());
    for t in 0..trials {
        let service = format!("target-{}", t % 4);
        let id = format!("t-{t}");
        let url = format!("http://{control}/v1/registry/services/{service}/instances/{id}");
        // Make sure the gateway already follows (and has nothing for) this service.
        let _ = http
            .get(format!("http://{edge}/svc/{service}/"))
            .send()
            .await;
        let t0 = Instant::now();
        let body = serde_json::json!({"address": "127.0.0.1", "port": live.port()});
        http.put(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        while !http
            .get(format!("http://{edge}/svc/{service}/"))
            .send()
            .await?
            .status()
            .is_success()
        {}
        up.push(t0.elapsed());
        let t1 = Instant::now();
        http.delete(&url).send().await?.error_for_status()?;
        while http
            .get(format!("http://{edge}/svc/{service}/"))
            .send()
            .await?
            .status()
            .is_success()
        {}
        down.push(t1.elapsed());
    }
    up.sort();
    down.sort();
    println!("## Watch propagation ({SERVICES} services x {PER_SERVICE} instances registered, gateway following all; {trials} trials)");
    println!("| change | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| register -> routed | {:.2} | {:.2} | {:.2} |",
        pct(&up, 0.5),
        pct(&up, 0.99),
        pct(&up, 1.0)
    );
    println!(
        "| deregister -> not routed | {:.2} | {:.2} | {:.2} |",
        pct(&down, 0.5),
        pct(&down, 0.99),
        pct(&down, 1.0)
    );
    println!("(each includes the REST call itself, durable on the SQLite store)\n");
    node.shutdown().trigger();
    node.run_until_stopped().await?;
    Ok(())
}

/// Runs `n` operations `op(i)` with [`CONCURRENCY`] in flight; operations per second.
async fn rate<F, Fut>(n: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn registry_rates(r: Registry, writes: usize) -> (f64, f64) {
    let w = {
        let r = r.clone();
        rate(writes, move |i| {
            let r = r.clone();
            async move {
                r.register(
                    &format!("svc-{:03}", i % 100),
                    &format!("i-{i}"),
                    registration(20000),
                )
                .await
                .expect("registered");
            }
        })
        .await
    };
    let reads = writes * 20;
    let rd = rate(reads, move |i| {
        let r = r.clone();
        async move {
            let (_, found) = r.discover(&format!("svc-{:03}", i % 100), &Filter::default());
            assert!(!found.is_empty());
        }
    })
    .await;
    (w, rd)
}

async fn throughput(dir: &Path, writes: usize) -> anyhow::Result<()> {
    let config = RegistryConfig::default();
    let store = trellis_store::Store::open(trellis_store::StoreConfig::in_data_dir(
        dir.join("embedded"),
    ))
    .await?;
    let ns = store.system_namespace("registry").await?;
    let embedded = Registry::open(ns, config.clone()).await?;
    let (ew, er) = registry_rates(embedded, writes).await;

    let etcd = trellis_discovery::testing::TestEtcd::start()
        .ok_or_else(|| anyhow::anyhow!("/usr/bin/etcd is needed (apt-get install etcd-server)"))?;
    let url = etcd.url().to_owned();
    let etcd_config = EtcdConfig {
        endpoints: vec![url.clone()],
        ..EtcdConfig::default()
    };
    let shared = Registry::open_etcd(config, &etcd_config).await?;
    let (tw, tr) = registry_rates(shared, writes).await;

    // The peer: what etcdctl does, on the same etcd — a put of the same JSON
    // under a lease-free key, and a linearizable get of one key.
    let client = etcd_client::Client::connect([&url], None).await?;
    let value = serde_json::to_vec(&registration(20000))?;
    let pw = {
        let (client, value) = (client.clone(), value.clone());
        rate(writes, move |i| {
            let (mut c, v) = (client.clone(), value.clone());
            async move {
                c.put(format!("/peer/svc-{:03}/i-{i}", i % 100), v, None)
                    .await
                    .expect("put");
            }
        })
        .await
    };
    let pr = rate(writes * 2, move |i| {
        let mut c = client.clone();
        async move {
            let r = c
                .get(format!("/peer/svc-{:03}/i-{}", i % 100, i % writes), None)
                .await
                .expect("get");
            assert!(!r.kvs().is_empty());
        }
    })
    .await;

    println!("## Registry writes and reads per second ({CONCURRENCY} in flight, {writes} writes)");
    println!("| | writes/s | reads/s |");
    println!("|---|---|---|");
    println!("| embedded (SQLite store, durable) | {ew:.0} | {er:.0} |");
    println!("| on etcd (register = put + own watch applied) | {tw:.0} | {tr:.0} |");
    println!("| etcd put / get (etcdctl-level peer) | {pw:.0} | {pr:.0} |");
    println!(
        "| ratio Trellis on etcd / peer | {:.2} | {:.1} |",
        tw / pw,
        tr / pr
    );
    println!("(discovery reads are answered from each node's mirror; the peer's gets are linearizable reads from etcd)");
    Ok(())
}
