//! The federation: how events travel between tiers over NATS.
//!
//! This crate owns the NATS links and the pumps that move events (uplink: outbox → parent;
//! ingress: children → verify → onward; the up-bridge of local apps; commands down the
//! tree), and tier trust: admission at verifying tiers, the chain registry, revocations and
//! the trust clock. It must not know about MQTT, the CLI, or how the agent supervises its
//! tasks; trust decisions are delegated to `nexus-policies`.
//!
//! What it builds on, each a crate of its own (docs/architecture.md, "Crates"): the wire
//! format (`nexus-wire`: envelope, provenance, subjects, refusal reasons), the on-disk stores
//! (`nexus-store`: outbox, dead letters), the subsystem contract and retry waits
//! (`nexus-runtime`) and TLS client settings (`nexus-tls`). Their modules are re-exported
//! under this crate's names (`nexus_federation::envelope`, `::outbox`, `::backoff`, …) for
//! the agent and the tests; new code imports them from their own crate.
//!
//! The forwarding path, at every tier:
//! `outbox → signed envelope → (next tier) ingress stream → verify → JetStream publish
//! onward (Nats-Msg-Id = event_id) → PubAck → ack`.
//!
//! # Layout
//! - `headers`: the wire crate's signed events with NATS headers (`NatsProvenance`:
//!   `headers`, `open`, `open_detached`).
//! - `link`: a resilient NATS connection with observable state.
//! - `tls`: `nexus-tls`' client settings, and what is NATS-specific about TLS (URL schemes,
//!   the clear-text warning, the probe of a server without TLS).
//! - `uplink`: the pump from the outbox to the next tier.
//! - `ingress`: the hub/root pump from the ingress stream onward, and landing streams.
//! - `bridge`: local apps' subjects up as signed events (`[[bridge.up]]`).
//! - `command`: commands down the tree (seal, open, freshness, replay) and their replies.
//! - `trust`: admission at verifying tiers (token chains, grants, ACL), chain registry.
//! - `refusal`: the one sink where every stage's refusals (`Reason`, `Rejection`, from the
//!   wire crate) are counted, logged and handed to the dead-letter writer.
//! - `revocation`: signed revocation lists, watched from above, persisted, passed down.
//! - `follow`: following a key-value bucket on a link (watch, hand over, watch again).
//! - `clock`: the trust clock of boxes without an RTC (last known good time).
//! - `replicas`: how many servers of a JetStream cluster keep the streams and buckets a
//!   hub or root creates, and what a refusal of that count means.

pub mod bridge;
pub mod clock;
pub mod command;
pub mod follow;
pub mod headers;
pub mod ingress;
pub mod landed;
pub mod link;
pub mod refusal;
pub mod replicas;
pub mod revocation;
pub mod tls;
pub mod trust;
pub mod uplink;

pub use nexus_runtime::{backoff, ratelog, subsystem};
pub use nexus_store::{deadletter, fsutil, outbox, sqlite};
pub use nexus_wire::{envelope, provenance, subject};

pub use headers::NatsProvenance;
pub use link::{Link, LinkState};
pub use nexus_store::{Outbox, OutboxError, OutboxOptions, OutboxStats, Priority, WhenFull};
pub use nexus_wire::{Encoding, Envelope, EnvelopeError, SignedEvent, VerifyError};
