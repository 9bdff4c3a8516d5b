//! Subject names of the federation (DESIGN §2).
//!
//! - tenant events: `nexus.{tenant}.{event_name}` (e.g. `nexus.salon-001.iot.sensor_data`);
//! - system events: `nexus._core.{event_name}`; events of the `edge` domain are per node and
//!   end with the source node id (`nexus._core.edge.health.edge-msk-01`);
//! - the federation's own plumbing lives under `_nexus.>`, which local apps can never
//!   publish to: a tier's ingress is `_nexus.ingress.{event subject}`.
//!
//! Ids inside subjects follow `nexus_policies::ids`, the one owner of the id rules.

use nexus_policies::ids;

/// The prefix of every federated event subject.
pub const EVENT_PREFIX: &str = "nexus";
/// The pseudo-tenant of system events.
pub const CORE_TENANT: &str = "_core";
/// The reserved prefix of the federation's own subjects.
pub const RESERVED_PREFIX: &str = "_nexus";
/// The prefix of a tier's ingress subjects (captured by its ingress stream).
pub const INGRESS_PREFIX: &str = "_nexus.ingress";
/// The prefix of commands: `_nexus.cmd.{node_id}.{command}`, requested on the NATS of
/// the node's parent (or the root's own NATS, for the root).
pub const COMMAND_PREFIX: &str = "_nexus.cmd";

/// Whether `token` is a valid id (node id, tenant, a token of an event name): the rule of
/// [`ids::check_id`] (1..=64 chars of `[a-z0-9_-]`), as a yes or no.
pub fn is_valid_id(token: &str) -> bool {
    ids::check_id(token).is_ok()
}

/// Whether `name` is a valid event name: two or more dot-separated tokens of
/// `[a-z0-9_-]` (`edge.health`, `iot.sensor_data`, `booking.created`), at most 128 chars.
pub fn is_valid_event_name(name: &str) -> bool {
    name.len() <= 128 && name.split('.').count() >= 2 && name.split('.').all(is_valid_id)
}

/// The subject an event is published on at the root, derived from the envelope's fields
/// (so a relaying tier cannot move a signed body to another subject unnoticed).
pub fn event_subject(tenant: Option<&str>, event_name: &str, source: &str) -> String {
    match tenant {
        Some(tenant) => format!("{EVENT_PREFIX}.{tenant}.{event_name}"),
        None if event_name.starts_with("edge.") => {
            format!("{EVENT_PREFIX}.{CORE_TENANT}.{event_name}.{source}")
        }
        None => format!("{EVENT_PREFIX}.{CORE_TENANT}.{event_name}"),
    }
}

/// The ingress subject that carries `event_subject` to the next tier.
pub fn ingress_subject(event_subject: &str) -> String {
    format!("{INGRESS_PREFIX}.{event_subject}")
}

/// The event subject inside an ingress subject, if it is one.
pub fn strip_ingress(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(INGRESS_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|rest| !rest.is_empty())
}

/// The subject a command to `node` is requested on.
pub fn command_subject(node: &str, command: &str) -> String {
    format!("{COMMAND_PREFIX}.{node}.{command}")
}

/// The target node and command of a command subject, if it is one (both valid).
pub fn parse_command_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(COMMAND_PREFIX)?.strip_prefix('.')?;
    let (node, command) = rest.split_once('.')?;
    (ids::check_node_id(node).is_ok() && is_valid_event_name(command)).then_some((node, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_subject_tokens() {
        for good in ["edge-msk-01", "salon_001", "a", &"x".repeat(64)] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", "Edge", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn event_names_need_a_domain_and_a_name() {
        assert!(is_valid_event_name("edge.health"));
        assert!(is_valid_event_name("booking.created.v2"));
        for bad in [
            "health",
            "edge.",
            ".health",
            "edge..health",
            "Edge.health",
            "edge.*",
        ] {
            assert!(!is_valid_event_name(bad), "{bad}");
        }
    }

    #[test]
    fn subjects_follow_the_design() {
        assert_eq!(
            event_subject(None, "edge.health", "edge-01"),
            "nexus._core.edge.health.edge-01"
        );
        assert_eq!(
            event_subject(None, "audit.rejected", "hub-1"),
            "nexus._core.audit.rejected"
        );
        assert_eq!(
            event_subject(Some("salon-001"), "iot.sensor_data", "edge-01"),
            "nexus.salon-001.iot.sensor_data"
        );
        let ingress = ingress_subject("nexus.t.iot.sensor_data");
        assert_eq!(ingress, "_nexus.ingress.nexus.t.iot.sensor_data");
        assert_eq!(strip_ingress(&ingress), Some("nexus.t.iot.sensor_data"));
        assert_eq!(strip_ingress("_nexus.ingress."), None);
        assert_eq!(strip_ingress("nexus.t.x"), None);
        let command = command_subject("edge-01", "agent.ping");
        assert_eq!(command, "_nexus.cmd.edge-01.agent.ping");
        assert_eq!(
            parse_command_subject(&command),
            Some(("edge-01", "agent.ping"))
        );
        for bad in [
            "_nexus.cmd.edge-01",
            "_nexus.cmd.edge-01.ping",
            "_nexus.cmd.Edge.agent.ping",
            "_nexus.cmd.local.agent.ping",
            "_nexus.cmdx.edge-01.agent.ping",
            "nexus.cmd.edge-01.agent.ping",
        ] {
            assert_eq!(parse_command_subject(bad), None, "{bad}");
        }
    }
}
