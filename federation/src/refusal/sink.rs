//! Where a refusal goes, whichever stage refused it: one path for the ingress pump, the
//! up-bridge and the command service.
//!
//! [`RefusalSink::refuse`] counts it by reason, logs it (one WARN per reason per minute,
//! with how many were suppressed) and hands it, as a [`RejectedMessage`], to the
//! dead-letter writer, which keeps it and announces it as `audit.rejected`
//! (`agent/src/rejections.rs`). The hand-off never waits: when the writer is behind, the
//! refusal is still counted and logged, but not stored.
//!
//! The IoT bridge does not use it: it records a refused sensor message in the dead-letter
//! store itself, before acknowledging it to the broker (`nexus_iot_bridge::bridge`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{jetstream, HeaderMap};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Reason, Rejection};
use crate::deadletter;
use crate::provenance;
use crate::ratelog::RateLimitedLog;

/// At most one log line per reason per this period.
const LOG_PERIOD: Duration = Duration::from_secs(60);

/// A stage that refuses messages through a [`RefusalSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A hub's or root's ingress pump: children's events.
    Ingress,
    /// The up-bridge: local apps' messages.
    Bridge,
    /// The command service: commands to this node or routed through it.
    Command,
}

impl Stage {
    /// The dead-letter store's name of the stage (`deadletter::STAGE_*`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingress => deadletter::STAGE_INGRESS,
            Stage::Bridge => deadletter::STAGE_BRIDGE,
            Stage::Command => deadletter::STAGE_COMMAND,
        }
    }
}

/// A refused message, handed to whoever dead-letters and audits refusals.
#[derive(Debug, Clone)]
pub struct RejectedMessage {
    /// Where it was refused.
    pub stage: Stage,
    /// Why.
    pub rejection: Rejection,
    /// The subject it arrived on.
    pub subject: String,
    /// Its headers, as received.
    pub headers: Vec<(String, String)>,
    /// Its body, as received.
    pub body: bytes::Bytes,
    /// The `Nexus-Signer` header, if any (unverified unless the reason says otherwise).
    pub signer: Option<String>,
    /// How many times JetStream delivered it to this ingress (1 for a refusal at first
    /// sight; up to `ingress.max_deliver` for an undeliverable one).
    pub attempts: u32,
    /// When it entered this node's ingress stream (the first attempt follows at once), if
    /// JetStream said.
    pub first_at: Option<OffsetDateTime>,
    /// It went on anyway (the root's landing under an `audit` policy): audited, and not
    /// dead-lettered.
    pub landed: bool,
}

/// Refusals counted by reason, since the stage started.
#[derive(Debug)]
pub struct RefusalCounts([AtomicU64; Reason::ALL.len()]);

impl Default for RefusalCounts {
    fn default() -> Self {
        Self([const { AtomicU64::new(0) }; Reason::ALL.len()])
    }
}

impl RefusalCounts {
    /// Refusals for `reason`.
    pub fn get(&self, reason: Reason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    /// Refusals for every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// `{code: n}` of the reasons that occurred, by code.
    pub fn to_json(&self) -> Value {
        let seen: BTreeMap<&str, u64> = Reason::ALL
            .iter()
            .map(|&reason| (reason.as_str(), self.get(reason)))
            .filter(|(_, n)| *n > 0)
            .collect();
        json!(seen)
    }

    fn add(&self, reason: Reason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// One stage's refusals: counted, logged, and handed to the dead-letter writer. Clones
/// share the counts and the log (the command service's listeners).
#[derive(Debug, Clone)]
pub struct RefusalSink {
    stage: Stage,
    /// The dead-letter writer (`None`: counted and logged only).
    letters: Option<mpsc::Sender<RejectedMessage>>,
    counts: Arc<RefusalCounts>,
    /// Keyed by reason code, and `rejections_full` for a writer that is behind.
    log: Arc<Mutex<RateLimitedLog>>,
}

impl RefusalSink {
    /// The sink of `stage`, handing refused messages to `letters` (bounded: when it is
    /// full a refusal is counted and logged, but not stored).
    pub fn new(stage: Stage, letters: Option<mpsc::Sender<RejectedMessage>>) -> Self {
        Self {
            stage,
            letters,
            counts: Arc::default(),
            log: Arc::new(Mutex::new(RateLimitedLog::new(LOG_PERIOD))),
        }
    }

    /// The stage's refusals by reason (shared, live).
    pub fn counts(&self) -> Arc<RefusalCounts> {
        Arc::clone(&self.counts)
    }

    /// Refuses a core NATS message (a local app's, or a command): delivered once.
    pub fn refuse(&self, message: &async_nats::Message, rejection: &Rejection) {
        self.take(message, rejection, false, || (1, None));
    }

    /// Refuses a message of a JetStream stream: its delivery count and the time it entered
    /// the stream go with it.
    pub fn refuse_delivered(&self, message: &jetstream::Message, rejection: &Rejection) {
        self.take(message, rejection, false, || delivery(message));
    }

    /// Reports a message of a JetStream stream that goes on all the same (an `audit`
    /// landing policy): counted, logged and audited like a refusal, not dead-lettered.
    pub fn notice_delivered(&self, message: &jetstream::Message, rejection: &Rejection) {
        self.take(message, rejection, true, || delivery(message));
    }

    fn take(
        &self,
        message: &async_nats::Message,
        rejection: &Rejection,
        landed: bool,
        delivery: impl FnOnce() -> (u32, Option<OffsetDateTime>),
    ) {
        let reason = rejection.reason;
        self.counts.add(reason);
        // A local app's message is not signed: a `Nexus-Signer` header on it names no one.
        let signer = match self.stage {
            Stage::Ingress | Stage::Command => message
                .headers
                .as_ref()
                .and_then(|h| h.get(provenance::HDR_SIGNER))
                .map(|v| v.as_str().to_owned()),
            Stage::Bridge => None,
        };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = log.check(reason.as_str(), Instant::now()) {
            // The stages' own sentences (and the ingress' signer field), as before the sink.
            let (code, detail, subject) = (reason.as_str(), &rejection.detail, &message.subject);
            match self.stage {
                Stage::Ingress if landed => {
                    warn!(reason = code, %detail, %subject, signer = signer.as_deref().unwrap_or("-"), suppressed, "Event landed although the registry check failed (an `audit` policy of [events]).");
                }
                Stage::Ingress => {
                    warn!(reason = code, %detail, %subject, signer = signer.as_deref().unwrap_or("-"), suppressed, "Envelope rejected; it is not forwarded.");
                }
                Stage::Bridge => {
                    warn!(reason = code, %detail, %subject, suppressed, "Local message refused; it is not forwarded.");
                }
                Stage::Command => {
                    warn!(reason = code, %detail, %subject, suppressed, "Command refused.");
                }
            }
        }
        if reason.is_back_pressure() {
            return;
        }
        let Some(letters) = &self.letters else {
            return;
        };
        let (attempts, first_at) = delivery();
        let letter = RejectedMessage {
            stage: self.stage,
            rejection: rejection.clone(),
            subject: message.subject.to_string(),
            headers: header_pairs(message.headers.as_ref()),
            body: message.payload.clone(),
            signer,
            attempts,
            first_at,
            landed,
        };
        if letters.try_send(letter).is_err() {
            match self.stage {
                Stage::Ingress | Stage::Bridge => {
                    if log.check("rejections_full", Instant::now()).is_some() {
                        warn!("The dead-letter writer is behind; a refusal was counted but not stored.");
                    }
                }
                Stage::Command => {
                    debug!("The dead-letter writer is behind; a refused command was not stored.");
                }
            }
        }
    }
}

/// How many times JetStream delivered `message`, and when it entered the stream.
fn delivery(message: &jetstream::Message) -> (u32, Option<OffsetDateTime>) {
    let info = message.info().ok();
    let attempts = info
        .as_ref()
        .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX).max(1));
    (attempts, info.map(|i| i.published))
}

/// A message's headers as (name, value) pairs, in order.
fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(subject: &str, signer: Option<&str>) -> async_nats::Message {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        if let Some(signer) = signer {
            headers.insert(provenance::HDR_SIGNER, signer);
        }
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: Some(headers),
            status: None,
            description: None,
            length: subject.len() + 2,
        }
    }

    #[test]
    fn a_refusal_is_counted_by_reason_and_handed_to_the_writer() {
        let (letters, mut received) = mpsc::channel(8);
        let sink = RefusalSink::new(Stage::Command, Some(letters));
        let rejection = Rejection::new(Reason::CommandReplayed, "seen before");
        sink.clone().refuse(
            &message("_nexus.cmd.edge-01.agent.ping", Some("ed25519:abc")),
            &rejection,
        );
        sink.refuse(&message("_nexus.cmd.edge-01.x", None), &rejection);
        let counts = sink.counts();
        assert_eq!(
            counts.get(Reason::CommandReplayed),
            2,
            "clones share counts"
        );
        assert_eq!(counts.total(), 2);
        assert_eq!(counts.to_json(), json!({"command_replayed": 2}));
        let letter = received.try_recv().expect("a letter");
        assert_eq!(letter.stage.as_str(), "command");
        assert_eq!(letter.rejection, rejection);
        assert_eq!(letter.subject, "_nexus.cmd.edge-01.agent.ping");
        assert_eq!(letter.signer.as_deref(), Some("ed25519:abc"));
        assert_eq!(letter.attempts, 1);
        assert!(letter
            .headers
            .contains(&("Content-Type".to_owned(), "application/json".to_owned())));
        assert!(received.try_recv().is_ok(), "the second one too");
    }

    #[test]
    fn back_pressure_is_counted_but_not_dead_lettered_and_app_messages_name_no_signer() {
        let (letters, mut received) = mpsc::channel(8);
        let sink = RefusalSink::new(Stage::Bridge, Some(letters));
        sink.refuse(
            &message("app.x", None),
            &Rejection::new(Reason::OutboxFull, "full"),
        );
        assert!(received.try_recv().is_err());
        sink.refuse(
            &message("app.x", Some("ed25519:abc")),
            &Rejection::new(Reason::AclDenied, "no"),
        );
        let letter = received.try_recv().expect("a letter");
        assert_eq!(letter.signer, None);
        assert_eq!(letter.stage.as_str(), "bridge");
        assert_eq!(
            sink.counts().to_json(),
            json!({"acl_denied": 1, "outbox_full": 1})
        );
    }

    #[test]
    fn a_full_writer_loses_the_letter_not_the_count() {
        let (letters, _received) = mpsc::channel(1);
        let sink = RefusalSink::new(Stage::Ingress, Some(letters));
        for _ in 0..3 {
            sink.refuse(
                &message("_nexus.ingress.x", None),
                &Rejection::new(Reason::BadSignature, "no"),
            );
        }
        assert_eq!(sink.counts().get(Reason::BadSignature), 3);
    }
}
