//! Backoff strategies under contention: the AWS "Exponential Backoff and
//! Jitter" experiment, on trellis's real `Backoff`.
//!
//! N clients start together; each must make one successful optimistic-
//! concurrency write to one shared record. Time is slotted by the length of
//! one write: of the clients writing in the same slot, one commits and the
//! others find the version moved and fail, then retry after their backoff
//! delay (rounded up to whole slots). The simulation is discrete-event and
//! seeded, so it is fast and reproducible; every figure is a mean over
//! `TRIALS` seeds.
//!
//! Run: `cargo bench -p trellis-benches --bench backoff_contention`

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use trellis_resilience::retry::{Backoff, Jitter};

/// One write; the simulation's unit of time.
const SLOT: Duration = Duration::from_millis(1);
const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(2);
const TRIALS: u64 = 200;

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    calls: u64,
    /// Slots until the last client's write committed.
    finished: u64,
}

/// One trial: `clients` contend; returns calls made and time to finish.
fn simulate(backoff: Backoff, clients: usize, seed: u64) -> Run {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut delays: Vec<_> = (0..clients)
        .map(|c| {
            backoff.delays_with(fastrand::Rng::with_seed(
                seed.wrapping_mul(1_000_003) ^ c as u64,
            ))
        })
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> =
        (0..clients).map(|c| Reverse((0, c))).collect();
    let mut run = Run::default();
    let mut contenders = Vec::with_capacity(clients);
    while let Some(Reverse((slot, first))) = queue.pop() {
        contenders.clear();
        contenders.push(first);
        while let Some(&Reverse((s, c))) = queue.peek() {
            if s != slot {
                break;
            }
            queue.pop();
            contenders.push(c);
        }
        run.calls += contenders.len() as u64;
        let winner = contenders[rng.usize(..contenders.len())];
        run.finished = slot + 1;
        for &c in &contenders {
            if c == winner {
                continue;
            }
            let delay = delays[c].next_delay();
            let wait = delay.as_nanos().div_ceil(SLOT.as_nanos()) as u64;
            queue.push(Reverse((slot + 1 + wait, c)));
        }
    }
    run
}

fn main() {
    // Criterion passes flags like `--bench`; this harness takes none.
    let strategies = [
        ("no backoff", Backoff::None),
        (
            "exponential, no jitter",
            Backoff::exponential(BASE, CAP).with_jitter(Jitter::None),
        ),
        (
            "full jitter",
            Backoff::exponential(BASE, CAP).with_jitter(Jitter::Full),
        ),
        (
            "equal jitter",
            Backoff::exponential(BASE, CAP).with_jitter(Jitter::Equal),
        ),
        (
            "decorrelated jitter",
            Backoff::exponential(BASE, CAP).with_jitter(Jitter::Decorrelated),
        ),
    ];
    println!(
        "Backoff under contention: one write = {SLOT:?}, base {BASE:?}, cap {CAP:?}, mean of {TRIALS} seeded trials\n"
    );
    for clients in [10, 50, 100] {
        println!("{clients} clients");
        println!(
            "| strategy | calls (mean) | calls per client | time to finish (ms, mean) | time (ms, worst) |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, backoff) in strategies {
            let runs: Vec<Run> = (0..TRIALS)
                .map(|seed| simulate(backoff, clients, seed))
                .collect();
            let calls = runs.iter().map(|r| r.calls).sum::<u64>() as f64 / TRIALS as f64;
            let ms = |slots: u64| slots as f64 * SLOT.as_secs_f64() * 1000.0;
            let time = runs.iter().map(|r| ms(r.finished)).sum::<f64>() / TRIALS as f64;
            let worst = runs.iter().map(|r| ms(r.finished)).fold(0.0, f64::max);
            println!(
                "| {name} | {calls:.0} | {:.1} | {time:.0} | {worst:.0} |",
                calls / clients as f64
            );
        }
        println!();
    }
}
