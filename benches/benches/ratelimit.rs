//! Rate limiting: Trellis's in-process limiter against `governor`, on the
//! allowed path (the one every request takes), from one thread and from two
//! threads contending for the same limiter; and the Redis store's one round
//! trip per decision against a bare `INCR` round trip.
//!
//! Both limiters get the same quota, generous enough that every call is
//! admitted. Run: `cargo bench -p trellis-benches --bench ratelimit --
//! --warm-up-time 1 --measurement-time 3`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use trellis_benches::contended;
use trellis_resilience::ratelimit::{
    Clock, DirectStore, FastClock, MemoryStore, MemoryStoreConfig, Quota, RateLimiter, RedisStore,
    RedisStoreConfig, TokioClock,
};

const RATE: u32 = 1_000_000_000;
const KEYS: usize = 1024;

fn quota() -> Quota {
    Quota::per_second(RATE).unwrap()
}

fn governor_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(RATE).unwrap())
}

fn keys() -> Arc<Vec<String>> {
    Arc::new((0..KEYS).map(|i| format!("client-{i}")).collect())
}

fn trellis_keyed<C: Clock>(clock: C) -> RateLimiter<String, MemoryStore<String, C>> {
    let config = MemoryStoreConfig {
        max_keys: 100_000,
        ..MemoryStoreConfig::default()
    };
    RateLimiter::new(quota(), MemoryStore::with_clock(config, clock).unwrap())
}

fn direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/direct");
    let gov = Arc::new(governor::RateLimiter::direct(governor_quota()));
    group.bench_function("governor/1-thread", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    group.bench_function("governor/2-threads", |b| {
        let gov = gov.clone();
        b.iter_custom(move |iters| {
            let gov = gov.clone();
            contended(2, iters, move |_, _| {
                black_box(gov.check().is_ok());
            })
        })
    });
    // The like-for-like peer: governor reporting what the RateLimit-*
    // headers need (remaining burst), as every Trellis decision does.
    let informed = Arc::new(
        governor::RateLimiter::direct(governor_quota())
            .with_middleware::<governor::middleware::StateInformationMiddleware>(),
    );
    group.bench_function("governor+state/1-thread", |b| {
        b.iter(|| black_box(informed.check().map(|s| s.remaining_burst_capacity())))
    });
    group.bench_function("governor+state/2-threads", |b| {
        let informed = informed.clone();
        b.iter_custom(move |iters| {
            let informed = informed.clone();
            contended(2, iters, move |_, _| {
                black_box(
                    informed
                        .check()
                        .map(|s| s.remaining_burst_capacity())
                        .is_ok(),
                );
            })
        })
    });
    trellis_direct(&mut group, "trellis-tokioclock", TokioClock::new());
    trellis_direct(&mut group, "trellis-fastclock", FastClock::new());
    group.finish();
}

fn trellis_direct<C: Clock>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    clock: C,
) {
    let ours = RateLimiter::new(quota(), DirectStore::with_clock(clock));
    group.bench_function(format!("{name}/1-thread"), |b| {
        // Like governor+state: whether admitted, and the burst left.
        b.iter(|| {
            let d = ours.check_now(&());
            black_box((d.allowed, d.remaining))
        })
    });
    group.bench_function(format!("{name}/2-threads"), |b| {
        let ours = ours.clone();
        b.iter_custom(move |iters| {
            let ours = ours.clone();
            contended(2, iters, move |_, _| {
                let d = ours.check_now(&());
                black_box((d.allowed, d.remaining));
            })
        })
    });
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/keyed");
    let keys = keys();
    let gov = Arc::new(governor::RateLimiter::<String, _, _>::keyed(
        governor_quota(),
    ));
    for key in keys.iter() {
        let _ = gov.check_key(key);
    }
    group.bench_function("governor/1-thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    // Two threads over the same keys: they meet on shards and on hot keys.
    group.bench_function("governor/2-threads", |b| {
        let (gov, keys) = (gov.clone(), keys.clone());
        b.iter_custom(move |iters| {
            let (gov, keys) = (gov.clone(), keys.clone());
            contended(2, iters, move |t, i| {
                let key = &keys[(i as usize * 7 + t) % KEYS];
                black_box(gov.check_key(key).is_ok());
            })
        })
    });
    // Like for like: governor also reporting the remaining burst.
    let informed = Arc::new(
        governor::RateLimiter::<String, _, _>::keyed(governor_quota())
            .with_middleware::<governor::middleware::StateInformationMiddleware>(),
    );
    for key in keys.iter() {
        let _ = informed.check_key(key);
    }
    group.bench_function("governor+state/1-thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(
                informed
                    .check_key(&keys[i])
                    .map(|s| s.remaining_burst_capacity()),
            )
        })
    });
    group.bench_function("governor+state/2-threads", |b| {
        let (informed, keys) = (informed.clone(), keys.clone());
        b.iter_custom(move |iters| {
            let (informed, keys) = (informed.clone(), keys.clone());
            contended(2, iters, move |t, i| {
                let key = &keys[(i as usize * 7 + t) % KEYS];
                black_box(
                    informed
                        .check_key(key)
                        .map(|s| s.remaining_burst_capacity())
                        .is_ok(),
                );
            })
        })
    });
    trellis_keyed_bench(&mut group, "trellis-tokioclock", &keys, TokioClock::new());
    trellis_keyed_bench(&mut group, "trellis-fastclock", &keys, FastClock::new());
    group.finish();
}

fn trellis_keyed_bench<C: Clock>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    keys: &Arc<Vec<String>>,
    clock: C,
) {
    let ours = trellis_keyed(clock);
    // Touch every key once so the loop measures the steady state.
    for key in keys.iter() {
        ours.check_now(key);
    }
    group.bench_function(format!("{name}/1-thread"), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(ours.check_now(&keys[i]).allowed)
        })
    });
    group.bench_function(format!("{name}/2-threads"), |b| {
        let (ours, keys) = (ours.clone(), keys.clone());
        b.iter_custom(move |iters| {
            let (ours, keys) = (ours.clone(), keys.clone());
            contended(2, iters, move |t, i| {
                let key = &keys[(i as usize * 7 + t) % KEYS];
                black_box(ours.check_now(key).allowed);
            })
        })
    });
}

/// One decision through the Redis store (one `EVALSHA` through redis-rs)
/// against one `INCR` written as raw RESP on a bare socket — the cheapest
/// round trip Redis offers, with no client library at all. Skipped when
/// Redis is down.
fn redis_round_trip(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = "127.0.0.1:6379";
    let socket = rt.block_on(async {
        let connect = tokio::net::TcpStream::connect(addr);
        tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .ok()?
            .ok()
    });
    let Some(socket) = socket else {
        eprintln!("skipped: ratelimit/redis: Redis at {addr} unreachable");
        return;
    };
    socket.set_nodelay(true).unwrap();
    // A tokio mutex (never contended here) because the guard spans awaits.
    let socket = tokio::sync::Mutex::new(socket);
    let prefix = format!("trellis-bench:{}:", std::process::id());
    let incr = {
        let key = format!("{prefix}incr");
        format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
    };
    let store = RedisStore::new(RedisStoreConfig {
        prefix: prefix.clone(),
        timeout: Duration::from_secs(1),
        ..RedisStoreConfig::new(format!("redis://{addr}/"))
    })
    .unwrap();
    let limiter = RateLimiter::new(quota(), store);
    let key = "client".to_owned();
    let mut group = c.benchmark_group("ratelimit/redis");
    group.bench_function("raw-INCR", |b| {
        b.to_async(&rt).iter(|| async {
            let mut socket = socket.lock().await;
            socket.write_all(&incr).await.unwrap();
            // The reply is `:<n>\r\n`; read until its end.
            let mut reply = [0u8; 32];
            let mut len = 0;
            while !reply[..len].ends_with(b"\r\n") {
                len += socket.read(&mut reply[len..]).await.unwrap();
            }
            black_box(len)
        })
    });
    group.bench_function("trellis-decision", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(limiter.check(&key).await.allowed) })
    });
    group.finish();
    assert_eq!(
        limiter.snapshot().store_failures,
        0,
        "Redis failed during the bench"
    );
    rt.block_on(async {
        let mut socket = socket.lock().await;
        for key in ["incr", "client"] {
            let key = format!("{prefix}{key}");
            let del = format!("*2\r\n$3\r\nDEL\r\n${}\r\n{key}\r\n", key.len());
            socket.write_all(del.as_bytes()).await.unwrap();
            let mut reply = [0u8; 32];
            let _ = socket.read(&mut reply).await;
        }
    });
}

criterion_group!(benches, direct, keyed, redis_round_trip);
criterion_main!(benches);
