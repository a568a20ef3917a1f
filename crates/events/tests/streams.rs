//! Stream management and validation, written once and run on SQLite and
//! PostgreSQL: retention metadata, soft delete and tombstones, snapshots,
//! limits; plus the pure conversions (CloudEvents, expected-version parsing).

mod common;

use std::time::Duration;

use common::ev;
use serde_json::value::to_raw_value;
use trellis_events::{
    append_in, AppendError, DeleteMode, Direction, EventStore, ExpectedVersion as V, ReadError,
    ReadStream, StreamMetadata,
};

both_backends!(
    retention_metadata_hides_old_events,
    soft_delete_recreates_and_tombstone_forbids,
    snapshots_keep_the_newest,
    invalid_appends_write_nothing,
);

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
