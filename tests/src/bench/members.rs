//! Many simulated members in one process, against a real hub (`benches/members.rs`,
//! tests/tests/members.rs): each with its own Ed25519 key and a token chain issued by the
//! hub's key under the hub's chain (the library calls of `nexus-agent token issue`),
//! presented in the hub's `NEXUS_CHAINS` bucket as a member's uplink presents it, then
//! heartbeating (`edge.health`, the payload a member agent sends) every `interval` and
//! sending `iot.sensor_data` readings at a shared, adjustable rate. Every event is signed
//! and numbered (`epoch`, `seq`) as a member's outbox numbers it, and published into the
//! hub's ingress with a JetStream publish awaiting its PubAck, as the member's uplink does.
//! Members share a few NATS connections (one per [`MEMBERS_PER_CONNECTION`]): the hub
//! agent, which is what is measured, reads its ingress stream and never sees connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_federation::trust::{key_id, CHAINS_BUCKET};
use nexus_federation::{subject, Encoding, Envelope, NatsProvenance as _, SignedEvent};
use nexus_policies::token::Chain;
use nexus_policies::{Claims, Role, SecretKey, SubjectPattern, Token, TokenId, UnixTime};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fleet;

/// Members sharing one NATS connection to the hub's server.
pub const MEMBERS_PER_CONNECTION: usize = 50;
/// The readings' event name (the IoT bridge's).
pub const READING: &str = "iot.sensor_data";
/// Tries of one publish before it counts as failed.
const TRIES: usize = 3;

/// One simulated member: its id, key, chain (issued by the hub) and outbox numbering.
#[derive(Debug)]
pub struct SimMember {
    /// The node id.
    pub id: String,
    key: SecretKey,
    chain: Bytes,
    epoch: String,
    seq: u64,
    started: std::time::Instant,
}

/// A fresh key: the random bits of two UUIDv7 (74 each, from the OS's randomness).
pub fn fresh_key() -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    SecretKey::from_seed(&seed).expect("a strong key")
}

/// The patterns a member's token grants: its own heartbeats, audits, its tenant's events.
pub fn member_publish(id: &str) -> Vec<SubjectPattern> {
    [
        format!("nexus._core.edge.health.{id}"),
        "nexus._core.audit.>".to_owned(),
        format!("nexus.{}.>", fleet::TENANT),
    ]
    .iter()
    .map(|p| SubjectPattern::parse(p).expect("a subject pattern"))
    .collect()
}

/// A member token for `id` and `key`, issued by `hub_key` under `hub_chain` (valid a day,
/// or until the hub's expires), as `nexus-agent token issue --parent` issues it.
pub fn issue_chain(id: &str, key: &SecretKey, hub_key: &SecretKey, hub_chain: &Chain) -> Bytes {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let expires = (now + 86_400).min(hub_chain.leaf().claims().expires.0);
    issue_chain_valid(id, key, hub_key, hub_chain, now, expires)
}

/// [`issue_chain`] valid from `not_before` until `expires` (unix seconds; e.g. a token that
/// expired long ago).
pub fn issue_chain_valid(
    id: &str,
    key: &SecretKey,
    hub_key: &SecretKey,
    hub_chain: &Chain,
    not_before: i64,
    expires: i64,
) -> Bytes {
    let parent = hub_chain.leaf();
    let claims = Claims {
        id: TokenId(uuid::Uuid::now_v7().into_bytes()),
        parent: Some(parent.id()),
        issuer_key: hub_key.public(),
        node_id: id.to_owned(),
        node_key: key.public(),
        tenant: Some(fleet::TENANT.to_owned()),
        role: Role::Member,
        publish: member_publish(id),
        receive: Vec::new(),
        not_before: UnixTime(not_before),
        expires: UnixTime(expires),
    };
    let token = Token::issue(claims, hub_key, Some(parent)).expect("the hub issues the token");
    let mut tokens = vec![token];
    tokens.extend(hub_chain.tokens().iter().cloned());
    Bytes::from(Chain::new(tokens).expect("a chain").encode())
}

impl SimMember {
    /// Member `id` with a fresh key and a chain issued by the hub.
    pub fn issue(id: &str, hub_key: &SecretKey, hub_chain: &Chain) -> Self {
        let key = fresh_key();
        let chain = issue_chain(id, &key, hub_key, hub_chain);
        Self {
            id: id.to_owned(),
            key,
            chain,
            epoch: uuid::Uuid::now_v7().to_string(),
            seq: 0,
            started: std::time::Instant::now(),
        }
    }

    /// The raw chain, as presented.
    pub fn chain(&self) -> &Bytes {
        &self.chain
    }

    /// Puts the chain into the hub's registry under the member's key.
    pub async fn present(&self, registry: &kv::Store) {
        registry
            .put(key_id(&self.key.public()), self.chain.clone())
            .await
            .expect("present the chain to the hub");
    }

    fn seal(
        &mut self,
        name: &str,
        tenant: Option<&str>,
        payload: Map<String, Value>,
    ) -> SignedEvent {
        self.seq += 1;
        let mut envelope =
            Envelope::new(name, &self.id, tenant, payload, OffsetDateTime::now_utc());
        envelope.epoch = Some(self.epoch.clone());
        envelope.seq = Some(self.seq);
        SignedEvent::seal(&envelope, Encoding::Json, &self.key).expect("seal")
    }

    /// The next heartbeat: the payload of a healthy member agent with an empty outbox.
    pub fn heartbeat(&mut self) -> SignedEvent {
        let since = nexus_federation::envelope::format_ts(OffsetDateTime::now_utc());
        let link = json!({"connected": true, "since": since});
        let payload = json!({
            "node_id": self.id,
            "mode": "member",
            "status": "healthy",
            "uptime_secs": self.started.elapsed().as_secs(),
            "cpu_pct": 1.0,
            "mem_pct": 20.0,
            "agent_version": env!("CARGO_PKG_VERSION"),
            "uplink": link,
            "local": link,
            "outbox": {"depth": 0, "bytes": 0, "oldest_age_secs": 0, "dropped": 0, "expired": 0},
            "causes": [],
        });
        let Value::Object(payload) = payload else {
            unreachable!("an object")
        };
        self.seal("edge.health", None, payload)
    }

    /// The next reading (`n` makes the value move).
    pub fn reading(&mut self, n: u64) -> SignedEvent {
        let mut payload = Map::new();
        payload.insert("sensor_id".into(), json!(format!("{}-t", self.id)));
        payload.insert("metric".into(), json!("temperature"));
        payload.insert("value".into(), json!(20.0 + (n % 50) as f64 / 10.0));
        payload.insert("unit".into(), json!("C"));
        self.seal(READING, Some(fleet::TENANT), payload)
    }
}

/// Publishes `event` into the hub's ingress and awaits its PubAck (retrying a few times).
pub async fn send(js: &jetstream::Context, event: &SignedEvent) -> bool {
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let message = PublishMessage::build()
            .payload(event.body.clone())
            .headers(event.headers());
        let ack = match js
            .send_publish(subject::ingress_subject(&event.subject), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        if ack.is_ok() {
            return true;
        }
    }
    false
}

/// What the swarm sent so far.
#[derive(Debug, Default)]
pub struct SwarmCounts {
    /// Heartbeats acknowledged by the hub's ingress.
    pub heartbeats: AtomicU64,
    /// Readings acknowledged.
    pub readings: AtomicU64,
    /// Events not acknowledged after every try.
    pub failed: AtomicU64,
}

/// One running member: its task and when its last heartbeat was acknowledged.
#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    last_heartbeat: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// N members running in this process against one hub.
#[derive(Debug)]
pub struct Swarm {
    hub_key: SecretKey,
    hub_chain: Chain,
    shared: Arc<Shared>,
    contexts: Vec<jetstream::Context>,
    registry: kv::Store,
    running: Vec<Option<Running>>,
}

/// What every member of a swarm reads: its pace, and whether it is paused.
#[derive(Debug, Default)]
struct Shared {
    /// The heartbeat interval, ms.
    interval_ms: AtomicU64,
    /// Readings per second per member, in thousandths (0: heartbeats only).
    rate_milli: AtomicU32,
    /// Paused members keep their schedule but send nothing.
    paused: AtomicBool,
    counts: SwarmCounts,
}

impl Swarm {
    /// Connects to the hub's server (`hub_url`) and waits (bounded) for its chain registry;
    /// members are issued by `hub_key` under the hub's chain at `hub_chain`.
    pub async fn connect(
        hub_url: &str,
        hub_key: SecretKey,
        hub_chain: &std::path::Path,
        interval: Duration,
        connections: usize,
        deadline: Duration,
    ) -> Self {
        let hub_chain = Chain::decode(&std::fs::read(hub_chain).expect("the hub's chain"))
            .expect("the hub's chain decodes");
        let mut contexts = Vec::new();
        for _ in 0..connections.max(1) {
            let client = async_nats::connect(hub_url)
                .await
                .expect("connect to the hub's NATS");
            contexts.push(jetstream::new(client));
        }
        let js = contexts[0].clone();
        let registry = crate::wait_until("the hub's chain registry exists", deadline, async || {
            js.get_key_value(CHAINS_BUCKET).await
        })
        .await;
        let shared = Shared::default();
        shared
            .interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
        Self {
            hub_key,
            hub_chain,
            shared: Arc::new(shared),
            contexts,
            registry,
            running: Vec::new(),
        }
    }

    /// The hub's chain registry (its `NEXUS_CHAINS` bucket).
    pub fn registry(&self) -> &kv::Store {
        &self.registry
    }

    /// A new member issued by the hub (not started).
    pub fn issue(&self, id: &str) -> SimMember {
        SimMember::issue(id, &self.hub_key, &self.hub_chain)
    }

    /// A JetStream context on the hub's server.
    pub fn context(&self, i: usize) -> &jetstream::Context {
        &self.contexts[i % self.contexts.len()]
    }

    /// What was sent so far.
    pub fn counts(&self) -> &SwarmCounts {
        &self.shared.counts
    }

    /// Sets every member's readings per second (0: heartbeats only), taken at each one's
    /// next heartbeat.
    pub fn set_rate(&self, per_second: f64) {
        self.shared
            .rate_milli
            .store((per_second * 1000.0).round() as u32, Ordering::Relaxed);
    }

    /// Sets every member's heartbeat interval, taken after each one's next heartbeat.
    pub fn set_interval(&self, interval: Duration) {
        self.shared
            .interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// Pauses (or resumes) every member: paused, they send nothing.
    pub fn pause(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Relaxed);
    }

    /// How many members were started (running or stopped).
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Presents the chains of `members` (concurrently) and starts them, each heartbeating
    /// first within one interval (phases spread over it) and then every interval, readings
    /// at the swarm's rate; returns their indexes.
    pub async fn start(&mut self, members: Vec<SimMember>) -> std::ops::Range<usize> {
        let registry = &self.registry;
        futures::future::join_all(members.iter().map(|m| m.present(registry))).await;
        let first = self.running.len();
        for member in members {
            self.launch(member);
        }
        first..self.running.len()
    }

    fn launch(&mut self, member: SimMember) {
        let i = self.running.len();
        self.running.push(None);
        self.run_at(i, member);
    }

    fn run_at(&mut self, i: usize, member: SimMember) {
        let js = self.context(i).clone();
        let last_heartbeat = Arc::new(std::sync::Mutex::new(None));
        // Heartbeats spread over the interval (golden-ratio phases), as a fleet's are.
        let phase = (i as f64 * 0.618_033_988_75).fract();
        let task = tokio::spawn(run_member(
            member,
            js,
            phase,
            Arc::clone(&self.shared),
            Arc::clone(&last_heartbeat),
        ));
        self.running[i] = Some(Running {
            task,
            last_heartbeat,
        });
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.running.get(i).is_some_and(Option::is_some)
    }

    /// Stops member `i` (it sends nothing more); returns when its last heartbeat was
    /// acknowledged.
    pub fn stop(&mut self, i: usize) -> Option<Instant> {
        let running = self.running.get_mut(i)?.take()?;
        running.task.abort();
        let last = *running
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last
    }

    /// Member `i` (stopped or not) comes back as `member` (e.g. the same id with a rotated
    /// key): its chain presented, then started again.
    pub async fn restart(&mut self, i: usize, member: SimMember) {
        self.stop(i);
        member.present(&self.registry).await;
        self.run_at(i, member);
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for running in self.running.iter_mut().filter_map(Option::take) {
            running.task.abort();
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One member's life: a heartbeat within `phase` of an interval, then every interval;
/// readings at the shared rate (a rate change is taken at the next heartbeat).
async fn run_member(
    mut member: SimMember,
    js: jetstream::Context,
    phase: f64,
    shared: Arc<Shared>,
    last_heartbeat: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let interval = || Duration::from_millis(shared.interval_ms.load(Ordering::Relaxed).max(1));
    let counts = &shared.counts;
    let mut next_heartbeat = Instant::now() + interval().mul_f64(phase);
    let mut next_reading: Option<Instant> = None;
    let mut n = 0u64;
    loop {
        let wake = next_reading.map_or(next_heartbeat, |r| r.min(next_heartbeat));
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        let paused = shared.paused.load(Ordering::Relaxed);
        if now >= next_heartbeat {
            next_heartbeat += interval();
            if !paused {
                let event = member.heartbeat();
                if send(&js, &event).await {
                    counts.heartbeats.fetch_add(1, Ordering::Relaxed);
                    *last_heartbeat.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let rate = shared.rate_milli.load(Ordering::Relaxed);
            next_reading = match (rate, next_reading) {
                (0, _) => None,
                (_, Some(next)) => Some(next),
                // Spread over the period, so that members do not send in step.
                (rate, None) => {
                    let period = Duration::from_secs(1000) / rate;
                    Some(now + period.mul_f64(phase))
                }
            };
        }
        if let Some(at) = next_reading.filter(|at| now >= *at) {
            let rate = shared.rate_milli.load(Ordering::Relaxed).max(1);
            next_reading = Some(at + Duration::from_secs(1000) / rate);
            if !paused {
                n += 1;
                let event = member.reading(n);
                if send(&js, &event).await {
                    counts.readings.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A tier's `children` census, from its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Children online.
    pub online: u64,
    /// Children offline.
    pub offline: u64,
    /// When the heartbeat that carried it arrived.
    pub at: Instant,
}

/// The latest census in the heartbeats of the root and the hub, as they arrive on the
/// root's NATS.
#[derive(Debug, Clone, Default)]
pub struct Censuses(Arc<Mutex<HashMap<String, Census>>>);

impl Censuses {
    /// Follows the heartbeats of `nodes` on `root` (the root's NATS) from now on.
    pub async fn watch(root: &async_nats::Client, nodes: &[&str]) -> Self {
        let censuses = Self::default();
        for node in nodes {
            let mut sub = root
                .subscribe(format!("nexus._core.edge.health.{node}"))
                .await
                .expect("subscribe");
            let (map, node) = (Arc::clone(&censuses.0), (*node).to_owned());
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let body: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                    let children = &body["payload"]["children"];
                    if let (Some(online), Some(offline)) =
                        (children["online"].as_u64(), children["offline"].as_u64())
                    {
                        let census = Census {
                            online,
                            offline,
                            at: Instant::now(),
                        };
                        map.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(node.clone(), census);
                    }
                }
            });
        }
        root.flush().await.expect("flush");
        censuses
    }

    /// The latest census of `node`.
    pub fn latest(&self, node: &str) -> Option<Census> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
    }

    /// Whether `node`'s latest census counts `online` and `offline` children.
    pub fn counts(&self, node: &str, online: u64, offline: u64) -> bool {
        self.latest(node)
            .is_some_and(|c| c.online == online && c.offline == offline)
    }
}
