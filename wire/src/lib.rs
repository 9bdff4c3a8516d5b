//! The wire format: what an event is on the wire and why one is refused.
//!
//! This crate owns the envelope (DESIGN §3) and its two encodings, the provenance of an
//! envelope's exact bytes (who signed them, and the headers that carry it), the subject
//! scheme, and the closed set of refusal reasons every tier reports. Untrusted bytes are
//! decoded and verified here, so this is what the fuzz targets exercise.
//!
//! It must not know how events travel or where they are kept: no async runtime, no NATS or
//! MQTT client, no TLS, no SQLite, no file or network I/O (`tests/tests/layering.rs` checks
//! its dependencies). Headers are read through a small trait ([`provenance::HeaderLookup`]);
//! the federation adapts it to NATS' header map. Keys, signatures and tokens are
//! `nexus-policies`'.
//!
//! # Layout
//! - `envelope`: the envelope, JSON/CBOR encoding, untrusted decoding, timestamps.
//! - `provenance`: signing and verifying exact body bytes; the header names and values.
//! - `subject`: ids, event names and the subject scheme (owned by `nexus_policies::subjects`).
//! - `refusal`: why a message was refused (`Reason`, `Rejection`): stable codes for replies,
//!   counters, logs, dead letters and audit events.

pub mod envelope;
pub mod provenance;
pub mod refusal;
pub mod subject;

pub use envelope::{Encoding, Envelope, EnvelopeError, Sequence};
pub use provenance::{HeaderLookup, Headers, SignedEvent, VerifyError};
pub use refusal::{Reason, Rejection};
