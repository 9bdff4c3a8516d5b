//! What a node keeps on its own disk: the outbox and the dead letters.
//!
//! This crate owns the crash-safe (SQLite) bounded queue of signed events awaiting the next
//! tier's ack, the store of rejected and undeliverable messages, what both share (durable
//! open, damaged files moved aside and salvaged), and atomic, durable file writes. Each store
//! has one writer (the outbox's thread, the dead-letter store's lock) and an async API in
//! front of it.
//!
//! It must not know how events travel: no NATS or MQTT client, no TLS
//! (`tests/tests/layering.rs` checks its dependencies). What it stores is the wire crate's
//! [`nexus_wire::SignedEvent`], kept byte for byte; who fills and drains the stores (the
//! uplink, the refusal sink, the IoT bridge, `nexus-agent dlq`) lives above it.
//!
//! # Layout
//! - `outbox`: the bounded queue of events awaiting the next tier's ack (invariants and
//!   table layout at the top of `outbox/mod.rs`).
//! - `deadletter`: the store of rejected and undeliverable messages (`dlq` list/replay/purge).
//! - `sqlite`: what the on-disk stores share (durable open, damaged files moved aside).
//! - `fsutil`: atomic, durable file writes (keys, tokens, revocation lists, the clock).

pub mod deadletter;
pub mod fsutil;
pub mod outbox;
pub mod sqlite;

pub use deadletter::{DeadLetter, DeadLetters};
pub use outbox::{
    LossKind, Losses, Numbered, Outbox, OutboxError, OutboxOptions, OutboxStats, Priority, Seal,
    Waiting, WhenFull,
};
