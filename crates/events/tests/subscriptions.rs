//! Catch-up-then-live subscriptions, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::ev;
use futures::StreamExt;
use trellis_events::{
    append_in, EventStore, ExpectedVersion as V, StartFrom, SubscriptionOptions,
    SubscriptionTarget as Target,
};

both_backends!(
    catch_up_switches_to_live_without_gaps_or_duplicates,
    category_stream_and_type_filters_with_checkpoints,
    start_from_end_sees_only_new_events,
    appends_in_a_callers_transaction_and_by_other_processes_are_delivered,
    live_delivery_skips_no_position_across_holes_in_the_live_tail,
    concurrent_appends_are_delivered_live_once_each_in_position_order,
);

const WAIT: Duration = Duration::from_secs(20);

async fn take(
    s: impl futures::Stream<Item = Result<trellis_events::RecordedEvent, trellis_events::ReadError>>,
    n: usize,
) -> Vec<trellis_events::RecordedEvent> {
    tokio::time::timeout(WAIT, s.take(n).map(|r| r.unwrap()).collect::<Vec<_>>())
        .await
        .expect("subscription stalled")
}

async fn catch_up_switches_to_live_without_gaps_or_duplicates(es: &EventStore) {
    for i in 0..60 {
        es.append(&format!("pre-{}", i % 4), V::Any, vec![ev("Pre", i)])
            .await
            .unwrap();
    }
    let mut opts = SubscriptionOptions::new(Target::All, StartFrom::Beginning);
    opts.page_size = 7; // many catch-up pages, racing the live writers below
    let sub = es.subscribe(opts);
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let es = es.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    let n = 1 + (i % 3) as usize;
                    es.append(
                        &format!("live-{w}"),
                        V::Any,
                        (0..n as u64).map(|k| ev("Live", k)).collect(),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let total = 60 + 8 * (10 + 20 + 30);
    let got = take(sub, total).await;
    for w in writers {
        w.await.unwrap();
    }
    let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>());
}

async fn category_stream_and_type_filters_with_checkpoints(es: &EventStore) {
    for i in 0..5u64 {
        es.append(
            &format!("order-{i}"),
            V::Any,
            vec![ev("Placed", i), ev("Paid", i)],
        )
        .await
        .unwrap();
        es.append(&format!("cart-{i}"), V::Any, vec![ev("Paid", i)])
            .await
            .unwrap();
    }
    let paid = es.subscribe(
        SubscriptionOptions::new(Target::Category("order".into()), StartFrom::Beginning)
            .with_types(vec!["Paid".into()]),
    );
    let got = take(paid, 5).await;
    assert!(got
        .iter()
        .all(|e| e.event_type == "Paid" && e.stream.starts_with("order-")));
    // Resume after a checkpoint: only later events come.
    let checkpoint = got[2].position;
    let resumed = es.subscribe(
        SubscriptionOptions::new(
            Target::Category("order".into()),
            StartFrom::After(checkpoint),
        )
        .with_types(vec!["Paid".into()]),
    );
    let writer = {
        let es = es.clone();
        tokio::spawn(async move {
            es.append("order-9", V::Any, vec![ev("Placed", 9), ev("Paid", 9)])
                .await
                .unwrap()
        })
    };
    let rest = take(resumed, 3).await;
    writer.await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.position).collect::<Vec<_>>(),
        got[3..]
            .iter()
            .map(|e| e.position)
            .chain([rest[2].position])
            .collect::<Vec<_>>()
    );
    assert_eq!(rest[2].stream, "order-9");
    let one = es.subscribe(SubscriptionOptions::new(
        Target::Stream("order-3".into()),
        StartFrom::Beginning,
    ));
    let events = take(one, 2).await;
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

async fn start_from_end_sees_only_new_events(es: &EventStore) {
    es.append("old-1", V::Any, vec![ev("Old", 0)])
        .await
        .unwrap();
    let mut sub = Box::pin(es.subscribe(SubscriptionOptions::new(Target::All, StartFrom::End)));
    // Nothing is there yet: the subscription waits.
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
        .await
        .is_err());
    es.append("new-1", V::Any, vec![ev("New", 0)])
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.stream.as_str(), e.position), ("new-1", 2));
    // Then it waits for the next one.
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
        .await
        .is_err());
}

async fn appends_in_a_callers_transaction_and_by_other_processes_are_delivered(es: &EventStore) {
    let mut sub =
        Box::pin(es.subscribe(SubscriptionOptions::new(Target::All, StartFrom::Beginning)));
    let ns = es.namespace().clone();
    let r = ns
        .write(|tx| {
            Box::pin(async move { append_in(tx, "tx-1", V::Any, &[ev("InTx", 0)], 0).await })
        })
        .await
        .unwrap();
    es.notify_appended(r.last_position);
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.stream, "tx-1");
    // Another EventStore over the same namespace stands for another process:
    // no in-process notification reaches us, the poll does.
    let other = EventStore::open(es.namespace().clone()).await.unwrap();
    let waiting = tokio::spawn(async move { tokio::time::timeout(WAIT, sub.next()).await });
    tokio::time::sleep(Duration::from_millis(100)).await; // let the subscriber go to sleep first
    other
        .append("elsewhere-1", V::Any, vec![ev("Far", 0)])
        .await
        .unwrap();
    let e = waiting.await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(e.stream, "elsewhere-1");
}

/// Positions appended around the in-memory live tail (in a caller's own
/// transaction, or by another `EventStore`) leave a hole the tail cannot
/// fill: the subscription must read those from storage, never skip them.
async fn live_delivery_skips_no_position_across_holes_in_the_live_tail(es: &EventStore) {
    let mut sub = Box::pin(es.subscribe(SubscriptionOptions::new(Target::All, StartFrom::End)));
    let other = EventStore::open(es.namespace().clone()).await.unwrap();
    es.append("hole-1", V::Any, vec![ev("A", 0)]).await.unwrap();
    // Delivered from the tail; the subscription now waits at A's position.
    let a = take(sub.as_mut(), 1).await;
    let ns = es.namespace().clone();
    let r = ns
        .write(|tx| {
            Box::pin(async move { append_in(tx, "hole-1", V::Any, &[ev("B", 1)], 0).await })
        })
        .await
        .unwrap();
    // Not notified on purpose: the next append's report shows the hole.
    let _ = r;
    other
        .append("hole-1", V::Any, vec![ev("C", 2)])
        .await
        .unwrap();
    es.append("hole-1", V::Any, vec![ev("D", 3), ev("E", 4)])
        .await
        .unwrap();
    let mut got = a;
    got.extend(take(sub.as_mut(), 4).await);
    let types: Vec<&str> = got.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["A", "B", "C", "D", "E"]);
    let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
    let first = positions[0];
    assert_eq!(positions, (first..first + 5).collect::<Vec<_>>());
    es.append("hole-1", V::Any, vec![ev("F", 5)]).await.unwrap();
    let next = take(sub.as_mut(), 1).await;
    assert_eq!(next[0].position, first + 5);
}

/// Many writers at once (on PostgreSQL their commit reports may arrive out of
/// order): a live subscriber gets every position once, in order.
async fn concurrent_appends_are_delivered_live_once_each_in_position_order(es: &EventStore) {
    const WRITERS: usize = 16;
    const EACH: usize = 25;
    let start = es.head_position().await.unwrap();
    let sub = es.subscribe(SubscriptionOptions::new(
        Target::All,
        StartFrom::After(start),
    ));
    let stream_sub = es.subscribe(SubscriptionOptions::new(
        Target::Stream("conc-3".into()),
        StartFrom::After(start),
    ));
    let total: usize = (0..EACH).map(|i| 1 + i % 3).sum::<usize>() * WRITERS;
    let per_stream = total / WRITERS;
    // Following while the appends run, so most deliveries come from the live tail.
    let all = tokio::spawn(take(sub, total));
    let one = tokio::spawn(take(stream_sub, per_stream));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let batch = (0..1 + i % 3)
                    .map(|j| ev("Conc", (i * 10 + j) as u64))
                    .collect();
                es.append(&format!("conc-{w}"), V::Any, batch)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = all.await.unwrap();
    let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
    let want: Vec<u64> = (start + 1..=start + total as u64).collect();
    assert_eq!(positions, want);
    let mine = one.await.unwrap();
    let versions: Vec<u64> = mine.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..per_stream as u64).collect::<Vec<_>>());
}
