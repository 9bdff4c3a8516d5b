//! Subject names of the federation (DESIGN §2): tenant events `nexus.{tenant}.{event}`,
//! system events `nexus._core.{event}`, the federation's own plumbing under `_nexus.>`
//! (ingress `_nexus.ingress.{event subject}`, commands `_nexus.cmd.{node}.{command}`).
//!
//! The rules and names are owned by [`nexus_policies::subjects`], which the config crate
//! checks with as well; this module re-exports them under the names the federation and
//! the agent have always used.

pub use nexus_policies::subjects::*;
