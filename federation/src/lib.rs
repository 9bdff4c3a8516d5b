//! The federation: how events travel between tiers.
//!
//! This crate owns the envelope and its provenance headers, the subject scheme, the
//! outbox, NATS links and the pumps that move events (uplink: outbox → parent; ingress:
//! children → verify → onward). It must not know about MQTT, the CLI, or how the agent
//! supervises its tasks; trust decisions are delegated to `nexus-policies`.
//!
//! The forwarding path, at every tier:
//! `outbox → signed envelope → (next tier) ingress stream → verify → JetStream publish
//! onward (Nats-Msg-Id = event_id) → PubAck → ack`.
//!
//! # Layout
//! - `envelope`: the DESIGN §3 envelope, JSON/CBOR encoding, untrusted decoding.
//! - `provenance`: signing and verifying exact body bytes; the NATS headers.
//! - `subject`: ids, event names and the subject scheme.
//! - `outbox`: the crash-safe (SQLite) bounded queue of events awaiting the next tier's ack.
//! - `deadletter`: the store of rejected and undeliverable messages (`dlq` list/replay/purge).
//! - `sqlite`: what the on-disk stores share (durable open, damaged files moved aside).
//! - `link`: a resilient NATS connection with observable state.
//! - `tls`: the rustls crypto provider, a link's TLS client config, the clear-text warning.
//! - `uplink`: the pump from the outbox to the next tier.
//! - `ingress`: the hub/root pump from the ingress stream onward, and landing streams.
//! - `bridge`: local apps' subjects up as signed events (`[[bridge.up]]`).
//! - `command`: commands down the tree (seal, open, freshness, replay) and their replies.
//! - `trust`: admission at verifying tiers (token chains, grants, ACL), chain registry.
//! - `refusal`: why a message was refused (`Reason`, `Rejection`), and the one sink where
//!   every stage's refusals are counted, logged and handed to the dead-letter writer.
//! - `revocation`: signed revocation lists, watched from above, persisted, passed down.
//! - `clock`: the trust clock of boxes without an RTC (last known good time).
//! - `fsutil`: atomic, durable file writes.
//! - `backoff`, `ratelog`: small value types for retries and quiet logs; `backoff` also
//!   holds the one cancel-aware wait of every retry loop.
//! - `subsystem`: what a long-running subsystem's `run` returns (`SubsystemError`).

pub mod backoff;
pub mod bridge;
pub mod clock;
pub mod command;
pub mod deadletter;
pub mod envelope;
pub mod fsutil;
pub mod ingress;
pub mod link;
pub mod outbox;
pub mod provenance;
pub mod ratelog;
pub mod refusal;
pub mod revocation;
pub mod sqlite;
pub mod subject;
pub mod subsystem;
pub mod tls;
pub mod trust;
pub mod uplink;

pub use envelope::{Encoding, Envelope, EnvelopeError};
pub use link::{Link, LinkState};
pub use outbox::{Outbox, OutboxError, OutboxOptions, OutboxStats, Priority, WhenFull};
pub use provenance::{SignedEvent, VerifyError};
