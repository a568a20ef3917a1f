//! Hostile definitions and the REST API (on SQLite; the storage paths are
//! covered on both backends by `projections.rs`).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use trellis_projections::{
    ProjectionDefinition, ProjectionError, ScriptError, ScriptLimits, Source,
};

fn def(name: &str, script: &str) -> ProjectionDefinition {
    ProjectionDefinition::new(name, Source::All, script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_definitions_get_clear_errors_and_create_nothing() {
    let f = common::sqlite().await;
    let p = &f.projections;
    let err = p
        .create(def("p", "fn handle(doc, event) { doc +* }"))
        .await
        .unwrap_err();
    match err {
        ProjectionError::Script(ScriptError::Syntax(m)) => assert!(m.contains("line 1"), "{m}"),
        other => panic!("{other}"),
    }
    let huge = format!(
        "fn handle(doc, event) {{ doc }}\n// {}",
        "x".repeat(ScriptLimits::default().max_script_bytes)
    );
    assert!(matches!(
        p.create(def("p", &huge)).await.unwrap_err(),
        ProjectionError::Script(ScriptError::TooLarge { .. })
    ));
    let nested = format!(
        "fn handle(doc, event) {{ {}1{} }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(matches!(
        p.create(def("p", &nested)).await.unwrap_err(),
        ProjectionError::Script(ScriptError::Syntax(_))
    ));
    assert!(matches!(
        p.create(def("p", "fn helper(x) { x }")).await.unwrap_err(),
        ProjectionError::Script(ScriptError::NoHandler)
    ));
    assert!(matches!(
        p.create(def("p", "fn id(a, b) { a } fn handle(d, e) { d }"))
            .await
            .unwrap_err(),
        ProjectionError::Script(ScriptError::WrongArity { .. })
    ));
    assert!(matches!(
        p.create(def("p", "fn handle(d, e) { eval(\"1\") }"))
            .await
            .unwrap_err(),
        ProjectionError::Script(ScriptError::Syntax(_))
    ));
    for bad in ["", "Upper", "1abc", "a/b", &"a".repeat(65)] {
        assert!(matches!(
            p.create(def(bad, "fn handle(d, e) { d }"))
                .await
                .unwrap_err(),
            ProjectionError::InvalidName { .. }
        ));
    }
    let bad_source =
        ProjectionDefinition::new("p", Source::Stream("$all".into()), "fn handle(d, e) { d }");
    assert!(matches!(
        p.create(bad_source).await.unwrap_err(),
        ProjectionError::InvalidDefinition(_)
    ));
    assert!(p.names().is_empty(), "nothing was created");
    p.create(def("p", "fn handle(d, e) { d }")).await.unwrap();
    assert!(matches!(
        p.create(def("p", "fn handle(d, e) { d }"))
            .await
            .unwrap_err(),
        ProjectionError::AlreadyExists(_)
    ));
    assert!(matches!(
        p.pause("nope").await.unwrap_err(),
        ProjectionError::NotFound(_)
    ));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_the_wrong_type_faults_with_its_name() {
    let f = common::sqlite().await;
    f.projections
        .create(def("p", "fn handle(doc, event) { 42 }"))
        .await
        .unwrap();
    let at = common::append(&f.events, "s-1", "E", json!({})).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let fault = loop {
        if let Some(fault) = f.projections.status("p").await.unwrap().fault {
            break fault;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(fault.position, at);
    assert!(
        fault.message.contains("`handle` returned a i64"),
        "{}",
        fault.message
    );
    f.cleanup().await;
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, ctype, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_creates_controls_and_queries_projections() {
    let f = common::sqlite().await;
    let app = trellis_projections::http::router(f.projections.clone());
    let script = "fn id(e) { e.data.who } fn Hi(doc, e) { if doc == () { doc = #{ who: e.data.who, n: 0 }; } doc.n += 1; doc }";
    let (s, _, body) = call(
        &app,
        "POST",
        "/projections",
        Some(json!({"name": "greetings", "source": "$all", "script": script})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "running");
    for who in ["ann", "bob", "ann"] {
        common::append(&f.events, "greet-1", "Hi", json!({ "who": who })).await;
    }
    let head = f.events.head_position().await.unwrap();
    f.projections
        .wait_for("greetings", head, common::WAIT)
        .await
        .unwrap();

    let (s, _, body) = call(&app, "GET", "/projections/greetings/documents/ann", None).await;
    assert_eq!((s, &body["doc"]["n"]), (StatusCode::OK, &json!(2)));
    let (s, _, body) = call(
        &app,
        "GET",
        "/projections/greetings/documents?filter.n=1&sort=-who&limit=5",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["documents"][0]["id"], "bob");
    assert_eq!(body["documents"].as_array().unwrap().len(), 1);
    let (s, _, body) = call(&app, "GET", "/projections/greetings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["status"]["position"], json!(head));
    assert_eq!(body["definition"]["source"], "$all");
    let (s, _, body) = call(&app, "POST", "/projections/greetings/pause", None).await;
    assert_eq!((s, &body["state"]), (StatusCode::OK, &json!("paused")));
    let (s, _, body) = call(&app, "POST", "/projections/greetings/reset", None).await;
    assert_eq!((s, &body["position"]), (StatusCode::OK, &json!(0)));
    let (s, _, body) = call(&app, "POST", "/projections/greetings/rebuild", None).await;
    assert_eq!((s, &body["state"]), (StatusCode::OK, &json!("running")));
    let (s, _, body) = call(&app, "GET", "/projections", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["projections"].as_array().unwrap().len(), 1);

    // Errors are problem details naming what was wrong.
    let (s, ctype, body) = call(
        &app,
        "POST",
        "/projections",
        Some(json!({"name": "x", "source": "$all", "script": "fn handle(d, e) {"})),
    )
    .await;
    assert_eq!(
        (s, ctype.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "application/problem+json")
    );
    assert_eq!(body["code"], "invalid_script");
    let (s, _, body) = call(
        &app,
        "POST",
        "/projections",
        Some(json!({"name": "x", "source": {"planet": "mars"}, "script": ""})),
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_body"))
    );
    let (s, _, body) = call(&app, "GET", "/projections/nope/documents", None).await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("projection_not_found"))
    );
    let (s, _, body) = call(
        &app,
        "GET",
        "/projections/greetings/documents?bogus=1",
        None,
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_query"))
    );
    let (s, _, body) = call(&app, "GET", "/projections/greetings/documents/zed", None).await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("document_not_found"))
    );
    let (s, _, body) = call(
        &app,
        "PUT",
        "/projections/greetings/script",
        Some(json!({"script": "fn Hi(doc, e) {"})),
    )
    .await;
    assert_eq!(
        (s, &body["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_script"))
    );
    let (s, _, body) = call(
        &app,
        "PUT",
        "/projections/greetings/script",
        Some(json!({"script": "fn Hi(doc, e) { #{ last: e.data.who } }"})),
    )
    .await;
    assert_eq!((s, &body["state"]), (StatusCode::OK, &json!("running")));
    assert_eq!(
        f.projections.definition("greetings").unwrap().script,
        "fn Hi(doc, e) { #{ last: e.data.who } }"
    );
    let (s, _, _) = call(&app, "DELETE", "/projections/greetings", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = call(&app, "GET", "/projections/greetings", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.cleanup().await;
}
