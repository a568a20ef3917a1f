//! Benchmarks live in `benches/`; see docs/BENCHMARKS.md. This library holds
//! what more than one bench binary needs.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Runs `op(thread, i)` `iters` times on each of `threads` threads at once;
/// the wall time is the per-call latency under contention.
pub fn contended<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    op(t, i);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        // A panicking op is a broken bench: say so rather than time it.
        h.join().expect("a bench thread panicked");
    }
    start.elapsed()
}
