//! `edge.health` heartbeats: this node's own state, its children's census (hub, root).
//!
//! A heartbeat says `degraded` when anything in `crate::health` is wrong: a NATS link
//! down, the outbox full or stale, the disk or memory full, the token expiring, the clock
//! unsynced, the MQTT broker unreachable or a subsystem stopped on its own; `causes` names
//! each (see `crate::health::causes`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_config::Mode;
use nexus_federation::outbox::Priority;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Encoding, Envelope, Link, LinkState, Outbox, OutboxError};
use nexus_iot_bridge::{Reason, Stats as IotStats};
use nexus_policies::{SecretKey, UnixTime};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::children::Children;
use crate::health::{self, Cause, Readings, Vitals};
use crate::supervisor::Faults;

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
    /// The other causes of `degraded`: thresholds, token, clock, disk.
    pub vitals: Option<Vitals>,
    /// The event registry's hash (`nexus_events::Registry::hash`): nodes reporting the
    /// same hash validate events alike.
    pub events_registry: String,
    /// The running config's hash, version and sync state (`crate::remote_config`).
    pub config: Option<crate::remote_config::Report>,
    /// The update state: installing, on trial, refused, rolled back (`crate::update`).
    pub update: Option<crate::remote_config::Report>,
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

    /// What the heartbeat reads for [`health::causes`]; CPU %, memory %.
    /// With `cpu`, the CPU % since the previous heartbeat (and a new baseline); without,
    /// 0 and the baseline untouched (probes and scrapes must not shorten the heartbeat's
    /// CPU window).
    fn read(&self, cpu: bool) -> (Readings, f32) {
        let (cpu_pct, mem_pct) = if cpu {
            self.host.sample()
        } else {
            (0.0, self.host.memory())
        };
        let outbox = self.outbox.stats();
        let wall = OffsetDateTime::now_utc();
        let links = [("uplink", &self.uplink), ("local", &self.local)]
            .into_iter()
            .filter_map(|(name, link)| link.as_ref().map(|l| (name, l.state())))
            .collect();
        let mut readings = Readings {
            links,
            outbox_bytes: outbox.bytes,
            outbox_max_bytes: 0,
            outbox_oldest: Duration::from_secs(outbox.oldest_age_secs),
            mem_pct,
            disk_pct: None,
            token_expires: None,
            now: UnixTime(wall.unix_timestamp()),
            clock_synced: true,
            mqtt: self.iot.as_ref().map(|iot| iot.connection()),
            wall: Some(wall),
            faults: self.faults.list(),
        };
        if let Some(vitals) = &self.vitals {
            readings.outbox_max_bytes = vitals.outbox_max_bytes;
            readings.disk_pct = health::disk_pct(&vitals.data_dir);
            readings.token_expires = vitals.own.expires();
            readings.clock_synced = vitals.clock.is_synced();
        }
        (readings, cpu_pct)
    }

    /// The causes of `degraded` now (none: healthy).
    pub fn causes(&self) -> Vec<Cause> {
        self.judge(&self.read(false).0)
    }

    fn judge(&self, readings: &Readings) -> Vec<Cause> {
        match &self.vitals {
            Some(vitals) => health::causes(&vitals.limits, readings),
            None => health::causes(&health::NO_LIMITS, readings),
        }
    }

    /// A fresh heartbeat payload (also the answer to `agent.health`).
    pub fn snapshot(&self) -> Map<String, Value> {
        let uptime = self.started.elapsed();
        let (readings, cpu_pct) = self.read(true);
        let causes = self.judge(&readings);
        let outbox = self.outbox.stats();
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("mode".into(), json!(self.mode.as_str()));
        payload.insert(
            "status".into(),
            json!(if causes.is_empty() {
                "healthy"
            } else {
                "degraded"
            }),
        );
        payload.insert("uptime_secs".into(), json!(uptime.as_secs()));
        payload.insert("cpu_pct".into(), json!(round1(cpu_pct)));
        payload.insert("mem_pct".into(), json!(round1(readings.mem_pct)));
        if let Some(disk) = readings.disk_pct {
            payload.insert("disk_pct".into(), json!(round1(disk)));
        }
        payload.insert("agent_version".into(), json!(env!("NEXUS_AGENT_VERSION")));
        if !self.events_registry.is_empty() {
            payload.insert("events_registry".into(), json!(self.events_registry));
        }
        if let Some(config) = self.config.as_ref().and_then(|r| r.get()) {
            payload.insert("config".into(), config);
        }
        if let Some(update) = self.update.as_ref().and_then(|r| r.get()) {
            payload.insert("update".into(), update);
        }
        if let Some(parent) = self.vitals.as_ref().and_then(|v| v.own.parent_id()) {
            payload.insert("parent".into(), json!(parent));
        }
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
        if let Some(expires) = readings.token_expires {
            payload.insert(
                "token_expires".into(),
                json!(OffsetDateTime::from_unix_timestamp(expires.0)
                    .map(nexus_federation::envelope::format_ts)
                    .unwrap_or_default()),
            );
        }
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
                    "unknown": census.unknown,
                    "forgotten": census.forgotten,
                }),
            );
        }
        payload.insert(
            "causes".into(),
            Value::Array(causes.iter().map(cause_json).collect()),
        );
        payload
    }
}

/// One entry of `causes`: what it concerns, the kind of cause, the sentence, since when.
fn cause_json(cause: &Cause) -> Value {
    let mut entry = json!({
        "subsystem": cause.subsystem,
        "kind": cause.kind,
        "cause": cause.cause,
    });
    if let (Some(since), Some(map)) = (cause.since, entry.as_object_mut()) {
        map.insert(
            "since".into(),
            json!(nexus_federation::envelope::format_ts(since)),
        );
    }
    entry
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

    /// Memory in use %, without a CPU sample.
    fn memory(&self) -> f32 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).memory()
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
        let cpu = system.global_cpu_usage();
        (cpu, self.memory())
    }

    /// Memory in use %.
    fn memory(&mut self) -> f32 {
        let Some(system) = self.system.as_mut() else {
            return 0.0;
        };
        system.refresh_memory();
        let total = system.total_memory();
        let used = total.saturating_sub(system.available_memory());
        if total == 0 {
            0.0
        } else {
            (used as f64 / total as f64 * 100.0) as f32
        }
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
            vitals: None,
            events_registry: "sha256:0123456789abcdef".into(),
            config: None,
            update: None,
        }
    }

    /// What the heartbeat writes is what its registered schema (edge.health@1) says (a
    /// member's with the IoT bridge is checked on real traffic in tests/tests/examples.rs;
    /// a degraded one below).
    #[test]
    fn a_heartbeat_satisfies_its_registered_schema() {
        let registry = nexus_events::Registry::builtin().expect("the built-in registry");
        let payload = Value::Object(member_heartbeat(Faults::default()).snapshot());
        assert_eq!(
            registry.validate(EVENT_NAME, 1, &payload),
            nexus_events::Verdict::Valid,
            "{payload}"
        );
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
        let registry = nexus_events::Registry::builtin().expect("the built-in registry");
        let payload = Value::Object(snapshot.clone());
        assert_eq!(
            registry.validate(EVENT_NAME, 1, &payload),
            nexus_events::Verdict::Valid,
            "a degraded heartbeat satisfies edge.health@1: {payload}"
        );
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
}
