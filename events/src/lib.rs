//! The event contract of nexus-agent: which events exist, what their payloads look like,
//! and the checks made against them (docs/events.md).
//!
//! - [`registry`]: the [`Registry`] of `event@version` entries — a JSON Schema (draft
//!   2020-12) of the payload, examples and metadata (owner, domain, retention, ordering
//!   key) — built from the agent's own events, embedded in the binary, and the operator's
//!   directory (`[events] registry`); its [`Registry::hash`] goes in the heartbeat.
//! - [`Registry::validate`]: a payload against its event's schema, with the JSON pointer of
//!   the first failing field (the member's check of app events before signing, the root's
//!   at landing, `events validate`).
//! - [`lint`]: the naming rules and the breaking changes within a version (`events lint`).
//! - [`scaffold`]: a new event's skeleton (`events scaffold`).
//! - [`asyncapi`]: the AsyncAPI 3.0 document of every subject (`events asyncapi`).
//!
//! Pure: no runtime, no network. Reading a registry directory is the only I/O.

pub mod asyncapi;
pub mod lint;
pub mod registry;
pub mod scaffold;

pub use registry::{Entry, Invalid, Kind, LoadError, Meta, Origin, Registry, Verdict};
