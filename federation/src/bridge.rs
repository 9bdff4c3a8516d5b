//! The subject bridge, upward: local apps publish (or request) on this node's own NATS;
//! the `[[bridge.up]]` rules turn their messages into signed events in the outbox.
//!
//! Per message, in order:
//! 1. the first rule whose `local` pattern matches the subject names the event
//!    (`app.booking.created` → `booking.created`);
//! 2. the body is a JSON (or, with `Content-Type: application/cbor`, CBOR) object: a bare
//!    object becomes the payload of a new envelope; a complete envelope (it has
//!    `event_id`, `event_name` and `payload`) is kept with its ids, `ts` and headers, but
//!    `source` and `tenant` are always this node's (and `epoch` and `seq` the outbox's),
//!    and its `event_name` must be the rule's;
//! 3. the event's subject must be allowed by the operator's ACL for principal `local` AND
//!    by this node's token;
//! 4. the event is appended to the outbox, which numbers it in this node's order (`epoch`,
//!    `seq`) and signs it as it commits (fsynced) — only then is a request answered
//!    `{"ok": true, "event_id": …}`.
//!
//! A refused message is answered `{"ok": false, "code": …, "message": …}` when it was a
//! request, and handed to the refusal sink (counted, logged, dead-letter store, audit
//! event; outbox trouble is back-pressure and is not dead-lettered).
//! Nothing a local app sends can crash or stall the bridge, or cost a good message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use nexus_config::{AclPolicy, BridgeEncoding, UpRule};
use nexus_policies::{Action, SecretKey};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Retry};
use crate::command;
use crate::envelope::{Encoding, Envelope};
use crate::link::Link;
use crate::outbox::{Outbox, OutboxError, Priority};
use crate::ratelog::RateLimitedLog;
use crate::refusal::{Reason, RefusalSink, Rejection};
use crate::subject;
use crate::subsystem::SubsystemError;
use crate::trust::OwnChain;
use nexus_events::Registry;

/// The principal of local apps in `[[acl]]` rules (the id no node may have).
pub const LOCAL_PRINCIPAL: &str = nexus_policies::ids::LOCAL;
/// Messages taken from the local NATS per round (their outbox appends share fsyncs).
const CHUNK: usize = 256;

/// Live counters of the upward bridge.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Local messages taken.
    pub received: AtomicU64,
    /// Events appended to the outbox.
    pub forwarded: AtomicU64,
}

/// The upward subject bridge of one node.
#[derive(Debug)]
pub struct UpBridge {
    /// The node's own NATS, where its apps are.
    pub local: Link,
    /// `[[bridge.up]]`, in order.
    pub rules: Vec<UpRule>,
    /// This node's id (every event's `source`).
    pub node_id: String,
    /// This node's tenant (every bridged event's `tenant`).
    pub tenant: String,
    /// The key that signs the events.
    pub key: SecretKey,
    /// Where events wait for the next tier.
    pub outbox: Outbox,
    /// `bridge.max_payload`.
    pub max_payload: usize,
    /// The operator's `[[acl]]`.
    pub acl: AclPolicy,
    /// The own token's grants.
    pub grants: OwnChain,
    /// Where refusals go: counted by reason, logged, dead letters, audit
    /// (`Stage::Bridge`).
    pub refusals: RefusalSink,
    /// Live counters (refusals: [`RefusalSink::counts`]).
    pub counters: Arc<BridgeCounters>,
    /// The event registry: a registered event's payload must satisfy its schema before it
    /// is signed (docs/events.md); an unregistered one goes up as it is.
    pub events: Arc<Registry>,
}

/// A message turned into an envelope (sealed once the outbox numbers it), or why not.
type Mapped = Result<(Envelope, Encoding), Rejection>;

impl UpBridge {
    /// Subscribes to every rule's local pattern and bridges until `shutdown`; subscribes
    /// again after the local NATS comes back. Everything that fails is retried, so it
    /// always ends `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut retry = Retry::new(Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ));
        let mut log = RateLimitedLog::new(Duration::from_secs(60));
        while !shutdown.is_cancelled() {
            if !self.local.wait_connected(&shutdown).await {
                break;
            }
            match self.subscribe().await {
                Ok(subscriptions) => {
                    retry.reset();
                    info!(rules = self.rules.len(), "Subject bridge (up) subscribed.");
                    self.pump(subscriptions, &shutdown).await;
                }
                Err(error) => {
                    if log.check("subscribe", Instant::now()).is_some() {
                        warn!(%error, "Cannot subscribe to the local subjects of [[bridge.up]]; retrying.");
                    }
                }
            }
            if !retry.wait(&shutdown).await {
                break;
            }
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<Vec<async_nats::Subscriber>, async_nats::SubscribeError> {
        let mut subscriptions = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            subscriptions.push(
                self.local
                    .client()
                    .subscribe(rule.rewrite.from().as_str().to_owned())
                    .await?,
            );
        }
        // The subscriptions reach the server before the bridge says it is subscribed, so an
        // app that asks right after sees a responder (not `no responders`).
        if let Err(error) = self.local.client().flush().await {
            debug!(%error, "Cannot flush the bridge's subscriptions; they go with the next write.");
        }
        Ok(subscriptions)
    }

    async fn pump(&self, subscriptions: Vec<async_nats::Subscriber>, shutdown: &CancellationToken) {
        // Each subscription tagged with its rule: a subject matched by several rules'
        // patterns arrives once per subscription and is handled by the first rule only.
        let tagged = subscriptions
            .into_iter()
            .enumerate()
            .map(|(index, subscription)| subscription.map(move |m| (index, m)));
        let mut messages = futures::stream::select_all(tagged).ready_chunks(CHUNK);
        loop {
            // Cancel safety: core NATS messages not yet taken are not acknowledged to
            // anyone; a request not answered times out at the app, which may retry.
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return,
                chunk = messages.next() => chunk,
            };
            let Some(chunk) = chunk else {
                debug!("Local subscriptions ended; subscribing again.");
                return;
            };
            let mut work = Vec::with_capacity(chunk.len());
            for (index, message) in chunk {
                if self.first_rule(message.subject.as_str()) != Some(index) {
                    continue;
                }
                if command::is_own_delivery(message.reply.as_ref().map(|r| r.as_str())) {
                    // A command this agent delivered to an app on a subject an up rule also
                    // takes: the app answers it; bridging it would send the command back up
                    // as an event and race the app's reply with an acknowledgement.
                    debug!(subject = %message.subject, "Own command delivery; left to the app.");
                    continue;
                }
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                let mapped = self.map(index, &message, OffsetDateTime::now_utc());
                work.push((message, mapped));
            }
            self.commit(work).await;
        }
    }

    fn first_rule(&self, subject: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.rewrite.from().matches(subject))
    }

    /// Rule → event name → envelope → ACL ∩ token → the envelope and its encoding (the
    /// outbox numbers and seals it).
    fn map(&self, index: usize, message: &async_nats::Message, now: OffsetDateTime) -> Mapped {
        let rule = &self.rules[index];
        if message.payload.len() > self.max_payload {
            return Err(Rejection::new(
                Reason::Oversized,
                format!(
                    "{} bytes, over bridge.max_payload ({})",
                    message.payload.len(),
                    self.max_payload
                ),
            ));
        }
        let subject_in = message.subject.as_str();
        let event_name = rule
            .rewrite
            .apply(subject_in)
            .filter(|name| subject::is_valid_event_name(name))
            .ok_or_else(|| {
                Rejection::new(
                    Reason::BadEventName,
                    format!(
                        "`{subject_in}` maps to no valid event name under rule {} (tokens of [a-z0-9_-])",
                        rule.rewrite
                    ),
                )
            })?;
        let content_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::provenance::HDR_CONTENT_TYPE))
            .map(|v| v.as_str().trim().to_owned());
        let object = decode_object(&message.payload, content_type.as_deref())?;
        let envelope = self.envelope(&event_name, object, now)?;
        let subject = envelope.subject();
        if !self.acl.allows(LOCAL_PRINCIPAL, Action::Publish, &subject) {
            return Err(Rejection::new(
                Reason::AclDenied,
                format!("[[acl]] does not let local apps publish on `{subject}`"),
            ));
        }
        if !self.grants.allows(&subject) {
            return Err(Rejection::new(
                Reason::SubjectNotGranted,
                format!("this node's token does not grant publishing on `{subject}`"),
            ));
        }
        let envelope = self.check_schema(envelope)?;
        let encoding = match rule.encoding {
            BridgeEncoding::Json => Encoding::Json,
            BridgeEncoding::Cbor => Encoding::Cbor,
        };
        Ok((envelope, encoding))
    }

    /// A registered event's payload against its schema (the payload is moved out to be
    /// checked and back, not copied).
    fn check_schema(&self, mut envelope: Envelope) -> Result<Envelope, Rejection> {
        let Some(entry) = self.events.get(&envelope.event_name, envelope.version) else {
            return Ok(envelope);
        };
        let payload = Value::Object(std::mem::take(&mut envelope.payload));
        let checked = entry.check(&payload);
        if let Value::Object(map) = payload {
            envelope.payload = map;
        }
        match checked {
            Err(invalid) => {
                Err(Rejection::new(Reason::SchemaInvalid, invalid.to_string()).at(invalid.pointer))
            }
            Ok(()) => Ok(envelope),
        }
    }

    /// A bare object becomes a new envelope's payload; a complete envelope keeps its ids,
    /// time and headers, under this node's source and tenant.
    fn envelope(
        &self,
        event_name: &str,
        object: Map<String, Value>,
        now: OffsetDateTime,
    ) -> Result<Envelope, Rejection> {
        let is_envelope = ["event_id", "event_name", "payload"]
            .iter()
            .all(|k| object.contains_key(*k));
        if !is_envelope {
            return Ok(Envelope::new(
                event_name,
                &self.node_id,
                Some(&self.tenant),
                object,
                now,
            ));
        }
        let mut envelope: Envelope = serde_json::from_value(Value::Object(object))
            .map_err(|e| Rejection::new(Reason::Malformed, format!("not an envelope: {e}")))?;
        if envelope.event_name != event_name {
            return Err(Rejection::new(
                Reason::EventNameMismatch,
                format!(
                    "the envelope says `{}` but its subject maps to `{event_name}`",
                    envelope.event_name
                ),
            ));
        }
        envelope.source = self.node_id.clone();
        envelope.tenant = Some(self.tenant.clone());
        // The place in this node's order is the outbox's to give, like the source.
        envelope.set_sequence(None);
        envelope
            .validate()
            .map_err(|e| Rejection::new(Reason::Malformed, e.to_string()))?;
        Ok(envelope)
    }

    /// Appends the mapped events, numbered and sealed by the outbox (their fsyncs shared),
    /// then answers every request.
    async fn commit(&self, work: Vec<(async_nats::Message, Mapped)>) {
        // The pushes are issued in order (each is queued at its first poll), so the outbox
        // keeps the apps' order, and numbers them in it.
        let pushes = futures::future::join_all(work.iter().map(|(_, mapped)| async move {
            match mapped {
                Ok((envelope, encoding)) => {
                    let seal = envelope.clone().into_sealer(*encoding, self.key.clone());
                    Some(self.outbox.push_numbered(seal, Priority::Bulk).await)
                }
                Err(_) => None,
            }
        }))
        .await;
        for ((message, mapped), pushed) in work.into_iter().zip(pushes) {
            let outcome = match (mapped, pushed) {
                (Ok(_), Some(Ok(numbered))) => Ok(numbered.event),
                (Ok(_), Some(Err(error))) => Err(match error {
                    OutboxError::Full { .. } => {
                        Rejection::new(Reason::OutboxFull, error.to_string())
                    }
                    OutboxError::Seal(error) => {
                        Rejection::new(Reason::Malformed, error.to_string())
                    }
                    other => Rejection::new(Reason::OutboxUnavailable, other.to_string()),
                }),
                (Err(rejection), _) => Err(rejection),
                // Every mapped event was pushed above.
                (Ok(_), None) => Err(Rejection::new(Reason::Internal, "the event was not queued")),
            };
            let reply = match outcome {
                Ok(event) => {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    json!({"ok": true, "event_id": event.event_id, "subject": event.subject})
                }
                Err(rejection) => {
                    self.refusals.refuse(&message, &rejection);
                    let mut reply = json!({"ok": false, "code": rejection.reason.as_str(), "message": rejection.detail});
                    if let Some(pointer) = rejection.pointer {
                        reply["pointer"] = Value::String(pointer);
                    }
                    reply
                }
            };
            if let Some(reply_to) = message.reply.clone() {
                let body = Bytes::from(reply.to_string());
                if let Err(error) = self.local.client().publish(reply_to, body).await {
                    debug!(%error, "Cannot answer a local request.");
                }
            }
        }
    }
}

/// A local message's body as a JSON object: JSON by default, CBOR when the app says so.
pub fn decode_object(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<Map<String, Value>, Rejection> {
    let value: Value = match content_type {
        Some("application/cbor") => ciborium::de::from_reader_with_recursion_limit(body, 32)
            .map_err(|e| Rejection::new(Reason::Malformed, format!("not CBOR: {e}")))?,
        None | Some("application/json") | Some("") => serde_json::from_slice(body)
            .map_err(|e| Rejection::new(Reason::Malformed, format!("not JSON: {e}")))?,
        Some(other) => {
            return Err(Rejection::new(
                Reason::Malformed,
                format!(
                    "unknown Content-Type `{other}`: send application/json or application/cbor"
                ),
            ))
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Rejection::new(
            Reason::Malformed,
            format!(
                "expected a JSON object (the payload, or a whole envelope), found {}",
                kind(&other)
            ),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
