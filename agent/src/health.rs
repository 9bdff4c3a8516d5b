//! What makes a node `degraded`: every condition is a cause named in its heartbeat, with
//! the subsystem it concerns, a stable kind, a sentence for the operator and since when.
//!
//! The rule is [`causes`], a pure function of what the heartbeat read ([`Readings`]) and
//! the thresholds of `[health]`; docs/operations.md says what each kind means and what to
//! do about it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_config::HealthConfig;
use nexus_federation::clock::TrustClock;
use nexus_federation::trust::OwnChain;
use nexus_federation::LinkState;
use nexus_policies::UnixTime;
use time::OffsetDateTime;

use crate::supervisor::Fault;

/// An MQTT broker is reported unreachable once the bridge has been disconnected this
/// long: a reconnect blip does not make the node flap to `degraded`.
pub const MQTT_GRACE: Duration = Duration::from_secs(5);

/// What the heartbeat checks besides links and subsystems: the thresholds and where to
/// read the node's own state.
#[derive(Debug, Clone)]
pub struct Vitals {
    /// `[health]`.
    pub limits: HealthConfig,
    /// `outbox.max_bytes`.
    pub outbox_max_bytes: u64,
    /// `node.data_dir`, whose file system is watched.
    pub data_dir: PathBuf,
    /// The node's token chain (its expiry).
    pub own: OwnChain,
    /// The clock of token checks.
    pub clock: Arc<TrustClock>,
}

/// Thresholds that nothing crosses: only links, the MQTT broker and stopped subsystems
/// count (a heartbeat without [`Vitals`], in tests).
pub const NO_LIMITS: HealthConfig = HealthConfig {
    outbox_full_pct: 100,
    outbox_max_age: Duration::MAX,
    disk_full_pct: 100,
    mem_full_pct: 100,
    token_expiry: Duration::ZERO,
};

/// One reason a node is degraded.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// What it concerns: `uplink`, `local`, `outbox`, `disk`, `memory`, `token`, `clock`,
    /// `iot`, or the name of a subsystem that stopped.
    pub subsystem: &'static str,
    /// A stable name for alerting: `link_down`, `outbox_full`, `outbox_stale`, `disk_full`,
    /// `memory_full`, `token_expiring`, `clock_unsynced`, `mqtt_unreachable`, or the kind of
    /// a subsystem's stop (`set_up`, `store_closed`, `panicked`, …).
    pub kind: &'static str,
    /// The sentence an operator reads.
    pub cause: String,
    /// Since when, where known.
    pub since: Option<OffsetDateTime>,
}

/// What the heartbeat read about the node, for [`causes`].
#[derive(Debug, Clone)]
pub struct Readings {
    /// The configured NATS links by name (`uplink`, `local`) and their state.
    pub links: Vec<(&'static str, LinkState)>,
    /// The outbox's body bytes and the age of its oldest event.
    pub outbox_bytes: u64,
    /// `outbox.max_bytes`.
    pub outbox_max_bytes: u64,
    /// Age of the oldest queued event.
    pub outbox_oldest: Duration,
    /// Host memory in use, %.
    pub mem_pct: f32,
    /// The data directory's file system in use, %, if it could be read.
    pub disk_pct: Option<f32>,
    /// The earliest expiry of the node's token chain (none for a trust anchor).
    pub token_expires: Option<UnixTime>,
    /// Now, by the wall clock.
    pub now: UnixTime,
    /// Whether the trust clock can be used for token checks.
    pub clock_synced: bool,
    /// The IoT bridge's MQTT connection (member with `[iot]`): connected, since when.
    pub mqtt: Option<(bool, OffsetDateTime)>,
    /// Now, for durations since the `since` of the states above.
    pub wall: Option<OffsetDateTime>,
    /// The subsystems that stopped on their own.
    pub faults: Vec<Fault>,
}

/// Every cause of `degraded` in `readings` under `limits`, in a stable order (links,
/// outbox, disk, memory, token, clock, MQTT, stopped subsystems); none means healthy.
pub fn causes(limits: &HealthConfig, readings: &Readings) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (name, state) in &readings.links {
        if !state.connected {
            let error = state
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"));
            causes.push(Cause {
                subsystem: name,
                kind: "link_down",
                cause: format!("the {name} NATS connection is down{error}"),
                since: Some(state.since),
            });
        }
    }
    if readings.outbox_max_bytes > 0 {
        let pct = readings.outbox_bytes as f64 / readings.outbox_max_bytes as f64 * 100.0;
        if pct > f64::from(limits.outbox_full_pct) {
            causes.push(Cause {
                subsystem: "outbox",
                kind: "outbox_full",
                cause: format!(
                    "the outbox holds {} of its {} bytes ({pct:.0} % > health.outbox_full_pct \
                     {} %)",
                    readings.outbox_bytes, readings.outbox_max_bytes, limits.outbox_full_pct
                ),
                since: None,
            });
        }
    }
    if readings.outbox_oldest > limits.outbox_max_age {
        causes.push(Cause {
            subsystem: "outbox",
            kind: "outbox_stale",
            cause: format!(
                "the oldest queued event has waited {} (> health.outbox_max_age {})",
                humantime::format_duration(whole_secs(readings.outbox_oldest)),
                humantime::format_duration(limits.outbox_max_age)
            ),
            since: None,
        });
    }
    if let Some(disk) = readings.disk_pct {
        if disk > f32::from(limits.disk_full_pct) {
            causes.push(Cause {
                subsystem: "disk",
                kind: "disk_full",
                cause: format!(
                    "the data directory's file system is {disk:.0} % full (> \
                     health.disk_full_pct {} %)",
                    limits.disk_full_pct
                ),
                since: None,
            });
        }
    }
    if readings.mem_pct > f32::from(limits.mem_full_pct) {
        causes.push(Cause {
            subsystem: "memory",
            kind: "memory_full",
            cause: format!(
                "the host's memory is {:.0} % in use (> health.mem_full_pct {} %)",
                readings.mem_pct, limits.mem_full_pct
            ),
            since: None,
        });
    }
    if let Some(expires) = readings.token_expires {
        let left = expires.0.saturating_sub(readings.now.0);
        let within = i64::try_from(limits.token_expiry.as_secs()).unwrap_or(i64::MAX);
        if left <= within {
            let cause = if left <= 0 {
                "the node's token has expired: issue a new one (`nexus-agent token issue`) \
                 and rotate it in"
                    .to_owned()
            } else {
                format!(
                    "the node's token expires in {} (within health.token_expiry {}): issue \
                     a new one and rotate it in",
                    humantime::format_duration(Duration::from_secs(left.unsigned_abs())),
                    humantime::format_duration(limits.token_expiry)
                )
            };
            causes.push(Cause {
                subsystem: "token",
                kind: "token_expiring",
                cause,
                since: None,
            });
        }
    }
    if !readings.clock_synced {
        causes.push(Cause {
            subsystem: "clock",
            kind: "clock_unsynced",
            cause: "the wall clock is behind the last known good time or not set: tokens are \
                    checked against the last known good time; check NTP"
                .to_owned(),
            since: None,
        });
    }
    if let Some((false, since)) = readings.mqtt {
        let down_for = readings
            .wall
            .map_or(Duration::MAX, |now| (now - since).unsigned_abs());
        if down_for >= MQTT_GRACE {
            causes.push(Cause {
                subsystem: "iot",
                kind: "mqtt_unreachable",
                cause: "the MQTT broker of [iot] is unreachable".to_owned(),
                since: Some(since),
            });
        }
    }
    for fault in &readings.faults {
        causes.push(Cause {
            subsystem: fault.subsystem,
            kind: fault.cause.kind(),
            cause: fault.cause.to_string(),
            since: Some(fault.at),
        });
    }
    causes
}

fn whole_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// The share of the file system holding `dir` in use, % (as `df` counts it: blocks
/// reserved for root are neither used nor available); `None` if it cannot be read. One
/// `statvfs` of the data directory, a local file system.
// The block counts are 32-bit on armv7 (`fsblkcnt_t`), 64-bit here: the conversions are
// needed there.
#[allow(clippy::useless_conversion)]
pub fn disk_pct(dir: &Path) -> Option<f32> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let used = u64::from(stat.blocks()).saturating_sub(u64::from(stat.blocks_free()));
    let usable = used + u64::from(stat.blocks_available());
    (usable > 0).then(|| (used as f64 / usable as f64 * 100.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_federation::subsystem::SubsystemError;

    fn limits() -> HealthConfig {
        HealthConfig {
            outbox_full_pct: 80,
            outbox_max_age: Duration::from_secs(600),
            disk_full_pct: 90,
            mem_full_pct: 90,
            token_expiry: Duration::from_secs(86_400),
        }
    }

    fn healthy() -> Readings {
        let now = OffsetDateTime::now_utc();
        Readings {
            links: vec![(
                "uplink",
                LinkState {
                    connected: true,
                    since: now,
                    last_error: None,
                },
            )],
            outbox_bytes: 10,
            outbox_max_bytes: 1000,
            outbox_oldest: Duration::from_secs(1),
            mem_pct: 40.0,
            disk_pct: Some(50.0),
            token_expires: Some(UnixTime(now.unix_timestamp() + 30 * 86_400)),
            now: UnixTime(now.unix_timestamp()),
            clock_synced: true,
            mqtt: Some((true, now)),
            wall: Some(now),
            faults: Vec::new(),
        }
    }

    fn kinds(readings: &Readings) -> Vec<&'static str> {
        causes(&limits(), readings).iter().map(|c| c.kind).collect()
    }

    #[test]
    fn a_node_within_every_limit_has_no_cause() {
        assert_eq!(kinds(&healthy()), Vec::<&str>::new());
    }

    /// Each threshold, crossed alone, names its own cause; at the limit it does not.
    #[test]
    fn each_limit_crossed_names_its_cause() {
        let now = healthy().wall.expect("wall");
        type Change = Box<dyn Fn(&mut Readings)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "link_down",
                Box::new(|r| {
                    r.links[0].1.connected = false;
                    r.links[0].1.last_error = Some("connection refused".into());
                }),
            ),
            ("outbox_full", Box::new(|r| r.outbox_bytes = 801)),
            (
                "outbox_stale",
                Box::new(|r| r.outbox_oldest = Duration::from_secs(601)),
            ),
            ("disk_full", Box::new(|r| r.disk_pct = Some(90.5))),
            ("memory_full", Box::new(|r| r.mem_pct = 95.0)),
            (
                "token_expiring",
                Box::new(|r| r.token_expires = Some(UnixTime(r.now.0 + 3_600))),
            ),
            ("clock_unsynced", Box::new(|r| r.clock_synced = false)),
            (
                "mqtt_unreachable",
                Box::new(move |r| r.mqtt = Some((false, now - Duration::from_secs(6)))),
            ),
            (
                "store_closed",
                Box::new(move |r| {
                    r.faults.push(Fault {
                        subsystem: "iot",
                        cause: SubsystemError::StoreClosed("outbox"),
                        at: now,
                    })
                }),
            ),
        ];
        for (kind, apply) in cases {
            let mut readings = healthy();
            apply(&mut readings);
            assert_eq!(kinds(&readings), vec![kind], "{kind}");
        }

        let mut at_the_limits = healthy();
        at_the_limits.outbox_bytes = 800;
        at_the_limits.outbox_oldest = Duration::from_secs(600);
        at_the_limits.disk_pct = Some(90.0);
        at_the_limits.mem_pct = 90.0;
        at_the_limits.token_expires = Some(UnixTime(at_the_limits.now.0 + 86_401));
        at_the_limits.mqtt = Some((false, now - Duration::from_secs(1)));
        assert_eq!(kinds(&at_the_limits), Vec::<&str>::new());
    }

    #[test]
    fn causes_say_what_crossed_which_key() {
        let mut readings = healthy();
        readings.outbox_bytes = 900;
        readings.token_expires = Some(readings.now);
        readings.links[0].1.connected = false;
        readings.links[0].1.last_error = Some("connection refused".into());
        let causes = causes(&limits(), &readings);
        let text: Vec<&str> = causes.iter().map(|c| c.cause.as_str()).collect();
        assert_eq!(
            text,
            vec![
                "the uplink NATS connection is down (connection refused)",
                "the outbox holds 900 of its 1000 bytes (90 % > health.outbox_full_pct 80 %)",
                "the node's token has expired: issue a new one (`nexus-agent token issue`) and \
                 rotate it in",
            ]
        );
        assert_eq!(causes[0].subsystem, "uplink");
        assert!(causes[0].since.is_some());
    }

    #[test]
    fn the_data_directory_has_a_disk_figure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pct = disk_pct(dir.path()).expect("a mounted file system holds the temp dir");
        assert!((0.0..=100.0).contains(&pct), "{pct}");
    }
}
