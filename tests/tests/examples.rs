//! The shipped example configs carry a whole fleet: root, hub and member from
//! `config/examples/*.toml` as shipped (see `nexus_e2e::examples`), a mosquitto with the
//! sensors of the member example's rules, a local app on the member's NATS answering the
//! example's command, and the real CLI (`check`, `request`, `dlq`) on the same files.
//!
//! What lands at the root's streams: every node's heartbeat, every sensor reading, a bridged
//! app event, a command's reply from the app, and the member's refusal audit; nothing is
//! dead-lettered at the hub or the root. The demo runs the same fleet; it is run here
//! briefly too, so that it cannot rot.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use nexus_e2e::examples::{text, ExampleFleet, DEADLINE};
use nexus_e2e::{contract, fleet, request_answered, wait_until};
use nexus_events::asyncapi;
use nexus_federation::envelope::{Encoding, Envelope};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_examples_carry_a_whole_fleet() {
    let site = ExampleFleet::start().await;
    // Everything the fleet publishes at the root, for the contract check at the end.
    let root_client = site.fleet.root_nats.client().await;
    let mut published = root_client.subscribe("nexus.>").await.expect("subscribe");
    root_client.flush().await.expect("flush");

    // `check` takes each example with the deployer's overrides, without a warning.
    for node in [fleet::ROOT, fleet::HUB, fleet::MEMBER] {
        let out = site.cli(node, &["check"]).await;
        assert_eq!(out.status.code(), Some(0), "{node}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("warning"), "{node}: {said}");
    }

    // Heartbeats of every tier land in NEXUS_CORE (a member's at the root means the hub's
    // and the root's ACLs both take it).
    for node in [fleet::ROOT, fleet::HUB, fleet::MEMBER] {
        let beats = site
            .landed("NEXUS_CORE", &format!("nexus._core.edge.health.{node}"), 1)
            .await;
        assert_eq!(beats[0]["payload"]["node_id"], node, "{}", beats[0]);
    }

    // The local app: answers booking.cancel on the example's command subject, slowly.
    let mut commands = site
        .app
        .subscribe("app.cmd.booking.cancel")
        .await
        .expect("subscribe");
    site.app.flush().await.expect("flush");
    let app = site.app.clone();
    tokio::spawn(async move {
        while let Some(request) = commands.next().await {
            let asked: Value = serde_json::from_slice(&request.payload).unwrap_or_default();
            // The scenario, not a synchronisation: an app that takes its time.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answer = json!({"cancelled": true, "booking": asked["id"]});
            if let Some(reply) = request.reply {
                let _ = app.publish(reply, answer.to_string().into()).await;
            }
        }
    });

    // Sensors of each of the member example's rules, and one message no rule can map.
    site.sensor(
        "zigbee2mqtt/aqara-livingroom",
        r#"{"temperature": 21.5, "humidity": 40, "battery": 97, "linkquality": 120, "last_seen": 1749996800365}"#,
    );
    site.sensor(
        "tele/plug-kitchen/SENSOR",
        r#"{"Time": "2026-06-15T14:13:20", "ENERGY": {"Power": 12.5, "Voltage": 230.1}}"#,
    );
    site.sensor("shellies/shelly-hall/sensor/temperature", "22.25");
    site.sensor("sensors/esp32-office/co2", "650");
    site.sensor("zigbee2mqtt/broken-sensor", "not json");

    // A bridged app event: the request is answered once it is on the member's disk.
    let answer = request_answered(
        &site.app,
        "app.booking.created",
        json!({"booking_id": "b-1"}).to_string().into(),
        DEADLINE,
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer.payload).expect("JSON");
    assert_eq!(answer["ok"], true, "{answer}");

    // A message the up-bridge refuses (not a JSON object): the app is told why, and the
    // member audits the refusal.
    let refused = site
        .app
        .request("app.booking.created", "[1, 2]".into())
        .await
        .expect("the up-bridge answers");
    let refused: Value = serde_json::from_slice(&refused.payload).expect("JSON");
    assert_eq!(refused["ok"], false, "{refused}");
    // An event of the example's registry whose payload breaks its schema: refused before
    // it is signed, with the pointer of the failing field.
    let invalid = site
        .app
        .request(
            "app.booking.created",
            r#"{"booking_id": "b-2", "seats": 0}"#.into(),
        )
        .await
        .expect("the up-bridge answers");
    let invalid: Value = serde_json::from_slice(&invalid.payload).expect("JSON");
    assert_eq!(invalid["code"], "schema_invalid", "{invalid}");
    assert_eq!(invalid["pointer"], "/seats", "{invalid}");

    // A command from the root's CLI, answered by the app.
    let out = wait_until(
        "the root's command reaches the member",
        DEADLINE,
        async || {
            let out = site
                .cli(
                    fleet::ROOT,
                    &[
                        "request",
                        fleet::MEMBER,
                        "booking.cancel",
                        "--data",
                        r#"{"id": "b-7"}"#,
                        "--json",
                    ],
                )
                .await;
            (out.status.code() == Some(0)).then_some(out)
        },
    )
    .await;
    let reply: Value = serde_json::from_slice(&out.stdout).expect("a JSON reply");
    assert_eq!(
        reply["payload"],
        json!({"cancelled": true, "booking": "b-7"}),
        "{}",
        text(&out)
    );

    // Every reading, with its own time where the sensor sent one (to the millisecond).
    let readings = site
        .landed("NEXUS_IOT", "nexus.salon-001.iot.sensor_data", 7)
        .await;
    let mut seen: Vec<(String, String)> = readings
        .iter()
        .map(|r| {
            (
                r["payload"]["sensor_id"].as_str().unwrap_or("?").to_owned(),
                r["payload"]["metric"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String)> = [
        ("aqara-livingroom", "battery"),
        ("aqara-livingroom", "humidity"),
        ("aqara-livingroom", "temperature"),
        ("esp32-office", "co2"),
        ("plug-kitchen", "power"),
        ("plug-kitchen", "voltage"),
        ("shelly-hall", "temperature"),
    ]
    .iter()
    .map(|(s, m)| ((*s).to_owned(), (*m).to_owned()))
    .collect();
    assert_eq!(seen, expected, "{readings:?}");
    let zigbee = readings
        .iter()
        .find(|r| r["payload"]["sensor_id"] == "aqara-livingroom")
        .expect("a zigbee reading");
    assert_eq!(zigbee["ts"], "2025-06-15T14:13:20.365Z", "{zigbee}");

    // The app's event and the command's result, in the example's booking domain.
    let created = site
        .landed("NEXUS_BOOKING", "nexus.salon-001.booking.created", 1)
        .await;
    assert_eq!(created[0]["payload"]["booking_id"], "b-1");
    let results = site
        .landed("NEXUS_BOOKING", "nexus.salon-001.booking.cancel.result", 1)
        .await;
    let result = results
        .iter()
        .find(|r| r["event_id"] == reply["event_id"])
        .unwrap_or_else(|| panic!("the printed reply landed: {results:?}"));
    assert_eq!(result["payload"], reply["payload"]);
    assert_eq!(result["correlation_id"], reply["correlation_id"]);

    // The member refused the app's bad message itself, and its audit reached the root.
    let audits = site
        .landed("NEXUS_CORE", "nexus._core.audit.rejected", 2)
        .await;
    for reason in ["malformed", "schema_invalid"] {
        assert!(
            audits.iter().any(|a| a["source"] == fleet::MEMBER
                && a["payload"]["stage"] == "bridge"
                && a["payload"]["reason"] == reason),
            "{reason}: {audits:?}"
        );
    }

    // Nothing was refused on the way: the hub's and the root's dead-letter stores are empty
    // (the member keeps the broken reading and the app's bad message, the refusals meant
    // to happen).
    for node in [fleet::HUB, fleet::ROOT] {
        let out = site.cli(node, &["dlq", "list", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{node}: {}", text(&out));
        assert!(
            out.stdout.is_empty(),
            "{node} dead-lettered something: {}\n{}",
            text(&out),
            site.logs()
        );
    }
    let out = site.cli(fleet::MEMBER, &["dlq", "list", "--json"]).await;
    let member_letters: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut stages: Vec<&str> = member_letters
        .iter()
        .map(|l| l["stage"].as_str().unwrap_or("?"))
        .collect();
    stages.sort_unstable();
    assert_eq!(stages, ["bridge", "bridge", "iot"], "{}", text(&out));

    // The event contract on real traffic: every envelope published at the root is a
    // registered event whose payload satisfies its schema, on a subject of the AsyncAPI
    // document — which the AsyncAPI project's own parser accepts.
    let out = site.cli(fleet::MEMBER, &["events", "asyncapi"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let document: Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    let path = site.fleet.path().join("asyncapi.json");
    std::fs::write(&path, &out.stdout).expect("write the document");
    let parsed = contract::parse_asyncapi(&path);
    assert_eq!(parsed.status.code(), Some(0), "{}", text(&parsed));
    let registry = contract::registry();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    // Everything above waited for its events to land, so they are all here already.
    while let Some(Some(message)) = published.next().now_or_never() {
        let encoding = match message.headers.as_ref().and_then(|h| h.get("Content-Type")) {
            Some(value) if value.as_str() == "application/cbor" => Encoding::Cbor,
            _ => Encoding::Json,
        };
        let envelope = Envelope::decode(&message.payload, encoding, 1 << 20)
            .unwrap_or_else(|e| panic!("{}: not an envelope: {e}", message.subject));
        let envelope = serde_json::to_value(&envelope).expect("an envelope is JSON");
        if let Err(problem) = contract::check(&registry, &envelope) {
            panic!("{}: {problem}", message.subject);
        }
        assert!(
            asyncapi::covers(&document, message.subject.as_str()),
            "{} is not a channel of the AsyncAPI document",
            message.subject
        );
        *seen
            .entry(envelope["event_name"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    for event in [
        "edge.health",
        "iot.sensor_data",
        "audit.rejected",
        "booking.created",
        "booking.cancel.result",
    ] {
        assert!(
            seen.contains_key(event),
            "no {event} seen at the root: {seen:?}"
        );
    }
}

/// The demo (`./dev demo`) runs the same fleet for a person: briefly here, so that it
/// cannot rot. It pings the member through the hub and prints what lands at the root:
/// every node's heartbeat and the simulated sensors' readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_the_examples_and_shows_the_fleet() {
    let kept = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--for", "12"])
        .env("DEMO_KEEP_DIR", kept.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("the demo runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut expected = vec![
        "agent.ping root → hub → member".to_owned(),
        "nexus.salon-001.iot.sensor_data".to_owned(),
        "\"sensor_id\":\"aqara-livingroom\"".to_owned(),
        "\"sensor_id\":\"esp32-kitchen\"".to_owned(),
    ];
    for node in [fleet::ROOT, fleet::HUB, fleet::MEMBER] {
        expected.push(format!("nexus._core.edge.health.{node} "));
    }
    for line in &expected {
        assert!(
            shown.contains(line.as_str()),
            "`{line}` in:\n{}",
            text(&out)
        );
    }
    // What a person looks at afterwards: each node's config, overrides and log.
    for node in [fleet::ROOT, fleet::HUB, fleet::MEMBER] {
        for ext in ["toml", "env", "log"] {
            let file = kept.path().join(format!("{node}.{ext}"));
            assert!(file.is_file(), "{} kept", file.display());
        }
    }
}
