//! The OpenAPI fragment for the registry's REST API, merged by the server
//! into `/openapi.json` (`{"paths": …, "components": {"schemas": …}}`).

use serde_json::{json, Value};

/// The document fragment for the routes of [`crate::router`] mounted at `prefix`.
pub fn openapi(prefix: &str) -> Value {
    let p = |s: &str| format!("{prefix}{s}");
    let problem = json!({"description": "RFC 9457 problem details", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let name = |n: &str, what: &str| json!({"name": n, "in": "path", "required": true, "description": what, "schema": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]*$"}});
    let service = name("service", "service name");
    let id = name("id", "instance id");
    let index_header = json!({"X-Trellis-Index": {"description": "the index this answer reflects; pass it back as `index` to block until a change", "schema": {"type": "integer"}}});
    let blocking = [
        json!({"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "block until the index passes this (from X-Trellis-Index)"}),
        json!({"name": "wait", "in": "query", "schema": {"type": "string", "example": "30s"}, "description": "longest block (capped by registry.max_wait)"}),
    ];
    let instance = json!({"$ref": "#/components/schemas/Instance"});
    json!({
        "paths": {
            p("/services"): {
                "get": {
                    "summary": "List services with health counts (blocking with `index`)",
                    "tags": ["registry"],
                    "parameters": blocking,
                    "responses": {
                        "200": {"description": "services", "headers": index_header, "content": {"application/json": {"schema": {"type": "object", "properties": {"index": {"type": "integer"}, "services": {"type": "array", "items": {"$ref": "#/components/schemas/ServiceSummary"}}}}}}},
                        "400": problem
                    }
                }
            },
            p("/services/{service}"): {
                "get": {
                    "summary": "Discover a service's instances: served ones by default, filtered by tags and metadata; blocking with `index`",
                    "tags": ["registry"],
                    "parameters": [
                        service,
                        {"name": "tag", "in": "query", "schema": {"type": "string"}, "description": "required tag; repeat for several"},
                        {"name": "meta.KEY", "in": "query", "schema": {"type": "string"}, "description": "required metadata value, e.g. meta.zone=eu-1"},
                        {"name": "healthy", "in": "query", "schema": {"type": "boolean", "default": true}, "description": "false also returns critical instances"},
                        blocking[0], blocking[1]
                    ],
                    "responses": {
                        "200": {"description": "instances", "headers": index_header, "content": {"application/json": {"schema": {"type": "object", "properties": {"service": {"type": "string"}, "index": {"type": "integer"}, "instances": {"type": "array", "items": instance}}}}}},
                        "400": problem
                    }
                }
            },
            p("/services/{service}/instances/{id}"): {
                "put": {
                    "summary": "Register (or replace) an instance",
                    "tags": ["registry"],
                    "parameters": [service, id],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registration"}}}},
                    "responses": {"200": {"description": "registered", "headers": index_header}, "400": problem, "413": problem, "507": problem, "503": problem}
                },
                "delete": {
                    "summary": "Deregister an instance",
                    "tags": ["registry"],
                    "parameters": [service, id],
                    "responses": {"204": {"description": "removed", "headers": index_header}, "400": problem, "404": problem}
                },
                "get": {
                    "summary": "One instance, whatever its health",
                    "tags": ["registry"],
                    "parameters": [service, id],
                    "responses": {"200": {"description": "the instance", "content": {"application/json": {"schema": instance}}}, "404": problem}
                }
            },
            p("/services/{service}/instances/{id}/heartbeat"): {
                "put": {
                    "summary": "Renew a TTL instance's lease",
                    "tags": ["registry"],
                    "parameters": [service, id,
                        {"name": "status", "in": "query", "schema": {"enum": ["passing", "warning", "critical"], "default": "passing"}},
                        {"name": "note", "in": "query", "schema": {"type": "string", "maxLength": 1024}}],
                    "responses": {"200": {"description": "renewed"}, "400": problem, "404": problem, "409": problem}
                }
            },
            p("/watch"): {
                "get": {
                    "summary": "Server-Sent Events: every change (`registered`, `deregistered`, `health`, `resync`) with the index as event id",
                    "tags": ["registry"],
                    "parameters": [{"name": "service", "in": "query", "schema": {"type": "string"}, "description": "only this service's changes"}],
                    "responses": {"200": {"description": "text/event-stream of Change objects", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Change"}}}}, "400": problem}
                }
            }
        },
        "components": {"schemas": {
            "Problem": {"type": "object", "required": ["type", "title", "status", "code"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}, "field": {"type": "string"}}},
            "Registration": {"type": "object", "required": ["address", "port"], "additionalProperties": false, "properties": {
                "address": {"type": "string", "description": "IP address or DNS name, no scheme or port"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 128}, "maxItems": 64},
                "meta": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 512}, "maxProperties": 64},
                "ttl": {"type": "string", "example": "10s", "description": "heartbeat within this or become critical"},
                "check": {"$ref": "#/components/schemas/HealthCheck"},
                "deregister_after": {"type": "string", "example": "1m", "description": "remove after this long critical"}}},
            "HealthCheck": {"type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
                "kind": {"enum": ["http", "tcp", "grpc"]}, "path": {"type": "string", "example": "/healthz"},
                "grpc_service": {"type": "string", "example": "orders.v1.Orders"},
                "interval": {"type": "string", "default": "10s"}, "timeout": {"type": "string", "default": "2s"},
                "success_threshold": {"type": "integer", "default": 1}, "failure_threshold": {"type": "integer", "default": 3}}},
            "Instance": {"type": "object", "properties": {
                "service": {"type": "string"}, "id": {"type": "string"}, "address": {"type": "string"}, "port": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}}, "meta": {"type": "object", "additionalProperties": {"type": "string"}},
                "status": {"enum": ["passing", "warning", "critical"]}, "output": {"type": "string"},
                "health": {"enum": ["ttl", "http", "tcp", "grpc", "none"]},
                "create_index": {"type": "integer"}, "modify_index": {"type": "integer"}}},
            "ServiceSummary": {"type": "object", "properties": {
                "name": {"type": "string"}, "instances": {"type": "integer"}, "passing": {"type": "integer"},
                "warning": {"type": "integer"}, "critical": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}},
            "Change": {"type": "object", "properties": {
                "index": {"type": "integer"}, "kind": {"enum": ["registered", "deregistered", "health", "resync"]},
                "service": {"type": "string"}, "id": {"type": "string"}, "instance": {"$ref": "#/components/schemas/Instance"}}}
        }}
    })
}
