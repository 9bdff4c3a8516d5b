//! The IoT bridge end to end: a real mosquitto, the root, hub and member agents as
//! processes, sensors played by `mosquitto_pub` and a rumqttc publisher, and a subscriber
//! on the root's NATS where the typed envelopes land.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_e2e::{
    collect_until, fleet, mosquitto_client_bin, payload_json, wait_until, AgentProcess, Fleet,
    Mosquitto,
};
use nexus_federation::deadletter::{DeadLetters, Filter, STAGE_IOT};
use nexus_federation::provenance::HDR_SIGNER;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
const SUBJECT: &str = "nexus.salon-001.iot.sensor_data";

/// The MQTT version the member's bridge speaks (and `mosquitto_pub` with it). The same
/// tests run under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    V311,
    V5,
}

impl Protocol {
    /// The member's `[iot]` key.
    fn config(self) -> &'static str {
        match self {
            Protocol::V311 => "protocol = \"3.1.1\"",
            Protocol::V5 => "protocol = \"5\"",
        }
    }

    /// `mosquitto_pub -V …`.
    fn mosquitto(self) -> &'static str {
        match self {
            Protocol::V311 => "mqttv311",
            Protocol::V5 => "mqttv5",
        }
    }
}

/// The `[iot]` section of the member: the rules of the member example, and a small payload
/// limit so that "oversized" is cheap to provoke.
fn iot_config(broker: &Mosquitto, extra: &str) -> String {
    format!(
        r#"
[iot]
url = "{}"
reconnect_max_delay = "500ms"
max_payload = 1024
{extra}

[[iot.sensors]]
topic = "zigbee2mqtt/{{sensor_id}}"
time = "/last_seen"
metrics = {{ temperature = "°C", humidity = "%", battery = "%" }}

[[iot.sensors]]
topic = "tele/{{sensor_id}}/SENSOR"
time = "/Time"
metrics.power = {{ pointer = "/ENERGY/Power", unit = "W" }}

[[iot.sensors]]
topic = "sensors/{{sensor_id}}/{{metric}}"
"#,
        broker.url()
    )
}

struct Site {
    fleet: Fleet,
    broker: Mosquitto,
    protocol: Protocol,
    landed: async_nats::Subscriber,
    _root: AgentProcess,
    _hub: AgentProcess,
    member: AgentProcess,
}

impl Site {
    async fn start(protocol: Protocol) -> Self {
        Self::start_with(protocol, "").await
    }

    /// With `extra` keys in the member's `[iot]`.
    async fn start_with(protocol: Protocol, extra: &str) -> Self {
        let fleet = Fleet::new();
        let broker = Mosquitto::start();
        let client = async_nats::connect(fleet.root_nats.url())
            .await
            .expect("root nats");
        let landed = client.subscribe(SUBJECT).await.expect("subscribe");
        client.flush().await.expect("flush");
        let root = fleet.spawn(fleet::ROOT, "");
        let hub = fleet.spawn(fleet::HUB, "");
        let extra = format!("{}\n{extra}", protocol.config());
        let member = fleet.spawn(fleet::MEMBER, &iot_config(&broker, &extra));
        let site = Self {
            fleet,
            broker,
            protocol,
            landed,
            _root: root,
            _hub: hub,
            member,
        };
        site.wait_subscribed().await;
        site
    }

    /// Waits until the member's bridge holds its subscriptions (its log says so), so that
    /// the first messages are not published before anyone listens.
    async fn wait_subscribed(&self) {
        wait_until(
            "the member's MQTT bridge is subscribed",
            DEADLINE,
            async || self.member.log().contains("MQTT subscriptions confirmed"),
        )
        .await;
    }

    /// `mosquitto_pub -q 1` of one message, in the site's MQTT version.
    fn publish(&self, topic: &str, message: &str) {
        mosquitto_pub(&self.broker, self.protocol, topic, message);
    }

    fn dead_letters(&self) -> DeadLetters {
        DeadLetters::open_existing(&self.fleet.data_dir(fleet::MEMBER).join("deadletter.db"))
            .expect("the member's dead-letter store")
    }
}

impl Site {
    /// A subscriber to the member's heartbeats on the root's NATS.
    async fn member_heartbeats(&self) -> async_nats::Subscriber {
        let client = async_nats::connect(self.fleet.root_nats.url())
            .await
            .expect("root nats");
        let subscriber = client
            .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        subscriber
    }
}

/// The `iot` part of the first member heartbeat for which `done` holds.
async fn heartbeat_iot_until(
    mut heartbeats: async_nats::Subscriber,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let seen = collect_until(
        "a member heartbeat with the expected bridge counters",
        &mut heartbeats,
        DEADLINE,
        |m| {
            m.last()
                .is_some_and(|m| done(&payload_json(m)["payload"]["iot"]))
        },
    )
    .await;
    let last = seen.last().expect("a heartbeat");
    payload_json(last)["payload"]["iot"].clone()
}

/// `mosquitto_pub -q 1` of one message.
fn mosquitto_pub(broker: &Mosquitto, protocol: Protocol, topic: &str, message: &str) {
    let out = Command::new(mosquitto_client_bin("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
            "-V",
            protocol.mosquitto(),
        ])
        .args(["-t", topic, "-m", message])
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mosquitto_pub -q 1 -l`: one message per line of `lines`, on one connection.
fn mosquitto_pub_lines(broker: &Mosquitto, protocol: Protocol, topic: &str, lines: &[String]) {
    broker.publish_lines(&["-V", protocol.mosquitto()], topic, lines);
}

/// Publishes every message at QoS 1 with rumqttc and returns once the broker acked them all.
async fn rumqttc_publish(broker: &Mosquitto, messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new("e2e-sensor", "127.0.0.1", broker.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue a publish");
        }
        client
    });
    let mut acked = 0;
    tokio::time::timeout(DEADLINE, async {
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("rumqttc publisher: {e}"),
            }
        }
    })
    .await
    .expect("the broker acks every publish");
    let client = publisher.await.expect("publisher task");
    client.disconnect().await.expect("disconnect");
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await;
}

/// (sensor_id, metric) → value of every landed envelope.
fn readings(messages: &[async_nats::Message]) -> BTreeMap<(String, String), f64> {
    messages
        .iter()
        .map(|m| {
            let p = &payload_json(m)["payload"];
            (
                (
                    p["sensor_id"].as_str().expect("sensor_id").to_owned(),
                    p["metric"].as_str().expect("metric").to_owned(),
                ),
                p["value"].as_f64().expect("value"),
            )
        })
        .collect()
}

/// Messages from `mosquitto_pub` (a zigbee2mqtt object with three metrics, a Tasmota
/// SENSOR object, a plain number) and from a rumqttc publisher reach the root as signed
/// `iot.sensor_data@1` envelopes from the member, with the payload's own time when it has
/// one, to the millisecond (zigbee2mqtt's epoch milliseconds included).
#[tokio::test(flavor = "multi_thread")]
async fn sensor_messages_arrive_at_the_root_as_signed_typed_envelopes() {
    sensor_messages_arrive(Protocol::V311).await;
}

/// The same with the bridge (and `mosquitto_pub`) speaking MQTT 5.
#[tokio::test(flavor = "multi_thread")]
async fn sensor_messages_arrive_at_the_root_as_signed_typed_envelopes_over_mqtt5() {
    sensor_messages_arrive(Protocol::V5).await;
}

async fn sensor_messages_arrive(protocol: Protocol) {
    let mut site = Site::start(protocol).await;
    // The broker saw the member connect in the chosen version (mosquitto logs 3.1.1 as
    // p2, 5 as p5), without a clean session (c0).
    let log = std::fs::read_to_string(site.broker.log_path()).expect("mosquitto's log");
    let level = match protocol {
        Protocol::V311 => 2,
        Protocol::V5 => 5,
    };
    let connected = format!("as nexus-{} (p{level}, c0,", fleet::MEMBER);
    assert!(log.contains(&connected), "no {connected:?} in: {log}");
    site.publish(
        "zigbee2mqtt/0x00158d0001a2b3c4",
        r#"{"battery":98,"humidity":45.5,"linkquality":134,"temperature":21.3,"voltage":3005,"last_seen":"2025-06-15T14:13:20.123Z"}"#,
    );
    site.publish(
        "tele/plug-1/SENSOR",
        r#"{"Time":"2025-06-15T16:13:20","ENERGY":{"Total":1.5,"Power":42,"Voltage":231}}"#,
    );
    site.publish(
        "zigbee2mqtt/0x00158d0001a2b3c5",
        r#"{"temperature":20.5,"last_seen":1749996800365}"#,
    );
    site.publish("sensors/esp32-01/temperature", "23.5");
    rumqttc_publish(
        &site.broker,
        vec![("sensors/esp32-02/co2".to_owned(), b"612".to_vec())],
    )
    .await;
    let landed = collect_until("seven sensor envelopes", &mut site.landed, DEADLINE, |m| {
        m.len() >= 7
    })
    .await;
    let member_key = site.fleet.member_key.public.clone();
    let mut by_metric = BTreeMap::new();
    for message in &landed {
        assert_eq!(message.subject.as_str(), SUBJECT);
        let signer = message
            .headers
            .as_ref()
            .and_then(|h| h.get(HDR_SIGNER))
            .map(|v| v.as_str().to_owned());
        assert_eq!(signer.as_deref(), Some(member_key.as_str()));
        let envelope = payload_json(message);
        assert_eq!(envelope["event_name"], "iot.sensor_data");
        assert_eq!(envelope["version"], 1);
        assert_eq!(envelope["source"], fleet::MEMBER);
        assert_eq!(envelope["tenant"], fleet::TENANT);
        let payload = envelope["payload"].clone();
        let keys: BTreeSet<&str> = payload
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["metric", "sensor_id", "timestamp_unix", "unit", "value"])
        );
        by_metric.insert(
            format!(
                "{}/{}",
                payload["sensor_id"].as_str().expect("id"),
                payload["metric"].as_str().expect("metric")
            ),
            (payload, envelope["ts"].clone()),
        );
    }
    let z = "0x00158d0001a2b3c4";
    assert_eq!(
        by_metric[&format!("{z}/temperature")].0,
        json!({"sensor_id": z, "metric": "temperature", "value": 21.3, "unit": "°C", "timestamp_unix": 1_749_996_800})
    );
    assert_eq!(
        by_metric[&format!("{z}/temperature")].1,
        "2025-06-15T14:13:20.123Z"
    );
    assert_eq!(by_metric[&format!("{z}/humidity")].0["value"], 45.5);
    // Epoch milliseconds, exact (not `…20.364Z` through a truncated float).
    let (payload, ts) = &by_metric["0x00158d0001a2b3c5/temperature"];
    assert_eq!(ts, "2025-06-15T14:13:20.365Z");
    assert_eq!(payload["timestamp_unix"], 1_749_996_800);
    assert_eq!(by_metric[&format!("{z}/battery")].0["unit"], "%");
    assert_eq!(by_metric["plug-1/power"].0["value"], 42.0);
    assert_eq!(by_metric["plug-1/power"].0["timestamp_unix"], 1_750_004_000);
    assert_eq!(by_metric["esp32-01/temperature"].0["value"], 23.5);
    assert_eq!(by_metric["esp32-02/co2"].0["value"], 612.0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let received_at = by_metric["esp32-02/co2"].0["timestamp_unix"]
        .as_i64()
        .expect("int");
    assert!(
        (now - received_at).abs() < 60,
        "receive time is used: {received_at}"
    );
}

/// A stream mixing good readings with every kind of bad payload: every good one arrives at
/// the root, every bad one is in the member's dead-letter store with its reason, the
/// bridge is still running, and the member's heartbeat counts both.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_stream_delivers_every_good_message_and_dead_letters_every_bad_one() {
    mixed_stream(Protocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_stream_delivers_every_good_message_and_dead_letters_every_bad_one_over_mqtt5() {
    mixed_stream(Protocol::V5).await;
}

async fn mixed_stream(protocol: Protocol) {
    let mut site = Site::start(protocol).await;
    let heartbeats = site.member_heartbeats().await;
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "sensors/bad-1/temperature",
            b"warm".to_vec(),
            "not_a_number",
        ),
        ("sensors/bad-2/temperature", b"NaN".to_vec(), "non_finite"),
        (
            "sensors/bad-3/temperature",
            b"\xff\xfe21".to_vec(),
            "invalid_utf8",
        ),
        // Over max_payload (1 KiB here) and over rumqttc's own default cap (10 KiB), which
        // would kill the connection (3.1.1) or, under MQTT 5, make the broker drop it.
        (
            "sensors/bad-4/temperature",
            vec![b'1'; 20 * 1024],
            "oversized",
        ),
        (
            "zigbee2mqtt/bad-5",
            br#"{"temperature":true}"#.to_vec(),
            "wrong_type",
        ),
        (
            "zigbee2mqtt/bad-6",
            br#"{"pressure":1012}"#.to_vec(),
            "missing_field",
        ),
        (
            "zigbee2mqtt/bad-7",
            format!("{}{}", "[".repeat(500), "]".repeat(500)).into_bytes(),
            "too_deep",
        ),
        (
            "zigbee2mqtt/bad-8",
            b"{\"temperature\":".to_vec(),
            "malformed_json",
        ),
        // Inside the subscription `sensors/+/+` but outside its template: an empty
        // `{sensor_id}` matches no rule.
        ("sensors//temperature", b"1".to_vec(), "no_rule"),
        // Valid JSON with a reading beyond an f64's range: the whole message is refused,
        // its good humidity with it.
        (
            "zigbee2mqtt/bad-10",
            br#"{"humidity":45,"temperature":1e999}"#.to_vec(),
            "non_finite",
        ),
    ];
    let mut per_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, reason) in &bad {
        *per_reason.entry(reason).or_default() += 1;
    }
    let mut messages = Vec::new();
    let good = 60;
    for i in 0..good {
        messages.push((
            format!("sensors/good-{i}/temperature"),
            format!("{i}.5").into_bytes(),
        ));
        // A bad message after every sixth good one.
        if let Some((topic, payload, _)) = bad.get(i / 6).filter(|_| i % 6 == 0) {
            messages.push(((*topic).to_owned(), payload.clone()));
        }
    }
    assert_eq!(messages.len(), good + bad.len());
    rumqttc_publish(&site.broker, messages).await;
    let landed = collect_until("every good reading", &mut site.landed, DEADLINE, |m| {
        readings(m)
            .keys()
            .filter(|(s, _)| s.starts_with("good-"))
            .count()
            == good
    })
    .await;
    let values = readings(&landed);
    for i in 0..good {
        assert_eq!(
            values.get(&(format!("good-{i}"), "temperature".to_owned())),
            Some(&(i as f64 + 0.5))
        );
    }
    assert!(
        values.keys().all(|(s, _)| s.starts_with("good-")),
        "nothing bad is forwarded: {values:?}"
    );
    let store = site.dead_letters();
    let letters = wait_until("every bad message is dead-lettered", DEADLINE, async || {
        let letters = store.list(&Filter::default()).expect("list");
        let topics: BTreeSet<&str> = letters.iter().map(|l| l.subject.as_str()).collect();
        let wanted: BTreeSet<&str> = bad.iter().map(|(t, _, _)| *t).collect();
        (topics == wanted).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), bad.len());
    for letter in &letters {
        assert_eq!(letter.stage, STAGE_IOT);
        let (_, payload, reason) = bad
            .iter()
            .find(|(t, _, _)| *t == letter.subject)
            .expect("a bad case");
        assert_eq!(&letter.reason, reason, "{}", letter.subject);
        assert_eq!(letter.body_size, payload.len() as u64);
    }
    assert!(
        site.member.is_running(),
        "the bridge survived: {}",
        site.member.log()
    );
    // The member's heartbeat reports the bridge: connected, every message received, the
    // good ones forwarded, the bad ones dead-lettered under their reason.
    let iot = heartbeat_iot_until(heartbeats, |iot| {
        iot["forwarded"].as_u64() == Some(good as u64)
            && iot["dead_lettered"].as_object().map(|d| d.len()) == Some(per_reason.len())
            && iot["dead_lettered"]["non_finite"] == per_reason["non_finite"]
    })
    .await;
    assert_eq!(iot["connected"], true);
    assert_eq!(
        iot["protocol"],
        match protocol {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    );
    assert_eq!(iot["received"], (good + bad.len()) as u64);
    assert_eq!(iot["dropped_qos0"], 0);
    for (reason, count) in &per_reason {
        assert_eq!(iot["dead_lettered"][*reason], *count, "{reason}: {iot}");
    }
}

/// mosquitto restarts in the middle of a stream: the member's persistent session and its
/// subscriptions survive, and every QoS 1 message published after the broker is back
/// arrives (with the ones before it), even before the member has reconnected.
#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_published_after_a_mosquitto_restart_all_arrive() {
    mosquitto_restart(Protocol::V311).await;
}

/// The same over MQTT 5 (the session outlives the connection only with a session expiry
/// interval above 0).
#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_published_after_a_mosquitto_restart_all_arrive_over_mqtt5() {
    mosquitto_restart(Protocol::V5).await;
}

async fn mosquitto_restart(protocol: Protocol) {
    let mut site = Site::start(protocol).await;
    let before: Vec<String> = (0..50).map(|i| format!("{i}")).collect();
    mosquitto_pub_lines(
        &site.broker,
        protocol,
        "sensors/before/temperature",
        &before,
    );
    let landed = collect_until(
        "the readings sent before the restart",
        &mut site.landed,
        DEADLINE,
        |m| m.len() >= 50,
    )
    .await;
    assert_eq!(landed.len(), 50);

    site.broker.restart();
    // Published at once: the member is most likely still in its reconnect backoff, so these
    // wait in its persistent session on the broker.
    for i in 0..100 {
        site.publish(&format!("sensors/after-{i}/temperature"), &format!("{i}"));
    }
    let landed = collect_until(
        "every reading sent after the restart",
        &mut site.landed,
        DEADLINE,
        |m| {
            readings(m)
                .keys()
                .filter(|(s, _)| s.starts_with("after-"))
                .count()
                == 100
        },
    )
    .await;
    let values = readings(&landed);
    for i in 0..100 {
        assert_eq!(
            values.get(&(format!("after-{i}"), "temperature".to_owned())),
            Some(&f64::from(i))
        );
    }
    wait_until("the member logged the reconnect", DEADLINE, async || {
        site.member.log().matches("MQTT broker connected.").count() >= 2
    })
    .await;
}

/// The member is killed (SIGKILL) in the middle of a QoS 1 stream and started again: a
/// message is acknowledged to the broker only once its event is fsynced in the outbox, so
/// every message is either in the outbox or still waiting in the member's persistent session
/// on the broker, and all of them arrive (duplicates allowed, none lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_killed_mid_stream_loses_no_qos1_message() {
    member_killed(Protocol::V311).await;
}

/// The same over MQTT 5: the broker keeps the member's session while it is dead only
/// because the bridge asks for a session expiry interval (MQTT 5's default 0 would drop
/// it, and with it every message published meanwhile).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_killed_mid_stream_loses_no_qos1_message_over_mqtt5() {
    member_killed(Protocol::V5).await;
}

async fn member_killed(protocol: Protocol) {
    let mut site = Site::start(protocol).await;
    let total = 300;
    let lines: Vec<String> = (0..total).map(|i| format!("{i}")).collect();
    // One topic per value would need one mosquitto_pub per message; use the value itself
    // as the identity on one sensor instead.
    let broker_port = site.broker.port();
    let publisher = std::thread::spawn(move || {
        let mut child = Command::new(mosquitto_client_bin("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &broker_port.to_string(), "-q", "1"])
            .args(["-V", protocol.mosquitto()])
            .args(["-t", "sensors/stream/count", "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub -l");
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write");
            stdin.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stdin);
        assert!(child.wait().expect("exit").success());
    });
    let values = |m: &[async_nats::Message]| -> BTreeSet<i64> {
        m.iter()
            .filter_map(|m| payload_json(m)["payload"]["value"].as_f64())
            .map(|v| v as i64)
            .collect()
    };
    let early = collect_until("some of the stream", &mut site.landed, DEADLINE, |m| {
        m.len() >= 30
    })
    .await;
    site.member.kill();
    site.member.restart();
    publisher.join().expect("publisher");
    let mut seen = values(&early);
    let rest = collect_until("the whole stream", &mut site.landed, DEADLINE, |m| {
        let mut all = seen.clone();
        all.extend(values(m));
        all.len() == total
    })
    .await;
    seen.extend(values(&rest));
    assert_eq!(seen, (0..total as i64).collect::<BTreeSet<_>>());
}

/// A QoS 1 burst much larger than the bridge's queue: the broker sends far more unacked
/// messages than the queue holds, the poller waits for room while acks queue up, and yet
/// nothing stalls (a worker awaiting its own client here once deadlocked) and every message
/// arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_qos1_burst_larger_than_the_queue_arrives_whole() {
    qos1_burst(Protocol::V311).await;
}

/// The same over MQTT 5, where the bridge also announces a Receive Maximum.
#[tokio::test(flavor = "multi_thread")]
async fn a_qos1_burst_larger_than_the_queue_arrives_whole_over_mqtt5() {
    qos1_burst(Protocol::V5).await;
}

async fn qos1_burst(protocol: Protocol) {
    let mut site = Site::start_with(protocol, "queue = 16").await;
    let total = 1000;
    let messages = (0..total)
        .map(|i| {
            (
                format!("sensors/burst-{i}/count"),
                format!("{i}").into_bytes(),
            )
        })
        .collect();
    rumqttc_publish(&site.broker, messages).await;
    let landed = collect_until(
        "the whole burst",
        &mut site.landed,
        Duration::from_secs(90),
        |m| readings(m).len() == total,
    )
    .await;
    assert_eq!(readings(&landed).len(), total);
}
