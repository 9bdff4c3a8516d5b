//! End to end, one fleet (root, hub, member with an MQTT bridge, as real processes, on real
//! nats-servers and mosquitto): how the fleet's state is seen.
//!
//! - A degraded cause appears in the member's heartbeat and clears: the MQTT broker stops
//!   and comes back.
//! - A member SIGKILLed is reported offline by its hub once, within `offline_after` plus
//!   one interval, and online again when it restarts; the root leaves it to the hub.
//! - A hub SIGKILLed is reported offline by the root, its member `unknown`; both online
//!   again when the hub restarts.
//! - Every agent serves `/metrics`, `/healthz` and `/readyz`; a real Prometheus scrapes
//!   them, and its HTTP API has the series, following the fleet through the above.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Output;
use std::time::Duration;

use nexus_e2e::bench::events::stream_count;
use nexus_e2e::prometheus::http_get;
use nexus_e2e::{
    agent_bin, contract, fleet, mosquitto_client_bin, wait_until, AgentProcess, Fleet, Mosquitto,
    Prometheus, Seen,
};
use serde_json::Value;

/// The fleet's heartbeat interval, and `offline_after` (the default, three intervals).
const INTERVAL: Duration = Duration::from_secs(1);
const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(30);
/// Where node status reports land.
const STATUS_SUBJECTS: &str = "nexus._core.edge.node_status.>";

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

/// A loopback address with a port free now.
fn free_address() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn metrics_config(address: SocketAddr) -> String {
    format!("[metrics]\nlisten = \"{address}\"\n")
}

/// `nexus-agent request NODE COMMAND` with the root's config.
async fn request(root: &AgentProcess, node: &str, command: &str) -> Output {
    tokio::process::Command::new(agent_bin())
        .args(["request", node, command, "-c"])
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent runs")
}

/// `nexus-agent fleet --json` with the root's config: the exit code and each node's
/// (status, parent).
async fn fleet_view(root: &AgentProcess) -> (i32, Vec<(String, String, Option<String>)>) {
    let out = tokio::process::Command::new(agent_bin())
        .args(["fleet", "--json", "-c"])
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent runs");
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fleet --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut rows: Vec<(String, String, Option<String>)> = nodes
        .as_array()
        .expect("an array")
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap_or_default().to_owned(),
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["parent"].as_str().map(str::to_owned),
            )
        })
        .collect();
    rows.sort();
    (out.status.code().unwrap_or(-1), rows)
}

fn row(node: &str, status: &str, parent: Option<&str>) -> (String, String, Option<String>) {
    (
        node.to_owned(),
        status.to_owned(),
        parent.map(str::to_owned),
    )
}

/// `nexus-agent trace EVENT_ID --json` with the root's config: the exit code and each
/// node's answer (or why it could not be asked), by node id.
async fn trace(root: &AgentProcess, event_id: &str) -> (i32, BTreeMap<String, Value>) {
    let out = tokio::process::Command::new(agent_bin())
        .args(["trace", event_id, "--json", "--timeout", "3s", "-c"])
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent runs");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trace --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Each answer is the payload of a real agent.trace.result: what its schema says.
    let registry = contract::registry();
    for node in all.as_array().into_iter().flatten() {
        if let Some(answer) = node.get("answer") {
            assert_eq!(
                registry.validate("agent.trace.result", 1, answer),
                nexus_events::Verdict::Valid,
                "{answer}"
            );
        }
    }
    let by_node = all
        .as_array()
        .expect("an array")
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap_or_default().to_owned(),
                n.clone(),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), by_node)
}

/// The value of the one series `expr` selects at Prometheus, once there is one.
fn value(prometheus: &Prometheus, expr: &str) -> Option<f64> {
    let result = prometheus.query(expr);
    match result.as_slice() {
        [series] => series["value"][1].as_str().and_then(|v| v.parse().ok()),
        _ => None,
    }
}

/// Waits until Prometheus says `expr` is `expected` (series scraped every second).
async fn wait_value(prometheus: &Prometheus, expr: &str, expected: f64) {
    wait_until(
        &format!("prometheus: {expr} == {expected}"),
        DEADLINE,
        async || value(prometheus, expr) == Some(expected),
    )
    .await;
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
    let statuses = Seen::watch(&fleet.root_nats, "nexus._core.edge.node_status.>").await;
    let readings = Seen::watch(&fleet.root_nats, "nexus.*.iot.sensor_data").await;
    let member_beats = Seen::watch(
        &fleet.root_nats,
        &format!("nexus._core.edge.health.{}", fleet::MEMBER),
    )
    .await;
    let (root_metrics, hub_metrics, member_metrics) =
        (free_address(), free_address(), free_address());
    let root = fleet.spawn(fleet::ROOT, &metrics_config(root_metrics));
    let hub = fleet.spawn(fleet::HUB, &metrics_config(hub_metrics));
    let iot = format!(
        "[iot]\nurl = \"{}\"\nreconnect_max_delay = \"500ms\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n\n{}",
        broker.url(),
        metrics_config(member_metrics)
    );
    let member = fleet.spawn(fleet::MEMBER, &iot);
    let prometheus = Prometheus::start(&[root_metrics, hub_metrics, member_metrics]);
    let member_series = format!("instance=\"{member_metrics}\"");
    let hub_series = format!("instance=\"{hub_metrics}\"");
    let root_series = format!("instance=\"{root_metrics}\"");

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

    // `fleet` at the root: the tree, all healthy, exit 0; the text view draws it.
    wait_until("`fleet` shows every node healthy", DEADLINE, async || {
        fleet_view(&root).await
            == (0, {
                let mut all = vec![
                    row(fleet::HUB, "healthy", None),
                    row(fleet::MEMBER, "healthy", Some(fleet::HUB)),
                    row(fleet::ROOT, "healthy", None),
                ];
                all.sort();
                all
            })
    })
    .await;
    let out = std::process::Command::new(agent_bin())
        .args(["fleet", "-c"])
        .arg(root.config_path())
        .output()
        .expect("nexus-agent runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tree}");
    assert!(
        tree.contains(&format!("└─ {}", fleet::HUB))
            && tree.contains(&format!("   └─ {}", fleet::MEMBER))
            && tree.contains("3 nodes, 0 need attention"),
        "{tree}"
    );

    // Prometheus scrapes all three; the series are there with the figures of the fleet.
    wait_until("prometheus scrapes every agent", DEADLINE, async || {
        let targets = prometheus.targets();
        targets.len() == 3 && targets.iter().all(|(_, health, _)| health == "up")
    })
    .await;
    let agents = prometheus.query("nexus_agent_info");
    let mut nodes: Vec<&str> = agents
        .iter()
        .filter_map(|s| s["metric"]["node_id"].as_str())
        .collect();
    nodes.sort_unstable();
    let mut expected = [fleet::HUB, fleet::MEMBER, fleet::ROOT];
    expected.sort_unstable();
    assert_eq!(nodes, expected);
    let modes: Vec<&str> = agents
        .iter()
        .filter_map(|s| s["metric"]["mode"].as_str())
        .collect();
    assert!(modes.contains(&"member") && modes.contains(&"hub") && modes.contains(&"root"));
    wait_value(
        &prometheus,
        &format!("nexus_fleet_nodes{{{root_series},status=\"online\"}}"),
        2.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_fleet_nodes{{{hub_series},status=\"online\"}}"),
        1.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_mqtt_up{{{member_series}}}"),
        1.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_link_up{{{member_series},link=\"uplink\"}}"),
        1.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_degraded{{{member_series}}}"),
        0.0,
    )
    .await;
    wait_until(
        "the member's uplink forwarded events",
        DEADLINE,
        async || {
            value(
                &prometheus,
                &format!("nexus_events_forwarded_total{{{member_series},stage=\"uplink\"}}"),
            )
            .is_some_and(|n| n > 0.0)
        },
    )
    .await;
    wait_until("the root's ingress landed events", DEADLINE, async || {
        value(
            &prometheus,
            &format!("nexus_events_forwarded_total{{{root_series},stage=\"ingress\"}}"),
        )
        .is_some_and(|n| n > 0.0)
    })
    .await;
    for series in [
        "nexus_outbox_events",
        "nexus_outbox_bytes",
        "nexus_outbox_oldest_age_seconds",
        "nexus_uptime_seconds",
        "nexus_link_connects_total",
        "nexus_dead_letters",
    ] {
        assert!(
            !prometheus
                .query(&format!("{series}{{{member_series}}}"))
                .is_empty(),
            "{series} of the member is scraped"
        );
    }
    // A reading and a bad one through the member's MQTT bridge: counted by rule and by
    // reason.
    for message in ["21.5", "warm"] {
        let out = std::process::Command::new(mosquitto_client_bin("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-q",
                "1",
            ])
            .args(["-t", "sensors/t1/temperature", "-m", message])
            .output()
            .expect("mosquitto_pub runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_value(
        &prometheus,
        &format!("nexus_mqtt_rule_events_total{{{member_series},rule=\"0\"}}"),
        1.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_mqtt_rejected_total{{{member_series},reason=\"not_a_number\"}}"),
        1.0,
    )
    .await;
    wait_value(
        &prometheus,
        &format!("nexus_mqtt_messages_total{{{member_series},result=\"received\"}}"),
        2.0,
    )
    .await;
    // Where that reading is: every tier answers `agent.trace`; it landed at the root and
    // waits nowhere.
    let reading = wait_until("the reading lands at the root", DEADLINE, async || {
        readings.all().first().cloned()
    })
    .await;
    let event_id = reading["event_id"].as_str().expect("event_id").to_owned();
    let (code, answers) = trace(&root, &event_id).await;
    assert_eq!(code, 0, "landed: {answers:?}");
    let journal = &answers[fleet::ROOT]["answer"]["journal"];
    assert_eq!(journal["found"], true, "{answers:?}");
    assert!(
        journal["sequence"].as_u64().is_some_and(|s| s > 0),
        "{journal}"
    );
    assert_eq!(answers[fleet::MEMBER]["answer"]["outbox"]["waiting"], false);
    assert_eq!(
        answers[fleet::MEMBER]["answer"]["dead_letters"],
        serde_json::json!([])
    );
    assert!(
        answers[fleet::HUB]["answer"]["ingress"].is_object(),
        "{answers:?}"
    );
    // An id nobody has: answered everywhere, not landed.
    let (code, answers) = trace(&root, "0192f3a1-7c2e-7d40-8f00-0123456789ab").await;
    assert_eq!(code, 1);
    assert_eq!(answers[fleet::ROOT]["answer"]["journal"]["found"], false);
    assert_eq!(answers.len(), 3, "{answers:?}");

    // A command answered by the member: its latency is in the histogram.
    let out = request(&root, fleet::MEMBER, "agent.ping").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_value(
        &prometheus,
        &format!(
            "nexus_command_duration_seconds_count{{{member_series},command=\"agent.ping\",outcome=\"ok\"}}"
        ),
        1.0,
    )
    .await;
    assert_eq!(
        http_get(member_metrics, "/healthz").expect("healthz"),
        (200, b"ok\n".to_vec())
    );
    assert_eq!(
        http_get(member_metrics, "/readyz").expect("readyz"),
        (200, b"ready\n".to_vec())
    );
    let (status, exposition) = http_get(member_metrics, "/metrics").expect("metrics");
    let exposition = String::from_utf8_lossy(&exposition);
    assert_eq!(status, 200);
    assert!(
        exposition.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {exposition}"
    );
    assert!(
        exposition.contains("\nnexus_uptime_seconds "),
        "a series without labels has no braces: {exposition}"
    );
    let (status, _) = http_get(member_metrics, "/nothing").expect("404");
    assert_eq!(status, 404);

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
    let (status, body) = http_get(member_metrics, "/readyz").expect("readyz");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mqtt_unreachable iot:"), "{body}");
    wait_value(
        &prometheus,
        &format!("nexus_degraded_cause{{{member_series},kind=\"mqtt_unreachable\"}}"),
        1.0,
    )
    .await;
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
    wait_value(
        &prometheus,
        &format!("nexus_fleet_nodes{{{hub_series},status=\"offline\"}}"),
        1.0,
    )
    .await;
    let (code, nodes) = fleet_view(&root).await;
    assert_eq!(code, 1, "a node offline: `fleet` exits 1");
    assert!(
        nodes.contains(&row(fleet::MEMBER, "offline", Some(fleet::HUB))),
        "{nodes:?}"
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
    let (code, answers) = trace(&root, &event_id).await;
    assert_eq!(code, 0, "still landed: {answers:?}");
    for node in [fleet::HUB, fleet::MEMBER] {
        assert!(
            answers[node]["not_asked"].is_string(),
            "{node} cannot be asked with its hub down: {answers:?}"
        );
    }
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

    // The root's NATS (the hub's uplink) down for twice offline_after: the hub cannot read
    // its ingress meanwhile, so it reports no silence of the member, which ran throughout;
    // nor does the root of the hub.
    // Counted in the journal: a subscriber on the root's NATS misses what lands before it
    // has reconnected.
    let root_js = async_nats::jetstream::new(fleet.root_nats.client().await);
    let reported = async || stream_count(&root_js, "NEXUS_EVENTS", STATUS_SUBJECTS).await;
    let hub_heartbeats = format!("nexus._core.edge.health.{}", fleet::HUB);
    let before = reported().await;
    assert_eq!(
        before,
        statuses.len(),
        "the journal holds every report seen"
    );
    // Every report (offline, unknown, online; of members and hubs) is what edge.node_status@1
    // says.
    let registry = contract::registry();
    for status in statuses.all() {
        contract::check(&registry, &status).unwrap_or_else(|e| panic!("{e}"));
    }
    fleet.root_nats.stop();
    // The outage itself (a duration of the scenario, not a wait for a condition).
    tokio::time::sleep(OFFLINE_AFTER * 2).await;
    fleet.root_nats.restart();
    let beats = member_beats.len();
    wait_until("member heartbeats land again", DEADLINE, async || {
        member_beats.len() >= beats + 3
    })
    .await;
    // The hub's heartbeats queued after any report it queued (its outbox sends Control
    // events in order): once three of them landed, so would have such a report. One more
    // offline_after of member heartbeats for the blind period to end.
    let root_js = async_nats::jetstream::new(fleet.root_nats.client().await);
    let hub_seen = stream_count(&root_js, "NEXUS_EVENTS", &hub_heartbeats).await;
    let settled = member_beats.len() + 3;
    wait_until(
        "three more hub and member heartbeats",
        DEADLINE,
        async || {
            stream_count(&root_js, "NEXUS_EVENTS", &hub_heartbeats).await >= hub_seen + 3
                && member_beats.len() >= settled
        },
    )
    .await;
    assert_eq!(
        stream_count(&root_js, "NEXUS_EVENTS", STATUS_SUBJECTS).await,
        before,
        "an outage of the hub's uplink is no silence of its member: {:?}",
        statuses.all()
    );
}
