//! The sandbox: projection scripts in Rhai, with no file, network, module or
//! clock access, and a CPU and memory budget for every event.
//!
//! # The script API
//!
//! A script is a set of Rhai functions; top-level statements are never run.
//!
//! - `fn id(event)` — the id of the document the event updates, as a string
//!   (or integer); return `()` to ignore the event. Optional: without it the
//!   document id is the event's stream.
//! - `fn <EventType>(doc, event)` — a handler for one event type, when the type
//!   is a valid Rhai identifier (`fn OrderPlaced(doc, event) { … }`).
//! - `fn handle(doc, event)` — the handler for every other type. Optional; an
//!   event with no handler is skipped (its position still checkpoints).
//!
//! A handler receives the current document (`()` when there is none yet) and
//! returns the new document — an object map, upserted under the id — or `()`
//! to delete it. `event` is a map: `type`, `stream`, `version`, `position`,
//! `id`, `data` (the event's JSON as Rhai values), `metadata` (or `()`) and
//! `time` (milliseconds since the Unix epoch).
//!
//! ```rhai
//! fn id(event) { event.data.customer }
//! fn OrderPlaced(doc, event) {
//!     if doc == () { doc = #{ customer: event.data.customer, orders: 0, total: 0 }; }
//!     doc.orders += 1;
//!     doc.total += event.data.amount;
//!     doc
//! }
//! fn CustomerForgotten(doc, event) { () }
//! ```
//!
//! # Limits
//!
//! Every call runs under [`ScriptLimits`]: an operation budget (Rhai counts
//! every expression and statement, so an endless loop stops deterministically
//! rather than after a wall-clock timeout), a maximum string length, array
//! length and map size (checked recursively over nested values, which bounds
//! the memory one value can take), call depth and expression depth, and a
//! maximum size of the resulting document. Any violation, and any runtime
//! error the script raises (`throw`), comes back as a [`ScriptError`]; the
//! host is never crashed (a panic inside the engine is caught too).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, OptimizationLevel, Scope, AST};
use serde::{Deserialize, Serialize};
use trellis_events::RecordedEvent;

/// The budget of one script call and the size limits of what it may build.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ScriptLimits {
    /// Rhai operations per event (the CPU limit).
    pub max_operations: u64,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Most elements in an array (counted over nested arrays too).
    pub max_array_len: usize,
    /// Most properties in an object map (counted over nested maps too).
    pub max_map_len: usize,
    /// Deepest function-call nesting.
    pub max_call_depth: usize,
    /// Largest document a handler may return, as JSON bytes.
    pub max_document_bytes: usize,
    /// Largest script accepted.
    pub max_script_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 100_000,
            max_string_bytes: 64 << 10,
            max_array_len: 10_000,
            max_map_len: 10_000,
            max_call_depth: 32,
            max_document_bytes: 1 << 20,
            max_script_bytes: 256 << 10,
        }
    }
}

/// Why a script was refused or failed on an event.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    #[error("the script is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the script does not compile: {0}")]
    Syntax(String),
    #[error("the script defines no handler: define `fn handle(doc, event)` or `fn <EventType>(doc, event)`")]
    NoHandler,
    #[error("`fn {name}` must take {expected} parameters, not {found}")]
    WrongArity {
        name: String,
        expected: usize,
        found: usize,
    },
    #[error("`{function}` exceeded the budget of {limit} operations per event")]
    TooManyOperations { function: String, limit: u64 },
    #[error("`{function}` exceeded a memory limit: {what}")]
    TooMuchData { function: String, what: String },
    #[error("`{function}` failed: {message}")]
    Runtime { function: String, message: String },
    #[error("`{function}` returned {found}; {expected}")]
    WrongReturn {
        function: String,
        found: String,
        expected: &'static str,
    },
    #[error("the document is {size} bytes as JSON, over the limit of {limit}")]
    DocumentTooLarge { size: usize, limit: usize },
    #[error("the event's {what} is not valid JSON: {message}")]
    BadEvent { what: &'static str, message: String },
}

/// What a handler did with an event.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No handler for this type, or `id` returned `()`.
    Skip,
    /// The new document, as a Rhai value and as its JSON text.
    Upsert {
        doc: Dynamic,
        json: String,
    },
    Delete,
}

/// A compiled projection script bound to its sandboxed engine. Cheap to share.
pub struct Script {
    engine: Engine,
    ast: AST,
    limits: ScriptLimits,
    has_id: bool,
    has_handle: bool,
    /// Event types that have their own handler function.
    typed: HashMap<String, ()>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("has_id", &self.has_id)
            .field("has_handle", &self.has_handle)
            .field("typed", &self.typed.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn sandbox(limits: &ScriptLimits) -> Engine {
    // `Engine::new` brings the standard library (strings, arrays, maps, maths);
    // the `no_module` and `no_time` features leave out imports and clocks, and
    // Rhai has no file or network functions at all.
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_string_size(limits.max_string_bytes)
        .set_max_array_size(limits.max_array_len)
        .set_max_map_size(limits.max_map_len)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(64, 64)
        .set_max_variables(1_000)
        .set_max_functions(1_000)
        .set_optimization_level(OptimizationLevel::Simple);
    // `eval` would compile new code at run time, outside the checks made at create.
    engine.disable_symbol("eval");
    engine.on_print(|s| tracing::debug!(target: "trellis_projections::script", "{s}"));
    engine
        .on_debug(|s, _, pos| tracing::debug!(target: "trellis_projections::script", %pos, "{s}"));
    engine
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Script {
    /// Compiles `source` in a sandbox with `limits`, checking it defines a handler.
    pub fn compile(source: &str, limits: ScriptLimits) -> Result<Script, ScriptError> {
        if source.len() > limits.max_script_bytes {
            return Err(ScriptError::TooLarge {
                size: source.len(),
                limit: limits.max_script_bytes,
            });
        }
        let engine = sandbox(&limits);
        let ast = std::panic::catch_unwind(AssertUnwindSafe(|| engine.compile(source)))
            .map_err(|_| ScriptError::Syntax("the parser failed on this input".into()))?
            .map_err(|e| ScriptError::Syntax(e.to_string()))?;
        let (mut has_id, mut has_handle, mut typed) = (false, false, HashMap::new());
        for f in ast.iter_functions() {
            let arity = |expected: usize| {
                if f.params.len() == expected {
                    Ok(())
                } else {
                    Err(ScriptError::WrongArity {
                        name: f.name.to_owned(),
                        expected,
                        found: f.params.len(),
                    })
                }
            };
            match f.name {
                "id" => {
                    arity(1)?;
                    has_id = true;
                }
                "handle" => {
                    arity(2)?;
                    has_handle = true;
                }
                // Other two-parameter functions are handlers named after event
                // types; anything else is a helper the handlers may call.
                name if f.params.len() == 2 => {
                    typed.insert(name.to_owned(), ());
                }
                _ => {}
            }
        }
        if !has_handle && typed.is_empty() {
            return Err(ScriptError::NoHandler);
        }
        Ok(Script {
            engine,
            ast,
            limits,
            has_id,
            has_handle,
            typed,
        })
    }

    pub fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    fn handler_for<'a>(&'a self, event_type: &'a str) -> Option<&'a str> {
        if is_identifier(event_type) && self.typed.contains_key(event_type) {
            Some(event_type)
        } else if self.has_handle {
            Some("handle")
        } else {
            None
        }
    }

    /// Whether any handler would run for this event type.
    pub fn handles(&self, event_type: &str) -> bool {
        self.handler_for(event_type).is_some()
    }

    fn call(&self, function: &str, args: Vec<Dynamic>) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let mut args = args;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &self.ast,
                function,
                std::mem::take(&mut args),
            )
        }))
        .map_err(|_| ScriptError::Runtime {
            function: function.to_owned(),
            message: "the script engine panicked".into(),
        })?;
        result.map_err(|e| self.error(function, *e))
    }

    fn error(&self, function: &str, e: EvalAltResult) -> ScriptError {
        let function = function.to_owned();
        match e {
            EvalAltResult::ErrorTooManyOperations(_) => ScriptError::TooManyOperations {
                function,
                limit: self.limits.max_operations,
            },
            EvalAltResult::ErrorDataTooLarge(what, pos) => ScriptError::TooMuchData {
                function,
                what: format!("{what} over the limit ({pos})"),
            },
            EvalAltResult::ErrorStackOverflow(pos) => ScriptError::TooMuchData {
                function,
                what: format!("call depth over {} ({pos})", self.limits.max_call_depth),
            },
            other => ScriptError::Runtime {
                function,
                message: other.to_string(),
            },
        }
    }

    /// The event as the map a script sees.
    pub fn event_value(event: &RecordedEvent) -> Result<Dynamic, ScriptError> {
        let parse = |what: &'static str, raw: &str| {
            serde_json::from_str::<Dynamic>(raw).map_err(|e| ScriptError::BadEvent {
                what,
                message: e.to_string(),
            })
        };
        let mut map = rhai::Map::new();
        map.insert("type".into(), event.event_type.clone().into());
        map.insert("stream".into(), event.stream.clone().into());
        map.insert("version".into(), Dynamic::from_int(event.version as i64));
        map.insert("position".into(), Dynamic::from_int(event.position as i64));
        map.insert("id".into(), event.id.to_string().into());
        map.insert("data".into(), parse("data", event.data.get())?);
        let metadata = match &event.metadata {
            Some(m) => parse("metadata", m.get())?,
            None => Dynamic::UNIT,
        };
        map.insert("metadata".into(), metadata);
        let ms = event
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        map.insert("time".into(), Dynamic::from_int(ms));
        Ok(Dynamic::from_map(map))
    }

    /// The id of the document `event` updates, or `None` to skip it.
    pub fn document_id(
        &self,
        event: &RecordedEvent,
        value: &Dynamic,
    ) -> Result<Option<String>, ScriptError> {
        if !self.has_id {
            return Ok(Some(event.stream.clone()));
        }
        let id = self.call("id", vec![value.clone()])?;
        if id.is_unit() {
            Ok(None)
        } else if id.is_string() {
            Ok(Some(
                id.into_immutable_string()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ))
        } else if let Ok(n) = id.as_int() {
            Ok(Some(n.to_string()))
        } else {
            Err(ScriptError::WrongReturn {
                function: "id".into(),
                found: format!("a {}", id.type_name()),
                expected: "return a string, an integer, or () to skip the event",
            })
        }
    }

    /// Runs the handler for `event` on `doc` (`None`: no document yet).
    pub fn apply(
        &self,
        event_type: &str,
        doc: Option<Dynamic>,
        event: Dynamic,
    ) -> Result<Outcome, ScriptError> {
        let Some(function) = self.handler_for(event_type) else {
            return Ok(Outcome::Skip);
        };
        let out = self.call(function, vec![doc.unwrap_or(Dynamic::UNIT), event])?;
        if out.is_unit() {
            return Ok(Outcome::Delete);
        }
        if !out.is_map() {
            return Err(ScriptError::WrongReturn {
                function: function.to_owned(),
                found: format!("a {}", out.type_name()),
                expected: "return an object map (the document) or () to delete it",
            });
        }
        let json = serde_json::to_string(&out).map_err(|e| ScriptError::Runtime {
            function: function.to_owned(),
            message: format!("the document cannot be written as JSON: {e}"),
        })?;
        if json.len() > self.limits.max_document_bytes {
            return Err(ScriptError::DocumentTooLarge {
                size: json.len(),
                limit: self.limits.max_document_bytes,
            });
        }
        Ok(Outcome::Upsert { doc: out, json })
    }
}

/// Parses a stored document back into the value a handler receives.
pub fn document_value(json: &str) -> Result<Dynamic, ScriptError> {
    serde_json::from_str::<Dynamic>(json).map_err(|e| ScriptError::BadEvent {
        what: "stored document",
        message: e.to_string(),
    })
}
