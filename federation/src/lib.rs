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
//! - `outbox`: the bounded queue of events awaiting the next tier's ack.
//! - `link`: a resilient NATS connection with observable state.
//! - `uplink`: the pump from the outbox to the next tier.
//! - `ingress`: the hub/root pump from the ingress stream onward, and landing streams.
//! - `backoff`, `ratelog`: small value types for retries and quiet logs.

pub mod backoff;
pub mod envelope;
pub mod ingress;
pub mod link;
pub mod outbox;
pub mod provenance;
pub mod ratelog;
pub mod subject;
pub mod uplink;

pub use envelope::{Encoding, Envelope, EnvelopeError};
pub use link::{Link, LinkState};
pub use outbox::{Outbox, OutboxFull, OutboxStats};
pub use provenance::{SignedEvent, VerifyError};
