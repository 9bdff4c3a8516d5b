//! The subject scheme of the federation (DESIGN §2): which subjects are events, which
//! are the federation's own plumbing, and which a local app may never take over.
//!
//! - tenant events: `nexus.{tenant}.{event_name}` (e.g. `nexus.salon-001.iot.sensor_data`);
//! - system events: `nexus._core.{event_name}`; events of the `edge` domain are per node and
//!   end with the source node id (`nexus._core.edge.health.edge-msk-01`);
//! - the federation's own plumbing lives under `_nexus.>`, which local apps can never
//!   publish to: a tier's ingress is `_nexus.ingress.{event subject}`, commands are
//!   requested on `_nexus.cmd.{node_id}.{command}`;
//! - NATS's own subjects (`$SYS.…`, `$JS.…`) and request replies (`_INBOX.…`) are no app's
//!   either.
//!
//! The one owner of these rules: the wire crate re-exports this module as
//! `nexus_wire::subject` (the federation as `nexus_federation::subject`) and every subject
//! is built with it; the config crate checks `[[bridge.up]]`, `[[bridge.down]]` and
//! `[[landing.domains]]` with it, so `check` refuses exactly what the runtime would. Ids inside subjects follow [`crate::ids`].

use crate::ids;

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
/// The first token of NATS request reply subjects.
pub const INBOX_PREFIX: &str = "_INBOX";
/// How NATS's own subjects start (`$SYS.…` system events, `$JS.…` the JetStream API).
pub const SYSTEM_PREFIX: char = '$';

/// Longest event (or command) name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 128;
/// The domain of the agent's built-in commands (`agent.ping`) and their results.
pub const AGENT_DOMAIN: &str = "agent";
/// The domain of per-node events (`edge.health`): their subject ends with the source node.
pub const EDGE_DOMAIN: &str = "edge";
/// The domain of the agent's audit events (`audit.rejected`).
pub const AUDIT_DOMAIN: &str = "audit";
/// The event domains of the agent's own events: never an app's.
pub const RESERVED_EVENT_DOMAINS: &[&str] = &[AGENT_DOMAIN, EDGE_DOMAIN, AUDIT_DOMAIN];

/// Whether `token` is a valid id (node id, tenant, a token of an event name): the rule of
/// [`ids::check_id`] (1..=64 chars of `[a-z0-9_-]`), as a yes or no.
pub fn is_valid_id(token: &str) -> bool {
    ids::check_id(token).is_ok()
}

/// Whether `name` is a valid event name: two or more dot-separated tokens of
/// `[a-z0-9_-]` (`edge.health`, `iot.sensor_data`, `booking.created`), at most
/// [`MAX_EVENT_NAME_LEN`] chars. Command names follow the same rule.
pub fn is_valid_event_name(name: &str) -> bool {
    name.len() <= MAX_EVENT_NAME_LEN
        && name.split('.').count() >= 2
        && name.split('.').all(is_valid_id)
}

/// The subject an event is published on at the root, derived from the envelope's fields
/// (so a relaying tier cannot move a signed body to another subject unnoticed).
pub fn event_subject(tenant: Option<&str>, event_name: &str, source: &str) -> String {
    match tenant {
        Some(tenant) => format!("{EVENT_PREFIX}.{tenant}.{event_name}"),
        None if event_name
            .strip_prefix(EDGE_DOMAIN)
            .is_some_and(|rest| rest.starts_with('.')) =>
        {
            format!("{EVENT_PREFIX}.{CORE_TENANT}.{event_name}.{source}")
        }
        None => format!("{EVENT_PREFIX}.{CORE_TENANT}.{event_name}"),
    }
}

/// Whether a subject pattern selects event subjects only: its first token is
/// [`EVENT_PREFIX`] and at least one token follows (what the root's journal, capturing
/// `nexus.>`, can hold).
pub fn is_event_subject_pattern(pattern: &str) -> bool {
    let mut tokens = pattern.split('.');
    tokens.next() == Some(EVENT_PREFIX) && tokens.next().is_some()
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

/// Who owns the subjects that start with a token, when it is not the apps on a node's
/// own NATS: what a `[[bridge.up]]` or `[[bridge.down]]` rule's `local` side may never
/// start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAppSubject {
    /// `_nexus.…`: the federation's own (ingress, commands).
    Federation,
    /// `_INBOX.…`: request replies.
    Inbox,
    /// `$…`: NATS's own (system events, the JetStream API).
    Nats,
}

/// Whose subjects start with `first_token` (the first `.`-separated token of a subject),
/// when they are not an app's; `None` for an app's (or a wildcard: the caller decides).
pub fn not_app_subject(first_token: &str) -> Option<NotAppSubject> {
    match first_token {
        RESERVED_PREFIX => Some(NotAppSubject::Federation),
        INBOX_PREFIX => Some(NotAppSubject::Inbox),
        system if system.starts_with(SYSTEM_PREFIX) => Some(NotAppSubject::Nats),
        _ => None,
    }
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
        let longest = format!("a.{}", "b".repeat(MAX_EVENT_NAME_LEN - 2));
        assert!(!is_valid_event_name(&longest), "tokens are at most 64");
        let longest = format!("{}.{}", "a".repeat(63), "b".repeat(64));
        assert_eq!(longest.len(), MAX_EVENT_NAME_LEN);
        assert!(is_valid_event_name(&longest));
        assert!(!is_valid_event_name(&format!("{longest}.c")));
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
            event_subject(None, "edgex.health", "hub-1"),
            "nexus._core.edgex.health"
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

    #[test]
    fn the_federations_subjects_are_under_its_reserved_prefix() {
        for prefix in [INGRESS_PREFIX, COMMAND_PREFIX] {
            assert_eq!(prefix.split('.').next(), Some(RESERVED_PREFIX), "{prefix}");
        }
        let first = |subject: &str| subject.split('.').next().map(not_app_subject);
        assert_eq!(
            first(&ingress_subject("nexus.t.a.b")),
            Some(Some(NotAppSubject::Federation))
        );
        assert_eq!(
            first(&command_subject("edge-01", "agent.ping")),
            Some(Some(NotAppSubject::Federation))
        );
        assert_eq!(first("_INBOX.abc"), Some(Some(NotAppSubject::Inbox)));
        assert_eq!(first("$JS.API.INFO"), Some(Some(NotAppSubject::Nats)));
        assert_eq!(first("$SYS.ACCOUNT.x"), Some(Some(NotAppSubject::Nats)));
        for app in [
            "app.booking.created",
            "nexus.t.x",
            "_nexusx.a",
            "_inbox.a",
            "*",
            ">",
        ] {
            assert_eq!(first(app), Some(None), "{app}");
        }
    }

    #[test]
    fn event_subject_patterns_are_under_the_event_prefix() {
        for good in ["nexus.>", "nexus.*.booking.>", "nexus._core.edge.health.*"] {
            assert!(is_event_subject_pattern(good), "{good}");
        }
        for bad in ["nexus", "*.t.>", ">", "_nexus.ingress.>", "nexusx.>"] {
            assert!(!is_event_subject_pattern(bad), "{bad}");
        }
    }
}
