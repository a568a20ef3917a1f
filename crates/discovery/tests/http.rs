//! The REST API: shapes, blocking queries, SSE, and hostile input.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use trellis_discovery::*;

fn app() -> (Registry, axum::Router) {
    let r = Registry::in_memory(RegistryConfig::default());
    (r.clone(), router(r))
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> Response {
    let req = Request::builder().method(method).uri(uri);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    app.clone().oneshot(req.unwrap()).await.unwrap()
}

async fn json_of(resp: Response) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn index_of(resp: &Response) -> u64 {
    resp.headers()[INDEX_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn problem(resp: Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    json_of(resp).await
}

#[tokio::test]
async fn register_discover_heartbeat_deregister() {
    let (_, app) = app();
    let resp = call(
        &app,
        "PUT",
        "/services/orders/instances/o-1",
        Some(json!({"address": "10.0.0.1", "port": 8080, "tags": ["v2"], "meta": {"zone": "eu"}, "ttl": "10s"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let first = index_of(&resp);
    assert_eq!(json_of(resp).await["instance"]["status"], "passing");
    call(
        &app,
        "PUT",
        "/services/orders/instances/o-2",
        Some(json!({"address": "10.0.0.2", "port": 8080, "meta": {"zone": "us"}})),
    )
    .await;

    let resp = call(&app, "GET", "/services/orders?tag=v2&meta.zone=eu", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(index_of(&resp) > first);
    let body = json_of(resp).await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 1);
    assert_eq!(body["instances"][0]["id"], "o-1");
    assert_eq!(body["instances"][0]["health"], "ttl");

    let resp = call(
        &app,
        "PUT",
        "/services/orders/instances/o-1/heartbeat?status=warning&note=busy",
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["instance"]["output"], "busy");
    let p = problem(
        call(
            &app,
            "PUT",
            "/services/orders/instances/o-2/heartbeat",
            None,
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["code"], "no_ttl");

    let list = json_of(call(&app, "GET", "/services", None).await).await;
    assert_eq!(list["services"][0]["name"], "orders");
    assert_eq!(list["services"][0]["passing"], 1);
    assert_eq!(list["services"][0]["warning"], 1);

    let resp = call(&app, "DELETE", "/services/orders/instances/o-1", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let p = problem(
        call(&app, "DELETE", "/services/orders/instances/o-1", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["code"], "instance_not_found");
    let p = problem(
        call(&app, "GET", "/services/orders/instances/o-1", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["status"], 404);
}

#[tokio::test(start_paused = true)]
async fn blocking_discovery_returns_on_change_with_the_new_index() {
    let (r, app) = app();
    let resp = call(
        &app,
        "PUT",
        "/services/api/instances/a",
        Some(json!({"address": "10.0.0.1", "port": 1})),
    )
    .await;
    let idx = index_of(&resp);
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/services/api?index={idx}&wait=60s"),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished(), "blocks while nothing changes");
    let changed = r
        .register("api", "b", Registration::new("10.0.0.2", 1))
        .await
        .unwrap();
    let resp = waiting.await.unwrap();
    assert_eq!(index_of(&resp), changed);
    assert_eq!(
        json_of(resp).await["instances"].as_array().unwrap().len(),
        2
    );

    // Times out after `wait` with the unchanged index.
    let started = tokio::time::Instant::now();
    let resp = call(
        &app,
        "GET",
        &format!("/services/api?index={changed}&wait=3s"),
        None,
    )
    .await;
    assert_eq!(index_of(&resp), changed);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test]
async fn watch_streams_changes_as_server_sent_events() {
    let (r, app) = app();
    let resp = call(&app, "GET", "/watch?service=api", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    r.register("other", "x", Registration::new("10.0.0.9", 1))
        .await
        .unwrap();
    r.register("api", "a", Registration::new("10.0.0.1", 1))
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("event: registered") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("event: index"), "{text}");
    assert!(text.contains("\"service\":\"api\""), "{text}");
    assert!(
        !text.contains("\"other\""),
        "filtered to one service: {text}"
    );
}

#[tokio::test]
async fn hostile_registrations_get_a_400_naming_the_field() {
    let (r, app) = app();
    let cases = [
        (json!({"address": "10.0.0.1", "port": 70000}), "port"),
        (json!({"address": "10.0.0.1", "port": -1}), "port"),
        (json!({"address": "10.0.0.1", "port": 0}), "port"),
        (json!({"address": "10.0.0.1", "port": "80"}), "port"),
        (json!({"address": "http://evil/", "port": 80}), "address"),
        (json!({"address": "a".repeat(300), "port": 80}), "address"),
        (json!({"port": 80}), "body"),
        (
            json!({"address": "10.0.0.1", "port": 80, "ttl": "forever"}),
            "ttl",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "ttl": "1ms"}),
            "ttl",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "meta": {"k": "v".repeat(10_000)}}),
            "meta.k",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "meta": {"k": 5}}),
            "meta.k",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "tags": "v1"}),
            "tags",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "surprise": true}),
            "surprise",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "check": {"kind": "smtp"}}),
            "check.kind",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "check": {"kind": "grpc", "path": "/x"}}),
            "check.path",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "check": {"kind": "tcp", "grpc_service": "a.B"}}),
            "check.grpc_service",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "check": {"kind": "grpc", "grpc_service": "a b"}}),
            "check.grpc_service",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "check": {"kind": "http", "path": "no-slash"}}),
            "check.path",
        ),
        (json!([1, 2, 3]), "body"),
    ];
    for (body, field) in cases {
        let p = problem(
            call(&app, "PUT", "/services/api/instances/a", Some(body.clone())).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(p["code"], "invalid_field", "{body}");
        assert_eq!(p["field"], field, "{body} -> {p}");
    }
    let resp = app
        .clone()
        .oneshot(
            Request::put("/services/api/instances/a")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        problem(resp, StatusCode::BAD_REQUEST).await["field"],
        "body"
    );
    let p = problem(
        call(
            &app,
            "PUT",
            "/services/bad%20name/instances/a",
            Some(json!({"address": "10.0.0.1", "port": 80})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "service");
    let huge = json!({"address": "10.0.0.1", "port": 80, "meta": {"k": "v".repeat(100_000)}});
    let p = problem(
        call(&app, "PUT", "/services/api/instances/a", Some(huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(p["code"], "body_too_large");
    assert_eq!(r.index(), 0, "nothing was written");

    for (uri, field) in [
        ("/services/api?index=-3", "index"),
        ("/services/api?wait=soon", "wait"),
        ("/services/api?healthy=maybe", "healthy"),
        ("/services/api?bogus=1", "bogus"),
        ("/services?index=x", "index"),
    ] {
        let p = problem(call(&app, "GET", uri, None).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(p["field"], field, "{uri}");
    }
    let p = problem(
        call(&app, "GET", "/nope", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["code"], "not_found");
}

#[test]
fn openapi_documents_every_route_under_the_prefix() {
    let doc = openapi("/v1/registry");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/registry/services",
        "/v1/registry/services/{service}",
        "/v1/registry/services/{service}/instances/{id}",
        "/v1/registry/services/{service}/instances/{id}/heartbeat",
        "/v1/registry/watch",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    let put = &paths["/v1/registry/services/{service}/instances/{id}"]["put"];
    assert_eq!(
        put["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Registration"
    );
    for schema in [
        "Problem",
        "Registration",
        "HealthCheck",
        "Instance",
        "ServiceSummary",
        "Change",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[test]
fn registry_config_reads_from_toml_and_refuses_unknown_keys() {
    let c: RegistryConfig =
        toml::from_str("deregister_after = \"5m\"\nmax_wait = \"30s\"").unwrap();
    assert_eq!(c.deregister_after, Duration::from_secs(300));
    assert_eq!(c.max_wait, Duration::from_secs(30));
    assert_eq!(c.max_tags, RegistryConfig::default().max_tags);
    let err = toml::from_str::<RegistryConfig>("dereg_after = \"5m\"").unwrap_err();
    assert!(err.to_string().contains("dereg_after"), "{err}");
    let err = toml::from_str::<RegistryConfig>("max_wait = \"soon\"").unwrap_err();
    assert!(err.to_string().contains("invalid duration"), "{err}");
}

#[test]
fn registry_config_validation_names_the_key() {
    assert!(RegistryConfig::default().validate().is_ok());
    let c = RegistryConfig {
        max_ttl: Duration::from_millis(500),
        ..RegistryConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().field(), Some("max_ttl"));
    let c = RegistryConfig {
        max_instances: 0,
        ..RegistryConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().field(), Some("max_instances"));
}
