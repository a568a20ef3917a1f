//! The event store's semantics, written once and run on SQLite and PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ev;
use serde_json::value::to_raw_value;
use trellis_events::{
    append_in, AppendError, DeleteMode, Direction, EventStore, ExpectedVersion as V, ReadAll,
    ReadError, ReadStream, StreamMetadata,
};

both_backends!(
    append_and_read_a_stream_forward_and_backward,
    expected_version_rules,
    one_of_many_concurrent_writers_wins,
    retried_appends_are_idempotent,
    all_and_category_reads_filter_by_type_and_count,
    concurrent_appends_leave_no_gaps_a_reader_could_see,
    a_slow_transaction_never_lets_a_faster_one_overtake_it,
    retention_metadata_hides_old_events,
    soft_delete_recreates_and_tombstone_forbids,
    snapshots_keep_the_newest,
    invalid_appends_write_nothing,
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

async fn retention_metadata_hides_old_events(es: &EventStore) {
    let ns = es.namespace().clone();
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 3600 * 1000;
    ns.write(move |tx| {
        Box::pin(async move {
            append_in(
                tx,
                "ret-1",
                V::NoStream,
                &[ev("Old", 0), ev("Old", 1)],
                two_hours_ago,
            )
            .await
        })
    })
    .await
    .unwrap();
    es.append(
        "ret-1",
        V::Exact(1),
        (2..10).map(|n| ev("New", n)).collect(),
    )
    .await
    .unwrap();
    let versions =
        |s: trellis_events::StreamSlice| s.events.iter().map(|e| e.version).collect::<Vec<_>>();
    es.set_stream_metadata(
        "ret-1",
        StreamMetadata {
            max_age: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        versions(
            es.read_stream("ret-1", ReadStream::default())
                .await
                .unwrap()
        ),
        (2..10).collect::<Vec<_>>()
    );
    es.set_stream_metadata(
        "ret-1",
        StreamMetadata {
            max_count: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        versions(
            es.read_stream("ret-1", ReadStream::default())
                .await
                .unwrap()
        ),
        vec![7, 8, 9]
    );
    let back = es
        .read_stream(
            "ret-1",
            ReadStream {
                direction: Direction::Backward,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(versions(back), vec![9, 8, 7]);
    let custom = to_raw_value(&serde_json::json!({"owner": "billing"})).unwrap();
    es.set_stream_metadata(
        "ret-1",
        StreamMetadata {
            truncate_before: Some(5),
            custom: Some(custom),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        versions(
            es.read_stream("ret-1", ReadStream::default())
                .await
                .unwrap()
        ),
        (5..10).collect::<Vec<_>>()
    );
    let meta = es.stream_metadata("ret-1").await.unwrap();
    assert_eq!(meta.truncate_before, Some(5));
    assert_eq!(meta.max_count, None);
    assert_eq!(meta.custom.unwrap().get(), r#"{"owner":"billing"}"#);
    // Metadata on a stream not yet written is kept for when it is.
    es.set_stream_metadata(
        "pre-1",
        StreamMetadata {
            max_count: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        es.read_stream("pre-1", ReadStream::default()).await,
        Err(ReadError::StreamNotFound { .. })
    ));
    es.append("pre-1", V::NoStream, vec![ev("A", 0), ev("B", 1)])
        .await
        .unwrap();
    assert_eq!(
        versions(
            es.read_stream("pre-1", ReadStream::default())
                .await
                .unwrap()
        ),
        vec![1]
    );
}

async fn soft_delete_recreates_and_tombstone_forbids(es: &EventStore) {
    es.append("soft-1", V::NoStream, vec![ev("A", 0), ev("B", 1)])
        .await
        .unwrap();
    es.save_snapshot("soft-1", 1, to_raw_value(&1).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        es.delete_stream("soft-1", V::Exact(0), DeleteMode::Soft)
            .await,
        Err(AppendError::WrongExpectedVersion {
            actual: Some(1),
            ..
        })
    ));
    es.delete_stream("soft-1", V::Exact(1), DeleteMode::Soft)
        .await
        .unwrap();
    assert!(matches!(
        es.read_stream("soft-1", ReadStream::default()).await,
        Err(ReadError::StreamNotFound { .. })
    ));
    assert!(
        es.read_snapshot("soft-1").await.unwrap().is_none(),
        "a delete drops the snapshot"
    );
    // Recreated: versions continue, the old events stay hidden.
    let r = es
        .append("soft-1", V::NoStream, vec![ev("C", 2)])
        .await
        .unwrap();
    assert_eq!(r.first_version, 2);
    let slice = es
        .read_stream("soft-1", ReadStream::default())
        .await
        .unwrap();
    assert_eq!(
        slice.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2]
    );
    assert!(matches!(
        es.delete_stream("never-1", V::Any, DeleteMode::Soft).await,
        Err(AppendError::StreamNotFound { .. })
    ));

    es.append("tomb-1", V::NoStream, vec![ev("A", 0)])
        .await
        .unwrap();
    es.delete_stream("tomb-1", V::Any, DeleteMode::Tombstone)
        .await
        .unwrap();
    assert!(matches!(
        es.append("tomb-1", V::Any, vec![ev("B", 1)]).await,
        Err(AppendError::StreamDeleted { .. })
    ));
    assert!(matches!(
        es.append("tomb-1", V::NoStream, vec![ev("B", 1)]).await,
        Err(AppendError::StreamDeleted { .. })
    ));
    assert!(matches!(
        es.read_stream("tomb-1", ReadStream::default()).await,
        Err(ReadError::StreamDeleted { .. })
    ));
    assert!(matches!(
        es.delete_stream("tomb-1", V::Any, DeleteMode::Soft).await,
        Err(AppendError::StreamDeleted { .. })
    ));
    assert!(matches!(
        es.set_stream_metadata("tomb-1", StreamMetadata::default())
            .await,
        Err(AppendError::StreamDeleted { .. })
    ));
}

async fn snapshots_keep_the_newest(es: &EventStore) {
    assert!(es.read_snapshot("snap-1").await.unwrap().is_none());
    assert!(matches!(
        es.save_snapshot("snap-1", 0, to_raw_value(&0).unwrap())
            .await,
        Err(AppendError::StreamNotFound { .. })
    ));
    es.append("snap-1", V::NoStream, (0..5).map(|n| ev("E", n)).collect())
        .await
        .unwrap();
    es.save_snapshot(
        "snap-1",
        3,
        to_raw_value(&serde_json::json!({"total": 3})).unwrap(),
    )
    .await
    .unwrap();
    es.save_snapshot(
        "snap-1",
        2,
        to_raw_value(&serde_json::json!({"total": 2})).unwrap(),
    )
    .await
    .unwrap();
    let s = es.read_snapshot("snap-1").await.unwrap().unwrap();
    assert_eq!(
        s.version, 3,
        "an older snapshot does not replace a newer one"
    );
    assert_eq!(s.data.get(), r#"{"total":3}"#);
    assert!(matches!(
        es.save_snapshot("snap-1", 9, to_raw_value(&9).unwrap())
            .await,
        Err(AppendError::InvalidSnapshot { version: 9, .. })
    ));
    es.save_snapshot("snap-1", 4, to_raw_value(&4).unwrap())
        .await
        .unwrap();
    assert_eq!(
        es.read_snapshot("snap-1").await.unwrap().unwrap().version,
        4
    );
}

async fn invalid_appends_write_nothing(es: &EventStore) {
    let limits = *es.limits();
    let big = serde_json::json!({ "blob": "x".repeat(limits.max_event_bytes) });
    let cases: Vec<(&str, Vec<trellis_events::EventData>)> = vec![
        ("", vec![ev("E", 0)]),
        ("$system", vec![ev("E", 0)]),
        ("bad\nname", vec![ev("E", 0)]),
        (
            &*Box::leak("x".repeat(201).into_boxed_str()),
            vec![ev("E", 0)],
        ),
        ("ok-1", vec![]),
        (
            "ok-1",
            vec![trellis_events::EventData::new("Big", &big).unwrap()],
        ),
        (
            "ok-1",
            (0..=limits.max_batch_events as u64)
                .map(|n| ev("E", n))
                .collect(),
        ),
        ("ok-1", vec![ev("", 0)]),
        ("ok-1", {
            let e = ev("E", 0);
            vec![e.clone(), e]
        }),
        ("ok-1", vec![ev("E", 0).with_id(uuid::Uuid::nil())]),
    ];
    for (stream, events) in cases {
        let err = es.append(stream, V::Any, events).await.unwrap_err();
        assert!(
            matches!(
                err,
                AppendError::InvalidStreamName { .. }
                    | AppendError::EmptyBatch
                    | AppendError::EventTooLarge { .. }
                    | AppendError::TooManyEvents { .. }
                    | AppendError::InvalidEvent { .. }
            ),
            "{stream:?}: {err}"
        );
    }
    assert_eq!(es.head_position().await.unwrap(), 0, "nothing was written");
    assert!(matches!(
        es.read_stream("$all", ReadStream::default()).await,
        Err(ReadError::InvalidStreamName { .. })
    ));
}

#[test]
fn cloudevent_carries_id_type_subject_and_positions() {
    let e = trellis_events::RecordedEvent {
        stream: "order-7".into(),
        version: 3,
        position: 42,
        id: uuid::Uuid::new_v4(),
        event_type: "OrderPlaced".into(),
        data: to_raw_value(&serde_json::json!({"total": 10})).unwrap(),
        metadata: Some(to_raw_value(&serde_json::json!({"traceparent": "t"})).unwrap()),
        time: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    };
    let ce = e.to_cloudevent("/trellis/shop");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], e.id.to_string());
    assert_eq!(ce["type"], "OrderPlaced");
    assert_eq!(ce["source"], "/trellis/shop");
    assert_eq!(ce["subject"], "order-7");
    assert_eq!(ce["data"]["total"], 10);
    assert_eq!(ce["streamposition"], 42);
    assert_eq!(ce["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(ce["trellismetadata"]["traceparent"], "t");
}

#[test]
fn expected_version_parses_names_numbers_and_eventstoredb_codes() {
    for (s, v) in [
        ("any", V::Any),
        ("-2", V::Any),
        ("no_stream", V::NoStream),
        ("-1", V::NoStream),
        ("stream-exists", V::StreamExists),
        ("-4", V::StreamExists),
        ("7", V::Exact(7)),
    ] {
        assert_eq!(s.parse::<V>().unwrap(), v, "{s}");
    }
    for bad in ["", "-3", "1.5", "latest", "18446744073709551616"] {
        assert!(bad.parse::<V>().is_err(), "{bad}");
    }
    assert_eq!(serde_json::from_str::<V>("3").unwrap(), V::Exact(3));
    assert_eq!(
        serde_json::from_str::<V>("\"no_stream\"").unwrap(),
        V::NoStream
    );
    assert!(serde_json::from_str::<V>("-9").is_err());
    assert_eq!(trellis_events::category_of("order-12-3"), "order");
    assert_eq!(trellis_events::category_of("order"), "order");
}
