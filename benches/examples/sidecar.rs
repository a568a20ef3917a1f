//! Sidecar overhead (issue: sidecar and ambassador): the latency that an
//! ambassador plus a sidecar add to a call, app → sidecar → sidecar → app,
//! over the same call made directly, at a fixed request rate.
//!
//! Two `trellis run` processes (release build): B runs the echo app and the
//! registry; A, the caller's sidecar, resolves `echo` through B's registry.
//! This program is the load (open loop: requests go out on schedule, each in
//! its own task, whatever the answers do), and also the echo app (`--app`).
//! Direct and sidecar runs alternate for several rounds.
//!
//! `cargo build --release -p trellis -p trellis-benches --example sidecar`
//! `target/release/examples/sidecar [rate] [seconds] [rounds]`
//! (the `trellis` binary is taken from `$TRELLIS_BIN`, else next to this one.)

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn trellis_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRELLIS_BIN") {
        return p.into();
    }
    let me = std::env::current_exe().expect("own path");
    // target/release/examples/sidecar -> target/release/trellis
    me.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("trellis"))
        .expect("a target dir")
}

fn sidecar(
    app_id: &str,
    app_port: u16,
    inbound: u16,
    outbound: u16,
    control: u16,
    registry: Option<u16>,
) -> Proc {
    let me = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(trellis_bin());
    cmd.args(["run", "--app-id", app_id])
        .args(["--app-port", &app_port.to_string()])
        .args(["--inbound", &format!("127.0.0.1:{inbound}")])
        .args(["--outbound", &format!("127.0.0.1:{outbound}")])
        .args(["--control", &format!("127.0.0.1:{control}")]);
    if let Some(r) = registry {
        cmd.args(["--registry", &format!("http://127.0.0.1:{r}")]);
    }
    cmd.arg("--")
        .arg(me)
        .arg("--app")
        // Warnings only: an access line per request is a cost a user can choose.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Proc(cmd.spawn().expect("trellis run starts"))
}

async fn serve_app() -> anyhow::Result<()> {
    let port: u16 = std::env::var("TRELLIS_APP_PORT")?.parse()?;
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// `rate` requests per second to `url` for `secs`; latencies in µs.
async fn open_loop(client: &reqwest::Client, url: &str, rate: u64, secs: u64) -> (Vec<u64>, usize) {
    let lat = Arc::new(Mutex::new(Vec::with_capacity((rate * secs) as usize)));
    let errors = Arc::new(Mutex::new(0usize));
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        tokio::time::sleep_until(start + period * i as u32).await;
        let (client, url, lat, errors) =
            (client.clone(), url.to_owned(), lat.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // Timed from the send: tokio's timer fires up to a millisecond
            // late, and that lateness is the load generator's, not the path's.
            // Each request is its own task, so a slow answer holds back no
            // other send (no coordinated omission).
            let sent = Instant::now();
            let ok = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let us = sent.elapsed().as_micros() as u64;
            if ok {
                lat.lock().expect("lock").push(us);
            } else {
                *errors.lock().expect("lock") += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *lat.lock().expect("lock"));
    v.sort_unstable();
    let e = *errors.lock().expect("lock");
    (v, e)
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--app") {
        return serve_app().await;
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(1000);
    let secs = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(3);

    let (app_b, in_b, out_b, ctl_b) = (free_port(), free_port(), free_port(), free_port());
    let (app_a, in_a, out_a, ctl_a) = (free_port(), free_port(), free_port(), free_port());
    let _b = sidecar("echo", app_b, in_b, out_b, ctl_b, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _a = sidecar("client", app_a, in_a, out_a, ctl_a, Some(ctl_b));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let direct = format!("http://127.0.0.1:{app_b}/");
    let via = format!("http://127.0.0.1:{out_a}/v1/invoke/echo/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(&via)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecars never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm both paths (connections, pools).
    open_loop(&client, &direct, rate, 1).await;
    open_loop(&client, &via, rate, 1).await;

    println!("## Sidecar overhead: {rate} req/s for {secs}s per run, {rounds} rounds, open loop");
    println!("| round | path | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");
    let (mut d50, mut d99, mut v50, mut v99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        for (name, url) in [("direct", &direct), ("app→sidecar→sidecar→app", &via)] {
            let (lat, errors) = open_loop(&client, url, rate, secs).await;
            let (p50, p99, p999) = (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
            println!("| {round} | {name} | {p50:.3} | {p99:.3} | {p999:.3} | {errors} |");
            if name == "direct" {
                d50.push(p50);
                d99.push(p99);
            } else {
                v50.push(p50);
                v99.push(p99);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d50, d99, v50, v99) = (
        median(&mut d50),
        median(&mut d99),
        median(&mut v50),
        median(&mut v99),
    );
    println!("\nMedian of rounds: direct p50 {d50:.3} ms, p99 {d99:.3} ms; through both sidecars p50 {v50:.3} ms, p99 {v99:.3} ms");
    println!(
        "Added by ambassador + sidecar: p50 {:.3} ms, p99 {:.3} ms (bar: < 0.5 ms at p99)",
        v50 - d50,
        v99 - d99
    );
    Ok(())
}
