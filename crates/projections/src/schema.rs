//! The projections' tables, as embedded migrations of the `projections` component.
//!
//! The read model is an ordinary table, so it can be read with plain SQL:
//!
//! ```sql
//! -- table names carry the namespace prefix: n_<namespace>__projection_documents
//! -- PostgreSQL (doc is JSONB):
//! SELECT id, doc->>'customer', (doc->>'total')::numeric
//!   FROM n_app__projection_documents WHERE projection = 'orders';
//! -- SQLite (doc is JSON text):
//! SELECT id, json_extract(doc, '$.total')
//!   FROM n_app__projection_documents WHERE projection = 'orders';
//! ```
//!
//! - `projections`: one row per projection — `name`, `definition` (the
//!   [`ProjectionDefinition`](crate::ProjectionDefinition) as JSON), `state`
//!   (`running`, `paused`, `faulted`), `position` (the checkpoint: the `$all`
//!   position of the last event folded), `events_processed`, and the fault
//!   (`last_error`, `error_position`).
//! - `projection_documents`: the read model — `(projection, id)` is the key,
//!   `doc` the document, `position` the event that last changed it.

use trellis_store::Migration;

/// The component name under which these migrations are recorded.
pub const COMPONENT: &str = "projections";

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "projections, projection_documents",
    sqlite: "
CREATE TABLE {ns}projections (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    events_processed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    error_position INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE {ns}projection_documents (
    projection TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    position INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (projection, id)
);",
    postgres: "
CREATE TABLE {ns}projections (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    state TEXT NOT NULL,
    position BIGINT NOT NULL DEFAULT 0,
    events_processed BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    error_position BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE {ns}projection_documents (
    projection TEXT NOT NULL,
    id TEXT NOT NULL,
    doc JSONB NOT NULL,
    position BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (projection, id)
);",
}];
