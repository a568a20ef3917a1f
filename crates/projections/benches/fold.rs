//! Projection throughput.
//!
//! - `fold_engine`: folding order events into per-customer documents in
//!   memory, the script engine's share of the work: Rhai (what the crate
//!   uses) against JavaScript on QuickJS (`rquickjs`, the alternative the
//!   issue names) with the same sandbox limits, and hand-written Rust on
//!   `serde_json` as the floor.
//! - `projection_catch_up`: a projection folding a pre-written `$all` of
//!   20,000 events into a SQLite read model, end to end (read, fold, upsert,
//!   checkpoint), against a plain catch-up subscription reading the same events.
//!
//! Run: `cargo bench -p trellis-projections --bench fold -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use serde_json::{json, Value};
use trellis_events::{
    EventData, EventStore, ExpectedVersion, StartFrom, SubscriptionOptions, SubscriptionTarget,
};
use trellis_projections::{
    Outcome, ProjectionDefinition, Projections, Script, ScriptLimits, Source,
};
use trellis_store::{Store, StoreConfig};

const RHAI: &str = r#"
fn id(event) { event.data.customer }
fn OrderPlaced(doc, event) {
    if doc == () { doc = #{ customer: event.data.customer, orders: 0, total: 0 }; }
    doc.orders += 1;
    doc.total += event.data.amount;
    doc
}
"#;

const JS: &str = r#"
const handlers = {
  OrderPlaced(doc, event) {
    if (doc === undefined) doc = { customer: event.data.customer, orders: 0, total: 0 };
    doc.orders += 1;
    doc.total += event.data.amount;
    return doc;
  },
};
function id(event) { return event.data.customer; }
const docs = new Map();
function fold(json) {
  const event = JSON.parse(json);
  const key = id(event);
  const doc = handlers[event.type](docs.get(key), event);
  docs.set(key, doc);
  return JSON.stringify(doc);
}
"#;

const N: usize = 10_000;

fn order_events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| {
            EventData::new(
                "OrderPlaced",
                &json!({ "customer": format!("c{}", i % 100), "amount": (i % 13) as i64 + 1, "sku": "sku-123", "note": "a typical order event" }),
            )
            .expect("event")
        })
        .collect()
}

fn recorded(events: &[EventData]) -> Vec<trellis_events::RecordedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| trellis_events::RecordedEvent {
            stream: format!("order-{i}"),
            version: 0,
            position: i as u64 + 1,
            id: e.id,
            event_type: e.event_type.clone(),
            data: e.data.clone(),
            metadata: None,
            time: std::time::SystemTime::now(),
        })
        .collect()
}

fn fold_engine(c: &mut Criterion) {
    let events = recorded(&order_events(N));
    let mut g = c.benchmark_group("fold_engine");
    g.throughput(Throughput::Elements(N as u64));

    let script = Script::compile(RHAI, ScriptLimits::default()).expect("compiles");
    g.bench_function("rhai", |b| {
        b.iter(|| {
            let mut docs: HashMap<String, rhai::Dynamic> = HashMap::new();
            let mut bytes = 0;
            for e in &events {
                let v = Script::event_value(e).expect("event");
                let id = script.document_id(e, &v).expect("id").expect("some id");
                let cur = docs.get(&id).cloned();
                if let Outcome::Upsert { doc, json } =
                    script.apply(&e.event_type, cur, v).expect("fold")
                {
                    bytes += json.len();
                    docs.insert(id, doc);
                }
            }
            bytes
        })
    });

    let rt = rquickjs::Runtime::new().expect("quickjs runtime");
    // The same sandbox: a memory limit, a stack limit and an operation budget
    // enforced by the interrupt handler (reset before every event).
    rt.set_memory_limit(64 << 20);
    rt.set_max_stack_size(512 << 10);
    let budget = Arc::new(AtomicU64::new(0));
    let b2 = budget.clone();
    rt.set_interrupt_handler(Some(Box::new(move || {
        b2.fetch_add(1, Ordering::Relaxed) > 100_000
    })));
    let ctx = rquickjs::Context::full(&rt).expect("quickjs context");
    ctx.with(|ctx| ctx.eval::<(), _>(JS).expect("js compiles"));
    let raw: Vec<String> = events
        .iter()
        .map(|e| json!({"type": e.event_type, "stream": e.stream, "position": e.position, "data": serde_json::from_str::<Value>(e.data.get()).expect("json")}).to_string())
        .collect();
    g.bench_function("quickjs", |b| {
        b.iter(|| {
            ctx.with(|ctx| {
                let fold: rquickjs::Function = ctx.globals().get("fold").expect("fold");
                let mut bytes = 0;
                for e in &raw {
                    budget.store(0, Ordering::Relaxed);
                    let out: String = fold.call((e.as_str(),)).expect("fold");
                    bytes += out.len();
                }
                bytes
            })
        })
    });

    g.bench_function("native_rust", |b| {
        b.iter(|| {
            let mut docs: HashMap<String, Value> = HashMap::new();
            let mut bytes = 0;
            for e in &events {
                let data: Value = serde_json::from_str(e.data.get()).expect("json");
                let customer = data["customer"].as_str().unwrap_or_default().to_owned();
                let doc = docs
                    .entry(customer.clone())
                    .or_insert_with(|| json!({"customer": customer, "orders": 0, "total": 0}));
                doc["orders"] = json!(doc["orders"].as_i64().unwrap_or(0) + 1);
                doc["total"] = json!(
                    doc["total"].as_i64().unwrap_or(0) + data["amount"].as_i64().unwrap_or(0)
                );
                bytes += serde_json::to_string(doc).expect("json").len();
            }
            bytes
        })
    });
    g.finish();
}

const CATCH_UP: usize = 20_000;

fn projection_catch_up(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, projections) = rt.block_on(async {
        let store = Store::open(StoreConfig::in_data_dir(dir.path()))
            .await
            .expect("store");
        let ns = store.system_namespace("bench").await.expect("ns");
        let events = EventStore::open(ns).await.expect("events");
        let all = order_events(CATCH_UP);
        for (i, chunk) in all.chunks(500).enumerate() {
            events
                .append(&format!("order-{i}"), ExpectedVersion::Any, chunk.to_vec())
                .await
                .expect("append");
        }
        let projections = Projections::open(events.clone())
            .await
            .expect("projections");
        (events, projections)
    });
    let mut g = c.benchmark_group("projection_catch_up");
    g.throughput(Throughput::Elements(CATCH_UP as u64));
    g.sample_size(10);
    let mut n = 0;
    g.bench_function(BenchmarkId::new("rhai_projection_sqlite", CATCH_UP), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let name = format!("orders-{n}");
                    let start = Instant::now();
                    projections
                        .create(ProjectionDefinition::new(&name, Source::All, RHAI))
                        .await
                        .expect("create");
                    projections
                        .wait_for(&name, CATCH_UP as u64, Duration::from_secs(120))
                        .await
                        .expect("caught up");
                    total += start.elapsed();
                    projections.delete(&name).await.expect("delete");
                }
                total
            })
        })
    });
    g.bench_function(
        BenchmarkId::new("subscription_read_only_sqlite", CATCH_UP),
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut opts =
                            SubscriptionOptions::new(SubscriptionTarget::All, StartFrom::Beginning);
                        opts.page_size = 1000;
                        let count = events.subscribe(opts).take(CATCH_UP).count().await;
                        assert_eq!(count, CATCH_UP);
                    }
                    start.elapsed()
                })
            })
        },
    );
    g.finish();
}

criterion_group!(benches, fold_engine, projection_catch_up);
criterion_main!(benches);
