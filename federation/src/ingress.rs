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
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{AckKind, Message};
use futures::future::join_all;
use futures::StreamExt as _;
use nexus_config::IngressConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Retry};
use crate::envelope::Envelope;
use crate::headers::NatsProvenance as _;
use crate::link::Link;
use crate::provenance::{SignedEvent, VerifyError};
use crate::ratelog::RateLimitedLog;
use crate::refusal::{Reason, RefusalCounts, RefusalSink, Rejection, Stage};
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

/// Called with every verified envelope (e.g. to watch children's heartbeats).
pub type Observer = Arc<dyn Fn(&Envelope) + Send + Sync>;

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
        }
    }

    /// Hands every refused message to `refusals` (a [`Stage::Ingress`] sink); without one,
    /// refusals are counted and logged, but not stored.
    pub fn with_refusals(mut self, refusals: RefusalSink) -> Self {
        self.refusals = refusals;
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

    async fn consumer(
        &self,
    ) -> Result<(PullConsumer, kv::Store, Option<kv::Store>), async_nats::Error> {
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
                ..Default::default()
            })
            .await?;
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
                    max_ack_pending: i64::try_from(self.config.batch * 4).unwrap_or(1024),
                    ..Default::default()
                },
                name,
            )
            .await?;
        let landed = match self.destination {
            Destination::Landing(_) => {
                Some(landed_bucket(&self.local, self.config.landed_ttl).await?)
            }
            Destination::Parent(_) => None,
        };
        // The registry last: its existence tells the tier below that this ingress is ready.
        trust::bucket(&self.local, trust::TRUST_BUCKET, true).await?;
        let registry = trust::bucket(&self.local, trust::CHAINS_BUCKET, true).await?;
        info!(stream = %name, consumer = %self.config.consumer, "Ingress ready.");
        Ok((consumer, registry, landed))
    }

    async fn pump(
        &self,
        consumer: PullConsumer,
        registry: &kv::Store,
        landed: Option<&kv::Store>,
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
        loop {
            // Cancel safety: a chunk not yet returned stays unacked in JetStream and is
            // redelivered after ack_wait; nothing is lost by dropping this future.
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                debug!("Ingress message stream ended; re-subscribing.");
                return;
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
            if !batch.is_empty() {
                self.process(batch, registry, landed, &mut presented_up, shutdown, log)
                    .await;
            }
        }
    }

    /// Verifies, forwards and acks one batch. The batch is finished even during shutdown,
    /// bounded by the destination's request timeout, so that in-flight work is not dropped.
    async fn process(
        &self,
        batch: Vec<Message>,
        registry: &kv::Store,
        landed: Option<&kv::Store>,
        presented_up: &mut PresentedUp,
        shutdown: &CancellationToken,
        log: &mut RateLimitedLog,
    ) {
        self.counters
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut verified = Vec::with_capacity(batch.len());
        for message in batch {
            let opened = subject::strip_ingress(message.subject.as_str())
                .ok_or(VerifyError::SubjectMismatch {
                    expected: format!("{}.…", subject::INGRESS_PREFIX),
                    got: message.subject.to_string(),
                })
                .and_then(|event_subject| {
                    SignedEvent::open(
                        event_subject,
                        message.headers.as_ref(),
                        message.payload.clone(),
                        self.max_body,
                    )
                });
            let (event, envelope) = match opened {
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
                    if let Some(observer) = &self.observer {
                        observer(&envelope);
                    }
                    verified.push((message, event, matches!(admitted, Admitted::Anchor)));
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
            return;
        }
        let destination = self.destination.link();
        if !destination.state().connected {
            // Hand the batch back at once rather than waiting out ack_wait.
            for (message, _, _) in &verified {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            destination.wait_connected(shutdown).await;
            return;
        }
        let verified = match landed {
            Some(landed) => self.drop_landed(verified, landed).await,
            None => verified,
        };
        let js = destination.jetstream();
        let mut sends = Vec::with_capacity(verified.len());
        for (message, event, anchor) in verified {
            // The next tier verifies the origin too: it needs the origin's chain first.
            if let Destination::Parent(uplink) = &self.destination {
                if !anchor && !self.present_up(uplink, &event, presented_up, log).await {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    continue;
                }
            }
            let publish = PublishMessage::build()
                .payload(event.body.clone())
                .headers(event.headers());
            let sent = js
                .send_publish(self.destination.subject_for(&event), publish)
                .await;
            sends.push(((message, event.event_id.clone()), sent));
        }
        let (messages, sent): (Vec<_>, Vec<_>) = sends.into_iter().unzip();
        let acks = join_all(sent.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            }
        }))
        .await;
        let mut forwarded = Vec::with_capacity(messages.len());
        for ((message, event_id), ack) in messages.into_iter().zip(acks) {
            match ack {
                Ok(ack) => {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .duplicates
                        .fetch_add(u64::from(ack.duplicate), Ordering::Relaxed);
                    forwarded.push((message, event_id));
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
                    if log
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
            // Remembered only after the landing's PubAck (all of the batch at once): a crash
            // before the put leaves the copy to JetStream's own window, which the
            // redelivery reaches within the consumer's ack wait (a quarter of the window;
            // config refuses windows too short for that) once an instance consumes again.
            let puts = join_all(
                forwarded
                    .iter()
                    .map(|(_, id)| landed.put(id, bytes::Bytes::from_static(b"1"))),
            )
            .await;
            if let Some(Err(error)) = puts.into_iter().find(Result::is_err) {
                if log.check("landed_put", Instant::now()).is_some() {
                    warn!(%error, "Cannot record a landed event_id; a copy arriving after duplicate_window could land twice.");
                }
            }
        }
        for (message, _) in forwarded {
            if let Err(error) = message.ack().await {
                // The destination has it; a redelivery will be deduplicated there.
                debug!(%error, "Ack of a forwarded message failed; it may be redelivered.");
            }
        }
    }

    /// Acks and drops the events whose event_id the root already landed (a copy resent
    /// after an outage longer than `duplicate_window`); returns the others. A lookup that
    /// fails lets the event through: JetStream's window still catches near copies.
    async fn drop_landed(
        &self,
        verified: Vec<(Message, SignedEvent, bool)>,
        landed: &kv::Store,
    ) -> Vec<(Message, SignedEvent, bool)> {
        let seen = join_all(
            verified
                .iter()
                .map(|(_, event, _)| landed.get(event.event_id.as_str())),
        )
        .await;
        let mut fresh = Vec::with_capacity(verified.len());
        for (item, seen) in verified.into_iter().zip(seen) {
            if matches!(seen, Ok(Some(_))) {
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.counters.landed_before.fetch_add(1, Ordering::Relaxed);
                debug!(event_id = %item.1.event_id, "Event landed before; dropped.");
                let _ = item.0.ack().await;
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

/// The nak delay of a failed onward publish, by delivery count: capped and jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Which children's chains the parent has, on the current uplink connection.
#[derive(Debug, Default)]
struct PresentedUp {
    since: Option<time::OffsetDateTime>,
    keys: std::collections::HashMap<[u8; 32], bytes::Bytes>,
}

/// The root's KV bucket of landed event_ids (key = event_id, value `1`).
pub const LANDED_BUCKET: &str = "NEXUS_LANDED";

/// Opens (or creates) [`LANDED_BUCKET`], its entries kept `ttl`.
async fn landed_bucket(link: &Link, ttl: Duration) -> Result<kv::Store, async_nats::Error> {
    let js = link.jetstream();
    if let Ok(store) = js.get_key_value(LANDED_BUCKET).await {
        return Ok(store);
    }
    Ok(js
        .create_key_value(kv::Config {
            bucket: LANDED_BUCKET.to_owned(),
            history: 1,
            max_age: ttl,
            storage: StorageType::File,
            ..Default::default()
        })
        .await?)
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

    /// Creates or updates the journal, then every domain stream.
    pub async fn ensure(&self, link: &Link) -> Result<(), async_nats::Error> {
        let js = link.jetstream();
        js.create_or_update_stream(self.journal_config()).await?;
        for domain in &self.domains {
            js.create_or_update_stream(self.domain_config(domain))
                .await
                .map_err(|e| format!("landing stream {}: {e}", domain.name))?;
        }
        Ok(())
    }
}
