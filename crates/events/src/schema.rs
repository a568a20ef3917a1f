//! The event store's tables, as embedded migrations of the `events` component.
//!
//! `streams` holds one row per stream (its last version, deletion state and
//! retention); `events` holds every event under its global `position`;
//! `positions` is the single-row counter that hands out positions (see the
//! crate docs for why a counter row and not a sequence); `snapshots` keeps the
//! latest snapshot per stream.

use trellis_store::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "streams, events, positions, snapshots",
        sqlite: "
CREATE TABLE {ns}streams (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    truncate_before INTEGER,
    max_count INTEGER,
    max_age_ms INTEGER,
    custom TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE {ns}events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT,
    created_ms INTEGER NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX {ns}events_category ON {ns}events (category, position);
CREATE INDEX {ns}events_stream_position ON {ns}events (stream, position);
CREATE TABLE {ns}positions (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
INSERT INTO {ns}positions (id, last) VALUES (1, 0);
CREATE TABLE {ns}snapshots (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);",
        postgres: "
CREATE TABLE {ns}streams (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    deleted BIGINT NOT NULL DEFAULT 0,
    truncate_before BIGINT,
    max_count BIGINT,
    max_age_ms BIGINT,
    custom TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE {ns}events (
    position BIGINT PRIMARY KEY,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    version BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT,
    created_ms BIGINT NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX {ns}events_category ON {ns}events (category, position);
CREATE INDEX {ns}events_stream_position ON {ns}events (stream, position);
CREATE TABLE {ns}positions (id BIGINT PRIMARY KEY CHECK (id = 1), last BIGINT NOT NULL);
INSERT INTO {ns}positions (id, last) VALUES (1, 0);
CREATE TABLE {ns}snapshots (
    stream TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    data TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);",
    },
    // `(stream, position)` kept the order `UNIQUE (stream, version)` already
    // keeps, at the price of one more index write at a random place per
    // appended event; stream reads by position go through the unique index.
    Migration {
        version: 2,
        name: "drop the (stream, position) index",
        sqlite: "DROP INDEX IF EXISTS {ns}events_stream_position;",
        postgres: "DROP INDEX IF EXISTS {ns}events_stream_position;",
    },
];
