//! The MQTT side: one connection to the sensors' broker, polled in its own task, and a
//! worker that maps, signs, stores and only then acknowledges.
//!
//! ```text
//! broker ──▶ poller task ──(bounded queue)──▶ worker ──▶ outbox.push_numbered ─fsync─▶ PUBACK
//!            (EventLoop::poll,                 map,           (numbered and sealed as it
//!             reconnect backoff,               pushes in       commits; or dead letter,
//!             resubscribe on ConnAck)          flight, acked   then PUBACK)
//!                                              in arrival order
//! ```
//!
//! Each reading becomes one envelope; the outbox gives it the next number of this node's
//! order (`epoch`, `seq`) and signs it when it commits, so a message's readings are stored,
//! and numbered, one after the other before its PUBACK.
//!
//! # What rumqttc is told, and why (docs/pitfalls.md, "rumqttc")
//! The same for MQTT 3.1.1 and MQTT 5 (`iot.protocol`): the version-specific client is
//! behind [`crate::mqtt::Mqtt`], and everything here is generic over it. MQTT 5's own
//! needs (a session expiry interval, Receive Maximum, bytes topics) are listed there.
//! - `clean_session = false` (MQTT 5: `clean_start = false` and `session_expiry`) for QoS 1: the broker keeps our subscriptions and queues
//!   messages while we are away, and unacked messages are redelivered on reconnect. QoS 0
//!   uses a clean session (nothing would be kept anyway).
//! - `manual_acks = true`: a PUBACK goes out only after the envelope(s) of the message are
//!   fsynced in the outbox, or it is recorded as a dead letter.
//! - The incoming packet cap is MQTT's maximum: a packet over rumqttc's cap kills the
//!   connection and, with a persistent session, is redelivered forever. Our own policy limit
//!   (`iot.max_payload`) is checked per message, and what is over it is dead-lettered.
//!   Bound what the broker accepts with mosquitto's `message_size_limit`.
//! - Subscriptions are (re)sent on every ConnAck, from a separate task: the poller never
//!   awaits a request of its own client (that deadlocks once the request channel is full).
//! - rumqttc has no reconnect backoff: the poller sleeps (capped, jittered) after each error.
//! - TCP_NODELAY is on: sensor messages are small and latency matters more than the few
//!   bytes Nagle would save.
//!
//! # Bounds and policy when full
//! - The queue between the poller and the worker holds `iot.queue` messages. QoS 0: a
//!   message that does not fit is dropped and counted (`dropped_qos0`). QoS 1: the poller
//!   waits for room (the broker keeps the rest in our session); the worker never waits on
//!   the client (see `Bridge::work`), so the wait always ends. Mosquitto was seen sending
//!   well over 1,000 unacked messages to one subscriber despite `max_inflight_messages`
//!   (default 20): do not count on the broker's window. Not acking is the back pressure.
//! - At most [`MAX_PENDING`] messages are being stored at once (their pushes share group
//!   commits). A full outbox (`when_full = reject`) makes the worker retry the push with
//!   backoff: the message stays unacked, the broker's window fills, and it stops sending.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt as _};
use nexus_config::{IotConfig, MqttProtocol};
use nexus_policies::SecretKey;
use nexus_runtime::backoff::{self, Backoff, Retry};
use nexus_runtime::ratelog::RateLimitedLog;
use nexus_runtime::subsystem::SubsystemError;
use nexus_store::deadletter::{DeadLetter, DeadLetters, STAGE_IOT};
use nexus_store::outbox::Priority;
use nexus_store::{Outbox, OutboxError};
use nexus_wire::{Encoding, Envelope, EnvelopeError};
use rumqttc::{TlsConfiguration, Transport};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::mapping::{Reason, Reject, Rules};
use crate::mqtt::{Incoming, Mqtt, Settings, V311, V5};
use crate::sensor_data;
use crate::template::TemplateError;

/// How many messages may be in the middle of being stored at once.
pub const MAX_PENDING: usize = 1024;
/// How soon acks that did not fit into the request channel are tried again.
const ACK_RETRY: Duration = Duration::from_millis(5);
/// The first reconnect delay.
const RECONNECT_BASE: Duration = Duration::from_millis(200);

/// Why the bridge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A rule's topic template is invalid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The TLS settings could not be loaded.
    #[error("iot TLS: {0}")]
    Tls(String),
}

/// Counters of the bridge, shared with whoever reports them (the heartbeat's `iot`).
#[derive(Debug, Default)]
pub struct Stats {
    /// The MQTT version spoken: `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    /// Messages received from the broker.
    pub received: AtomicU64,
    /// Events stored in the outbox.
    pub events: AtomicU64,
    /// QoS 1 messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// QoS 0 messages dropped because the queue was full.
    pub dropped_qos0: AtomicU64,
    /// Messages refused, per [`Reason`] (indexed by [`Reason::index`]).
    pub rejected: [AtomicU64; Reason::ALL.len()],
    /// Whether the broker connection is up.
    pub connected: AtomicBool,
    /// When `connected` last changed (or the bridge started), unix milliseconds.
    since_unix_ms: AtomicI64,
    /// Events queued per `[[iot.sensors]]` rule, in rule order.
    per_rule: Vec<RuleCount>,
}

/// Events queued by one `[[iot.sensors]]` rule.
#[derive(Debug)]
struct RuleCount {
    /// Its position among the rules, from 0 (two rules may share a topic).
    index: String,
    /// Its topic template.
    topic: String,
    events: AtomicU64,
}

impl Stats {
    fn new(protocol: MqttProtocol, sensors: &[nexus_config::SensorRule]) -> Self {
        let stats = Self {
            protocol: protocol.as_str(),
            per_rule: sensors
                .iter()
                .enumerate()
                .map(|(i, rule)| RuleCount {
                    index: i.to_string(),
                    topic: rule.topic.clone(),
                    events: AtomicU64::new(0),
                })
                .collect(),
            ..Self::default()
        };
        stats.since_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        stats
    }

    /// Events queued per `[[iot.sensors]]` rule: its index (from 0), its topic, how many.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.per_rule.iter().map(|r| {
            (
                r.index.as_str(),
                r.topic.as_str(),
                r.events.load(Ordering::Relaxed),
            )
        })
    }

    fn count_rule(&self, index: Option<usize>, events: u64) {
        if let Some(rule) = index.and_then(|i| self.per_rule.get(i)) {
            rule.events.fetch_add(events, Ordering::Relaxed);
        }
    }

    /// How many messages were refused for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Whether the broker connection is up, and since when (or since the bridge started,
    /// if it never connected).
    pub fn connection(&self) -> (bool, OffsetDateTime) {
        let connected = self.connected.load(Ordering::Relaxed);
        let ms = self.since_unix_ms.load(Ordering::Relaxed);
        let since = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        (connected, since)
    }

    fn set_connected(&self, connected: bool) {
        self.since_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        self.connected.store(connected, Ordering::Relaxed);
    }
}

fn now_unix_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The IoT bridge of a member.
#[derive(Debug)]
pub struct Bridge {
    config: IotConfig,
    rules: Arc<Rules>,
    node_id: String,
    tenant: String,
    key: SecretKey,
    outbox: Outbox,
    dead_letters: Option<DeadLetters>,
    stats: Arc<Stats>,
    /// One WARN per reason per minute, with the running count (the counters are in
    /// [`Stats`]; every refused message is in the dead-letter store).
    refusals: std::sync::Mutex<RateLimitedLog>,
    tcp_nodelay: bool,
}

impl Bridge {
    /// A bridge for `config`; its events are signed by `key` as `node_id` of `tenant`.
    pub fn new(
        config: IotConfig,
        node_id: &str,
        tenant: &str,
        key: SecretKey,
        outbox: Outbox,
        dead_letters: Option<DeadLetters>,
    ) -> Result<Self, BridgeError> {
        let rules = Arc::new(Rules::new(&config.sensors, config.max_payload)?);
        let stats = Arc::new(Stats::new(config.protocol, &config.sensors));
        Ok(Self {
            config,
            rules,
            node_id: node_id.to_owned(),
            tenant: tenant.to_owned(),
            key,
            outbox,
            dead_letters,
            stats,
            refusals: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(60))),
            tcp_nodelay: true,
        })
    }

    /// The bridge's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Sets TCP_NODELAY on the broker connection (on by default). For benchmarks that
    /// compare both; the agent always leaves it on.
    pub fn set_tcp_nodelay(&mut self, on: bool) {
        self.tcp_nodelay = on;
    }

    fn at_least_once(&self) -> bool {
        self.config.qos != 0
    }

    /// What both MQTT versions are configured with.
    fn settings(&self) -> Result<Settings, BridgeError> {
        let c = &self.config;
        let transport = match &c.tls {
            Some(tls) => {
                let link = nexus_tls::client_config("iot", tls)
                    .map_err(|e| BridgeError::Tls(e.to_string()))?;
                Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(link.config)))
            }
            None => Transport::tcp(),
        };
        let credentials = c
            .username
            .clone()
            .map(|user| (user, c.password.clone().unwrap_or_default()));
        // Acks and subscribe requests: at most one ack per unacked QoS 1 message.
        let requests = c.queue + MAX_PENDING + 64;
        Ok(Settings {
            client_id: c.client_id.clone(),
            host: c.host.clone(),
            port: c.port,
            keep_alive: c.keep_alive,
            persistent: self.at_least_once(),
            session_expiry: c.session_expiry,
            credentials,
            transport,
            requests,
            receive_maximum: u16::try_from(c.queue + MAX_PENDING).unwrap_or(u16::MAX),
            tcp_nodelay: self.tcp_nodelay,
        })
    }

    /// Runs until `shutdown`: connects (forever, with backoff), maps, stores, acks.
    ///
    /// Stops on its own only for what retrying cannot fix: an MQTT connection that cannot
    /// be configured ([`SubsystemError::SetUp`], e.g. TLS files rustls refuses) or an
    /// outbox whose writer is gone ([`SubsystemError::StoreClosed`]; the message being
    /// stored stays unacked, so the broker delivers it again).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let settings = self.settings().map_err(|error| {
            SubsystemError::SetUp(format!("cannot configure the MQTT connection: {error}"))
        })?;
        match self.config.protocol {
            MqttProtocol::V311 => self.run_with::<V311>(settings, shutdown).await,
            MqttProtocol::V5 => self.run_with::<V5>(settings, shutdown).await,
        }
    }

    async fn run_with<P: Mqtt>(
        self,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<(), SubsystemError> {
        let (client, mut eventloop) = P::open(&settings);
        let (tx, rx) = mpsc::channel(self.config.queue);
        info!(
            broker = %nexus_config::redact_url(&self.config.url),
            protocol = P::NAME,
            client_id = %self.config.client_id,
            qos = self.config.qos,
            filters = ?self.rules.filters(),
            "IoT bridge starting."
        );
        let poller = Poller::<P> {
            client: client.clone(),
            filters: self.rules.filters(),
            at_least_once: self.at_least_once(),
            tx,
            stats: Arc::clone(&self.stats),
            backoff: Backoff::new(RECONNECT_BASE, self.config.reconnect_max_delay),
            url: nexus_config::redact_url(&self.config.url),
        };
        let worker_shutdown = shutdown.clone();
        let mut worker = tokio::spawn(self.work::<P>(client.clone(), rx, worker_shutdown));
        // Cancel safety: the poller is dropped only when the worker stopped on its own;
        // what it had read but not queued is unacked, and the broker delivers it again.
        let worked = tokio::select! {
            () = poller.run(&mut eventloop, &shutdown) => (&mut worker).await,
            worked = &mut worker => worked,
        };
        // Unacked QoS 1 messages stay with the broker's persistent session.
        P::try_disconnect(&client);
        match worked {
            Ok(result) => result,
            Err(join) if join.is_panic() => Err(SubsystemError::panicked(&*join.into_panic())),
            // Cancelled: the runtime itself is shutting down.
            Err(_) => Ok(()),
        }
    }

    /// The worker: maps each message, stores its events (or dead-letters it), then acks,
    /// in arrival order, with up to [`MAX_PENDING`] stores in flight.
    ///
    /// It never awaits the client: an ack goes into rumqttc's request channel, which only
    /// the poller drains, and the poller may itself be waiting for room in our queue. A
    /// worker blocked on a full request channel would stop draining the queue: a deadlock
    /// (seen under a 20k-message burst). So acks are `try_ack`ed, and those that do not
    /// fit wait in `unsent` (in order; at most one per unacked QoS 1 message, so bounded by
    /// the broker's in-flight window) and are retried on a short tick.
    async fn work<P: Mqtt>(
        self,
        client: P::Client,
        mut rx: mpsc::Receiver<(P::Publish, OffsetDateTime)>,
        shutdown: CancellationToken,
    ) -> Result<(), SubsystemError> {
        let mut pending = FuturesOrdered::new();
        let mut unsent: VecDeque<P::Publish> = VecDeque::new();
        let mut retry = tokio::time::interval(ACK_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            // Cancel safety: `recv` loses nothing when dropped; a pending store future is
            // only polled here, never dropped until shutdown (then its message stays
            // unacked and the broker redelivers it); a tick is only a timer.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = rx.recv(), if open && pending.len() < MAX_PENDING => match message {
                    Some((publish, received)) => {
                        let job = self.job::<P>(publish, received, &shutdown);
                        pending.push_back(job);
                    }
                    None => open = false,
                },
                Some(done) = pending.next(), if !pending.is_empty() => {
                    // Not stored: never acked (the broker delivers it again).
                    let publish: P::Publish = match done {
                        Ok(publish) => publish,
                        Err(NotStored::Shutdown) => return Ok(()),
                        Err(NotStored::Closed) => return Err(SubsystemError::StoreClosed("outbox")),
                    };
                    if P::at_least_once(&publish) {
                        unsent.push_back(publish);
                        self.send_acks::<P>(&client, &mut unsent);
                    }
                }
                _ = retry.tick(), if !unsent.is_empty() => self.send_acks::<P>(&client, &mut unsent),
                else => return Ok(()),
            }
        }
    }

    /// Hands as many acks as fit to the client, oldest first.
    fn send_acks<P: Mqtt>(&self, client: &P::Client, unsent: &mut VecDeque<P::Publish>) {
        while let Some(publish) = unsent.front() {
            if !P::try_ack(client, publish) {
                // Full: retried on the next tick. Closed: the event loop is gone (shutdown);
                // the broker redelivers what was not acked.
                return;
            }
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            unsent.pop_front();
        }
    }

    /// Maps one message now; the returned future stores its events or its dead letter and
    /// resolves with the message, ready to be acked (or why its events were not stored).
    fn job<P: Mqtt>(
        &self,
        publish: P::Publish,
        received: OffsetDateTime,
        shutdown: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<P::Publish, NotStored>> + Send + 'static {
        let outcome = self.envelopes(P::topic(&publish), P::payload(&publish), received);
        let rule = match &outcome {
            Ok(_) => P::topic(&publish).and_then(|topic| self.rules.index_of(topic)),
            Err(_) => None,
        };
        if let Err(reject) = &outcome {
            let reason = reject.reason;
            let total = self.stats.rejected[reason.index()].load(Ordering::Relaxed) + 1;
            let mut log = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(suppressed) = log.check(reason.as_str(), std::time::Instant::now()) {
                warn!(
                    topic = %P::topic_lossy(&publish),
                    %reason,
                    detail = %reject.detail,
                    total,
                    suppressed,
                    "Sensor message refused; kept in the dead-letter store."
                );
            }
        }
        let outbox = self.outbox.clone();
        let key = self.key.clone();
        let dead_letters = self.dead_letters.clone();
        let stats = Arc::clone(&self.stats);
        let shutdown = shutdown.clone();
        async move {
            let refused = match outcome {
                Ok(envelopes) => {
                    // In order, each numbered as it is stored: a message's readings keep
                    // their order in this node's sequence.
                    let mut unsealable = None;
                    let mut stored = 0;
                    for envelope in envelopes {
                        if let Err(error) = store(&outbox, &key, envelope, &shutdown).await? {
                            error!(%error, topic = %P::topic_lossy(&publish), "Cannot seal a sensor event; the message is kept in the dead-letter store (readings of it stored before stay).");
                            unsealable = Some(Reject {
                                reason: Reason::Internal,
                                detail: error.to_string(),
                            });
                            break;
                        }
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        stored += 1;
                    }
                    stats.count_rule(rule, stored);
                    unsealable
                }
                Err(reject) => Some(reject),
            };
            if let Some(reject) = refused {
                stats.rejected[reject.reason.index()].fetch_add(1, Ordering::Relaxed);
                let refused = Refused {
                    topic: &P::topic_lossy(&publish),
                    qos: P::qos_digit(&publish),
                    payload: P::payload(&publish),
                };
                dead_letter(dead_letters.as_ref(), refused, &reject).await;
            }
            Ok(publish)
        }
    }

    /// The envelopes of one message (the outbox numbers and seals each as it stores it),
    /// or why it is refused. `topic` is `None` when it is not UTF-8 (MQTT 5 topics arrive
    /// as bytes).
    fn envelopes(
        &self,
        topic: Option<&str>,
        payload: &[u8],
        received: OffsetDateTime,
    ) -> Result<Vec<Envelope>, Reject> {
        let Some(topic) = topic else {
            return Err(Reject {
                reason: Reason::InvalidUtf8,
                detail: "the topic is not UTF-8".to_owned(),
            });
        };
        let readings = self.rules.map(topic, payload, received)?;
        let mut envelopes = Vec::with_capacity(readings.len());
        for reading in &readings {
            let envelope = sensor_data::envelope(reading, &self.node_id, &self.tenant)
                .map_err(|e| e.to_string())
                .and_then(|envelope| {
                    envelope.validate().map_err(|e| e.to_string())?;
                    Ok(envelope)
                });
            match envelope {
                Ok(envelope) => envelopes.push(envelope),
                Err(detail) => {
                    return Err(Reject {
                        reason: Reason::Internal,
                        detail,
                    })
                }
            }
        }
        Ok(envelopes)
    }
}

/// Why a message's events were not stored (it is then not acked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotStored {
    /// Shutdown came while the push was being retried.
    Shutdown,
    /// The outbox's writer is gone.
    Closed,
}

/// Pushes an event (numbered and signed by the outbox as it commits), retrying while the
/// outbox refuses it (full, or a storage error): the message stays unacked meanwhile,
/// which is the back pressure towards the broker. Gives up on shutdown, or when the outbox
/// stays closed; `Ok(Err)` when the event cannot be sealed at all (retrying would not
/// help).
async fn store(
    outbox: &Outbox,
    key: &SecretKey,
    envelope: Envelope,
    shutdown: &CancellationToken,
) -> Result<Result<(), EnvelopeError>, NotStored> {
    let mut retry = Retry::new(Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
    ));
    loop {
        let seal = envelope.clone().into_sealer(Encoding::Json, key.clone());
        match outbox.push_numbered(seal, Priority::Bulk).await {
            Ok(_) => return Ok(Ok(())),
            Err(OutboxError::Seal(error)) => return Ok(Err(error)),
            Err(error) => {
                if retry.attempt() == 0 {
                    warn!(%error, "Cannot store a sensor event; holding the MQTT message unacked and retrying.");
                }
                // Closed: the writer is gone, or took the push and died (stored or not,
                // unknown: the message stays unacked, so a copy at worst).
                if matches!(error, OutboxError::Closed { .. }) && retry.attempt() >= 3 {
                    return Err(NotStored::Closed);
                }
            }
        }
        if !retry.wait(shutdown).await {
            return Err(NotStored::Shutdown);
        }
    }
}

/// A refused message, as the dead-letter store keeps it.
struct Refused<'a> {
    topic: &'a str,
    qos: u8,
    payload: &'a [u8],
}

/// Records a refused message (the payload is kept up to the store's bound), logged at
/// DEBUG: the counters and the store are where operators look.
async fn dead_letter(store: Option<&DeadLetters>, refused: Refused<'_>, reject: &Reject) {
    debug!(topic = %refused.topic, reason = %reject.reason, detail = %reject.detail, "Sensor message refused.");
    let Some(store) = store else { return };
    let entry = DeadLetter::new(
        STAGE_IOT,
        reject.reason.as_str(),
        reject.detail.clone(),
        refused.topic,
        vec![("mqtt-qos".to_owned(), refused.qos.to_string())],
        refused.payload.to_vec(),
        OffsetDateTime::now_utc(),
    );
    if let Err(error) = store.record(entry).await {
        error!(%error, topic = %refused.topic, reason = %reject.reason, "Cannot record a refused sensor message in the dead-letter store.");
    }
}

/// The task that owns the event loop.
struct Poller<P: Mqtt> {
    client: P::Client,
    filters: Vec<String>,
    at_least_once: bool,
    tx: mpsc::Sender<(P::Publish, OffsetDateTime)>,
    stats: Arc<Stats>,
    backoff: Backoff,
    url: String,
}

impl<P: Mqtt> Poller<P> {
    async fn run(self, eventloop: &mut P::EventLoop, shutdown: &CancellationToken) {
        let mut retry = Retry::new(self.backoff);
        // `None` before the first outcome: the first failure is logged too.
        let mut was_connected: Option<bool> = None;
        loop {
            // Cancel safety: `poll` may lose a partially read packet when dropped; that only
            // happens at shutdown, and an unacked QoS 1 message is redelivered.
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = P::poll(eventloop) => event,
            };
            match event {
                Ok(Incoming::ConnAck { session_present }) => {
                    retry.reset();
                    if was_connected != Some(true) {
                        info!(broker = %self.url, protocol = P::NAME, session_present, "MQTT broker connected.");
                        self.stats.set_connected(true);
                    }
                    was_connected = Some(true);
                    self.resubscribe();
                }
                Ok(Incoming::Publish(publish)) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let received = OffsetDateTime::now_utc();
                    if !P::at_least_once(&publish) {
                        if self.tx.try_send((publish, received)).is_err() {
                            self.stats.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        // Back pressure: waits only if more QoS 1 messages are unacked than
                        // the queue holds (see the module docs).
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            sent = self.tx.send((publish, received)) => if sent.is_err() { return },
                        }
                    }
                }
                Ok(Incoming::SubAck { refused, codes }) => {
                    if refused {
                        error!(filters = ?self.filters, %codes, "The MQTT broker refused a subscription; those sensors are not read.");
                    } else {
                        info!(filters = ?self.filters, "MQTT subscriptions confirmed.");
                    }
                }
                Ok(Incoming::Disconnect { reason }) => {
                    warn!(broker = %self.url, %reason, "The MQTT broker is closing the connection.");
                }
                Ok(Incoming::Other) => {}
                Err(error) => {
                    let delay = retry.next_delay();
                    match was_connected {
                        Some(false) => debug!(%error, "MQTT broker still unreachable."),
                        _ => {
                            self.stats.set_connected(false);
                            warn!(broker = %self.url, %error, retry_ms = delay.as_millis() as u64, "MQTT broker connection lost or refused; reconnecting with backoff.")
                        }
                    }
                    was_connected = Some(false);
                    if !backoff::sleep(delay, shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the subscriptions from another task: never await our own client here.
    fn resubscribe(&self) {
        let subscribe = P::subscribe(
            self.client.clone(),
            self.filters.clone(),
            self.at_least_once,
        );
        tokio::spawn(async move {
            if let Err(error) = subscribe.await {
                warn!(%error, "Cannot queue the MQTT subscriptions.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push the outbox keeps refusing (here: full) is retried with backoff until
    /// shutdown, and then given up without being stored (the message stays unacked). It
    /// used to sleep through shutdown, retrying forever.
    #[tokio::test]
    async fn a_refused_push_is_retried_until_shutdown_then_given_up() {
        let outbox = Outbox::in_memory(16);
        let key = SecretKey::from_seed(&[9; 32]).expect("key");
        let envelope = nexus_wire::Envelope::new(
            "iot.sensor_data",
            "edge-01",
            Some("salon-001"),
            serde_json::Map::new(),
            OffsetDateTime::now_utc(),
        );
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let storing = tokio::spawn(async move { store(&outbox, &key, envelope, &token).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!storing.is_finished(), "a full outbox is retried");
        shutdown.cancel();
        let stored = tokio::time::timeout(Duration::from_secs(2), storing)
            .await
            .expect("shutdown ends the retries")
            .expect("joined");
        assert_eq!(stored, Err(NotStored::Shutdown));
    }
}
