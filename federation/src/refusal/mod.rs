//! Where refusals go: the [`RefusalSink`] every refusing stage (the ingress pump, the
//! up-bridge, the command service) hands its [`Rejection`]s to.
//!
//! The reasons and the rejection are the wire crate's (`nexus_wire::refusal`, re-exported
//! here): a closed set of stable codes, pure. The sink (`refusal/sink.rs`) is the I/O
//! around them: counters, rate-limited logs and the hand-off to the dead-letter writer.

mod sink;

pub use nexus_wire::refusal::*;
pub use sink::{RefusalCounts, RefusalSink, RejectedMessage, Stage};
