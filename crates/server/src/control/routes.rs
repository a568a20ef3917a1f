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
    pub(crate) schemas: BTreeMap<String, Value>,
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
        if public {
            if let Value::Object(op) = &mut operation {
                op.insert("security".to_owned(), json!([]));
            }
        }
        self.paths
            .entry(path.to_owned())
            .or_default()
            .insert(method.as_str().to_ascii_lowercase(), operation);
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
