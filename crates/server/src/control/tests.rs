use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

fn context() -> ControlContext {
    let shutdown = Shutdown::new(Duration::from_secs(1));
    ControlContext {
        metrics: Metrics::new(),
        readiness: Readiness::new(shutdown.clone()),
        shutdown,
        reload: Reload::new(),
        log: None,
        started: Instant::now(),
    }
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn widgets() -> ControlRoutes {
    ControlRoutes::new()
        .get(
            "/v1/widgets/{id}",
            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                if id == "missing" {
                    Err(ApiError::not_found("no such widget"))
                } else {
                    Ok(axum::Json(json!({"id": id})))
                }
            },
            json!({"summary": "A widget", "tags": ["widgets"], "responses": {"200": {"description": "ok"}}}),
        )
        .schema("Widget", json!({"type": "object"}))
}

#[tokio::test]
async fn contributed_routes_are_served_and_documented() {
    let mut api = ControlApi::new(context(), None);
    api.mount(widgets()).unwrap();
    let router = api.into_router();
    let (status, body) = call(&router, "GET", "/v1/widgets/7", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"id":"7"}"#));
    let (status, body) = call(&router, "GET", "/v1/widgets/missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "not_found");

    let (status, body) = call(&router, "GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"]["/v1/widgets/{id}"]["get"]["summary"],
        "A widget"
    );
    assert!(doc["paths"]["/readyz"]["get"].is_object());
    assert!(doc["components"]["schemas"]["Widget"].is_object());
    assert!(
        doc.get("security").is_none(),
        "no token, no global security"
    );
}

#[tokio::test]
async fn duplicate_routes_are_rejected_without_changing_the_api() {
    let mut api = ControlApi::new(context(), None);
    api.mount(widgets()).unwrap();
    let err = api.mount(widgets()).unwrap_err();
    assert!(matches!(err, ControlError::DuplicateRoute { .. }), "{err}");
    let clash = ControlRoutes::new().get("/metrics", || async { "x" }, json!({}));
    assert!(api.mount(clash).is_err());
    let clash = ControlRoutes::new().get("/openapi.json", || async { "x" }, json!({}));
    assert!(api.mount(clash).is_err());
    let bad = ControlRoutes::new().get("v1/x", || async { "x" }, json!({}));
    assert!(matches!(api.mount(bad), Err(ControlError::InvalidPath(_))));
    // Still builds: nothing half-mounted.
    let router = api.into_router();
    assert_eq!(
        call(&router, "GET", "/metrics", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_guards_everything_but_the_probes() {
    let ctx = context();
    ctx.readiness.register("control").set_ready();
    let mut api = ControlApi::new(ctx, Some(Secret::new("t0ken")));
    api.mount(widgets()).unwrap();
    let doc = api.openapi();
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
    let router = api.into_router();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&router, "GET", path, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in ["/metrics", "/openapi.json", "/v1/status", "/v1/widgets/1"] {
        assert_eq!(
            call(&router, "GET", path, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&router, "GET", path, Some("wrong")).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&router, "GET", path, Some("t0ken")).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn readyz_follows_components_and_shutdown() {
    let ctx = context();
    let shutdown = ctx.shutdown.clone();
    let component = ctx.readiness.register("gateway");
    let router = ControlApi::new(ctx, None).into_router();
    let (status, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""status":"starting""#), "{body}");
    component.set_ready();
    assert_eq!(
        call(&router, "GET", "/readyz", None).await.0,
        StatusCode::OK
    );
    shutdown.trigger();
    let (status, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""status":"draining""#), "{body}");
    assert_eq!(
        call(&router, "GET", "/healthz", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reload_endpoint_reaches_subscribers() {
    let ctx = context();
    let mut requests = ctx.reload.subscribe();
    let router = ControlApi::new(ctx, None).into_router();
    let (status, body) = call(&router, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, r#"{"request":1}"#);
    assert_eq!(requests.next().await, Some(1));
}

#[tokio::test]
async fn control_requests_are_counted_by_route_template() {
    let ctx = context();
    let metrics = ctx.metrics.clone();
    let mut api = ControlApi::new(ctx, None);
    api.mount(widgets()).unwrap();
    let router = api.into_router();
    call(&router, "GET", "/v1/widgets/1", None).await;
    call(&router, "GET", "/v1/widgets/2", None).await;
    call(&router, "GET", "/nope", None).await;
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(
            r#"trellis_control_requests_total{method="GET",route="/v1/widgets/{id}",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_paths_get_a_json_error() {
    let router = ControlApi::new(context(), Some(Secret::new("t"))).into_router();
    let (status, body) = call(&router, "GET", "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        err["error"]["message"],
        "no control endpoint GET /v1/nothing"
    );
}

fn events_router() -> (Router, Value) {
    let router = Router::new()
        .route(
            "/streams/{name}",
            axum::routing::get(
                |axum::extract::Path(n): axum::extract::Path<String>| async move {
                    format!("stream {n}")
                },
            ),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "events: no such route") });
    let doc = json!({
        "paths": {"/v1/events/streams/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": true}],
            "get": {"summary": "Read a stream", "responses": {"200": {"description": "events"}}}
        }},
        "components": {"schemas": {"EventPage": {"type": "object"}}}
    });
    (router, doc)
}

#[tokio::test]
async fn whole_routers_nest_under_a_prefix_with_their_docs_and_auth() {
    let ctx = context();
    let metrics = ctx.metrics.clone();
    let mut api = ControlApi::new(ctx, Some(Secret::new("t")));
    let (router, doc) = events_router();
    api.mount(ControlRoutes::new().nest("/v1/events", router, doc))
        .unwrap();
    let openapi = api.openapi();
    let item = &openapi["paths"]["/v1/events/streams/{name}"];
    assert_eq!(item["get"]["summary"], "Read a stream");
    assert_eq!(item["get"]["operationId"], "get_v1_events_streams_name");
    assert!(item["parameters"].is_array());
    assert!(openapi["components"]["schemas"]["EventPage"].is_object());

    let router = api.into_router();
    let path = "/v1/events/streams/orders-1";
    assert_eq!(
        call(&router, "GET", path, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&router, "GET", path, Some("t")).await,
        (StatusCode::OK, "stream orders-1".to_owned())
    );
    let (status, body) = call(&router, "GET", "/v1/events/nope", Some("t")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "events: no such route")
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"route="/v1/events/streams/{name}",status="200"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn overlapping_prefixes_and_paths_are_rejected() {
    let mut api = ControlApi::new(context(), None);
    let (router, doc) = events_router();
    api.mount(ControlRoutes::new().nest("/v1/events", router, doc))
        .unwrap();
    for prefix in ["/v1/events", "/v1", "/v1/events/more"] {
        let (router, doc) = events_router();
        let err = api
            .mount(ControlRoutes::new().nest(prefix, router, doc))
            .unwrap_err();
        assert!(
            matches!(err, ControlError::Overlap { .. }),
            "{prefix}: {err}"
        );
    }
    for prefix in ["/", "v1/x", "/v1/{id}", "/v1/x/"] {
        let (router, doc) = events_router();
        let err = api
            .mount(ControlRoutes::new().nest(prefix, router, doc))
            .unwrap_err();
        assert!(
            matches!(err, ControlError::InvalidPrefix(_)),
            "{prefix}: {err}"
        );
    }
    let clash = ControlRoutes::new().get("/v1/events/x", || async { "x" }, json!({}));
    assert!(matches!(
        api.mount(clash),
        Err(ControlError::Overlap { .. })
    ));
    let (router, doc) = events_router();
    let err = api
        .mount(ControlRoutes::new().nest("/metrics", router, doc))
        .unwrap_err();
    assert!(matches!(err, ControlError::Overlap { .. }), "{err}");
    // A sibling prefix is fine, and the API still builds.
    let (router, doc) = events_router();
    api.mount(ControlRoutes::new().nest("/v1/eventsx", router, doc))
        .unwrap();
    let router = api.into_router();
    assert_eq!(
        call(&router, "GET", "/v1/eventsx/streams/a", None).await.0,
        StatusCode::OK
    );
}
