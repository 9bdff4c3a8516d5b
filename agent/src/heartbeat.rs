//! `edge.health` heartbeats: this node's own, and the watch over its children's.
//!
//! A heartbeat says `degraded` when a configured NATS link is down or a subsystem stopped
//! on its own; `causes` names each such subsystem and why (see `crate::supervisor`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_config::Mode;
use nexus_federation::outbox::Priority;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Encoding, Envelope, Link, LinkState, Outbox, OutboxError};
use nexus_iot_bridge::{Reason, Stats as IotStats};
use nexus_policies::SecretKey;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::supervisor::{Fault, Faults};

/// The event name of heartbeats.
pub const EVENT_NAME: &str = "edge.health";

/// What a heartbeat reports besides the host's figures.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// This node's id.
    pub node_id: String,
    /// This node's mode.
    pub mode: Mode,
    /// The key that signs it.
    pub key: SecretKey,
    /// How often.
    pub interval: Duration,
    /// The parent link (member, hub).
    pub uplink: Option<Link>,
    /// This node's own NATS (hub, root; optional for member).
    pub local: Option<Link>,
    /// Where heartbeats are queued.
    pub outbox: Outbox,
    /// The watch over children (hub, root).
    pub children: Option<Children>,
    /// When the agent started (uptime).
    pub started: Instant,
    /// The host's figures, shared with `agent.health` answers.
    pub host: HostProbe,
    /// The IoT bridge's counters (member with `[iot]`).
    pub iot: Option<Arc<IotStats>>,
    /// The subsystems that stopped on their own, and why (from the supervisor).
    pub faults: Faults,
}

impl Heartbeat {
    /// Emits a heartbeat now and every `interval` until `shutdown`. It has no cause to stop
    /// on its own (a heartbeat that cannot be queued is logged and skipped), so it always
    /// ends `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut full_warned = false;
        // Give the links one interval to come up, so that the first heartbeat of a normal
        // start does not report a degraded node that is merely still connecting.
        let links: Vec<&Link> = self.uplink.iter().chain(self.local.iter()).collect();
        let all_connected =
            futures::future::join_all(links.iter().map(|link| link.wait_connected(&shutdown)));
        let _ = tokio::time::timeout(self.interval, all_connected).await;
        loop {
            // Cancel safety: a tick is only a timer; nothing is lost by dropping it.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            self.beat(&mut full_warned).await;
        }
    }

    /// Queues one heartbeat now. `full_warned`: whether a failure to queue was already
    /// logged (and not followed by a success since).
    pub async fn beat(&self, full_warned: &mut bool) {
        let payload = self.snapshot();
        let envelope = Envelope::new(
            EVENT_NAME,
            &self.node_id,
            None,
            payload,
            OffsetDateTime::now_utc(),
        );
        let seal = envelope.into_sealer(Encoding::Json, self.key.clone());
        match self.outbox.push_numbered(seal, Priority::Control).await {
            Ok(_) => {
                *full_warned = false;
                debug!("Heartbeat queued.");
            }
            Err(OutboxError::Seal(error)) => warn!(%error, "Cannot build a heartbeat."),
            Err(error) if !*full_warned => {
                *full_warned = true;
                warn!(%error, "Cannot queue heartbeats; they are dropped until the outbox takes them again.");
            }
            Err(_) => {}
        }
    }

    /// A fresh heartbeat payload (also the answer to `agent.health`).
    pub fn snapshot(&self) -> Map<String, Value> {
        let uptime = self.started.elapsed();
        let (cpu_pct, mem_pct) = self.host.sample();
        let links: Vec<&Link> = self.uplink.iter().chain(self.local.iter()).collect();
        let faults = self.faults.list();
        let degraded = !faults.is_empty() || links.iter().any(|link| !link.state().connected);
        let outbox = self.outbox.stats();
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("mode".into(), json!(self.mode.as_str()));
        payload.insert(
            "status".into(),
            json!(if degraded { "degraded" } else { "healthy" }),
        );
        payload.insert("uptime_secs".into(), json!(uptime.as_secs()));
        payload.insert("cpu_pct".into(), json!(round1(cpu_pct)));
        payload.insert("mem_pct".into(), json!(round1(mem_pct)));
        payload.insert("agent_version".into(), json!(env!("CARGO_PKG_VERSION")));
        if let Some(uplink) = &self.uplink {
            payload.insert("uplink".into(), link_json(&uplink.state()));
        }
        if let Some(local) = &self.local {
            payload.insert("local".into(), link_json(&local.state()));
        }
        payload.insert(
            "outbox".into(),
            json!({
                "depth": outbox.depth,
                "bytes": outbox.bytes,
                "oldest_age_secs": outbox.oldest_age_secs,
                "dropped": outbox.dropped,
                "expired": outbox.expired,
            }),
        );
        if let Some(iot) = &self.iot {
            payload.insert("iot".into(), iot_json(iot));
        }
        if let Some(children) = &self.children {
            let census = children.census();
            payload.insert(
                "children".into(),
                json!({
                    "online": census.online,
                    "offline": census.offline,
                    "forgotten": census.forgotten,
                }),
            );
        }
        payload.insert(
            "causes".into(),
            Value::Array(faults.iter().map(fault_json).collect()),
        );
        payload
    }
}

/// One entry of `causes`: which subsystem stopped, the kind of cause, the cause, when.
fn fault_json(fault: &Fault) -> Value {
    json!({
        "subsystem": fault.subsystem,
        "kind": fault.cause.kind(),
        "cause": fault.cause.to_string(),
        "since": nexus_federation::envelope::format_ts(fault.at),
    })
}

fn link_json(state: &LinkState) -> Value {
    json!({
        "connected": state.connected,
        "since": nexus_federation::envelope::format_ts(state.since),
    })
}

/// The IoT bridge's state and counters since the agent started. `dead_lettered` lists only
/// the reasons that occurred, so the heartbeat stays small.
fn iot_json(stats: &IotStats) -> Value {
    let (connected, since) = stats.connection();
    let dead_lettered: Map<String, Value> = Reason::ALL
        .iter()
        .filter_map(|&reason| {
            let n = stats.rejected(reason);
            (n > 0).then(|| (reason.as_str().to_owned(), json!(n)))
        })
        .collect();
    json!({
        "protocol": stats.protocol,
        "connected": connected,
        "since": nexus_federation::envelope::format_ts(since),
        "received": stats.received.load(Ordering::Relaxed),
        "forwarded": stats.events.load(Ordering::Relaxed),
        "dead_lettered": dead_lettered,
        "dropped_qos0": stats.dropped_qos0.load(Ordering::Relaxed),
    })
}

fn round1(value: f32) -> f64 {
    (f64::from(value) * 10.0).round() / 10.0
}

/// The host's CPU and memory figures, shared by whoever samples them.
#[derive(Clone)]
pub struct HostProbe(Arc<Mutex<Host>>);

impl std::fmt::Debug for HostProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostProbe")
    }
}

impl HostProbe {
    /// Starts sampling (the first CPU figure covers the time since this call).
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Host::new())))
    }

    /// CPU % since the previous sample, memory in use %.
    fn sample(&self) -> (f32, f32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).sample()
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// The host's CPU and memory figures (sysinfo), refreshed per sample.
struct Host {
    system: Option<sysinfo::System>,
}

impl Host {
    fn new() -> Self {
        let system = match sysinfo::System::new() {
            Ok(mut system) => {
                system.refresh_cpu_usage();
                system.refresh_memory();
                Some(system)
            }
            Err(error) => {
                warn!(%error, "Cannot read host figures; heartbeats report cpu_pct and mem_pct as 0.");
                None
            }
        };
        Self { system }
    }

    /// CPU % since the previous sample, memory in use %.
    fn sample(&mut self) -> (f32, f32) {
        let Some(system) = self.system.as_mut() else {
            return (0.0, 0.0);
        };
        system.refresh_cpu_usage();
        system.refresh_memory();
        let total = system.total_memory();
        let used = total.saturating_sub(system.available_memory());
        let mem = if total == 0 {
            0.0
        } else {
            (used as f64 / total as f64 * 100.0) as f32
        };
        (system.global_cpu_usage(), mem)
    }
}

/// Most children watched: at the cap, the one silent longest is forgotten to make room (a
/// fleet far larger than this is served by more hubs).
const MAX_CHILDREN: usize = 100_000;
/// A child silent for this many `offline_after`s, and at least [`FORGET_AFTER_MIN`], is
/// gone: it is forgotten (counted in `forgotten`, no longer among the offline).
const FORGET_AFTER_OFFLINES: u32 = 120;
/// See [`FORGET_AFTER_OFFLINES`].
const FORGET_AFTER_MIN: Duration = Duration::from_secs(3600);

/// The last heartbeat of every child, by node id (a child that rotated its key is the same
/// child), to tell online from silent ones; bounded, and forgetting children long gone.
#[derive(Debug, Clone)]
pub struct Children {
    offline_after: Duration,
    forget_after: Duration,
    capacity: usize,
    watch: Arc<Mutex<Watch>>,
}

#[derive(Debug, Default)]
struct Watch {
    seen: HashMap<String, ChildState>,
    /// Children forgotten since the start (gone, or pushed out at the cap).
    forgotten: u64,
}

#[derive(Debug)]
struct ChildState {
    last: Instant,
    reported_offline: bool,
}

/// What the watch says about the children now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Heard within `offline_after`.
    pub online: usize,
    /// Silent longer than that, not yet forgotten.
    pub offline: usize,
    /// Forgotten since the start: silent far longer, or pushed out at the cap.
    pub forgotten: u64,
}

impl Children {
    /// A watch that calls a child offline after `offline_after` of silence, and forgets it
    /// after [`FORGET_AFTER_OFFLINES`] times that (at least [`FORGET_AFTER_MIN`]).
    pub fn new(offline_after: Duration) -> Self {
        let forget_after = offline_after
            .saturating_mul(FORGET_AFTER_OFFLINES)
            .max(FORGET_AFTER_MIN);
        Self::with_bounds(offline_after, forget_after, MAX_CHILDREN)
    }

    /// A watch with its bounds given: children forgotten after `forget_after` of silence,
    /// at most `capacity` watched.
    pub fn with_bounds(offline_after: Duration, forget_after: Duration, capacity: usize) -> Self {
        Self {
            offline_after,
            forget_after: forget_after.max(offline_after),
            capacity: capacity.max(1),
            watch: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a verified heartbeat of `node_id`.
    pub fn heard(&self, node_id: &str, now: Instant) {
        let mut watch = self.lock();
        if let Some(state) = watch.seen.get_mut(node_id) {
            if state.reported_offline {
                info!(node_id, "Child is back online.");
            }
            state.last = now;
            state.reported_offline = false;
            return;
        }
        if watch.seen.len() >= self.capacity {
            let silent = watch
                .seen
                .iter()
                .min_by_key(|(_, state)| state.last)
                .map(|(id, _)| id.clone());
            if let Some(silent) = silent {
                watch.seen.remove(&silent);
                watch.forgotten += 1;
                warn!(node_id = %silent, capacity = self.capacity, "Too many children to watch; forgetting the one silent longest.");
            }
        }
        info!(node_id, "Child seen for the first time.");
        watch.seen.insert(
            node_id.to_owned(),
            ChildState {
                last: now,
                reported_offline: false,
            },
        );
    }

    /// Marks silent children offline (logging each once) and forgets those silent for
    /// `forget_after`; returns the census.
    pub fn census_at(&self, now: Instant) -> Census {
        let mut watch = self.lock();
        let mut online = 0;
        let mut offline = 0;
        let mut gone = 0;
        watch.seen.retain(|node_id, state| {
            let silent = now.saturating_duration_since(state.last);
            if silent > self.forget_after {
                gone += 1;
                info!(node_id = %node_id, silent_secs = silent.as_secs(), "Child silent far longer than offline_after; forgotten.");
                return false;
            }
            if silent > self.offline_after {
                offline += 1;
                if !state.reported_offline {
                    state.reported_offline = true;
                    warn!(node_id = %node_id, silent_secs = silent.as_secs(), "Child went silent; reporting it offline.");
                }
            } else {
                online += 1;
            }
            true
        });
        watch.forgotten += gone;
        Census {
            online,
            offline,
            forgotten: watch.forgotten,
        }
    }

    /// Whether `node_id` is a child heard before (and not forgotten), and if so whether it
    /// is online now.
    pub fn online(&self, node_id: &str) -> Option<bool> {
        self.lock()
            .seen
            .get(node_id)
            .map(|state| state.last.elapsed() <= self.offline_after)
    }

    /// How many children are watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().seen.len()
    }

    fn census(&self) -> Census {
        self.census_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `iot` part of a member's heartbeat follows the bridge's counters.
    #[tokio::test]
    async fn the_iot_part_of_a_heartbeat_reports_the_bridge_counters() {
        let stats = Arc::new(IotStats::default());
        let heartbeat = Heartbeat {
            iot: Some(Arc::clone(&stats)),
            ..member_heartbeat(Faults::default())
        };
        let before = heartbeat.snapshot()["iot"].clone();
        assert_eq!(before["received"], 0);
        assert_eq!(before["forwarded"], 0);
        assert_eq!(before["connected"], false);
        assert_eq!(before["dead_lettered"], json!({}));
        stats.received.fetch_add(5, Ordering::Relaxed);
        stats.events.fetch_add(6, Ordering::Relaxed);
        stats.dropped_qos0.fetch_add(1, Ordering::Relaxed);
        stats.rejected[Reason::NotANumber.index()].fetch_add(2, Ordering::Relaxed);
        stats.connected.store(true, Ordering::Relaxed);
        let after = heartbeat.snapshot()["iot"].clone();
        assert_eq!(after["received"], 5);
        assert_eq!(after["forwarded"], 6);
        assert_eq!(after["dropped_qos0"], 1);
        assert_eq!(after["connected"], true);
        assert_eq!(after["dead_lettered"], json!({"not_a_number": 2}));
        assert!(after["since"].is_string());
    }

    /// A member's heartbeat without links, IoT bridge or host figures.
    fn member_heartbeat(faults: Faults) -> Heartbeat {
        Heartbeat {
            node_id: "edge-01".into(),
            mode: Mode::Member,
            key: SecretKey::from_seed(&[1; 32]).expect("key"),
            interval: Duration::from_secs(10),
            uplink: None,
            local: None,
            outbox: Outbox::in_memory(1 << 20),
            children: None,
            started: Instant::now(),
            host: HostProbe(Arc::new(Mutex::new(Host { system: None }))),
            iot: None,
            faults,
        }
    }

    /// Without faults (and without links to be down) a node is healthy, with no causes.
    #[test]
    fn a_node_without_faults_is_healthy_with_no_causes() {
        let snapshot = member_heartbeat(Faults::default()).snapshot();
        assert_eq!(snapshot["status"], "healthy");
        assert_eq!(snapshot["causes"], json!([]));
    }

    /// A subsystem that stops with an error under the supervisor makes the heartbeat say
    /// `degraded` and name the subsystem and its cause; the heartbeat queued now (the
    /// last one, when the fault stops the agent) carries it to the parent.
    #[tokio::test]
    async fn a_subsystem_failure_is_reported_in_the_heartbeat_with_its_cause() {
        let supervisor = crate::supervisor::Supervisor::new();
        let heartbeat = member_heartbeat(supervisor.faults().clone());
        supervisor.spawn("iot", |_token| async {
            Err(SubsystemError::StoreClosed("outbox"))
        });
        supervisor.close();
        tokio::time::timeout(Duration::from_secs(5), supervisor.wait())
            .await
            .expect("the subsystem ended");
        assert!(
            supervisor.shutdown().is_cancelled(),
            "this cause stops the agent"
        );

        let snapshot = heartbeat.snapshot();
        assert_eq!(snapshot["status"], "degraded");
        let causes = snapshot["causes"].as_array().expect("causes is a list");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0]["subsystem"], "iot");
        assert_eq!(causes[0]["kind"], "store_closed");
        assert_eq!(causes[0]["cause"], "the outbox is closed");
        assert!(causes[0]["since"].is_string());

        let mut warned = false;
        heartbeat.beat(&mut warned).await;
        assert!(!warned);
        let queued = heartbeat.outbox.next_batch(10).await;
        assert_eq!(queued.len(), 1);
        let body: Value = serde_json::from_slice(&queued[0].1.body).expect("JSON envelope");
        assert_eq!(body["event_name"], EVENT_NAME);
        assert_eq!(body["payload"]["status"], "degraded");
        assert_eq!(body["payload"]["causes"][0]["subsystem"], "iot");
    }

    #[test]
    fn a_silent_child_is_offline_until_heard_again() {
        let children = Children::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let counts = |c: Census| (c.online, c.offline);
        children.heard("edge-01", t0);
        children.heard("edge-02", t0);
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(10))),
            (2, 0)
        );
        children.heard("edge-02", t0 + Duration::from_secs(20));
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(31))),
            (1, 1)
        );
        children.heard("edge-01", t0 + Duration::from_secs(40));
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(41))),
            (2, 0)
        );
    }

    /// A child silent far longer than `offline_after` is gone: forgotten, counted as such,
    /// and watched afresh if it ever comes back.
    #[test]
    fn a_child_silent_far_longer_than_offline_after_is_forgotten() {
        let offline_after = Duration::from_secs(30);
        let children = Children::new(offline_after);
        let forget_after = FORGET_AFTER_MIN.max(offline_after * FORGET_AFTER_OFFLINES);
        let t0 = Instant::now();
        children.heard("edge-01", t0);
        children.heard("edge-02", t0);
        let mut now = t0;
        // edge-02 keeps heartbeating; edge-01 stopped.
        while now < t0 + forget_after {
            now += Duration::from_secs(10);
            children.heard("edge-02", now);
            let census = children.census_at(now);
            let silent_one = usize::from(now <= t0 + offline_after);
            assert_eq!(census.online, 1 + silent_one);
            assert_eq!(census.offline + census.online, 2, "offline until forgotten");
        }
        now += Duration::from_secs(10);
        children.heard("edge-02", now);
        let census = children.census_at(now);
        assert_eq!((census.online, census.offline, census.forgotten), (1, 0, 1));
        assert_eq!(children.online("edge-01"), None);
        assert_eq!(children.len(), 1);
        children.heard("edge-01", now);
        let census = children.census_at(now);
        assert_eq!((census.online, census.offline, census.forgotten), (2, 0, 1));
    }

    /// At the cap, a new child takes the place of the one silent longest.
    #[test]
    fn at_the_cap_the_child_silent_longest_makes_room() {
        let children = Children::with_bounds(Duration::from_secs(30), Duration::from_secs(3600), 2);
        let t0 = Instant::now();
        children.heard("edge-01", t0);
        children.heard("edge-02", t0 + Duration::from_secs(1));
        children.heard("edge-01", t0 + Duration::from_secs(2));
        children.heard("edge-03", t0 + Duration::from_secs(3));
        assert_eq!(children.len(), 2);
        assert_eq!(children.online("edge-02"), None, "silent longest");
        assert!(children.online("edge-01").is_some());
        assert!(children.online("edge-03").is_some());
        assert_eq!(children.census_at(t0 + Duration::from_secs(4)).forgotten, 1);
    }

    /// The watch is keyed by node id: a child that rotated its key is the same child.
    #[test]
    fn a_child_back_with_a_rotated_key_is_the_same_child() {
        let children = Children::new(Duration::from_secs(30));
        let t0 = Instant::now();
        children.heard("edge-01", t0);
        let census = children.census_at(t0 + Duration::from_secs(60));
        assert_eq!((census.online, census.offline), (0, 1));
        // Heartbeats under the new key name the same node (the observer is given `source`).
        children.heard("edge-01", t0 + Duration::from_secs(61));
        let census = children.census_at(t0 + Duration::from_secs(62));
        assert_eq!((census.online, census.offline), (1, 0));
        assert_eq!(children.len(), 1);
    }
}
