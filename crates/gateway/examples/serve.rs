//! Runs the gateway alone from a TOML file holding the gateway sections
//! (`[[listeners]]`, `[[routes]]`, `[[upstreams]]`): the benchmark script
//! uses it, and it is handy for trying a config by hand.
//!
//! `cargo run --release -p trellis-gateway --example serve -- gateway.toml [worker-threads]`

use std::time::Duration;

// The allocator the `trellis` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: serve <gateway.toml> [worker-threads]")?;
    let workers: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(1);
    let text = std::fs::read_to_string(&path)?;
    let config: trellis_gateway::GatewayConfig = toml::from_str(&text)?;
    if std::env::var_os("TRELLIS_ACCESS_LOG").is_some() {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .init();
    }
    // TRELLIS_CURRENT_THREAD=1 with one worker: tokio's single-threaded scheduler.
    let runtime = if workers == 1 && std::env::var_os("TRELLIS_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let mut registry = prometheus_client::registry::Registry::default();
        let gateway = trellis_gateway::Gateway::start(config, &mut registry).await?;
        tokio::signal::ctrl_c().await?;
        gateway.shutdown(Duration::from_secs(5)).await;
        Ok(())
    })
}
