//! The MQTT side: one connection to the sensors' broker, polled in its own task, and a
//! worker that maps, signs, stores and only then acknowledges.
//!
//! ```text
//! broker ──▶ poller task ──(bounded queue)──▶ worker ──▶ outbox.push ─fsync─▶ PUBACK
//!            (EventLoop::poll,                 map, seal,     (or dead letter, then PUBACK)
//!             reconnect backoff,               pushes in flight
//!             resubscribe on ConnAck)          acked in arrival order
//! ```
//!
//! # What rumqttc is told, and why (PITFALLS.md, "rumqttc 0.25")
//! - `clean_session = false` for QoS 1: the broker keeps our subscriptions and queues
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt as _};
use nexus_config::IotConfig;
use nexus_federation::backoff::Backoff;
use nexus_federation::deadletter::{DeadLetter, DeadLetters, STAGE_IOT};
use nexus_federation::outbox::Priority;
use nexus_federation::ratelog::RateLimitedLog;
use nexus_federation::{Encoding, Outbox, OutboxError, SignedEvent};
use nexus_policies::SecretKey;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Packet, Publish,
    QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::mapping::{Reason, Reject, Rules};
use crate::sensor_data;
use crate::template::TemplateError;

/// How many messages may be in the middle of being stored at once.
pub const MAX_PENDING: usize = 256;
/// MQTT's largest packet (the remaining-length field's maximum).
const MQTT_MAX_PACKET: usize = 268_435_455;
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

/// Counters of the bridge, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct Stats {
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
}

impl Stats {
    /// How many messages were refused for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }
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
        Ok(Self {
            config,
            rules,
            node_id: node_id.to_owned(),
            tenant: tenant.to_owned(),
            key,
            outbox,
            dead_letters,
            stats: Arc::new(Stats::default()),
            refusals: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(60))),
        })
    }

    /// The bridge's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    fn qos(&self) -> QoS {
        if self.config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn options(&self) -> Result<MqttOptions, BridgeError> {
        let c = &self.config;
        let mut options = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        options
            .set_keep_alive(c.keep_alive)
            .set_clean_session(self.qos() == QoS::AtMostOnce)
            .set_manual_acks(true)
            .set_max_packet_size(MQTT_MAX_PACKET, 64 * 1024)
            // Acks and subscribe requests: at most one ack per unacked QoS 1 message.
            .set_request_channel_capacity(c.queue + MAX_PENDING + 64);
        if let (Some(user), password) = (&c.username, &c.password) {
            options.set_credentials(user.clone(), password.clone().unwrap_or_default());
        }
        if let Some(tls) = &c.tls {
            let link = nexus_federation::tls::client_config("iot", tls)
                .map_err(|e| BridgeError::Tls(e.to_string()))?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(link.config),
            )));
        }
        Ok(options)
    }

    /// Runs until `shutdown`: connects (forever, with backoff), maps, stores, acks.
    pub async fn run(self, shutdown: CancellationToken) {
        let options = match self.options() {
            Ok(options) => options,
            Err(error) => {
                error!(%error, "Cannot configure the MQTT connection; the IoT bridge is off.");
                shutdown.cancelled().await;
                return;
            }
        };
        let (client, mut eventloop) =
            AsyncClient::new(options, self.config.queue + MAX_PENDING + 64);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::channel(self.config.queue);
        info!(
            broker = %nexus_config::redact_url(&self.config.url),
            client_id = %self.config.client_id,
            qos = self.config.qos,
            filters = ?self.rules.filters(),
            "IoT bridge starting."
        );
        let poller = Poller {
            client: client.clone(),
            filters: self.rules.filters(),
            qos: self.qos(),
            tx,
            stats: Arc::clone(&self.stats),
            backoff: Backoff::new(RECONNECT_BASE, self.config.reconnect_max_delay),
            url: nexus_config::redact_url(&self.config.url),
        };
        let worker_shutdown = shutdown.clone();
        let worker = tokio::spawn(self.work(client.clone(), rx, worker_shutdown));
        poller.run(&mut eventloop, &shutdown).await;
        let _ = worker.await;
        // Unacked QoS 1 messages stay with the broker's persistent session.
        let _ = client.try_disconnect();
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
    async fn work(
        self,
        client: AsyncClient,
        mut rx: mpsc::Receiver<(Publish, OffsetDateTime)>,
        shutdown: CancellationToken,
    ) {
        let mut pending = FuturesOrdered::new();
        let mut unsent: VecDeque<Publish> = VecDeque::new();
        let mut retry = tokio::time::interval(ACK_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            // Cancel safety: `recv` loses nothing when dropped; a pending store future is
            // only polled here, never dropped until shutdown (then its message stays
            // unacked and the broker redelivers it); a tick is only a timer.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = rx.recv(), if open && pending.len() < MAX_PENDING => match message {
                    Some((publish, received)) => {
                        let job = self.job(publish, received);
                        pending.push_back(job);
                    }
                    None => open = false,
                },
                Some(done) = pending.next(), if !pending.is_empty() => {
                    let publish: Publish = done;
                    if publish.qos != QoS::AtMostOnce {
                        unsent.push_back(publish);
                        self.send_acks(&client, &mut unsent);
                    }
                }
                _ = retry.tick(), if !unsent.is_empty() => self.send_acks(&client, &mut unsent),
                else => return,
            }
        }
    }

    /// Hands as many acks as fit to the client, oldest first.
    fn send_acks(&self, client: &AsyncClient, unsent: &mut VecDeque<Publish>) {
        while let Some(publish) = unsent.front() {
            match client.try_ack(publish) {
                Ok(()) => {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    unsent.pop_front();
                }
                // Full: retried on the next tick. Closed: the event loop is gone (shutdown);
                // the broker redelivers what was not acked.
                Err(_) => return,
            }
        }
    }

    /// Maps one message now; the returned future stores its events or its dead letter and
    /// resolves with the message, ready to be acked.
    fn job(
        &self,
        publish: Publish,
        received: OffsetDateTime,
    ) -> impl std::future::Future<Output = Publish> + Send + 'static {
        let outcome = self.seal_all(&publish, received);
        if let Err(reject) = &outcome {
            let reason = reject.reason;
            let total = self.stats.rejected[reason.index()].load(Ordering::Relaxed) + 1;
            let mut log = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(suppressed) = log.check(reason.as_str(), std::time::Instant::now()) {
                warn!(
                    topic = %publish.topic,
                    %reason,
                    detail = %reject.detail,
                    total,
                    suppressed,
                    "Sensor message refused; kept in the dead-letter store."
                );
            }
        }
        let outbox = self.outbox.clone();
        let dead_letters = self.dead_letters.clone();
        let stats = Arc::clone(&self.stats);
        async move {
            match outcome {
                Ok(events) => {
                    for event in events {
                        store(&outbox, event).await;
                        stats.events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(reject) => {
                    stats.rejected[reject.reason.index()].fetch_add(1, Ordering::Relaxed);
                    dead_letter(dead_letters.as_ref(), &publish, &reject).await;
                }
            }
            publish
        }
    }

    fn seal_all(
        &self,
        publish: &Publish,
        received: OffsetDateTime,
    ) -> Result<Vec<SignedEvent>, Reject> {
        let readings = self.rules.map(&publish.topic, &publish.payload, received)?;
        let mut events = Vec::with_capacity(readings.len());
        for reading in &readings {
            let sealed = sensor_data::envelope(reading, &self.node_id, &self.tenant)
                .map_err(|e| e.to_string())
                .and_then(|envelope| {
                    SignedEvent::seal(&envelope, Encoding::Json, &self.key)
                        .map_err(|e| e.to_string())
                });
            match sealed {
                Ok(event) => events.push(event),
                Err(detail) => {
                    return Err(Reject {
                        reason: Reason::Internal,
                        detail,
                    })
                }
            }
        }
        Ok(events)
    }
}

/// Pushes an event, retrying while the outbox refuses it (full, or a storage error): the
/// message stays unacked meanwhile, which is the back pressure towards the broker.
async fn store(outbox: &Outbox, mut event: SignedEvent) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        match outbox.push(event, Priority::Bulk).await {
            Ok(_) => return,
            Err(error) => {
                if attempt == 0 {
                    warn!(%error, "Cannot store a sensor event; holding the MQTT message unacked and retrying.");
                }
                let closed = matches!(error, OutboxError::Closed { .. });
                match error.into_event() {
                    Some(back) if !closed || attempt < 3 => event = back,
                    _ => {
                        error!("The outbox is closed; a sensor event is lost.");
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(backoff.delay_now(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Records a refused message (the payload is kept up to the store's bound), logged at
/// DEBUG: the counters and the store are where operators look.
async fn dead_letter(store: Option<&DeadLetters>, publish: &Publish, reject: &Reject) {
    debug!(topic = %publish.topic, reason = %reject.reason, detail = %reject.detail, "Sensor message refused.");
    let Some(store) = store else { return };
    let entry = DeadLetter::new(
        STAGE_IOT,
        reject.reason.as_str(),
        reject.detail.clone(),
        &publish.topic,
        vec![("mqtt-qos".to_owned(), (publish.qos as u8).to_string())],
        publish.payload.to_vec(),
        OffsetDateTime::now_utc(),
    );
    if let Err(error) = store.record(entry).await {
        error!(%error, topic = %publish.topic, reason = %reject.reason, "Cannot record a refused sensor message in the dead-letter store.");
    }
}

/// The task that owns the event loop.
struct Poller {
    client: AsyncClient,
    filters: Vec<String>,
    qos: QoS,
    tx: mpsc::Sender<(Publish, OffsetDateTime)>,
    stats: Arc<Stats>,
    backoff: Backoff,
    url: String,
}

impl Poller {
    async fn run(self, eventloop: &mut EventLoop, shutdown: &CancellationToken) {
        let mut attempt: u32 = 0;
        // `None` before the first outcome: the first failure is logged too.
        let mut was_connected: Option<bool> = None;
        loop {
            // Cancel safety: `poll` may lose a partially read packet when dropped; that only
            // happens at shutdown, and an unacked QoS 1 message is redelivered.
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    attempt = 0;
                    if was_connected != Some(true) {
                        info!(broker = %self.url, session_present = ack.session_present, "MQTT broker connected.");
                    }
                    was_connected = Some(true);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.resubscribe();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let received = OffsetDateTime::now_utc();
                    if publish.qos == QoS::AtMostOnce {
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
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        error!(filters = ?self.filters, codes = ?ack.return_codes, "The MQTT broker refused a subscription; those sensors are not read.");
                    } else {
                        debug!(codes = ?ack.return_codes, "MQTT subscriptions confirmed.");
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    let delay = self.backoff.delay_now(attempt);
                    attempt = attempt.saturating_add(1);
                    match was_connected {
                        Some(false) => debug!(%error, "MQTT broker still unreachable."),
                        _ => {
                            warn!(broker = %self.url, error = %describe(&error), retry_ms = delay.as_millis() as u64, "MQTT broker connection lost or refused; reconnecting with backoff.")
                        }
                    }
                    was_connected = Some(false);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sends the subscriptions from another task: never await our own client here.
    fn resubscribe(&self) {
        let client = self.client.clone();
        let filters: Vec<SubscribeFilter> = self
            .filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), self.qos))
            .collect();
        tokio::spawn(async move {
            if let Err(error) = client.subscribe_many(filters).await {
                warn!(%error, "Cannot queue the MQTT subscriptions.");
            }
        });
    }
}

fn describe(error: &ConnectionError) -> String {
    error.to_string()
}
