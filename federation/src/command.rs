//! Commands down the tree, and their replies back up.
//!
//! A command is a signed envelope whose `event_name` is the command (`agent.ping`,
//! `booking.cancel`), requested (NATS request/reply) on `_nexus.cmd.{node}.{command}`:
//! on the root's NATS, a hub routes it to its member over the hub's NATS; on the hub's
//! NATS, the member takes it directly. Every hop verifies it before acting on it:
//! - the signature over the exact body (`Nexus-Signer`, `Nexus-Sig`);
//! - `event_name` and the envelope header `target` match the subject;
//! - it is fresh: `ts` is not in the future and `ts + timeout_ms` has not passed (clock
//!   skew allowed), and its `event_id` was not seen before (no replay);
//! - the issuer is a trust anchor, or its token chain (in the `Nexus-Chain` header)
//!   verifies, is a hub's or root's, grants the command subject, and is bound to the
//!   target's tenant if it is bound to one ([`Gatekeeper::admit_command`]).
//!
//! The reply is a signed envelope too: `{command}.result`, with the command's
//! `correlation_id`, `causation_id` = the command's `event_id`, and the envelope header
//! `status` = `ok` (the payload is the answer) or `error` (the payload is
//! `{"code", "message"}`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use nexus_policies::token::{Chain, MAX_CHAIN_BYTES};
use nexus_policies::SecretKey;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::envelope::{parse_ts, Encoding, Envelope, MAX_ENVELOPE_BYTES};
use crate::headers::NatsProvenance as _;
use crate::provenance::SignedEvent;
use crate::refusal::{Reason, Rejection};
use crate::subject;

/// The header carrying the issuer's token chain (base64url, unpadded), when it has one.
pub const HDR_CHAIN: &str = "Nexus-Chain";
/// Envelope header: the node a command is for.
pub const TARGET: &str = "target";
/// Envelope header: how long the issuer waits for the reply, in milliseconds.
pub const TIMEOUT_MS: &str = "timeout_ms";
/// Envelope header of a reply: `ok` or `error`.
pub const STATUS: &str = "status";
/// The longest a command may stay valid.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The default wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest command or reply accepted.
pub const MAX_COMMAND_BYTES: usize = MAX_ENVELOPE_BYTES;

/// The reply suffix of a command's event name.
pub const RESULT_SUFFIX: &str = "result";

/// The reply subject of every command this process delivers to a local app
/// (`_INBOX.nexus-cmd.{random}.{request}`), fixed for the process' life. A `[[bridge.up]]`
/// rule whose pattern also takes the delivery subject sees the delivered request too: the
/// up-bridge recognises the agent's own deliveries by this reply prefix and leaves them to
/// the app, so a command never comes back up as an event and its reply is the app's.
pub fn delivery_inbox_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        format!(
            "{}.nexus-cmd.{}",
            subject::INBOX_PREFIX,
            uuid::Uuid::now_v7().simple()
        )
    })
}

/// A fresh reply subject for one delivery to a local app, under
/// [`delivery_inbox_prefix`].
pub fn delivery_inbox() -> String {
    format!(
        "{}.{}",
        delivery_inbox_prefix(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Whether a local message with this reply subject is a command this process delivered.
pub fn is_own_delivery(reply: Option<&str>) -> bool {
    reply.is_some_and(|reply| {
        reply
            .strip_prefix(delivery_inbox_prefix())
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// A command sealed for sending.
#[derive(Debug, Clone)]
pub struct SealedCommand {
    /// Where to request it.
    pub subject: String,
    /// Provenance headers (and the issuer's chain).
    pub headers: HeaderMap,
    /// The signed body.
    pub body: Bytes,
    /// The envelope (for its ids).
    pub envelope: Envelope,
}

/// Who issues a command.
#[derive(Debug, Clone, Copy)]
pub struct Issuer<'a> {
    /// The issuing node's id (the envelope's `source`).
    pub node_id: &'a str,
    /// Its key: it signs the command.
    pub key: &'a SecretKey,
    /// Its token chain (none for a trust anchor).
    pub chain: Option<&'a [u8]>,
}

/// Seals a command to `target`, waiting at most `timeout` for the reply.
pub fn seal(
    issuer: &Issuer<'_>,
    target: &str,
    command: &str,
    data: Map<String, Value>,
    timeout: Duration,
    now: OffsetDateTime,
) -> Result<SealedCommand, String> {
    if let Err(why) = nexus_policies::ids::check_node_id(target) {
        return Err(format!("{target:?} is not a node id: {why}"));
    }
    if !subject::is_valid_event_name(command) {
        return Err(format!(
            "{command:?} is not a command name: two or more dot-separated tokens of [a-z0-9_-], e.g. agent.ping"
        ));
    }
    let timeout = timeout.min(MAX_TIMEOUT);
    let mut envelope = Envelope::new(command, issuer.node_id, None, data, now);
    envelope.correlation_id = Some(uuid::Uuid::now_v7().to_string());
    envelope.headers.insert(TARGET.into(), target.into());
    envelope
        .headers
        .insert(TIMEOUT_MS.into(), timeout.as_millis().to_string());
    let event =
        SignedEvent::seal(&envelope, Encoding::Json, issuer.key).map_err(|e| e.to_string())?;
    let mut headers = event.headers();
    if let Some(chain) = issuer.chain {
        headers.insert(HDR_CHAIN, URL_SAFE_NO_PAD.encode(chain).as_str());
    }
    Ok(SealedCommand {
        subject: subject::command_subject(target, command),
        headers,
        body: event.body,
        envelope,
    })
}

/// A command that passed the checks that need no trust decision (signature, shape).
#[derive(Debug, Clone)]
pub struct OpenedCommand {
    /// The node it is for.
    pub target: String,
    /// The command name.
    pub name: String,
    /// The subject it was requested on.
    pub subject: String,
    /// The signed event (to forward unchanged).
    pub event: SignedEvent,
    /// Its envelope.
    pub envelope: Envelope,
    /// The issuer's chain, if it sent one.
    pub chain: Option<Chain>,
    /// How long the issuer waits, from `ts`.
    pub timeout: Duration,
    /// The issuer's deadline (`ts + timeout`).
    pub deadline: OffsetDateTime,
}

impl OpenedCommand {
    /// When the issuer says it sent the command (`ts`).
    pub fn issued(&self) -> OffsetDateTime {
        self.deadline
            .checked_sub(time::Duration::try_from(self.timeout).unwrap_or(time::Duration::ZERO))
            .unwrap_or(self.deadline)
    }

    /// Time left before the issuer's deadline, at `now`.
    pub fn remaining(&self, now: OffsetDateTime) -> Duration {
        let left = self.deadline - now;
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }
}

/// Opens a command message: the subject names a node and a command, the signature holds,
/// the body is a command envelope for that node and command, with a valid timeout.
pub fn open(
    message_subject: &str,
    headers: Option<&HeaderMap>,
    body: Bytes,
) -> Result<OpenedCommand, Rejection> {
    let (target, name) = subject::parse_command_subject(message_subject).ok_or_else(|| {
        Rejection::new(
            Reason::BadCommandSubject,
            format!(
                "`{message_subject}` is not {}.{{node}}.{{command}}",
                subject::COMMAND_PREFIX
            ),
        )
    })?;
    let (event, envelope) = SignedEvent::open_detached(headers, body, MAX_COMMAND_BYTES)
        .map_err(|e| Rejection::from(&e))?;
    if envelope.event_name != name {
        return Err(Rejection::new(
            Reason::SubjectMismatch,
            format!(
                "requested as `{name}` but the body is command `{}`",
                envelope.event_name
            ),
        ));
    }
    if envelope.headers.get(TARGET).map(String::as_str) != Some(target) {
        return Err(Rejection::new(
            Reason::SubjectMismatch,
            format!("requested for node `{target}` but the body is for another node"),
        ));
    }
    let timeout = envelope
        .headers
        .get(TIMEOUT_MS)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .filter(|t| !t.is_zero() && *t <= MAX_TIMEOUT)
        .ok_or_else(|| {
            Rejection::new(
                Reason::Malformed,
                format!(
                    "envelope header `{TIMEOUT_MS}` must be 1..={} milliseconds",
                    MAX_TIMEOUT.as_millis()
                ),
            )
        })?;
    let ts = parse_ts(&envelope.ts).ok_or_else(|| Rejection::new(Reason::Malformed, "bad ts"))?;
    // Checked: a `ts` at the end of year 9999 plus the timeout must not overflow (panic).
    let deadline = ts
        .checked_add(time::Duration::try_from(timeout).unwrap_or(time::Duration::MAX))
        .ok_or_else(|| Rejection::new(Reason::Malformed, "ts + timeout_ms is out of range"))?;
    let chain = match headers.and_then(|h| h.get(HDR_CHAIN)) {
        None => None,
        Some(text) => {
            let text = text.as_str();
            if text.len() > MAX_CHAIN_BYTES * 4 / 3 + 4 {
                return Err(Rejection::new(
                    Reason::TokenMalformed,
                    "Nexus-Chain is too long",
                ));
            }
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|e| Rejection::new(Reason::TokenMalformed, format!("Nexus-Chain: {e}")))?;
            Some(Chain::decode(&bytes).map_err(|e| Rejection::from(&e))?)
        }
    };
    Ok(OpenedCommand {
        target: target.to_owned(),
        name: name.to_owned(),
        subject: message_subject.to_owned(),
        event,
        envelope,
        chain,
        timeout,
        deadline,
    })
}

/// Checks that a command is neither from the future nor past its deadline, at `now`,
/// allowing `skew` either way.
pub fn check_fresh(
    command: &OpenedCommand,
    now: OffsetDateTime,
    skew: Duration,
) -> Result<(), Rejection> {
    let skew = time::Duration::try_from(skew).unwrap_or(time::Duration::MAX);
    let issued = command.issued();
    if now.checked_add(skew).is_some_and(|late| issued > late) {
        return Err(Rejection::new(
            Reason::CommandFromFuture,
            format!(
                "issued at {} but this node's clock says {}",
                command.envelope.ts,
                crate::envelope::format_ts(now)
            ),
        ));
    }
    if command
        .deadline
        .checked_add(skew)
        .is_some_and(|end| now > end)
    {
        return Err(Rejection::new(
            Reason::CommandExpired,
            format!(
                "its deadline {} has passed",
                crate::envelope::format_ts(command.deadline)
            ),
        ));
    }
    Ok(())
}

/// The event ids of recent commands, kept until their deadline passes: a command is acted
/// on once, however often it is delivered.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashMap<String, Instant>,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` live commands.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `event_id` until `until`; `Err` if it was seen before, or if the guard is
    /// full of live commands (a flood: refusing is safer than forgetting).
    pub fn admit(&mut self, event_id: &str, until: Instant, now: Instant) -> Result<(), Rejection> {
        if self.seen.get(event_id).is_some_and(|t| *t >= now) {
            return Err(Rejection::new(
                Reason::CommandReplayed,
                format!("command {event_id} was received before"),
            ));
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, t| *t >= now);
            if self.seen.len() >= self.capacity {
                return Err(Rejection::new(
                    Reason::Busy,
                    format!("{} commands are in flight", self.seen.len()),
                ));
            }
        }
        self.seen.insert(event_id.to_owned(), until);
        Ok(())
    }
}

/// The event name of a command's reply.
pub fn result_name(command: &str) -> String {
    format!("{command}.{RESULT_SUFFIX}")
}

/// The reply envelope to `command`, from node `source` (of `tenant`, for app replies that
/// travel up as tenant events): `ok` with `payload`, or an error.
pub fn reply_envelope(
    command: &Envelope,
    source: &str,
    tenant: Option<&str>,
    outcome: Result<Map<String, Value>, (&str, String)>,
    now: OffsetDateTime,
) -> Envelope {
    let (status, payload) = match outcome {
        Ok(payload) => ("ok", payload),
        Err((code, message)) => ("error", error_payload(code, &message)),
    };
    let mut reply = Envelope::new(
        &result_name(&command.event_name),
        source,
        tenant,
        payload,
        now,
    );
    reply.correlation_id = Some(
        command
            .correlation_id
            .clone()
            .unwrap_or_else(|| command.event_id.clone()),
    );
    reply.causation_id = Some(command.event_id.clone());
    reply.headers.insert(STATUS.into(), status.into());
    reply
}

/// `{"code": …, "message": …}`.
pub fn error_payload(code: &str, message: &str) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("code".into(), json!(code));
    map.insert("message".into(), json!(message));
    map
}

/// The NATS message of a reply: its signed body and provenance headers.
pub fn reply_message(
    reply: &Envelope,
    key: &SecretKey,
) -> Result<(HeaderMap, Bytes, SignedEvent), String> {
    let event = SignedEvent::seal(reply, Encoding::Json, key).map_err(|e| e.to_string())?;
    Ok((event.headers(), event.body.clone(), event))
}

/// Whether a reply envelope says `ok`.
pub fn is_ok(reply: &Envelope) -> bool {
    reply.headers.get(STATUS).map(String::as_str) == Some("ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("strong key")
    }

    fn sealed(now: OffsetDateTime) -> SealedCommand {
        let mut data = Map::new();
        data.insert("x".into(), json!(1));
        let key = key(1);
        let issuer = Issuer {
            node_id: "root",
            key: &key,
            chain: None,
        };
        seal(
            &issuer,
            "edge-01",
            "agent.ping",
            data,
            Duration::from_secs(5),
            now,
        )
        .expect("seals")
    }

    #[test]
    fn a_sealed_command_opens_with_its_target_and_deadline() {
        let now = OffsetDateTime::now_utc();
        let command = sealed(now);
        assert_eq!(command.subject, "_nexus.cmd.edge-01.agent.ping");
        let opened = open(
            &command.subject,
            Some(&command.headers),
            command.body.clone(),
        )
        .expect("opens");
        assert_eq!(opened.target, "edge-01");
        assert_eq!(opened.name, "agent.ping");
        assert_eq!(opened.timeout, Duration::from_secs(5));
        assert!(opened.chain.is_none());
        check_fresh(&opened, now, Duration::ZERO).expect("fresh");
        assert!(opened.remaining(now) <= Duration::from_secs(5));
    }

    #[test]
    fn a_command_is_sealed_only_for_a_valid_node_id() {
        let key = key(1);
        let issuer = Issuer {
            node_id: "root",
            key: &key,
            chain: None,
        };
        for target in ["local", "Edge-01", "a.b", ""] {
            let sealed = seal(
                &issuer,
                target,
                "agent.ping",
                Map::new(),
                Duration::from_secs(5),
                OffsetDateTime::now_utc(),
            );
            assert!(sealed.is_err(), "{target:?}");
        }
    }

    #[test]
    fn own_deliveries_are_recognised_by_their_reply_subject() {
        let inbox = delivery_inbox();
        assert!(is_own_delivery(Some(&inbox)));
        assert_ne!(inbox, delivery_inbox(), "one reply subject per delivery");
        assert!(!is_own_delivery(None));
        assert!(!is_own_delivery(Some("_INBOX.abc.def")));
        // The prefix alone, or a longer token that merely starts with it, is not ours.
        assert!(!is_own_delivery(Some(delivery_inbox_prefix())));
        assert!(!is_own_delivery(Some(&format!(
            "{}x.1",
            delivery_inbox_prefix()
        ))));
    }

    #[test]
    fn a_command_moved_to_another_node_or_name_is_refused() {
        let command = sealed(OffsetDateTime::now_utc());
        for subject in [
            "_nexus.cmd.edge-02.agent.ping",
            "_nexus.cmd.edge-01.agent.health",
        ] {
            let refused =
                open(subject, Some(&command.headers), command.body.clone()).expect_err("refused");
            assert_eq!(refused.reason.as_str(), "subject_mismatch", "{subject}");
        }
        let refused =
            open("_nexus.cmd.edge-01", Some(&command.headers), command.body).expect_err("refused");
        assert_eq!(refused.reason.as_str(), "bad_command_subject");
    }

    #[test]
    fn stale_and_future_commands_are_refused() {
        let then = OffsetDateTime::now_utc();
        let command = sealed(then);
        let opened = open(&command.subject, Some(&command.headers), command.body).expect("opens");
        let skew = Duration::from_secs(1);
        let late = then + Duration::from_secs(7);
        assert_eq!(
            check_fresh(&opened, late, skew).map_err(|r| r.reason.as_str()),
            Err("command_expired")
        );
        let early = then - Duration::from_secs(2);
        assert_eq!(
            check_fresh(&opened, early, skew).map_err(|r| r.reason.as_str()),
            Err("command_from_future")
        );
        check_fresh(&opened, then + Duration::from_millis(5_500), skew).expect("within skew");
    }

    #[test]
    fn a_ts_at_the_end_of_time_is_refused_not_a_panic() {
        let key = key(1);
        let issuer = Issuer {
            node_id: "root",
            key: &key,
            chain: None,
        };
        let far = OffsetDateTime::parse(
            "9999-12-31T23:59:59Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("a valid time");
        let command = seal(
            &issuer,
            "edge-01",
            "agent.ping",
            Map::new(),
            MAX_TIMEOUT,
            far,
        )
        .expect("seals");
        let refused =
            open(&command.subject, Some(&command.headers), command.body).expect_err("refused");
        assert_eq!(refused.reason.as_str(), "malformed");
    }

    #[test]
    fn a_command_is_acted_on_once() {
        let mut guard = ReplayGuard::new(2);
        let now = Instant::now();
        let until = now + Duration::from_secs(5);
        guard.admit("a", until, now).expect("first time");
        assert_eq!(
            guard.admit("a", until, now).map_err(|r| r.reason.as_str()),
            Err("command_replayed")
        );
        guard.admit("b", until, now).expect("second command");
        assert_eq!(
            guard.admit("c", until, now).map_err(|r| r.reason.as_str()),
            Err("busy")
        );
        // Once their deadlines pass, the slots are free again.
        let later = until + Duration::from_secs(1);
        guard
            .admit("c", later + Duration::from_secs(5), later)
            .expect("room again");
    }

    #[test]
    fn replies_carry_the_commands_ids_and_status() {
        let command = sealed(OffsetDateTime::now_utc());
        let now = OffsetDateTime::now_utc();
        let ok = reply_envelope(&command.envelope, "edge-01", None, Ok(Map::new()), now);
        assert_eq!(ok.event_name, "agent.ping.result");
        assert_eq!(ok.correlation_id, command.envelope.correlation_id);
        assert_eq!(
            ok.causation_id.as_deref(),
            Some(command.envelope.event_id.as_str())
        );
        assert!(is_ok(&ok));
        let error = reply_envelope(
            &command.envelope,
            "hub",
            None,
            Err(("node_offline", "silent for 40 s".into())),
            now,
        );
        assert!(!is_ok(&error));
        assert_eq!(error.payload["code"], "node_offline");
        let (headers, body, _) = reply_message(&error, &key(2)).expect("seals");
        let (_, opened) =
            SignedEvent::open_detached(Some(&headers), body, MAX_COMMAND_BYTES).expect("opens");
        assert_eq!(opened, error);
    }
}
