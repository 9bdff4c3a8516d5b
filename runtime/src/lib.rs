//! What every long-running subsystem shares, whichever boundary it works at (NATS pumps,
//! the MQTT bridge, the stores' writers).
//!
//! This crate owns the subsystem contract (`run(…, shutdown) -> Result<(), SubsystemError>`),
//! the one cancel-aware wait of every retry loop, and the "log once per cause per period"
//! value type. They are small and need only tokio's timer and a cancellation token.
//!
//! It must not know what a subsystem does: no NATS, MQTT, TLS or SQLite, no wire format
//! (`tests/tests/layering.rs` checks its dependencies).
//!
//! # Layout
//! - `subsystem`: what a long-running subsystem's `run` returns (`SubsystemError`).
//! - `backoff`: capped, jittered exponential backoff (a value type), and the cancel-aware
//!   wait of every retry loop (`Retry`, `sleep`).
//! - `ratelog`: "log once per cause per period" (`RateLimitedLog`).

pub mod backoff;
pub mod ratelog;
pub mod subsystem;

pub use backoff::{Backoff, Retry};
pub use ratelog::RateLimitedLog;
pub use subsystem::SubsystemError;
