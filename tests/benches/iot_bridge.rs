//! MQTT → envelope → outbox throughput of the IoT bridge, side by side in one run with
//! nats-server's built-in MQTT listener taking the same payloads into JetStream.
//!
//! `cargo bench -p nexus-e2e --bench iot_bridge` (needs mosquitto and nats-server; see
//! `./dev setup`). Not a test: it prints a table (docs/benchmarks.md).
//!
//! - **bridge**: a rumqttc publisher → mosquitto → the bridge (persistent session, manual
//!   acks) → map + validate + seal (ed25519) → `Outbox::push` (SQLite, fsynced group
//!   commits) → PUBACK. Timed from the first publish until the outbox holds every event.
//! - **gateway**: the same publisher → nats-server's MQTT listener → JetStream. Timed from
//!   the first publish until every PUBACK (QoS 1) arrived, or until a subscriber saw every
//!   message (QoS 0). Once at its defaults (PubAck before fsync) and once with
//!   `sync_interval: always`.
//!
//! Throughput only: the bridge has no per-message observation point outside the process
//! yet, so latency is not measured here.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nexus_config::{IotConfig, MetricRule, MqttProtocol, PayloadFormat, SensorRule};
use nexus_e2e::{Mosquitto, NatsServer};
use nexus_federation::Outbox;
use nexus_federation::OutboxOptions;
use nexus_iot_bridge::Bridge;
use nexus_policies::SecretKey;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 20_000;
const TOPIC: &str = "sensors/bench-01/temperature";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Publishes MESSAGES at `qos` (inflight 100); resolves when every PUBACK arrived (QoS 1)
/// or everything was written (QoS 0).
async fn publish(port: u16, qos: QoS, client_id: &str) -> Instant {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    // Connect first, so that connection setup is not timed.
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let payload = format!("{}.5", i % 40);
            client
                .publish(TOPIC, qos, false, payload)
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    let mut sent = 0;
    while (qos == QoS::AtLeastOnce && acked < MESSAGES)
        || (qos == QoS::AtMostOnce && sent < MESSAGES)
    {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
    let client = publisher.await.expect("publisher");
    let _ = client.disconnect().await;
    for _ in 0..10 {
        if eventloop.poll().await.is_err() {
            break;
        }
    }
    start
}

async fn bridge(qos: u8) -> f64 {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox =
        Outbox::open(&dir.path().join("outbox.db"), OutboxOptions::new(1 << 30)).expect("outbox");
    let config = IotConfig {
        url: broker.url(),
        host: "127.0.0.1".into(),
        port: broker.port(),
        tls: None,
        client_id: format!("bench-bridge-{qos}"),
        username: None,
        password: None,
        protocol: MqttProtocol::V311,
        session_expiry: Duration::from_secs(3600),
        qos,
        keep_alive: Duration::from_secs(30),
        reconnect_max_delay: Duration::from_secs(1),
        max_payload: 65536,
        queue: 1024,
        sensors: vec![SensorRule {
            topic: "sensors/{sensor_id}/{metric}".into(),
            payload: PayloadFormat::Number,
            metrics: vec![MetricRule {
                name: "temperature".into(),
                pointer: "/temperature".into(),
                unit: "°C".into(),
            }],
            time: None,
        }],
    };
    let key = SecretKey::from_seed(&[3; 32]).expect("key");
    let bridge =
        Bridge::new(config, "edge-bench", "salon-001", key, outbox.clone(), None).expect("bridge");
    let stats = bridge.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    while stats.received.load(Ordering::Relaxed) == 0 && !stats.connected.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscription is confirmed shortly after the ConnAck.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = publish(
        broker.port(),
        if qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        "bench-pub",
    )
    .await;
    eprintln!(
        "published; events so far {}",
        stats.events.load(Ordering::Relaxed)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = MESSAGES as u64 - stats.dropped_qos0.load(Ordering::Relaxed);
    while stats.events.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let dropped = stats.dropped_qos0.load(Ordering::Relaxed);
        if stats.events.load(Ordering::Relaxed) + dropped >= MESSAGES as u64 {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = stats.events.load(Ordering::Relaxed);
    let dropped = stats.dropped_qos0.load(Ordering::Relaxed);
    shutdown.cancel();
    let _ = task.await;
    if dropped > 0 {
        println!(
            "|   (bridge QoS {qos}: {events} stored, {dropped} dropped at the full queue) | | |"
        );
    }
    events as f64 / elapsed
}

async fn gateway(qos: u8, sync_always: bool) -> f64 {
    let mqtt_port = free_port();
    let mut builder = NatsServer::builder()
        .server_name("bench-gw")
        .extra(&format!("mqtt {{ listen: 127.0.0.1:{mqtt_port} }}"));
    if sync_always {
        builder = builder.sync_always();
    }
    let server = builder.start();
    let nats = Arc::new(server.client().await);
    let mut sub = nats
        .subscribe(TOPIC.replace('/', "."))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let counter = tokio::spawn(async move {
        let mut n = 0;
        while n < MESSAGES {
            if tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .ok()
                .flatten()
                .is_none()
            {
                break;
            }
            n += 1;
        }
        (n, Instant::now())
    });
    // A QoS 1 subscription makes the gateway store QoS 1 publishes in JetStream.
    let mut options = MqttOptions::new("bench-gw-sub", "127.0.0.1", mqtt_port);
    options.set_clean_session(false);
    let (sub_client, mut sub_loop) = AsyncClient::new(options, 10);
    sub_client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("mqtt subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    drop(sub_loop); // disconnected: its messages are kept in its session (JetStream)
    let start = publish(
        mqtt_port,
        if qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        "bench-gw-pub",
    )
    .await;
    let (received, at) = if qos == 1 {
        (MESSAGES, Instant::now())
    } else {
        counter.await.expect("counter")
    };
    received as f64 / at.duration_since(start).as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    nexus_federation::tls::install_crypto_provider();
    println!("{MESSAGES} messages of a plain-number payload on {TOPIC}, loopback, 2 cores\n");
    println!("| path | QoS | msg/s |\n|---|---:|---:|");
    for qos in [1u8, 0] {
        let ours = bridge(qos).await;
        println!("| bridge → signed envelope → fsynced outbox | {qos} | {ours:.0} |");
        let gw = gateway(qos, false).await;
        println!("| nats-server MQTT → JetStream (defaults) | {qos} | {gw:.0} |");
        if qos == 1 {
            let gw_sync = gateway(qos, true).await;
            println!(
                "| nats-server MQTT → JetStream (sync_interval: always) | {qos} | {gw_sync:.0} |"
            );
        }
    }
}
