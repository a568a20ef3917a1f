//! The event store's part of the control API's OpenAPI 3.1 document: `paths`
//! and `components.schemas`, relative to wherever [`router`](super::router)
//! is mounted, for the server to merge into `/openapi.json`.

use serde_json::{json, Value};

/// `{"paths": …, "components": {"schemas": …}}` with every path prefixed by `prefix` (e.g. `/v1/events`).
pub fn openapi(prefix: &str) -> Value {
    let problem = json!({"description": "RFC 9457 problem details", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 200}, "description": "stream name; `$all` reads every stream"});
    let category =
        json!({"name": "category", "in": "path", "required": true, "schema": {"type": "string"}});
    let expected = json!({"name": "ES-ExpectedVersion", "in": "header", "schema": {"type": "string"}, "description": "any | no_stream | stream_exists | a version number (EventStoreDB codes -2, -1, -4 accepted)"});
    let read_params = json!([
        {"name": "from", "in": "query", "schema": {"type": "string"}, "description": "first version (streams) or position ($all, categories), inclusive; `start` or `end`"},
        {"name": "direction", "in": "query", "schema": {"enum": ["forward", "backward"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
        {"name": "type", "in": "query", "schema": {"type": "string"}, "description": "event types to keep, comma-separated or repeated"}
    ]);
    let events_page = json!({"description": "events", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventPage"}}}});
    let sse = json!({"description": "text/event-stream: `id` is the position, `event` the event type, `data` the event", "content": {"text/event-stream": {}}});
    let with = |base: &Value, extra: &[Value]| {
        let mut v = base.as_array().cloned().unwrap_or_default();
        v.extend(extra.iter().cloned());
        Value::Array(v)
    };
    let p = |s: &str| format!("{prefix}{s}");
    json!({
        "paths": {
            p("/streams/{name}"): {
                "post": {
                    "summary": "Append events atomically, with an expected version; idempotent by event id",
                    "parameters": [name, expected],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
                        {"type": "array", "items": {"$ref": "#/components/schemas/EventData"}},
                        {"type": "object", "required": ["events"], "properties": {"expectedVersion": {}, "events": {"type": "array", "items": {"$ref": "#/components/schemas/EventData"}}}}
                    ]}}}},
                    "responses": {
                        "201": {"description": "appended", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AppendResult"}}}},
                        "200": {"description": "a retry of an earlier append: nothing written, original positions returned"},
                        "400": problem, "409": problem, "410": problem, "413": problem, "422": problem
                    }
                },
                "get": {"summary": "Read a stream by version, or `$all` by position", "parameters": with(&read_params, std::slice::from_ref(&name)), "responses": {"200": events_page, "400": problem, "404": problem, "410": problem}},
                "delete": {"summary": "Soft-delete (recreatable) or tombstone a stream", "parameters": [name, expected, {"name": "mode", "in": "query", "schema": {"enum": ["soft", "tombstone"]}}], "responses": {"204": {"description": "deleted"}, "404": problem, "409": problem, "410": problem}}
            },
            p("/streams/{name}/metadata"): {
                "get": {"summary": "Stream retention metadata", "parameters": [name], "responses": {"200": {"description": "metadata", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamMetadata"}}}}}},
                "put": {"summary": "Replace stream retention metadata", "parameters": [name], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamMetadata"}}}}, "responses": {"200": {"description": "stored"}, "400": problem, "410": problem}}
            },
            p("/streams/{name}/snapshot"): {
                "get": {"summary": "Latest snapshot", "parameters": [name], "responses": {"200": {"description": "snapshot"}, "404": problem}},
                "put": {"summary": "Store a snapshot taken at a version", "parameters": [name], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["version", "data"], "properties": {"version": {"type": "integer"}, "data": {}}}}}}, "responses": {"204": {"description": "stored"}, "404": problem, "422": problem}}
            },
            p("/streams/{name}/subscribe"): {"get": {"summary": "Catch-up then live subscription (SSE) to a stream or `$all`; resumes after `Last-Event-ID`", "parameters": with(&read_params, &[name]), "responses": {"200": sse}}},
            p("/categories/{category}"): {"get": {"summary": "Read a category (`order` for streams `order-…`) by position", "parameters": with(&read_params, std::slice::from_ref(&category)), "responses": {"200": events_page, "400": problem}}},
            p("/categories/{category}/subscribe"): {"get": {"summary": "Catch-up then live subscription (SSE) to a category", "parameters": with(&read_params, &[category]), "responses": {"200": sse}}}
        },
        "components": {"schemas": {
            "EventData": {"type": "object", "required": ["eventId", "eventType", "data"], "additionalProperties": false, "properties": {
                "eventId": {"type": "string", "format": "uuid"}, "eventType": {"type": "string"}, "data": {}, "metadata": {}}},
            "RecordedEvent": {"type": "object", "properties": {
                "stream": {"type": "string"}, "version": {"type": "integer"}, "position": {"type": "integer"},
                "eventId": {"type": "string", "format": "uuid"}, "eventType": {"type": "string"}, "data": {}, "metadata": {}, "time": {"type": "string", "format": "date-time"}}},
            "EventPage": {"type": "object", "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/RecordedEvent"}}, "next": {"type": ["integer", "null"]}, "streamVersion": {"type": "integer"}}},
            "AppendResult": {"type": "object", "properties": {"firstVersion": {"type": "integer"}, "lastVersion": {"type": "integer"}, "firstPosition": {"type": "integer"}, "lastPosition": {"type": "integer"}, "idempotent": {"type": "boolean"}}},
            "StreamMetadata": {"type": "object", "additionalProperties": false, "properties": {"maxCount": {"type": "integer"}, "maxAge": {"type": "string", "description": "a duration like \"30d\""}, "truncateBefore": {"type": "integer"}, "custom": {}}},
            "Problem": {"type": "object", "required": ["type", "title", "status", "code"], "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}, "code": {"type": "string"}}}
        }}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_routed_path_is_documented_under_the_prefix() {
        let doc = super::openapi("/v1/events");
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/streams/{name}",
            "/streams/{name}/metadata",
            "/streams/{name}/snapshot",
            "/streams/{name}/subscribe",
            "/categories/{category}",
            "/categories/{category}/subscribe",
        ] {
            assert!(paths.contains_key(&format!("/v1/events{p}")), "{p}");
        }
        assert!(doc["components"]["schemas"]["Problem"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "code"));
    }
}
