//! The node's own control endpoints: `/metrics`, `/v1/status`, runtime log
//! filter changes (`/v1/logging`) and reload requests (`/v1/reload`).

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::routes::ControlRoutes;
use super::ControlContext;
use crate::shutdown::Phase;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn metrics(ctx: &ControlContext) -> Response {
    match ctx.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics could not be encoded",
        )
        .into_response(),
    }
}

fn status(ctx: &ControlContext) -> Response {
    let report = ctx.readiness.report();
    let phase = match ctx.shutdown.phase() {
        Phase::Running => "running",
        Phase::Draining | Phase::Forced => "draining",
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "phase": phase,
        "ready": report.ready,
        "components": report.components,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingChange {
    filter: String,
}

pub(crate) fn routes(ctx: ControlContext) -> ControlRoutes {
    let c = ctx.clone();
    let mut routes = ControlRoutes::new()
        .get(
            "/metrics",
            move || {
                let c = c.clone();
                async move { metrics(&c) }
            },
            json!({
                "summary": "Prometheus metrics of every component (OpenMetrics text)",
                "tags": ["telemetry"],
                "responses": {"200": {
                    "description": "metrics",
                    "content": {"application/openmetrics-text": {}}
                }}
            }),
        )
        .get(
            "/v1/status",
            {
                let c = ctx.clone();
                move || {
                    let c = c.clone();
                    async move { status(&c) }
                }
            },
            json!({
                "summary": "Version, uptime, lifecycle phase and component readiness",
                "tags": ["node"],
                "responses": {"200": {"description": "status"}}
            }),
        );
    let reload = ctx.reload.clone();
    routes = routes.post(
        "/v1/reload",
        move || {
            let request = reload.request();
            tracing::info!(request, "config reload requested through the control API");
            async move { (StatusCode::ACCEPTED, Json(json!({"request": request}))) }
        },
        json!({
            "summary": "Ask components to reload their configuration (same as SIGHUP)",
            "tags": ["node"],
            "responses": {"202": {"description": "reload requested"}}
        }),
    );
    if let Some(log) = ctx.log {
        let get_log = log.clone();
        routes = routes
            .get(
                "/v1/logging",
                move || {
                    let filter = get_log.filter();
                    async move { Json(json!({"filter": filter})) }
                },
                json!({
                    "summary": "The log filter in force",
                    "tags": ["telemetry"],
                    "responses": {"200": {"description": "current filter"}}
                }),
            )
            .put(
                "/v1/logging",
                move |Json(change): Json<LoggingChange>| async move {
                    match log.set_filter(&change.filter) {
                        Ok(()) => {
                            tracing::info!(filter = %change.filter, "log filter changed");
                            Json(json!({"filter": change.filter})).into_response()
                        }
                        Err(e) => ApiError::bad_request(e.to_string()).into_response(),
                    }
                },
                json!({
                    "summary": "Change the log filter at run time, e.g. {\"filter\": \"info,trellis=debug\"}",
                    "tags": ["telemetry"],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["filter"],
                        "properties": {"filter": {"type": "string"}}
                    }}}},
                    "responses": {
                        "200": {"description": "filter changed"},
                        "400": {"description": "invalid filter", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}
                        }}}
                    }
                }),
            );
    }
    routes
}
