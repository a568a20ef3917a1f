//! The components a node runs, each started from its config section through
//! a [`Wiring`](crate::up::Wiring): the store, the event store and the
//! gateway. Each file here is glue only — the behaviour lives in the
//! component's own crate.

pub mod cqrs;
pub mod events;
pub mod gateway;
pub mod registry;
pub mod store;
