//! End to end: three nats-servers (root, hub, member-local) and three agents as real
//! processes; heartbeats travel member → hub → root and land on the root's NATS.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use nexus_e2e::{collect_until, fleet, wait_until, AgentProcess, Fleet};
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::{NatsProvenance as _, SignedEvent};

const INTERVAL: Duration = Duration::from_secs(1);
/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(30);

trait Spawn {
    fn spawn_root(&self) -> AgentProcess;
    fn spawn_hub(&self) -> AgentProcess;
    fn spawn_member(&self) -> AgentProcess;
}

impl Spawn for Fleet {
    fn spawn_root(&self) -> AgentProcess {
        self.spawn(fleet::ROOT, "")
    }
    fn spawn_hub(&self) -> AgentProcess {
        self.spawn(fleet::HUB, "")
    }
    fn spawn_member(&self) -> AgentProcess {
        self.spawn(fleet::MEMBER, "")
    }
}

async fn root_subscriber(fleet: &Fleet) -> async_nats::Subscriber {
    let client = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("connect to root nats");
    let subscriber = client
        .subscribe("nexus._core.edge.health.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    subscriber
}

fn sources(messages: &[async_nats::Message]) -> HashSet<String> {
    messages
        .iter()
        .filter_map(|m| m.subject.as_str().rsplit('.').next().map(str::to_owned))
        .collect()
}

/// The member's, the hub's and the root's heartbeats all reach a subscriber on the root's
/// NATS, signed by their origin, with exactly the envelope fields of the design and the
/// payload an operator needs; then the member's keep coming, each within three intervals.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_of_every_tier_reach_the_root_signed_and_complete() {
    let fleet = Fleet::new();
    let mut heartbeats = root_subscriber(&fleet).await;
    let _root = fleet.spawn_root();
    let _hub = fleet.spawn_hub();
    let member = fleet.spawn_member();

    let seen = collect_until(
        "heartbeats of member, hub and root",
        &mut heartbeats,
        STARTUP,
        |seen| {
            let s = sources(seen);
            s.contains("edge-msk-01") && s.contains("hub-msk") && s.contains("root")
        },
    )
    .await;

    for (node, key) in [
        ("edge-msk-01", &fleet.member_key.public),
        ("hub-msk", &fleet.hub_key.public),
        ("root", &fleet.root_key.public),
    ] {
        let message = seen
            .iter()
            .find(|m| m.subject.as_str() == format!("nexus._core.edge.health.{node}"))
            .expect("seen above");
        let (event, envelope) = SignedEvent::open(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            MAX_ENVELOPE_BYTES,
        )
        .unwrap_or_else(|e| panic!("{node}'s heartbeat does not verify: {e}"));
        assert_eq!(
            event.signer.to_string(),
            *key,
            "{node}'s heartbeat is signed by {node}'s key"
        );
        assert_eq!(envelope.source, node);
        assert_eq!(envelope.event_name, "edge.health");
        assert_eq!(envelope.version, 1);
        assert_eq!(envelope.tenant, None, "system events carry no tenant");
        let id = uuid_version(&envelope.event_id);
        assert_eq!(id, 7, "event_id is a UUIDv7");

        let json: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON body");
        let mut fields: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "epoch",
                "event_id",
                "event_name",
                "headers",
                "payload",
                "seq",
                "source",
                "ts",
                "version"
            ]
        );
        // Numbered in the node's order by its outbox (docs/delivery.md, "Order per source").
        let epoch = envelope.epoch.as_deref().expect("an epoch");
        assert_eq!(uuid_version(epoch), 7, "the epoch is a UUIDv7");
        assert!(envelope.seq.is_some_and(|seq| seq >= 1), "a seq from 1");
        let ts = json["ts"].as_str().expect("ts");
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-23T14:00:01.234Z".len(),
            "ts {ts} is RFC 3339 UTC with ms"
        );

        let payload = &json["payload"];
        assert_eq!(payload["node_id"], node);
        let mode = match node {
            "edge-msk-01" => "member",
            "hub-msk" => "hub",
            _ => "root",
        };
        assert_eq!(payload["mode"], mode);
        assert!(["healthy", "degraded"].contains(&payload["status"].as_str().expect("status")));
        assert!(payload["uptime_secs"].is_u64());
        for pct in ["cpu_pct", "mem_pct"] {
            let value = payload[pct]
                .as_f64()
                .unwrap_or_else(|| panic!("{pct} is a number"));
            assert!((0.0..=100.0 * 64.0).contains(&value), "{pct} = {value}");
        }
        assert_eq!(payload["agent_version"], env!("CARGO_PKG_VERSION"));
        assert!(payload["outbox"]["depth"].is_u64());
        if mode != "root" {
            assert!(
                payload["uplink"]["connected"].is_boolean(),
                "{node} reports its uplink state"
            );
            assert!(payload["uplink"]["since"].is_string());
        } else {
            assert!(payload.get("uplink").is_none(), "the root has no uplink");
        }
        if mode != "member" {
            assert!(
                payload["children"]["online"].is_u64(),
                "{node} reports its children"
            );
        }
    }

    // The member keeps reporting: each of its next heartbeats within three intervals.
    for n in 0..3 {
        let next = tokio::time::timeout(3 * INTERVAL, async {
            while let Some(message) = heartbeats.next().await {
                if message.subject.as_str() == "nexus._core.edge.health.edge-msk-01" {
                    return message;
                }
            }
            panic!("subscription ended");
        })
        .await;
        assert!(
            next.is_ok(),
            "member heartbeat #{n} did not arrive within 3 intervals; member log:\n{}",
            member.log()
        );
    }
}

/// A member started while its hub's NATS is down starts anyway, says once that it cannot
/// connect, and its heartbeats reach the root as soon as the hub's server is back; the hub
/// then reports the member online.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_started_without_its_uplink_delivers_once_the_hub_is_up() {
    let fleet = Fleet::new();
    let mut heartbeats = root_subscriber(&fleet).await;
    fleet.hub_nats.stop();
    let member = fleet.spawn_member();
    wait_until(
        "the member reports that it cannot reach its uplink",
        STARTUP,
        async || member.log().contains("Link cannot connect"),
    )
    .await;
    assert!(
        member.is_running(),
        "the member keeps running without its uplink"
    );

    fleet.hub_nats.restart();
    let _root = fleet.spawn_root();
    let _hub = fleet.spawn_hub();
    let seen = collect_until(
        "the member's heartbeat at the root",
        &mut heartbeats,
        STARTUP,
        |seen| sources(seen).contains("edge-msk-01"),
    )
    .await;
    assert!(!seen.is_empty());
    let attempts = member.log().matches("Link cannot connect").count();
    assert_eq!(
        attempts, 1,
        "a failing reconnect is logged once per cause, not per attempt"
    );

    let online = collect_until(
        "the hub reporting one child online",
        &mut heartbeats,
        STARTUP,
        |seen| {
            seen.iter().any(|m| {
                m.subject.as_str().ends_with(".hub-msk")
                    && nexus_e2e::payload_json(m)["payload"]["children"]["online"] == 1
            })
        },
    )
    .await;
    assert!(!online.is_empty());
}

/// When the hub's NATS dies, the member notices within a few ping intervals, keeps running,
/// and its heartbeats flow again once the server is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_parent_is_noticed_and_traffic_resumes_when_it_returns() {
    let fleet = Fleet::new();
    let mut heartbeats = root_subscriber(&fleet).await;
    let _root = fleet.spawn_root();
    let hub = fleet.spawn_hub();
    let member = fleet.spawn_member();
    collect_until(
        "the member's first heartbeat",
        &mut heartbeats,
        STARTUP,
        |seen| sources(seen).contains("edge-msk-01"),
    )
    .await;

    fleet.hub_nats.kill();
    wait_until(
        "the member notices the dead uplink",
        Duration::from_secs(15),
        async || member.log().contains("Link disconnected"),
    )
    .await;
    assert!(
        member.is_running() && hub.is_running(),
        "nobody exits when a server dies"
    );

    fleet.hub_nats.restart();
    // Heartbeats queued during the outage arrive too (they report the link down); require
    // one made after the server returned, reporting the link up again.
    let restarted = time::OffsetDateTime::now_utc() - Duration::from_millis(10);
    collect_until(
        "a member heartbeat made after the hub's server returned",
        &mut heartbeats,
        STARTUP,
        |seen| {
            seen.iter().any(|m| {
                let json = nexus_e2e::payload_json(m);
                m.subject.as_str().ends_with(".edge-msk-01")
                    && json["payload"]["uplink"]["connected"] == true
                    && json["ts"]
                        .as_str()
                        .and_then(|ts| {
                            time::OffsetDateTime::parse(
                                ts,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .ok()
                        })
                        .is_some_and(|ts| ts >= restarted)
            })
        },
    )
    .await;
}

/// A subsystem that stops on its own is named in the heartbeat. Provoked for real: the
/// member's `[iot.tls]` CA file is PEM (so `check` accepts it) but no certificate rustls
/// can use, so the IoT bridge cannot be set up. That cause leaves the member running
/// (a restart would fail the same way): its heartbeats keep arriving at the root, each
/// `degraded` with the IoT bridge and its cause in `causes`; the log says it at ERROR.
#[tokio::test(flavor = "multi_thread")]
async fn a_subsystem_that_cannot_be_set_up_is_named_in_the_heartbeat() {
    let fleet = Fleet::new();
    let ca_file = fleet.path().join("not-a-ca.pem");
    std::fs::write(
        &ca_file,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write the CA file");
    let iot = format!(
        "[iot]\nurl = \"mqtts://127.0.0.1:1\"\n\n[iot.tls]\nca_file = \"{}\"\n\n\
         [[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
        ca_file.display()
    );
    let mut heartbeats = root_subscriber(&fleet).await;
    let _root = fleet.spawn_root();
    let _hub = fleet.spawn_hub();
    let member = fleet.spawn(fleet::MEMBER, &iot);

    let member_heartbeats = |seen: &[async_nats::Message]| -> Vec<serde_json::Value> {
        seen.iter()
            .filter(|m| m.subject.as_str() == "nexus._core.edge.health.edge-msk-01")
            .map(|m| nexus_e2e::payload_json(m)["payload"].clone())
            .collect()
    };
    let seen = collect_until(
        "two member heartbeats at the root",
        &mut heartbeats,
        STARTUP,
        |seen| member_heartbeats(seen).len() >= 2,
    )
    .await;
    for payload in member_heartbeats(&seen) {
        assert_eq!(payload["status"], "degraded", "{payload}");
        let causes = payload["causes"].as_array().expect("causes is a list");
        assert_eq!(causes.len(), 1, "{payload}");
        assert_eq!(causes[0]["subsystem"], "iot");
        assert_eq!(causes[0]["kind"], "set_up");
        let cause = causes[0]["cause"].as_str().expect("cause");
        assert!(
            cause.starts_with("set-up failed: cannot configure the MQTT connection")
                && cause.contains("iot.tls.ca_file"),
            "the cause names what failed: {cause}"
        );
        assert!(causes[0]["since"].is_string());
    }
    assert!(
        member.is_running(),
        "the member keeps running without its IoT bridge"
    );
    let log = member.log();
    assert!(
        log.contains("ERROR")
            && log.contains("Subsystem stopped; the agent keeps running without it"),
        "the supervisor logs the cause at ERROR; member log:\n{log}"
    );
}

/// SIGTERM stops every mode cleanly (exit 0) within 2 s.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_mode_cleanly_within_two_seconds() {
    let fleet = Fleet::new();
    let mut heartbeats = root_subscriber(&fleet).await;
    let root = fleet.spawn_root();
    let hub = fleet.spawn_hub();
    let member = fleet.spawn_member();
    collect_until(
        "heartbeats of every tier",
        &mut heartbeats,
        STARTUP,
        |seen| sources(seen).len() == 3,
    )
    .await;
    for agent in [&member, &hub, &root] {
        let status = agent.terminate(Duration::from_secs(2));
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} still running 2 s after SIGTERM; log:\n{}",
                agent.name(),
                agent.log()
            )
        });
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            agent.name(),
            agent.log()
        );
        assert!(
            agent.log().contains("Stopped."),
            "{} logs its clean stop",
            agent.name()
        );
    }
}

fn uuid_version(id: &str) -> u32 {
    // Version nibble: the first hex digit of the third group.
    id.split('-')
        .nth(2)
        .and_then(|g| g.chars().next())
        .and_then(|c| c.to_digit(16))
        .unwrap_or(0)
}
