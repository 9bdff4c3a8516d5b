//! The shipped example configs, as shipped: root, hub and member run from
//! `config/examples/{root,hub,member}.toml` copied byte for byte, with only what a deployer
//! must fill in given as `NEXUS_…` environment overrides (keys, tokens, trust anchor, URLs,
//! data_dir). A mosquitto with the sensors of the member example's rules, a local app on the
//! member's NATS answering the example's command, and the real CLI (`check`, `request`,
//! `dlq`) on the same files.
//!
//! What lands at the root's streams: every node's heartbeat, every sensor reading, a bridged
//! app event, a command's reply from the app, and the member's refusal audit; nothing is
//! dead-lettered at the hub or the root. `./dev demo` runs the same files the same way, so
//! the examples, the demo and this test cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use nexus_e2e::{
    agent_bin, fleet, mosquitto_client_bin, wait_until, AgentProcess, Fleet, Launch, Mosquitto,
    NatsServer,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// The repository's example of `mode`.
fn example(mode: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(format!("{mode}.toml"))
}

/// A root, a hub and a member on the example files, and the parts around them.
struct ExampleFleet {
    fleet: Fleet,
    broker: Mosquitto,
    root: AgentProcess,
    hub: AgentProcess,
    member: AgentProcess,
    /// JetStream on the root's NATS, where events land.
    root_js: jetstream::Context,
    /// A local app's connection to the member's NATS.
    app: async_nats::Client,
}

impl ExampleFleet {
    async fn start() -> Self {
        let durable = || NatsServer::builder().sync_always().start();
        let fleet = Fleet::with_servers(durable(), durable(), NatsServer::start());
        let broker = Mosquitto::start();
        let spawn = |node: &str, mode: &str| {
            let text = std::fs::read_to_string(example(mode)).expect("the example config");
            let launch = Launch {
                env: overrides(&fleet, &broker, node)
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                ..Launch::default()
            };
            AgentProcess::spawn_with(&launch, node, &text, fleet.path())
        };
        let root = spawn(fleet::ROOT, "root");
        let hub = spawn(fleet::HUB, "hub");
        let member = spawn(fleet::MEMBER, "member");
        let root_js = jetstream::new(fleet.root_nats.client().await);
        let app = fleet.member_nats.client().await;
        let subscribed = tokio::time::timeout(
            DEADLINE,
            wait_until(
                "the member's MQTT bridge is subscribed",
                DEADLINE + Duration::from_secs(1),
                async || member.log().contains("MQTT subscriptions confirmed"),
            ),
        )
        .await;
        assert!(
            subscribed.is_ok(),
            "the member's MQTT bridge is not subscribed:\n{}",
            tail(&member.log())
        );
        Self {
            fleet,
            broker,
            root,
            hub,
            member,
            root_js,
            app,
        }
    }

    /// The CLI on a node's example config (its copy in the fleet's dir), with the node's
    /// overrides.
    async fn cli(&self, node: &str, args: &[&str]) -> Output {
        let config = self.fleet.path().join(format!("{node}.toml"));
        let (verb, rest) = args.split_first().expect("a verb");
        let mut command = tokio::process::Command::new(agent_bin());
        command.arg(verb);
        if *verb == "dlq" {
            command
                .args(&rest[..1])
                .arg("-c")
                .arg(&config)
                .args(&rest[1..]);
        } else {
            command.arg("-c").arg(&config).args(rest);
        }
        command
            .envs(overrides(&self.fleet, &self.broker, node))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("nexus-agent runs")
    }

    /// A sensor's message, as the sensor sends it (`mosquitto_pub -q 1`).
    fn sensor(&self, topic: &str, message: &str) {
        let out = Command::new(mosquitto_client_bin("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-m", message])
            .output()
            .expect("mosquitto_pub runs");
        assert!(out.status.success(), "mosquitto_pub: {}", text(&out));
    }

    /// Every message of `stream` on `filter`, decoded, once at least `n` are there.
    async fn landed(&self, stream: &str, filter: &str, n: usize) -> Vec<Value> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let found = read_stream(&self.root_js, stream, filter).await;
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{n} message(s) on {filter} in {stream} within {DEADLINE:?}; found {}: \
                 {found:?}\n{}",
                found.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        format!(
            "root:\n{}\nhub:\n{}\nmember:\n{}",
            tail(&self.root.log()),
            tail(&self.hub.log()),
            tail(&self.member.log())
        )
    }
}

/// What a deployer fills in for `node`: its key, token, data_dir, the trust anchor and the
/// URLs of this machine's servers. Nothing else of the example is changed.
fn overrides(fleet: &Fleet, broker: &Mosquitto, node: &str) -> Vec<(String, String)> {
    let key = match node {
        fleet::ROOT => &fleet.root_key,
        fleet::HUB => &fleet.hub_key,
        _ => &fleet.member_key,
    };
    let mut env = vec![
        ("NEXUS_NODE__KEY", key.secret.display().to_string()),
        (
            "NEXUS_NODE__DATA_DIR",
            fleet.data_dir(node).display().to_string(),
        ),
        ("NEXUS_TRUST__ROOT_KEYS", fleet.root_key.public.clone()),
    ];
    match node {
        fleet::ROOT => env.push(("NEXUS_LOCAL__URL", fleet.root_nats.url())),
        fleet::HUB => env.extend([
            ("NEXUS_NODE__TOKEN", token(fleet, node)),
            ("NEXUS_UPLINK__URL", fleet.root_nats.url()),
            ("NEXUS_LOCAL__URL", fleet.hub_nats.url()),
        ]),
        _ => env.extend([
            ("NEXUS_NODE__TOKEN", token(fleet, node)),
            ("NEXUS_UPLINK__URL", fleet.hub_nats.url()),
            ("NEXUS_LOCAL__URL", fleet.member_nats.url()),
            ("NEXUS_IOT__URL", broker.url()),
        ]),
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn token(fleet: &Fleet, node: &str) -> String {
    fleet.token_path(node).display().to_string()
}

/// Every message of `stream` on `filter`, as JSON (none if the stream is not there yet).
async fn read_stream(js: &jetstream::Context, stream: &str, filter: &str) -> Vec<Value> {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    if info.state.messages == 0 {
        return Vec::new();
    }
    let Ok(consumer) = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    let Ok(messages) = consumer.messages().await else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut messages =
        std::pin::pin!(messages.take_until(tokio::time::sleep(Duration::from_millis(500))));
    while let Some(Ok(message)) = messages.next().await {
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(value) = serde_json::from_slice::<Value>(&message.payload) {
            found.push(value);
        }
        if pending == 0 {
            break;
        }
    }
    found
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_examples_carry_a_whole_fleet() {
    let site = ExampleFleet::start().await;

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
    let answer = site
        .app
        .request(
            "app.booking.created",
            json!({"booking_id": "b-1"}).to_string().into(),
        )
        .await
        .expect("the up-bridge answers");
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
        .landed("NEXUS_CORE", "nexus._core.audit.rejected", 1)
        .await;
    assert!(
        audits
            .iter()
            .any(|a| a["source"] == fleet::MEMBER && a["payload"]["stage"] == "bridge"),
        "{audits:?}"
    );

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
    assert_eq!(stages, ["bridge", "iot"], "{}", text(&out));
}
