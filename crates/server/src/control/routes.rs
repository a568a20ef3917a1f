//! What a component contributes to the control API: endpoints, each with its
//! OpenAPI operation, collected into the `/openapi.json` document.

use std::collections::BTreeMap;

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};
use http::Method;
use serde_json::{json, Map, Value};

/// One method on one path.
pub(crate) struct Endpoint {
    pub method: Method,
    pub path: String,
    pub handler: MethodRouter,
    pub operation: Value,
    pub public: bool,
}

/// A set of control endpoints a component contributes, e.g. the event store's
/// `/v1/streams/...`. Paths use axum's `{param}` syntax, which is also
/// OpenAPI's. `operation` is an OpenAPI Operation object
/// (`summary`, `tags`, `parameters`, `requestBody`, `responses`).
#[derive(Default)]
pub struct ControlRoutes {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) nested: Vec<Nested>,
    pub(crate) schemas: BTreeMap<String, Value>,
}

/// A whole router mounted under a prefix.
pub(crate) struct Nested {
    pub prefix: String,
    pub router: axum::Router,
    pub doc: Value,
}

impl ControlRoutes {
    /// No endpoints yet.
    pub fn new() -> Self {
        ControlRoutes::default()
    }

    /// Adds an endpoint served by any `MethodRouter` (use this for handlers
    /// with state: `get(handler).with_state(state)`).
    pub fn endpoint(
        mut self,
        method: Method,
        path: &str,
        handler: MethodRouter,
        operation: Value,
    ) -> Self {
        self.endpoints.push(Endpoint {
            method,
            path: path.to_owned(),
            handler,
            operation,
            public: false,
        });
        self
    }

    /// `GET path`.
    pub fn get<H: Handler<T, ()>, T: 'static>(self, path: &str, h: H, operation: Value) -> Self {
        self.endpoint(Method::GET, path, routing::get(h), operation)
    }

    /// `POST path`.
    pub fn post<H: Handler<T, ()>, T: 'static>(self, path: &str, h: H, operation: Value) -> Self {
        self.endpoint(Method::POST, path, routing::post(h), operation)
    }

    /// `PUT path`.
    pub fn put<H: Handler<T, ()>, T: 'static>(self, path: &str, h: H, operation: Value) -> Self {
        self.endpoint(Method::PUT, path, routing::put(h), operation)
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, ()>, T: 'static>(self, path: &str, h: H, operation: Value) -> Self {
        self.endpoint(Method::DELETE, path, routing::delete(h), operation)
    }

    /// Mounts a component's own router under `prefix` (e.g. `/v1/events`),
    /// for components that build their API as one `axum::Router`. `openapi`
    /// documents it as an OpenAPI fragment,
    /// `{"paths": {...}, "components": {"schemas": {...}}}`, whose paths
    /// already include the prefix.
    pub fn nest(mut self, prefix: &str, router: axum::Router, openapi: Value) -> Self {
        self.nested.push(Nested {
            prefix: prefix.to_owned(),
            router,
            doc: openapi,
        });
        self
    }

    /// Adds a named schema under `components.schemas`, for `$ref`s of the form
    /// `#/components/schemas/NAME`.
    pub fn schema(mut self, name: &str, schema: Value) -> Self {
        self.schemas.insert(name.to_owned(), schema);
        self
    }

    /// Marks the endpoints added so far as reachable without the bearer
    /// token. Only probes belong here.
    pub(crate) fn public(mut self) -> Self {
        for e in &mut self.endpoints {
            e.public = true;
        }
        self
    }
}

/// The OpenAPI 3.1 document assembled from every mounted [`ControlRoutes`].
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenApi {
    paths: BTreeMap<String, Map<String, Value>>,
    schemas: BTreeMap<String, Value>,
}

impl OpenApi {
    pub fn add(&mut self, method: &Method, path: &str, operation: &Value, public: bool) {
        let mut operation = operation.clone();
        if let Value::Object(op) = &mut operation {
            if public {
                op.insert("security".to_owned(), json!([]));
            }
            // Code generators need both; fill them in rather than emit an
            // invalid document when a contributor leaves them out.
            op.entry("operationId")
                .or_insert_with(|| json!(operation_id(method, path)));
            op.entry("responses")
                .or_insert_with(|| json!({"default": {"description": "response"}}));
        }
        self.paths
            .entry(path.to_owned())
            .or_default()
            .insert(method.as_str().to_ascii_lowercase(), operation);
    }

    /// Merges an OpenAPI fragment (`paths` and `components.schemas`).
    pub fn add_fragment(&mut self, doc: &Value) {
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                let Some(item) = item.as_object() else {
                    continue;
                };
                for (key, value) in item {
                    match Method::from_bytes(key.to_ascii_uppercase().as_bytes()) {
                        Ok(method) if is_operation(&method) => {
                            self.add(&method, path, value, false);
                        }
                        _ => {
                            self.paths
                                .entry(path.clone())
                                .or_default()
                                .insert(key.clone(), value.clone());
                        }
                    }
                }
            }
        }
        if let Some(schemas) = doc["components"]["schemas"].as_object() {
            for (name, schema) in schemas {
                self.schemas.insert(name.clone(), schema.clone());
            }
        }
    }

    pub fn add_schemas(&mut self, schemas: &BTreeMap<String, Value>) {
        for (name, schema) in schemas {
            self.schemas.insert(name.clone(), schema.clone());
        }
    }

    pub fn to_json(&self, auth_required: bool) -> Value {
        let mut doc = json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Trellis control API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Control plane of a Trellis node: health, metrics and the \
                                components' management endpoints."
            },
            "paths": self.paths,
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
            }
        });
        if auth_required {
            doc["security"] = json!([{"bearer": []}]);
        }
        doc
    }
}

fn is_operation(method: &Method) -> bool {
    [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::OPTIONS,
        Method::HEAD,
        Method::PATCH,
        Method::TRACE,
    ]
    .contains(method)
}

/// `GET /v1/streams/{name}` → `get_v1_streams_name`.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(
            part.chars()
                .filter(|c| !matches!(c, '{' | '}' | '*'))
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_follow_method_and_path() {
        assert_eq!(
            operation_id(&Method::GET, "/v1/streams/{name}"),
            "get_v1_streams_name"
        );
        assert_eq!(
            operation_id(&Method::GET, "/openapi.json"),
            "get_openapi_json"
        );
    }

    #[test]
    fn operations_get_an_id_and_responses_when_left_out() {
        let mut doc = OpenApi::default();
        doc.add(&Method::POST, "/v1/x", &json!({"summary": "x"}), false);
        doc.add(
            &Method::GET,
            "/v1/x",
            &json!({"operationId": "mine", "responses": {}}),
            true,
        );
        let v = doc.to_json(true);
        assert_eq!(v["paths"]["/v1/x"]["post"]["operationId"], "post_v1_x");
        assert!(v["paths"]["/v1/x"]["post"]["responses"]["default"].is_object());
        assert_eq!(v["paths"]["/v1/x"]["get"]["operationId"], "mine");
        assert_eq!(v["paths"]["/v1/x"]["get"]["security"], json!([]));
    }
}
