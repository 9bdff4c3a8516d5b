//! The ingress pump of a hub or root: the children's traffic lands in a JetStream stream on
//! this node's NATS; a durable consumer (shared by every instance of this node) takes it,
//! verifies each message, publishes it onward with a JetStream publish (dedup id =
//! event_id) and acks its own consumer only after the onward PubAck.
//!
//! Onward is the parent's ingress for a hub, and the landing subject (captured by the
//! landing streams) for the root. Bodies are forwarded byte for byte.
//!
//! Failures: a failed onward publish is nak'ed with a backoff by JetStream's delivery count;
//! on delivery `ingress.max_deliver` (while the destination is up), or at once when it can
//! never succeed (over the destination's `max_payload`), the message is dead-lettered as
//! [`Reason::Undeliverable`]. The ingress stream refuses new messages when full
//! (`discard: new`): what it holds was acknowledged to the tier below. The root drops
//! copies of events it landed before, by event_id, for `ingress.landed_ttl`
//! ([`LANDED_BUCKET`]), beyond JetStream's `duplicate_window`. docs/delivery.md states the
//! guarantees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{
    CreateStreamError, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{AckKind, Message};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use nexus_config::{IngressConfig, LandingPolicy};
use nexus_events::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Retry};
use crate::envelope::Envelope;
use crate::headers::{self, NatsProvenance as _};
use crate::landed::{Landed, LandedKey};
use crate::link::Link;
use crate::provenance::{SignedEvent, VerifyError};
use crate::ratelog::RateLimitedLog;
use crate::refusal::{Reason, RefusalCounts, RefusalSink, Rejection, Stage};
use crate::replicas;
use crate::subject;
use crate::subsystem::SubsystemError;
use crate::trust::{self, Admitted, Gatekeeper};

/// Where verified traffic goes next.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A hub: the parent's ingress (`_nexus.ingress.{subject}` on the uplink).
    Parent(Link),
    /// The root: the event subject on its own NATS, captured by the landing streams.
    Landing(Link),
}

impl Destination {
    fn link(&self) -> &Link {
        match self {
            Destination::Parent(link) | Destination::Landing(link) => link,
        }
    }

    fn subject_for(&self, event: &SignedEvent) -> String {
        match self {
            Destination::Parent(_) => subject::ingress_subject(&event.subject),
            Destination::Landing(_) => event.subject.clone(),
        }
    }
}

/// Live counters of an ingress pump.
#[derive(Debug, Default)]
pub struct IngressCounters {
    /// Messages taken from the ingress stream.
    pub received: AtomicU64,
    /// Messages acknowledged by the destination.
    pub forwarded: AtomicU64,
    /// Of those, reported as already stored (dedup hit).
    pub duplicates: AtomicU64,
    /// Onward publish failures (retried, or dead-lettered once exhausted).
    pub failures: AtomicU64,
    /// Messages dead-lettered as [`Reason::Undeliverable`] (also counted among the refusals,
    /// [`Ingress::refusals`]).
    pub undeliverable: AtomicU64,
    /// Root: copies dropped because their event_id had landed before (also counted in
    /// `forwarded` and `duplicates`).
    pub landed_before: AtomicU64,
}

/// Called with every verified envelope, the node id of its signer's parent (the issuer of
/// its token; `None` for a trust anchor or a node whose token a trust anchor issued) and
/// when this tier's ingress stream stored it (so that a backlog read late is seen as old),
/// e.g. to watch children's heartbeats.
pub type Observer = Arc<dyn Fn(&Envelope, Option<&str>, time::OffsetDateTime) + Send + Sync>;

/// The root's registry check at landing (`[events]`, docs/events.md): what happens to an
/// event whose `event@version` is not registered, or whose payload breaks its schema.
#[derive(Debug, Clone)]
pub struct Contract {
    /// The built-in events and the operator's.
    pub registry: Arc<Registry>,
    /// `events.unknown`.
    pub unknown: LandingPolicy,
    /// `events.invalid`.
    pub invalid: LandingPolicy,
}

impl Contract {
    /// What to do with `envelope`, and why, when it fails a check; `None` when it passes
    /// or when the policy lands it anyway. The payload is moved out to be checked and
    /// back, not copied; an unregistered event costs one map lookup.
    fn judge(&self, envelope: &mut Envelope) -> Option<(LandingPolicy, Rejection)> {
        let Some(entry) = self.registry.get(&envelope.event_name, envelope.version) else {
            return (self.unknown != LandingPolicy::Land).then(|| {
                let detail = format!(
                    "{}@{} is not in this root's event registry (events.unknown = \"{}\")",
                    envelope.event_name,
                    envelope.version,
                    self.unknown.as_str()
                );
                (
                    self.unknown,
                    Rejection::new(Reason::UnregisteredEvent, detail),
                )
            });
        };
        if self.invalid == LandingPolicy::Land {
            return None;
        }
        let payload = serde_json::Value::Object(std::mem::take(&mut envelope.payload));
        let checked = entry.check(&payload);
        if let serde_json::Value::Object(map) = payload {
            envelope.payload = map;
        }
        match checked {
            Err(invalid) => {
                let detail = format!("{invalid} (events.invalid = \"{}\")", self.invalid.as_str());
                Some((
                    self.invalid,
                    Rejection::new(Reason::SchemaInvalid, detail).at(invalid.pointer),
                ))
            }
            Ok(()) => None,
        }
    }
}

/// The ingress pump.
pub struct Ingress {
    local: Link,
    config: IngressConfig,
    destination: Destination,
    max_body: usize,
    observer: Option<Observer>,
    counters: Arc<IngressCounters>,
    gatekeeper: Arc<Gatekeeper>,
    refusals: RefusalSink,
    /// The registry check (the root's landing only).
    contract: Option<Contract>,
    /// Failed onward publishes are logged from the batches in flight.
    forward_log: Mutex<RateLimitedLog>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("config", &self.config)
            .field("destination", &self.destination.link().role())
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// A pump reading `config.stream` on `local` and sending to `destination`.
    pub fn new(
        local: Link,
        config: IngressConfig,
        destination: Destination,
        max_body: usize,
        gatekeeper: Arc<Gatekeeper>,
    ) -> Self {
        Self {
            local,
            config,
            destination,
            max_body,
            observer: None,
            counters: Arc::default(),
            gatekeeper,
            refusals: RefusalSink::new(Stage::Ingress, None),
            contract: None,
            forward_log: Mutex::new(RateLimitedLog::new(Duration::from_secs(60))),
        }
    }

    /// Hands every refused message to `refusals` (a [`Stage::Ingress`] sink); without one,
    /// refusals are counted and logged, but not stored.
    pub fn with_refusals(mut self, refusals: RefusalSink) -> Self {
        self.refusals = refusals;
        self
    }

    /// Checks every admitted event against `contract` before it lands (a root's ingress).
    pub fn with_contract(mut self, contract: Contract) -> Self {
        self.contract = Some(contract);
        self
    }

    /// Calls `observer` with every verified envelope.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The pump's counters (shared, live).
    pub fn counters(&self) -> Arc<IngressCounters> {
        Arc::clone(&self.counters)
    }

    /// The messages refused (never forwarded), by reason (shared, live; the counts of the
    /// sink given to [`Ingress::with_refusals`], if any).
    pub fn refusals(&self) -> Arc<RefusalCounts> {
        self.refusals.counts()
    }

    /// Runs until `shutdown`: sets up the stream and consumer (retrying while the local
    /// server is unreachable), then pumps. Everything that fails is retried, so it always
    /// ends `Ok`.
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
            match self.consumer().await {
                Ok((consumer, registry, landed)) => {
                    retry.reset();
                    self.pump(consumer, &registry, landed.as_ref(), &shutdown, &mut log)
                        .await;
                }
                Err(error) => {
                    if log.check("setup", Instant::now()).is_some() {
                        warn!(stream = %self.config.stream, %error, "Cannot set up the ingress stream; retrying.");
                    }
                }
            }
            if !retry.wait(&shutdown).await {
                break;
            }
        }
        Ok(())
    }

    async fn consumer(&self) -> Result<(PullConsumer, kv::Store, Option<Landed>), String> {
        let js = self.local.jetstream();
        let stream = js
            .create_or_update_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![format!("{}.>", subject::INGRESS_PREFIX)],
                max_bytes: self.config.max_bytes,
                max_age: self.config.max_age,
                duplicate_window: self.config.duplicate_window,
                storage: StorageType::File,
                // Full means "refuse new", never "drop the oldest": everything in here was
                // acknowledged to the tier below, which has deleted it from its outbox. A
                // refused publish leaves the event in the child's outbox (back-pressure).
                discard: DiscardPolicy::New,
                // Created with it, or changed in place (JetStream copies the stream to its
                // new peers itself).
                num_replicas: self.config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                replicas::explain(
                    &e,
                    &format!("stream {}", self.config.stream),
                    "ingress.replicas",
                    self.config.replicas,
                )
            })?;
        let name = &stream.config.name;
        let consumer = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    // Derived from duplicate_window: a message forwarded just before a
                    // crash comes back while its copy is still dropped by event_id.
                    ack_wait: self.config.ack_wait(),
                    // Room for the batches in flight and the one being verified.
                    max_ack_pending: i64::try_from(self.config.batch * (IN_FLIGHT + 2))
                        .unwrap_or(4096),
                    ..Default::default()
                },
                name,
            )
            .await
            .map_err(|e| e.to_string())?;
        let landed = match self.destination {
            Destination::Landing(_) => Some(
                Landed::open(
                    &self.local,
                    self.config.landed_ttl,
                    self.config.duplicate_window,
                    self.config.replicas,
                )
                .await?,
            ),
            Destination::Parent(_) => None,
        };
        // The registry last: its existence tells the tier below that this ingress is ready.
        // Both are created (or scaled) with this tier's replicas, whichever path made them.
        trust::ensure_bucket(&self.local, trust::TRUST_BUCKET, self.config.replicas).await?;
        let registry =
            trust::ensure_bucket(&self.local, trust::CHAINS_BUCKET, self.config.replicas).await?;
        info!(stream = %name, consumer = %self.config.consumer, "Ingress ready.");
        Ok((consumer, registry, landed))
    }

    /// Takes batches and keeps up to [`IN_FLIGHT`] of them forwarded and awaiting their
    /// PubAcks while the next one is verified and sent.
    async fn pump(
        &self,
        consumer: PullConsumer,
        registry: &kv::Store,
        landed: Option<&Landed>,
        shutdown: &CancellationToken,
        log: &mut RateLimitedLog,
    ) {
        let mut presented_up = PresentedUp::default();
        let messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "Cannot start consuming the ingress stream; retrying.");
                return;
            }
        };
        let mut chunks = messages.ready_chunks(self.config.batch.max(1));
        let mut in_flight = FuturesUnordered::new();
        let mut flush_tick = tokio::time::interval(crate::landed::FLUSH_EVERY);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancel safety: a chunk not yet returned stays in the stream adapter (or
            // unacked in JetStream, redelivered after ack_wait); the in-flight batches are
            // only polled here, and finished below.
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                _ = flush_tick.tick(), if landed.is_some_and(Landed::flush_due) => {
                    if let Some(landed) = landed {
                        self.flush_landed(landed, log).await;
                    }
                    continue;
                }
                chunk = chunks.next(), if in_flight.len() < IN_FLIGHT => chunk,
            };
            let Some(chunk) = chunk else {
                debug!("Ingress message stream ended; re-subscribing.");
                break;
            };
            let mut batch = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(message) => batch.push(message),
                    Err(error) => {
                        if log.check("consume", Instant::now()).is_some() {
                            warn!(%error, "Ingress consumer error; continuing.");
                        }
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            match self
                .send(batch, registry, landed, &mut presented_up, log)
                .await
            {
                Sent::InFlight(forwarded) => in_flight.push(forwarded),
                Sent::Done => {}
                Sent::DestinationDown => {
                    // Finish what is in flight, then wait for the destination.
                    while in_flight.next().await.is_some() {}
                    self.destination.link().wait_connected(shutdown).await;
                }
            }
        }
        // What was sent is finished even during shutdown (bounded by the destination's
        // request timeout), so that in-flight work is not dropped.
        while in_flight.next().await.is_some() {}
        if let Some(landed) = landed {
            self.flush_landed(landed, log).await;
        }
    }

    async fn flush_landed(&self, landed: &Landed, log: &mut RateLimitedLog) {
        let failed = landed.flush().await;
        if failed > 0 && log.check("landed_put", Instant::now()).is_some() {
            warn!(failed, "Cannot record what landed yet (retrying); a copy arriving after duplicate_window could land twice meanwhile.");
        }
    }

    async fn nak_all(&self, messages: &[Message], delay: Duration) {
        for message in messages {
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }

    /// Verifies a batch (the signatures together, spread over the cores), admits each
    /// event, drops what landed before (root), and sends the rest onward. Returns the
    /// future that awaits their PubAcks and acks or naks each message.
    async fn send<'a>(
        &'a self,
        batch: Vec<Message>,
        registry: &kv::Store,
        landed: Option<&'a Landed>,
        presented_up: &mut PresentedUp,
        log: &mut RateLimitedLog,
    ) -> Sent<'a> {
        self.counters
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let opened = self.open(&batch).await;
        let mut verified = Vec::with_capacity(batch.len());
        for (message, opened) in batch.into_iter().zip(opened) {
            let (event, mut envelope) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    self.reject(&message, Rejection::from(&error)).await;
                    continue;
                }
            };
            match self
                .gatekeeper
                .admit(&event, &envelope, Some(registry))
                .await
            {
                Ok(admitted) => {
                    let judged = self.contract.as_ref().and_then(|c| c.judge(&mut envelope));
                    match judged {
                        None | Some((LandingPolicy::Land, _)) => {}
                        Some((LandingPolicy::Audit, rejection)) => {
                            self.refusals.notice_delivered(&message, &rejection);
                        }
                        Some((LandingPolicy::Refuse, rejection)) => {
                            self.reject(&message, rejection).await;
                            continue;
                        }
                    }
                    if let Some(observer) = &self.observer {
                        let parent = match &admitted {
                            Admitted::Node(grant) => grant.parent_id(),
                            Admitted::Anchor => None,
                        };
                        let stored = message.info().map_or_else(
                            |_| time::OffsetDateTime::now_utc(),
                            |info| info.published,
                        );
                        observer(&envelope, parent, stored);
                    }
                    let key = LandedKey::of(&envelope);
                    verified.push(Verified {
                        message,
                        event,
                        key,
                        anchor: matches!(admitted, Admitted::Anchor),
                    });
                }
                Err(rejection) if rejection.reason.is_transient() => {
                    if log
                        .check(rejection.reason.as_str(), Instant::now())
                        .is_some()
                    {
                        warn!(reason = rejection.reason.as_str(), detail = %rejection.detail, "Cannot decide on a message yet; it will be retried.");
                    }
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
                Err(rejection) => self.reject(&message, rejection).await,
            }
        }
        if verified.is_empty() {
            return Sent::Done;
        }
        let destination = self.destination.link();
        if !destination.state().connected {
            // Hand the batch back at once rather than waiting out ack_wait.
            let messages: Vec<Message> = verified.into_iter().map(|v| v.message).collect();
            self.nak_all(&messages, Duration::from_secs(1)).await;
            return Sent::DestinationDown;
        }
        let verified = match landed {
            Some(landed) => self.drop_landed(verified, landed).await,
            None => verified,
        };
        let js = destination.jetstream();
        let mut sends = Vec::with_capacity(verified.len());
        for item in verified {
            // The next tier verifies the origin too: it needs the origin's chain first.
            if let Destination::Parent(uplink) = &self.destination {
                if !item.anchor
                    && !self
                        .present_up(uplink, &item.event, presented_up, log)
                        .await
                {
                    let _ = item
                        .message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    continue;
                }
            }
            let publish = PublishMessage::build()
                .payload(item.event.body.clone())
                .headers(item.event.headers());
            let sent = js
                .send_publish(self.destination.subject_for(&item.event), publish)
                .await;
            sends.push((item.message, item.key, sent));
        }
        if sends.is_empty() {
            return Sent::Done;
        }
        Sent::InFlight(Box::pin(self.settle(sends, landed)))
    }

    /// Opens every message of a batch: strips the ingress prefix, then verifies the
    /// signatures together on blocking threads, one share of the batch per core (a batch
    /// of at most [`INLINE_OPEN`] here).
    async fn open(&self, batch: &[Message]) -> Vec<Result<(SignedEvent, Envelope), VerifyError>> {
        let items: Vec<(String, Option<HeaderMap>, Bytes)> = batch
            .iter()
            .map(|m| (m.subject.to_string(), m.headers.clone(), m.payload.clone()))
            .collect();
        // A few messages (a quiet fleet's heartbeats) are verified here: handing them to a
        // blocking thread costs more than the check itself.
        if items.len() <= INLINE_OPEN {
            return open_share(items, self.max_body);
        }
        // Looked up once: on Linux it reads the cgroup files each time.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let shares = *CORES.get_or_init(|| {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .clamp(1, 8)
        });
        // Below this many per share, one thread is faster than handing work out.
        let per_share = items.len().div_ceil(shares).max(64);
        let max_body = self.max_body;
        let mut tasks = Vec::new();
        let mut items = items.into_iter();
        loop {
            let share: Vec<_> = items.by_ref().take(per_share).collect();
            if share.is_empty() {
                break;
            }
            tasks.push(tokio::task::spawn_blocking(move || {
                open_share(share, max_body)
            }));
        }
        let mut opened = Vec::with_capacity(batch.len());
        for (task, size) in join_all(tasks).await.into_iter().zip(
            (0..batch.len())
                .step_by(per_share)
                .map(|start| per_share.min(batch.len() - start)),
        ) {
            match task {
                Ok(share) => opened.extend(share),
                // A verifying thread panicked: nothing of its share is trusted.
                Err(error) => opened.extend((0..size).map(|_| {
                    Err(VerifyError::Envelope(
                        crate::envelope::EnvelopeError::Malformed(format!(
                            "verification failed: {error}"
                        )),
                    ))
                })),
            }
        }
        opened
    }

    /// Awaits the PubAcks of a sent batch, records what landed (root), and acks each
    /// forwarded message or naks it for a retry (or dead-letters it once exhausted).
    async fn settle(
        &self,
        sends: Vec<(Message, LandedKey, PublishResult)>,
        landed: Option<&Landed>,
    ) {
        let destination = self.destination.link();
        let (items, sent): (Vec<_>, Vec<_>) = sends
            .into_iter()
            .map(|(message, key, sent)| ((message, key), sent))
            .unzip();
        let acks = join_all(sent.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            }
        }))
        .await;
        let mut forwarded = Vec::with_capacity(items.len());
        for ((message, key), ack) in items.into_iter().zip(acks) {
            match ack {
                Ok(ack) => {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .duplicates
                        .fetch_add(u64::from(ack.duplicate), Ordering::Relaxed);
                    forwarded.push((message, key));
                }
                Err(error) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    let delivered = message
                        .info()
                        .map_or(1, |info| u32::try_from(info.delivered).unwrap_or(u32::MAX));
                    // A message that cannot ever fit is refused for good. Otherwise only a
                    // failure while the destination is up counts towards dead-lettering:
                    // the delivery count also grows with outages, and an outage must never
                    // dead-letter traffic.
                    let permanent = error.kind() == PublishErrorKind::MaxPayloadExceeded;
                    let exhausted =
                        delivered >= self.config.max_deliver && destination.state().connected;
                    if permanent || exhausted {
                        self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                        let rejection = Rejection::new(
                            Reason::Undeliverable,
                            format!(
                                "{} failed after {delivered} deliveries: {error}",
                                destination.role()
                            ),
                        );
                        self.reject(&message, rejection).await;
                        continue;
                    }
                    if self
                        .forward_log
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .check(&format!("forward:{:?}", error.kind()), Instant::now())
                        .is_some()
                    {
                        warn!(%error, delivered, max_deliver = self.config.max_deliver, link = destination.role(), "Forwarding failed; the message will be retried.");
                    }
                    // The failed publish may have been stored (its PubAck lost): its
                    // retry must reach the next stream inside duplicate_window.
                    let delay = RETRY
                        .delay_now(delivered.saturating_sub(1))
                        .min(self.config.max_retry_delay());
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        if let Some(landed) = landed {
            // Remembered only after the landing's PubAck: a crash before it is written
            // down leaves the copy to JetStream's own window, which the redelivery reaches
            // within the consumer's ack wait (a quarter of the window; config refuses
            // windows too short for that) once an instance consumes again.
            let keys: Vec<&LandedKey> = forwarded.iter().map(|(_, key)| key).collect();
            let failed = landed.record(&keys).await;
            if failed > 0 {
                warn!(failed, "Cannot record landed event_ids; a copy arriving after duplicate_window could land twice.");
            }
        }
        for (message, _) in &forwarded {
            if let Err(error) = message.ack().await {
                // The destination has it; a redelivery will be deduplicated there.
                debug!(%error, "Ack of a forwarded message failed; it may be redelivered.");
            }
        }
    }

    /// Acks and drops the events the root already landed (a copy resent after an outage
    /// longer than `duplicate_window`); returns the others. A lookup that fails lets the
    /// event through: JetStream's window still catches near copies.
    async fn drop_landed(&self, verified: Vec<Verified>, landed: &Landed) -> Vec<Verified> {
        let keys: Vec<&LandedKey> = verified.iter().map(|v| &v.key).collect();
        let seen = landed.seen(&keys).await;
        let mut fresh = Vec::with_capacity(verified.len());
        for (item, seen) in verified.into_iter().zip(seen) {
            if seen {
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.counters.landed_before.fetch_add(1, Ordering::Relaxed);
                debug!(event_id = %item.event.event_id, "Event landed before; dropped.");
                let _ = item.message.ack().await;
            } else {
                fresh.push(item);
            }
        }
        fresh
    }

    /// Puts the signer's chain into the parent's registry once per uplink connection, and
    /// again whenever it changed (a rotated token).
    async fn present_up(
        &self,
        uplink: &Link,
        event: &SignedEvent,
        presented: &mut PresentedUp,
        log: &mut RateLimitedLog,
    ) -> bool {
        let since = uplink.state().since;
        if presented.since != Some(since) {
            presented.since = Some(since);
            presented.keys.clear();
        }
        let signer = event.signer.to_bytes();
        let Some(chain) = self.gatekeeper.chain_bytes(&event.signer) else {
            return true; // admitted without a chain (cannot happen for non-anchors)
        };
        if presented.keys.get(&signer) == Some(&chain) {
            return true;
        }
        let result = match trust::bucket(uplink, trust::CHAINS_BUCKET, false).await {
            Ok(store) => store
                .put(trust::key_id(&event.signer), chain.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(()) => {
                if presented.keys.len() >= 65_536 {
                    presented.keys.clear();
                }
                presented.keys.insert(signer, chain);
                true
            }
            Err(error) => {
                if log.check("present_up", Instant::now()).is_some() {
                    warn!(%error, "Cannot present a child's token chain to the parent yet; retrying.");
                }
                false
            }
        }
    }

    /// Refuses a message for good: counted, logged and dead-lettered by the sink, then
    /// terminated in JetStream.
    async fn reject(&self, message: &Message, rejection: Rejection) {
        self.refusals.refuse_delivered(message, &rejection);
        // Term: never redeliver what cannot be verified.
        if let Err(error) = message.ack_with(AckKind::Term).await {
            debug!(%error, "Term of a rejected message failed; it may be redelivered and rejected again.");
        }
    }
}

/// Batches forwarded and awaiting their PubAcks while the next one is verified and sent.
const IN_FLIGHT: usize = 4;

/// Batches this small are verified on the pump's task (about 50 µs per message).
const INLINE_OPEN: usize = 4;

type PublishResult = Result<PublishAckFuture, PublishError>;

/// A message that passed verification and admission, with what it is landed as.
struct Verified {
    message: Message,
    event: SignedEvent,
    key: LandedKey,
    anchor: bool,
}

/// What became of a batch.
enum Sent<'a> {
    /// Forwarded: the future settles it once its PubAcks are in.
    InFlight(BoxFuture<'a, ()>),
    /// Nothing to forward (all refused, dropped or handed back).
    Done,
    /// The destination is down: the batch was handed back.
    DestinationDown,
}

/// Opens one share of a batch (on a blocking thread): the ingress prefix stripped, the
/// signatures verified together.
fn open_share(
    share: Vec<(String, Option<HeaderMap>, Bytes)>,
    max_body: usize,
) -> Vec<Result<(SignedEvent, Envelope), VerifyError>> {
    let mut results: Vec<Option<Result<(SignedEvent, Envelope), VerifyError>>> =
        Vec::with_capacity(share.len());
    let mut prefixed = Vec::with_capacity(share.len());
    for (subject, headers, body) in &share {
        match subject::strip_ingress(subject) {
            Some(event_subject) => {
                results.push(None);
                prefixed.push((event_subject, headers.as_ref(), body.clone()));
            }
            None => results.push(Some(Err(VerifyError::SubjectMismatch {
                expected: format!("{}.…", subject::INGRESS_PREFIX),
                got: subject.clone(),
            }))),
        }
    }
    let mut opened = headers::open_all(&prefixed, max_body).into_iter();
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                opened
                    .next()
                    .unwrap_or(Err(VerifyError::MissingHeader("body")))
            })
        })
        .collect()
}

/// The nak delay of a failed onward publish, by delivery count: capped and jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Which children's chains the parent has, on the current uplink connection.
#[derive(Debug, Default)]
struct PresentedUp {
    since: Option<time::OffsetDateTime>,
    keys: std::collections::HashMap<[u8; 32], bytes::Bytes>,
}

/// Where the root lands events: the journal (`nexus.>`, the dedup point the ingress
/// publishes into) and the domain streams, each sourcing what its subjects select from the
/// journal with its own retention. JetStream refuses streams whose subjects overlap
/// (`nexus.*.iot.>` overlaps `nexus._core.>`); sourced streams own no subjects, so domains
/// may overlap, and an event may be kept by several of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Landing {
    /// The journal's name.
    pub journal: String,
    /// How long the journal keeps events.
    pub max_age: Duration,
    /// The journal's byte limit (`None`: unlimited).
    pub max_bytes: Option<i64>,
    /// `Nats-Msg-Id` dedup window of the journal.
    pub duplicate_window: Duration,
    /// The domain streams.
    pub domains: Vec<nexus_config::LandingDomain>,
    /// How many servers of the cluster keep the journal and each domain stream.
    pub replicas: usize,
}

impl Landing {
    /// The landing `[landing]` describes, deduplicating with the ingress' window.
    pub fn new(config: &nexus_config::LandingConfig, duplicate_window: Duration) -> Self {
        Self {
            journal: config.stream.clone(),
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            duplicate_window,
            domains: config.domains.clone(),
            replicas: config.replicas,
        }
    }

    /// The journal's stream config.
    pub fn journal_config(&self) -> stream::Config {
        stream::Config {
            name: self.journal.clone(),
            subjects: vec![format!("{}.>", subject::EVENT_PREFIX)],
            max_age: self.max_age,
            max_bytes: self.max_bytes.unwrap_or(-1),
            duplicate_window: self.duplicate_window,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// A domain stream's config: no subjects of its own, one source (the journal) filtered
    /// by the domain's subjects.
    pub fn domain_config(&self, domain: &nexus_config::LandingDomain) -> stream::Config {
        stream::Config {
            name: domain.name.clone(),
            max_age: domain.max_age,
            max_bytes: domain.max_bytes.unwrap_or(-1),
            duplicate_window: self.duplicate_window.min(domain.max_age),
            storage: StorageType::File,
            num_replicas: self.replicas,
            sources: Some(vec![stream::Source {
                name: self.journal.clone(),
                subject_transforms: domain
                    .subjects
                    .iter()
                    .map(|pattern| stream::SubjectTransform {
                        source: pattern.as_str().to_owned(),
                        destination: String::new(),
                    })
                    .collect(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    /// Creates or updates the journal, then every domain stream (their replicas changed in
    /// place). A refusal of the replica count says so, naming `landing.replicas`.
    pub async fn ensure(&self, link: &Link) -> Result<(), async_nats::Error> {
        let js = link.jetstream();
        let explain = |e: &CreateStreamError, what: String| {
            replicas::explain(e, &what, "landing.replicas", self.replicas)
        };
        js.create_or_update_stream(self.journal_config())
            .await
            .map_err(|e| explain(&e, format!("journal {}", self.journal)))?;
        for domain in &self.domains {
            js.create_or_update_stream(self.domain_config(domain))
                .await
                .map_err(|e| explain(&e, format!("landing stream {}", domain.name)))?;
        }
        Ok(())
    }
}
