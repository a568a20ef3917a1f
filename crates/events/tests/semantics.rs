//! The event store's semantics, written once and run on SQLite and PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ev;
use trellis_events::{
    append_in, AppendError, Direction, EventStore, ExpectedVersion as V, ReadAll, ReadError,
    ReadStream,
};

both_backends!(
    append_and_read_a_stream_forward_and_backward,
    expected_version_rules,
    one_of_many_concurrent_writers_wins,
    retried_appends_are_idempotent,
    all_and_category_reads_filter_by_type_and_count,
    concurrent_appends_leave_no_gaps_a_reader_could_see,
    a_slow_transaction_never_lets_a_faster_one_overtake_it,
);

async fn append_and_read_a_stream_forward_and_backward(es: &EventStore) {
    let r = es
        .append(
            "order-1",
            V::NoStream,
            (0..5).map(|n| ev("Added", n)).collect(),
        )
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (0, 4));
    assert_eq!((r.first_position, r.last_position), (1, 5));
    assert!(!r.idempotent);
    let fwd = es
        .read_stream(
            "order-1",
            ReadStream {
                from: Some(1),
                max_count: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        fwd.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(fwd.next, Some(4));
    assert_eq!(fwd.stream_version, 4);
    assert_eq!(
        fwd.events[0].data_as::<serde_json::Value>().unwrap()["n"],
        1
    );
    assert_eq!(fwd.events[0].stream, "order-1");
    let back = es
        .read_stream(
            "order-1",
            ReadStream {
                direction: Direction::Backward,
                max_count: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        back.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![4, 3]
    );
    assert_eq!(back.next, Some(2));
    let back_from = es
        .read_stream(
            "order-1",
            ReadStream {
                from: Some(1),
                direction: Direction::Backward,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        back_from
            .events
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![1, 0]
    );
    assert_eq!(back_from.next, None);
    assert!(matches!(
        es.read_stream("order-404", ReadStream::default()).await,
        Err(ReadError::StreamNotFound { .. })
    ));
}

async fn expected_version_rules(es: &EventStore) {
    let wrong = |r: Result<_, AppendError>, want_actual: Option<u64>| match r {
        Err(AppendError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want_actual),
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    };
    wrong(
        es.append("s-1", V::StreamExists, vec![ev("E", 0)]).await,
        None,
    );
    wrong(es.append("s-1", V::Exact(0), vec![ev("E", 0)]).await, None);
    es.append("s-1", V::NoStream, vec![ev("E", 0)])
        .await
        .unwrap();
    wrong(
        es.append("s-1", V::NoStream, vec![ev("E", 1)]).await,
        Some(0),
    );
    wrong(
        es.append("s-1", V::Exact(5), vec![ev("E", 1)]).await,
        Some(0),
    );
    es.append("s-1", V::Exact(0), vec![ev("E", 1)])
        .await
        .unwrap();
    es.append("s-1", V::StreamExists, vec![ev("E", 2)])
        .await
        .unwrap();
    let r = es.append("s-1", V::Any, vec![ev("E", 3)]).await.unwrap();
    assert_eq!(r.last_version, 3);
    let slice = es.read_stream("s-1", ReadStream::default()).await.unwrap();
    assert_eq!(slice.events.len(), 4, "failed appends wrote nothing");
}

async fn one_of_many_concurrent_writers_wins(es: &EventStore) {
    es.append("race-1", V::NoStream, vec![ev("Start", 0)])
        .await
        .unwrap();
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for w in 0..16 {
            let es = es.clone();
            tasks.push(tokio::spawn(async move {
                es.append("race-1", V::Exact(round), vec![ev("Bid", w)])
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    winners += 1;
                    assert_eq!(r.last_version, round + 1);
                }
                Err(AppendError::WrongExpectedVersion {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, V::Exact(round));
                    assert_eq!(actual, Some(round + 1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    // Concurrent creators expecting no stream: one wins as well.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            es.append("fresh-1", V::NoStream, vec![ev("Create", w)])
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(AppendError::WrongExpectedVersion {
                actual: Some(0), ..
            }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn retried_appends_are_idempotent(es: &EventStore) {
    let batch = vec![ev("A", 0), ev("B", 1), ev("C", 2)];
    let first = es
        .append("idem-1", V::NoStream, batch.clone())
        .await
        .unwrap();
    es.append("other-1", V::Any, vec![ev("X", 0)])
        .await
        .unwrap();
    // The retry's expectation no longer holds, but it is recognised as the same append.
    let again = es
        .append("idem-1", V::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.idempotent);
    assert_eq!(
        (
            again.first_version,
            again.last_version,
            again.first_position,
            again.last_position
        ),
        (
            first.first_version,
            first.last_version,
            first.first_position,
            first.last_position
        )
    );
    assert_eq!(
        es.head_position().await.unwrap(),
        4,
        "the retry wrote nothing"
    );
    // Reusing one id elsewhere, or a different batch around an old id, is a conflict.
    let reused = batch[1].clone();
    assert!(matches!(
        es.append("idem-2", V::Any, vec![reused.clone()]).await,
        Err(AppendError::DuplicateEventId { id }) if id == reused.id
    ));
    assert!(matches!(
        es.append("idem-1", V::Any, vec![batch[0].clone(), ev("New", 9)])
            .await,
        Err(AppendError::DuplicateEventId { .. })
    ));
    // Concurrent retries of one append: one write, every caller gets the same positions.
    let batch = vec![ev("P", 0), ev("Q", 1)];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (es, batch) = (es.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            es.append("idem-3", V::Any, batch).await.unwrap()
        }));
    }
    let mut results = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        results.insert((r.first_position, r.last_position));
    }
    assert_eq!(results.len(), 1);
    assert_eq!(es.head_position().await.unwrap(), 6);
}

async fn all_and_category_reads_filter_by_type_and_count(es: &EventStore) {
    for i in 0..3 {
        es.append(
            &format!("order-{i}"),
            V::Any,
            vec![ev("Placed", i), ev("Paid", i)],
        )
        .await
        .unwrap();
        es.append(&format!("user-{i}"), V::Any, vec![ev("Joined", i)])
            .await
            .unwrap();
    }
    es.append("order", V::Any, vec![ev("Placed", 9)])
        .await
        .unwrap();
    let all = es.read_all(ReadAll::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let page = es
        .read_all(ReadAll {
            from: Some(4),
            max_count: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    let back = es
        .read_all(ReadAll {
            direction: Direction::Backward,
            max_count: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![10, 9]
    );
    let orders = es.read_category("order", ReadAll::default()).await.unwrap();
    assert_eq!(
        orders.len(),
        7,
        "order-0..2 and the stream named just `order`"
    );
    assert!(orders.windows(2).all(|w| w[0].position < w[1].position));
    let placed = es
        .read_category(
            "order",
            ReadAll {
                types: Some(vec!["Placed".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(placed.len(), 4);
    let typed = es
        .read_all(ReadAll {
            types: Some(vec!["Joined".into(), "Paid".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(typed.len(), 6);
    let stream_typed = es
        .read_stream(
            "order-1",
            ReadStream {
                types: Some(vec!["Paid".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        stream_typed
            .events
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert!(es
        .read_category("nothing", ReadAll::default())
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_appends_leave_no_gaps_a_reader_could_see(es: &EventStore) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (es, stop) = (es.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let all = es
                    .read_all(ReadAll {
                        max_count: 10_000,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                for (i, e) in all.iter().enumerate() {
                    assert_eq!(
                        e.position,
                        i as u64 + 1,
                        "a reader saw a hole before position {}",
                        e.position
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    let mut tasks = Vec::new();
    for w in 0..24u64 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let n = if i % 3 == 0 { 3 } else { 1 };
                es.append(
                    &format!("load-{}", w % 6),
                    V::Any,
                    (0..n).map(|k| ev("L", k)).collect(),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    let all = es
        .read_all(ReadAll {
            max_count: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 24 * (5 * 3 + 10));
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64 + 1));
    // Per stream, versions are contiguous too.
    for s in 0..6 {
        let slice = es
            .read_stream(
                &format!("load-{s}"),
                ReadStream {
                    max_count: 10_000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(slice
            .events
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64));
    }
}

/// The classic flaw of sequence-based stores: a transaction that took
/// position 1 commits after one that took position 2, and a reader that saw 2
/// skips 1 for ever. Here the fast append must wait for the slow one.
async fn a_slow_transaction_never_lets_a_faster_one_overtake_it(es: &EventStore) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (took, taken) = tokio::sync::oneshot::channel::<u64>();
    let ns = es.namespace().clone();
    let slow = tokio::spawn(async move {
        ns.write(move |tx| {
            Box::pin(async move {
                let r = append_in(tx, "slow-1", V::Any, &[ev("Slow", 0)], 0).await?;
                let _ = took.send(r.first_position);
                let _ = released.await;
                Ok::<_, AppendError>(r)
            })
        })
        .await
    });
    assert_eq!(
        taken.await.unwrap(),
        1,
        "the slow transaction holds position 1, uncommitted"
    );
    let fast = {
        let es = es.clone();
        tokio::spawn(async move { es.append("fast-1", V::Any, vec![ev("Fast", 0)]).await })
    };
    // Give a broken implementation ample time to commit the fast append first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        es.read_all(ReadAll::default()).await.unwrap().is_empty(),
        "nothing is visible while position 1 is in flight"
    );
    assert!(
        !fast.is_finished(),
        "the fast append waits for the slow one's commit"
    );
    release.send(()).unwrap();
    let slow = slow.await.unwrap().unwrap();
    let fast = fast.await.unwrap().unwrap();
    assert_eq!(fast.first_position, slow.last_position + 1);
    let all = es.read_all(ReadAll::default()).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.position, e.stream.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "slow-1"), (2, "fast-1")]
    );

    // A transaction that rolls back releases its positions: no hole either.
    let ns = es.namespace().clone();
    let failed: Result<(), AppendError> = ns
        .write(|tx| {
            Box::pin(async move {
                append_in(tx, "rolled-1", V::Any, &[ev("Gone", 0)], 0).await?;
                Err(AppendError::EmptyBatch)
            })
        })
        .await;
    assert!(failed.is_err());
    let next = es
        .append("after-1", V::Any, vec![ev("After", 0)])
        .await
        .unwrap();
    assert_eq!(next.first_position, 3);
}
