//! The persistent subscriptions' tables, as migrations of their own component.
//!
//! `persistent_subscriptions` holds each definition (JSON), its checkpoint
//! (`position`: every event at or below it was acknowledged or parked) and a
//! count of deliveries; `parked_events` holds the events that kept failing,
//! with their attempts and last error, until a replay delivers them.

use trellis_store::Migration;

/// The component name under which these migrations are recorded.
pub const COMPONENT: &str = "persistent_subscriptions";

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "persistent_subscriptions, parked_events",
    sqlite: "
CREATE TABLE {ns}persistent_subscriptions (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    position INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE {ns}parked_events (
    subscription TEXT NOT NULL,
    position INTEGER NOT NULL,
    stream TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    parked_ms INTEGER NOT NULL,
    PRIMARY KEY (subscription, position)
);",
    postgres: "
CREATE TABLE {ns}persistent_subscriptions (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    position BIGINT NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE {ns}parked_events (
    subscription TEXT NOT NULL,
    position BIGINT NOT NULL,
    stream TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    parked_ms BIGINT NOT NULL,
    PRIMARY KEY (subscription, position)
);",
}];
