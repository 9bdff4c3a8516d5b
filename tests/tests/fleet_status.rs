//! End to end, one fleet (root, hub, member with an MQTT bridge, as real processes, on real
//! nats-servers and mosquitto): how the fleet's state is seen.
//!
//! - A degraded cause appears in the member's heartbeat and clears: the MQTT broker stops
//!   and comes back.
//! - A member SIGKILLed is reported offline by its hub once, within `offline_after` plus
//!   one interval, and online again when it restarts; the root leaves it to the hub.
//! - A hub SIGKILLed is reported offline by the root, its member `unknown`; both online
//!   again when the hub restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use nexus_e2e::{fleet, payload_json, wait_until, Fleet, Mosquitto};
use serde_json::Value;

/// The fleet's heartbeat interval, and `offline_after` (the default, three intervals).
const INTERVAL: Duration = Duration::from_secs(1);
const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(30);

/// Every message on `subject` at the root's NATS, as JSON envelopes, in arrival order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Value>>>);

impl Seen {
    async fn watch(fleet: &Fleet, subject: &str) -> Self {
        let client = fleet.root_nats.client().await;
        let mut subscriber = client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let seen = Self::default();
        let sink = seen.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscriber.next().await {
                sink.0.lock().expect("lock").push(payload_json(&message));
            }
        });
        seen
    }

    fn all(&self) -> Vec<Value> {
        self.0.lock().expect("lock").clone()
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// The payloads after the first `from`.
    fn since(&self, from: usize) -> Vec<Value> {
        self.all()
            .into_iter()
            .skip(from)
            .map(|envelope| envelope["payload"].clone())
            .collect()
    }
}

/// The status reports about `node` since `from`: (reporter, status).
fn reports(statuses: &Seen, from: usize, node: &str) -> Vec<(String, String)> {
    statuses
        .all()
        .into_iter()
        .skip(from)
        .filter(|e| e["payload"]["node_id"] == node)
        .map(|e| {
            (
                e["source"].as_str().unwrap_or_default().to_owned(),
                e["payload"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn pair(reporter: &str, status: &str) -> (String, String) {
    (reporter.to_owned(), status.to_owned())
}

fn cause_kinds(payload: &Value) -> Vec<String> {
    payload["causes"]
        .as_array()
        .map(|causes| {
            causes
                .iter()
                .filter_map(|c| c["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn degraded_causes_come_and_go_and_silent_nodes_are_reported_once() {
    let mut fleet = Fleet::new();
    fleet.interval = INTERVAL;
    let broker = Mosquitto::start();
    let statuses = Seen::watch(&fleet, "nexus._core.edge.node_status.>").await;
    let member_beats = Seen::watch(
        &fleet,
        &format!("nexus._core.edge.health.{}", fleet::MEMBER),
    )
    .await;
    let _root = fleet.spawn(fleet::ROOT, "");
    let hub = fleet.spawn(fleet::HUB, "");
    let iot = format!(
        "[iot]\nurl = \"{}\"\nreconnect_max_delay = \"500ms\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
        broker.url()
    );
    let member = fleet.spawn(fleet::MEMBER, &iot);

    // Healthy once everything is up.
    wait_until(
        "a healthy member heartbeat at the root",
        STARTUP,
        async || {
            member_beats.since(0).last().is_some_and(|p| {
                p["status"] == "healthy" && cause_kinds(p).is_empty() && p["disk_pct"].is_number()
            })
        },
    )
    .await;

    // The broker stops: the member says why it is degraded; the broker back: healthy.
    let from = member_beats.len();
    broker.stop();
    let degraded = wait_until(
        "a member heartbeat naming the unreachable broker",
        DEADLINE,
        async || {
            member_beats
                .since(from)
                .into_iter()
                .find(|p| cause_kinds(p) == ["mqtt_unreachable"])
        },
    )
    .await;
    assert_eq!(degraded["status"], "degraded");
    let cause = &degraded["causes"][0];
    assert_eq!(cause["subsystem"], "iot");
    assert!(cause["since"].is_string(), "{cause}");
    let from = member_beats.len();
    broker.restart();
    wait_until(
        "the cause clears once the broker is back",
        DEADLINE,
        async || {
            member_beats
                .since(from)
                .last()
                .is_some_and(|p| p["status"] == "healthy" && cause_kinds(p).is_empty())
        },
    )
    .await;
    assert!(
        statuses.all().is_empty(),
        "nobody went silent yet: {:?}",
        statuses.all()
    );

    // The member is SIGKILLed: its hub reports it offline once, within offline_after plus
    // one interval of its last heartbeat; the root, whose hub runs, leaves it to the hub.
    member.kill();
    let offline = wait_until("the hub reports the member offline", DEADLINE, async || {
        statuses
            .all()
            .into_iter()
            .find(|e| e["payload"]["node_id"] == fleet::MEMBER)
    })
    .await;
    assert_eq!(offline["source"], fleet::HUB);
    let payload = &offline["payload"];
    assert_eq!(payload["status"], "offline");
    assert_eq!(payload["reporter"], fleet::HUB);
    assert_eq!(payload["parent"], fleet::HUB);
    assert!(payload["last_seen"].is_string());
    let silent = payload["silent_secs"].as_u64().expect("silent_secs");
    let bound = (OFFLINE_AFTER + INTERVAL).as_secs();
    assert!(
        (OFFLINE_AFTER.as_secs()..=bound).contains(&silent),
        "reported after {silent} s of silence; expected offline_after {} s ..= {bound} s",
        OFFLINE_AFTER.as_secs()
    );
    member.restart();
    wait_until("the hub reports the member online", DEADLINE, async || {
        reports(&statuses, 0, fleet::MEMBER).len() >= 2
    })
    .await;
    // A few more censuses: nothing is reported twice.
    let settled = member_beats.len() + 3;
    wait_until("three more member heartbeats", DEADLINE, async || {
        member_beats.len() >= settled
    })
    .await;
    assert_eq!(
        reports(&statuses, 0, fleet::MEMBER),
        vec![pair(fleet::HUB, "offline"), pair(fleet::HUB, "online")]
    );

    // The hub is SIGKILLed: the root reports it offline and its member unknown (silent
    // with its hub); the hub back (with the member's queued heartbeats): both online.
    let from = statuses.len();
    hub.kill();
    wait_until(
        "the root reports the hub offline and the member unknown",
        DEADLINE,
        async || {
            reports(&statuses, from, fleet::HUB) == [pair(fleet::ROOT, "offline")]
                && reports(&statuses, from, fleet::MEMBER) == [pair(fleet::ROOT, "unknown")]
        },
    )
    .await;
    hub.restart();
    wait_until("the root reports both online again", DEADLINE, async || {
        reports(&statuses, from, fleet::HUB).last() == Some(&pair(fleet::ROOT, "online"))
            && reports(&statuses, from, fleet::MEMBER).last() == Some(&pair(fleet::ROOT, "online"))
    })
    .await;
    assert_eq!(
        reports(&statuses, from, fleet::MEMBER),
        vec![pair(fleet::ROOT, "unknown"), pair(fleet::ROOT, "online")],
        "the member ran throughout: never reported offline"
    );
}
