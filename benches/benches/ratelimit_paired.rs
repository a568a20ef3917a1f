//! The direct limiter against `governor+state`, measured in pairs.
//!
//! criterion measures one function after another, a few seconds each. On a
//! VM whose speed wanders by tens of percent within a minute (see
//! `docs/benchmarks/limits.md`), two functions measured that way sit in
//! different weather, and a 5 % question cannot be settled. Here each pair
//! is two short batches back to back, one of each limiter, whose order
//! turns about from pair to pair; the figure is the median of the pairs'
//! ratios, with the spread of the middle 80 %. Both limiters get the same
//! generous quota, so every call takes the admitted path, and each call
//! reads what the `RateLimit-*` headers need (for governor, the remaining
//! burst through `StateInformationMiddleware`).
//!
//! Run: `cargo bench -p trellis-benches --bench ratelimit_paired [-- PAIRS]`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_resilience::ratelimit::{DirectStore, FastClock, Quota, RateLimiter};

const RATE: u32 = 1_000_000_000;
/// Calls per thread in one batch: a few milliseconds, short enough for the
/// machine to stay the same across a pair.
const CALLS: u64 = 200_000;

type Governor = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::DefaultClock,
    governor::middleware::StateInformationMiddleware,
>;

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(61)
        .max(1);
    let Some(rate) = NonZeroU32::new(RATE) else {
        return;
    };
    let Ok(quota) = Quota::per_second(RATE) else {
        return;
    };
    let trellis = Arc::new(RateLimiter::new(
        quota,
        DirectStore::with_clock(FastClock::new()),
    ));
    let governor: Arc<Governor> = Arc::new(
        governor::RateLimiter::direct(governor::Quota::per_second(rate))
            .with_middleware::<governor::middleware::StateInformationMiddleware>(),
    );
    println!("| threads | pairs | Trellis ns/call (median) | governor+state ns/call (median) | ratio, median of pairs | middle 80 % of ratios |");
    println!("|---|---:|---:|---:|---:|---|");
    for threads in [1, 2] {
        let ours = {
            let t = trellis.clone();
            move || {
                let d = t.check_now(&());
                black_box((d.allowed, d.remaining));
            }
        };
        let peer = {
            let g = governor.clone();
            move || {
                black_box(g.check().map(|s| s.remaining_burst_capacity()).is_ok());
            }
        };
        // Warm both up (and the CPU's frequency with them).
        batch(threads, ours.clone());
        batch(threads, peer.clone());
        let (mut ratios, mut ns_ours, mut ns_peer) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (a, b) = if pair % 2 == 0 {
                let a = batch(threads, ours.clone());
                (a, batch(threads, peer.clone()))
            } else {
                let b = batch(threads, peer.clone());
                (batch(threads, ours.clone()), b)
            };
            let per_call = |d: Duration| d.as_secs_f64() * 1e9 / CALLS as f64;
            ns_ours.push(per_call(a));
            ns_peer.push(per_call(b));
            ratios.push(a.as_secs_f64() / b.as_secs_f64());
        }
        println!(
            "| {threads} | {pairs} | {:.1} | {:.1} | **{:.3}** | {:.3}–{:.3} |",
            quantile(&mut ns_ours, 0.5),
            quantile(&mut ns_peer, 0.5),
            quantile(&mut ratios, 0.5),
            quantile(&mut ratios, 0.1),
            quantile(&mut ratios, 0.9),
        );
    }
}

/// Wall time for `CALLS` calls of `op` on each of `threads` threads at once.
fn batch<F>(threads: usize, op: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    if threads == 1 {
        let start = Instant::now();
        for _ in 0..CALLS {
            op();
        }
        return start.elapsed();
    }
    trellis_benches::contended(threads, CALLS, move |_, _| op())
}

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i]
}
