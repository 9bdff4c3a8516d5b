//! Why a message was refused: a closed set of [`Reason`]s and the [`Rejection`] that
//! carries one with its detail.
//!
//! The codes ([`Reason::as_str`]) are a wire and disk contract: command error replies,
//! the up-bridge's answers, dead letters, audit events, counters and logs carry them, and
//! operators filter by them (`dlq list --reason`). docs/security.md, "Refusal reasons",
//! lists every one; `tests/tests/repo.rs` checks that list against [`Reason::ALL`]. Code
//! decides by variant ([`Reason::is_transient`], [`Reason::is_token`],
//! [`Reason::is_back_pressure`]), never by the text.
//!
//! The reasons and the rejection are pure (no I/O, no clock); the sink every refusing stage
//! hands them to (`nexus_federation::refusal::RefusalSink`) is the I/O around them. The IoT
//! bridge's sensor refusals have their own closed set (`nexus_iot_bridge::mapping::Reason`,
//! docs/iot.md).

use nexus_policies::TokenError;

use crate::provenance::VerifyError;

/// Why a message was refused, or a command failed: a stable code for replies, counters,
/// logs, dead letters and audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // The message itself (signature, headers, envelope).
    /// A provenance header is missing or unusable.
    BadHeaders,
    /// The signature does not verify over the body with the presented key.
    BadSignature,
    /// Larger than allowed (the envelope limit, or `bridge.max_payload`).
    Oversized,
    /// Not a valid envelope, not a JSON/CBOR object, or a field with a bad value.
    Malformed,
    /// It arrived on another subject than its body names (a command: another command or
    /// node).
    SubjectMismatch,
    /// `Nats-Msg-Id` is not the body's `event_id`.
    MsgIdMismatch,

    // The signer's token chain.
    /// No token chain was presented for the signer.
    TokenUnknown,
    /// The token chain does not decode.
    TokenMalformed,
    /// A token of the chain has expired.
    TokenExpired,
    /// A token of the chain is not valid yet.
    TokenNotYetValid,
    /// A token of the chain is revoked.
    TokenRevoked,
    /// A token grants more than its issuer holds (subjects, tenant, role or window).
    TokenOverReaching,
    /// The chain does not lead to a trust anchor.
    TokenUntrustedRoot,
    /// A token's signature does not verify.
    TokenBadSignature,
    /// The chain is for another key than the signer's.
    TokenKeyMismatch,
    /// `agent.token.rotate`: the new token is not this node's (id, key, role, tenant or
    /// parent).
    TokenNotMine,

    // Admission: what the verified signer may say.
    /// `source`, or a payload field naming the origin, is not the token's node.
    SourceSpoofing,
    /// Another tenant than the token's.
    TenantCrossover,
    /// The token does not grant publishing on the subject.
    SubjectNotGranted,
    /// The local `[[acl]]` does not allow the subject.
    AclDenied,
    /// The chain registry could not be read: retried, not dead-lettered.
    RegistryUnavailable,
    /// The trust clock is not set yet: retried at the ingress.
    ClockUnsynced,

    // Forwarding.
    /// Not accepted onward after `ingress.max_deliver` tries, or never can be.
    Undeliverable,

    // The up-bridge.
    /// The subject maps to no valid event name.
    BadEventName,
    /// A complete envelope whose `event_name` is not the one its subject maps to.
    EventNameMismatch,
    /// The payload does not satisfy its registered event's JSON Schema.
    SchemaInvalid,
    /// (root landing, `events.unknown`) The `event@version` is not in the registry.
    UnregisteredEvent,
    /// The outbox is full (`when_full = "reject"`): back-pressure, not dead-lettered.
    OutboxFull,
    /// The outbox cannot take events: back-pressure, not dead-lettered.
    OutboxUnavailable,
    /// An internal failure, not the sender's.
    Internal,

    // Command verification.
    /// Not `_nexus.cmd.{node}.{command}`.
    BadCommandSubject,
    /// Issued later than this node's clock allows.
    CommandFromFuture,
    /// Its deadline has passed (or no time is left to ask the app).
    CommandExpired,
    /// Issued before this agent started.
    CommandStale,
    /// Its `event_id` was seen before.
    CommandReplayed,
    /// The issuer may not command this node (a member, or not above it in the tree).
    CommandNotAllowed,
    /// The issuer's token does not grant the command subject.
    CommandNotGranted,
    /// Too many commands in flight to remember another.
    Busy,

    // Command answers.
    /// No built-in and no `[[bridge.down]]` rule takes the command.
    UnknownCommand,
    /// `agent.token.rotate` on a node without `node.token`.
    NoToken,
    /// A file could not be written.
    Io,
    /// No local app listens on the command's local subject.
    NoLocalResponder,
    /// The app, or the routed node, did not answer in time.
    Timeout,
    /// This node's local NATS could not be asked.
    LocalUnavailable,
    /// The app answered with `Nats-Service-Error`.
    AppError,
    /// The app's answer is not a JSON object.
    BadAppReply,
    /// (hub) The node's heartbeats are overdue.
    NodeOffline,
    /// (hub) The node is online but not listening for commands.
    NodeUnreachable,
    /// (hub) The hub's own NATS could not be asked.
    HubUnavailable,
}

impl Reason {
    /// Every reason, in declaration order ([`Reason::index`]).
    pub const ALL: [Reason; 49] = [
        Reason::BadHeaders,
        Reason::BadSignature,
        Reason::Oversized,
        Reason::Malformed,
        Reason::SubjectMismatch,
        Reason::MsgIdMismatch,
        Reason::TokenUnknown,
        Reason::TokenMalformed,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenRevoked,
        Reason::TokenOverReaching,
        Reason::TokenUntrustedRoot,
        Reason::TokenBadSignature,
        Reason::TokenKeyMismatch,
        Reason::TokenNotMine,
        Reason::SourceSpoofing,
        Reason::TenantCrossover,
        Reason::SubjectNotGranted,
        Reason::AclDenied,
        Reason::RegistryUnavailable,
        Reason::ClockUnsynced,
        Reason::Undeliverable,
        Reason::BadEventName,
        Reason::EventNameMismatch,
        Reason::SchemaInvalid,
        Reason::UnregisteredEvent,
        Reason::OutboxFull,
        Reason::OutboxUnavailable,
        Reason::Internal,
        Reason::BadCommandSubject,
        Reason::CommandFromFuture,
        Reason::CommandExpired,
        Reason::CommandStale,
        Reason::CommandReplayed,
        Reason::CommandNotAllowed,
        Reason::CommandNotGranted,
        Reason::Busy,
        Reason::UnknownCommand,
        Reason::NoToken,
        Reason::Io,
        Reason::NoLocalResponder,
        Reason::Timeout,
        Reason::LocalUnavailable,
        Reason::AppError,
        Reason::BadAppReply,
        Reason::NodeOffline,
        Reason::NodeUnreachable,
        Reason::HubUnavailable,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadHeaders => "bad_headers",
            Reason::BadSignature => "bad_signature",
            Reason::Oversized => "oversized",
            Reason::Malformed => "malformed",
            Reason::SubjectMismatch => "subject_mismatch",
            Reason::MsgIdMismatch => "msg_id_mismatch",
            Reason::TokenUnknown => "token_unknown",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenRevoked => "token_revoked",
            Reason::TokenOverReaching => "token_over_reaching",
            Reason::TokenUntrustedRoot => "token_untrusted_root",
            Reason::TokenBadSignature => "token_bad_signature",
            Reason::TokenKeyMismatch => "token_key_mismatch",
            Reason::TokenNotMine => "token_not_mine",
            Reason::SourceSpoofing => "source_spoofing",
            Reason::TenantCrossover => "tenant_crossover",
            Reason::SubjectNotGranted => "subject_not_granted",
            Reason::AclDenied => "acl_denied",
            Reason::RegistryUnavailable => "registry_unavailable",
            Reason::ClockUnsynced => "clock_unsynced",
            Reason::Undeliverable => "undeliverable",
            Reason::BadEventName => "bad_event_name",
            Reason::EventNameMismatch => "event_name_mismatch",
            Reason::SchemaInvalid => "schema_invalid",
            Reason::UnregisteredEvent => "unregistered_event",
            Reason::OutboxFull => "outbox_full",
            Reason::OutboxUnavailable => "outbox_unavailable",
            Reason::Internal => "internal",
            Reason::BadCommandSubject => "bad_command_subject",
            Reason::CommandFromFuture => "command_from_future",
            Reason::CommandExpired => "command_expired",
            Reason::CommandStale => "command_stale",
            Reason::CommandReplayed => "command_replayed",
            Reason::CommandNotAllowed => "command_not_allowed",
            Reason::CommandNotGranted => "command_not_granted",
            Reason::Busy => "busy",
            Reason::UnknownCommand => "unknown_command",
            Reason::NoToken => "no_token",
            Reason::Io => "io",
            Reason::NoLocalResponder => "no_local_responder",
            Reason::Timeout => "timeout",
            Reason::LocalUnavailable => "local_unavailable",
            Reason::AppError => "app_error",
            Reason::BadAppReply => "bad_app_reply",
            Reason::NodeOffline => "node_offline",
            Reason::NodeUnreachable => "node_unreachable",
            Reason::HubUnavailable => "hub_unavailable",
        }
    }

    /// The index of this reason in [`Reason::ALL`] (for counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A refusal that may resolve by itself (the registry comes back, the clock gets
    /// set): the ingress retries the message instead of dead-lettering it.
    pub fn is_transient(self) -> bool {
        matches!(self, Reason::RegistryUnavailable | Reason::ClockUnsynced)
    }

    /// A refusal of the signer's token chain itself (`token_*`): a newer chain in the
    /// registry (a rotation) may be admitted where this one was not.
    pub fn is_token(self) -> bool {
        matches!(
            self,
            Reason::TokenUnknown
                | Reason::TokenMalformed
                | Reason::TokenExpired
                | Reason::TokenNotYetValid
                | Reason::TokenRevoked
                | Reason::TokenOverReaching
                | Reason::TokenUntrustedRoot
                | Reason::TokenBadSignature
                | Reason::TokenKeyMismatch
                | Reason::TokenNotMine
        )
    }

    /// Outbox trouble: back-pressure, not a bad message. The sender is told and retries;
    /// nothing is dead-lettered.
    pub fn is_back_pressure(self) -> bool {
        matches!(self, Reason::OutboxFull | Reason::OutboxUnavailable)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message was refused: a stable reason and a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code: replies, counters, logs, dead letters and audit events carry it.
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
    /// Where in the payload ([`Reason::SchemaInvalid`]): the JSON pointer of the first
    /// failing field, `""` for the payload itself.
    pub pointer: Option<String>,
}

impl Rejection {
    /// A refusal for `reason`, with a human `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            pointer: None,
        }
    }

    /// The same refusal, located at `pointer` in the payload.
    pub fn at(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl From<&VerifyError> for Rejection {
    fn from(error: &VerifyError) -> Self {
        Rejection::new(error.reason(), error.to_string())
    }
}

impl From<&TokenError> for Rejection {
    fn from(error: &TokenError) -> Self {
        let reason = match error {
            TokenError::Expired { .. } => Reason::TokenExpired,
            TokenError::NotYetValid { .. } => Reason::TokenNotYetValid,
            TokenError::Revoked { .. } => Reason::TokenRevoked,
            TokenError::OverReaching { .. }
            | TokenError::TenantMismatch { .. }
            | TokenError::RoleEscalation { .. }
            | TokenError::WiderWindow { .. } => Reason::TokenOverReaching,
            TokenError::UntrustedRoot { .. } => Reason::TokenUntrustedRoot,
            TokenError::BadSignature { .. } => Reason::TokenBadSignature,
            _ => Reason::TokenMalformed,
        };
        Rejection::new(reason, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_reason_has_its_own_code_and_index() {
        let mut codes = HashSet::new();
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert!(
                codes.insert(reason.as_str()),
                "`{reason}` is the code of two reasons"
            );
            assert_eq!(reason.index(), index, "{reason:?} is out of place in ALL");
            assert_eq!(reason.to_string(), reason.as_str());
            let code = reason.as_str();
            assert!(
                !code.is_empty()
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "`{code}` is not snake_case"
            );
        }
    }

    #[test]
    fn the_categories_are_the_ones_the_codes_name() {
        for reason in Reason::ALL {
            assert_eq!(
                reason.is_token(),
                reason.as_str().starts_with("token_"),
                "{reason}"
            );
            assert_eq!(
                reason.is_back_pressure(),
                reason.as_str().starts_with("outbox_"),
                "{reason}"
            );
        }
        let transient: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| r.is_transient())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(transient, ["registry_unavailable", "clock_unsynced"]);
    }
}
