//! The REST API: happy paths, problem details, hostile input (nothing written), SSE.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use trellis_events::http::router;
use trellis_events::EventStore;

async fn call(
    es: &EventStore,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, String, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router(es.clone())
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, ctype, value)
}

fn event(ty: &str) -> Value {
    json!({ "eventId": uuid::Uuid::new_v4(), "eventType": ty, "data": { "x": 1 } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_conflict_and_idempotent_retry() {
    let f = common::sqlite().await;
    let es = &f.events;
    let batch = json!([event("Placed"), event("Paid")]);
    let (s, _, v) = call(
        es,
        "POST",
        "/streams/order-1",
        &[("ES-ExpectedVersion", "no_stream")],
        batch.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["lastVersion"], 1);
    assert_eq!(v["lastPosition"], 2);
    let (s, _, v) = call(
        es,
        "POST",
        "/streams/order-1",
        &[("ES-ExpectedVersion", "no_stream")],
        batch.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "a retry of the same ids is a no-op: {v}");
    assert_eq!(v["idempotent"], true);
    let body = json!({ "expectedVersion": 0, "events": [event("Shipped")] });
    let (s, ctype, v) = call(es, "POST", "/streams/order-1", &[], body.to_string()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(
        (
            v["code"].as_str(),
            v["status"].as_u64(),
            v["actualVersion"].as_u64()
        ),
        (Some("wrong_expected_version"), Some(409), Some(1))
    );
    assert!(v["type"].is_string() && v["title"].is_string() && v["detail"].is_string());

    let (s, _, v) = call(
        es,
        "GET",
        "/streams/order-1?from=1&limit=5",
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["eventType"], "Paid");
    assert_eq!(v["events"][0]["data"]["x"], 1);
    let (_, _, v) = call(
        es,
        "GET",
        "/streams/order-1?direction=backward&limit=1",
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(v["events"][0]["version"], 1);
    assert_eq!(v["next"], 0);
    call(
        es,
        "POST",
        "/streams/user-1",
        &[],
        json!([event("Joined")]).to_string(),
    )
    .await;
    let (_, _, v) = call(
        es,
        "GET",
        "/streams/$all?from=2&limit=2",
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(v["next"], 4);
    let (_, _, v) = call(
        es,
        "GET",
        "/categories/order?type=Paid,Shipped",
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let (s, _, v) = call(es, "GET", "/streams/missing-1", &[], Body::empty()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("stream_not_found"))
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_snapshot_and_delete_endpoints() {
    let f = common::sqlite().await;
    let es = &f.events;
    call(
        es,
        "POST",
        "/streams/acct-1",
        &[],
        json!([event("A"), event("B"), event("C")]).to_string(),
    )
    .await;
    let (s, _, v) = call(
        es,
        "PUT",
        "/streams/acct-1/metadata",
        &[],
        json!({"maxCount": 2, "maxAge": "1h"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, v) = call(es, "GET", "/streams/acct-1/metadata", &[], Body::empty()).await;
    assert_eq!(
        (v["maxCount"].as_u64(), v["maxAge"].as_str()),
        (Some(2), Some("1h"))
    );
    let (_, _, v) = call(es, "GET", "/streams/acct-1", &[], Body::empty()).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    let (s, _, v) = call(
        es,
        "PUT",
        "/streams/acct-1/metadata",
        &[],
        json!({"maxAge": "soon"}).to_string(),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );

    let (s, _, _) = call(
        es,
        "PUT",
        "/streams/acct-1/snapshot",
        &[],
        json!({"version": 2, "data": {"balance": 7}}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, _, v) = call(es, "GET", "/streams/acct-1/snapshot", &[], Body::empty()).await;
    assert_eq!(
        (v["version"].as_u64(), v["data"]["balance"].as_u64()),
        (Some(2), Some(7))
    );
    let (s, _, v) = call(
        es,
        "PUT",
        "/streams/acct-1/snapshot",
        &[],
        json!({"version": 99, "data": {}}).to_string(),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_snapshot"))
    );

    let (s, _, v) = call(
        es,
        "DELETE",
        "/streams/acct-1?mode=tombstone",
        &[("ES-ExpectedVersion", "0")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, v["actualVersion"].as_u64()),
        (StatusCode::CONFLICT, Some(2))
    );
    let (s, _, _) = call(
        es,
        "DELETE",
        "/streams/acct-1?mode=tombstone",
        &[("ES-ExpectedVersion", "2")],
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, v) = call(
        es,
        "POST",
        "/streams/acct-1",
        &[],
        json!([event("D")]).to_string(),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::GONE, Some("stream_deleted"))
    );
    let (s, _, v) = call(es, "GET", "/streams/acct-1/snapshot", &[], Body::empty()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("snapshot_not_found"))
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_4xx_and_writes_nothing() {
    let f = common::sqlite().await;
    let es = &f.events;
    let ok = json!([event("E")]).to_string();
    let huge = format!(
        r#"[{{"eventId":"{}","eventType":"E","data":"{}"}}]"#,
        uuid::Uuid::new_v4(),
        "x".repeat(10 << 20)
    );
    let big_event = format!(
        r#"[{{"eventId":"{}","eventType":"E","data":"{}"}}]"#,
        uuid::Uuid::new_v4(),
        "x".repeat(2 << 20)
    );
    let many: Vec<Value> = (0..1001).map(|_| event("E")).collect();
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("POST", "/streams/s-1", vec![], "{not json".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("POST", "/streams/s-1", vec![], "[".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("POST", "/streams/s-1", vec![], "".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("POST", "/streams/s-1", vec![], "42".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("POST", "/streams/s-1", vec![], format!("{ok} trailing"), StatusCode::BAD_REQUEST, "malformed_json"),
        ("POST", "/streams/s-1", vec![], r#"[{"eventId":"not-a-uuid","eventType":"E","data":{}}]"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], r#"[{"eventId":"0b5c3a4e-8d3f-4a57-9d51-7e6f1c2b3a4d","eventType":5,"data":{}}]"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], r#"[{"eventId":"0b5c3a4e-8d3f-4a57-9d51-7e6f1c2b3a4d","eventType":"E"}]"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], r#"[{"eventId":"0b5c3a4e-8d3f-4a57-9d51-7e6f1c2b3a4d","eventType":"E","data":{},"extra":1}]"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], json!({"expectedVersion": "abc", "events": []}).to_string(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], json!({"expectedVersion": -7, "events": [event("E")]}).to_string(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], json!({"events": "nope"}).to_string(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("POST", "/streams/s-1", vec![], "[]".into(), StatusCode::BAD_REQUEST, "empty_batch"),
        ("POST", "/streams/s-1", vec![], json!([event("")]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_event"),
        ("POST", "/streams/s-1", vec![], huge, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("POST", "/streams/s-1", vec![], big_event, StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
        ("POST", "/streams/s-1", vec![], Value::Array(many).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
        ("POST", "/streams/$system", vec![], ok.clone(), StatusCode::BAD_REQUEST, "invalid_stream_name"),
        ("POST", "/streams/$all", vec![], ok.clone(), StatusCode::BAD_REQUEST, "invalid_stream_name"),
        ("POST", "/streams/bad%0Aname", vec![], ok.clone(), StatusCode::BAD_REQUEST, "invalid_stream_name"),
        ("POST", "/streams/%20", vec![], ok.clone(), StatusCode::BAD_REQUEST, "invalid_stream_name"),
        ("POST", &*Box::leak(format!("/streams/{}", "x".repeat(300)).into_boxed_str()), vec![], ok.clone(), StatusCode::BAD_REQUEST, "invalid_stream_name"),
        ("POST", "/streams/s-1", vec![("ES-ExpectedVersion", "soon")], ok.clone(), StatusCode::BAD_REQUEST, "invalid_expected_version"),
        ("POST", "/streams/s-1", vec![("ES-ExpectedVersion", "-3")], ok.clone(), StatusCode::BAD_REQUEST, "invalid_expected_version"),
        ("POST", "/streams/s-1", vec![("ES-ExpectedVersion", "1")], json!({"expectedVersion": 2, "events": [event("E")]}).to_string(), StatusCode::BAD_REQUEST, "invalid_expected_version"),
        ("GET", "/streams/s-1?limit=0", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", "/streams/s-1?limit=99999999999999999999", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", "/streams/s-1?from=-1", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", "/streams/s-1?direction=up", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", "/streams/s-1?bogus=1", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("DELETE", "/streams/s-1?mode=maybe", vec![], String::new(), StatusCode::BAD_REQUEST, "invalid_query"),
        ("PUT", "/streams/s-1/snapshot", vec![], r#"{"version":"one","data":{}}"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("PUT", "/streams/s-1/metadata", vec![], r#"{"maxCount":-1}"#.into(), StatusCode::BAD_REQUEST, "invalid_body"),
        ("GET", "/streams/s-1/subscribe", vec![("Last-Event-ID", "x")], String::new(), StatusCode::BAD_REQUEST, "invalid_last_event_id"),
        ("GET", "/nowhere", vec![], String::new(), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (method, uri, headers, body, status, code) in cases {
        let (s, ctype, v) = call(es, method, uri, &headers, body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{method} {}: {v}",
            &uri[..uri.len().min(60)]
        );
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(v["status"].as_u64(), Some(status.as_u16() as u64));
    }
    assert_eq!(
        es.head_position().await.unwrap(),
        0,
        "no hostile request wrote anything"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_catch_up_then_live_events_with_positions_as_ids() {
    let f = common::sqlite().await;
    let es = f.events.clone();
    call(
        &es,
        "POST",
        "/streams/feed-1",
        &[],
        json!([event("Old")]).to_string(),
    )
    .await;
    let resp = router(es.clone())
        .oneshot(
            Request::get("/streams/$all/subscribe?type=Old,New")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    call(
        &es,
        "POST",
        "/streams/feed-1",
        &[],
        json!([event("Skipped"), event("New")]).to_string(),
    )
    .await;
    let mut text = String::new();
    while !(text.contains("id: 1\n") && text.contains("id: 3\n")) {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("SSE stalled")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(
        text.contains("event: Old") && text.contains("event: New"),
        "{text}"
    );
    assert!(!text.contains("Skipped"), "the type filter applies: {text}");
    // A reconnecting client resumes after Last-Event-ID.
    let resp = router(es.clone())
        .oneshot(
            Request::get("/streams/feed-1/subscribe")
                .header("Last-Event-ID", "2")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(first.contains("id: 3\n"), "{first}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_token_reaches_only_its_own_namespace() {
    use trellis_events::http::{router_for, EventStores};
    let f = common::sqlite().await;
    let shop = f.store.create_namespace("shop").await.unwrap();
    let billing = f.store.create_namespace("billing").await.unwrap();
    let app = router_for(EventStores::with_namespaces(
        f.events.clone(),
        f.store.clone(),
    ));
    let send = |token: Option<&str>, method: &str, uri: &str, body: String| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("Trellis-Namespace-Token", t);
        }
        let app = app.clone();
        let req = req.body(Body::from(body)).unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, _) = send(
        Some(shop.as_str()),
        "POST",
        "/streams/order-1",
        json!([event("Placed")]).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = send(
        Some(shop.as_str()),
        "GET",
        "/streams/order-1",
        String::new(),
    )
    .await;
    assert_eq!(
        (s, v["events"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (s, _) = send(
        Some(billing.as_str()),
        "GET",
        "/streams/order-1",
        String::new(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "billing cannot see shop's stream");
    let (_, v) = send(None, "GET", "/streams/$all", String::new()).await;
    assert_eq!(
        v["events"].as_array().map(Vec::len),
        Some(0),
        "nor can the default namespace"
    );
    let forged = format!("shop.{}", "f".repeat(64));
    let (s, v) = send(Some(&forged), "GET", "/streams/order-1", String::new()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_namespace_token"))
    );
    // The single-store router refuses tokens rather than ignoring them.
    let (s, _, _) = call(
        &f.events,
        "GET",
        "/streams/$all",
        &[("Trellis-Namespace-Token", shop.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    f.cleanup().await;
}
