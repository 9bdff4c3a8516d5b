//! MQTT → envelope → outbox throughput and latency of the IoT bridge, side by side in one
//! run with nats-server's built-in MQTT listener taking the same payloads into JetStream.
//!
//! `cargo build --release -p nexus-agent && cargo bench -p nexus-e2e --bench iot_bridge`
//! (needs mosquitto and nats-server, see `./dev setup`; the release agent is for the
//! end-to-end latency row). Not a test: it prints tables (docs/benchmarks.md).
//!
//! - **bridge**: a rumqttc publisher → mosquitto → the bridge (persistent session, manual
//!   acks) → map + validate + seal (ed25519) → `Outbox::push` (SQLite, fsynced group
//!   commits) → PUBACK. Timed from the first publish until the outbox holds every event.
//! - **gateway**: the same publisher → nats-server's MQTT listener → JetStream. Timed from
//!   the first publish until every PUBACK (QoS 1) arrived, or until a subscriber saw every
//!   message (QoS 0). Once at its defaults (PubAck before fsync) and once with
//!   `sync_interval: always`.
//!
//! - **TCP_NODELAY**: the bridge's own socket (its writes are PUBACKs, SUBSCRIBEs and
//!   pings) with `Bridge::set_tcp_nodelay` on (the agent's setting) and off.
//!
//! Latency: a paced publisher (TCP_NODELAY on, so that its own Nagle does not count) sends
//! each message's index as its payload and notes when; the receiving end notes when each
//! index arrives:
//! - bridge in the process → the event is readable in the fsynced outbox (a task drains it
//!   as the uplink would);
//! - bridge in the member agent (release build) → member outbox → uplink → hub → root →
//!   a NATS subscriber on the root: the whole path a reading takes;
//! - gateway → a NATS subscriber on the gateway's server.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nexus_config::{IotConfig, MetricRule, MqttProtocol, PayloadFormat, SensorRule};
use nexus_e2e::bench::mqtt::{self, free_port};
use nexus_e2e::bench::stats::MachineCpu;
use nexus_e2e::{fleet, payload_json, Fleet, Mosquitto, NatsServer};
use nexus_federation::Outbox;
use nexus_federation::OutboxOptions;
use nexus_iot_bridge::Bridge;
use nexus_policies::SecretKey;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 20_000;
/// Messages per latency run.
const LATENCY_MESSAGES: usize = 3_000;
const TOPIC: &str = "sensors/bench-01/temperature";

/// Publishes MESSAGES on TOPIC at `qos` (see [`mqtt::publish`]).
async fn publish(port: u16, qos: QoS, client_id: &str) -> (Instant, MachineCpu) {
    mqtt::publish(port, qos, client_id, TOPIC, MESSAGES).await
}

/// The bridge's `[iot]` for a broker on `port`.
fn bridge_config(port: u16, qos: u8, protocol: MqttProtocol) -> IotConfig {
    IotConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        host: "127.0.0.1".into(),
        port,
        tls: None,
        client_id: format!("bench-bridge-{qos}"),
        username: None,
        password: None,
        protocol,
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
    }
}

/// A bridge in this process on its own mosquitto and fsynced outbox, connected.
struct InProcess {
    broker: Mosquitto,
    outbox: Outbox,
    stats: Arc<nexus_iot_bridge::Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), nexus_federation::subsystem::SubsystemError>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(qos: u8, protocol: MqttProtocol, nodelay: bool) -> Self {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(&dir.path().join("outbox.db"), OutboxOptions::new(1 << 30))
            .expect("outbox");
        let key = SecretKey::from_seed(&[3; 32]).expect("key");
        let mut bridge = Bridge::new(
            bridge_config(broker.port(), qos, protocol),
            "edge-bench",
            "salon-001",
            key,
            outbox.clone(),
            None,
        )
        .expect("bridge");
        bridge.set_tcp_nodelay(nodelay);
        let stats = bridge.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge.run(shutdown.clone()));
        while !stats.connected.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The subscription is confirmed shortly after the ConnAck.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self {
            broker,
            outbox,
            stats,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn bridge(qos: u8, protocol: MqttProtocol, nodelay: bool) -> String {
    let site = InProcess::start(qos, protocol, nodelay).await;
    let stats = Arc::clone(&site.stats);
    let (start, cpu) = publish(
        site.broker.port(),
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
    let cpu = cpu.since(events);
    let dropped = stats.dropped_qos0.load(Ordering::Relaxed);
    site.stop().await;
    if dropped > 0 {
        println!(
            "|   (bridge QoS {qos}: {events} stored, {dropped} dropped at the full queue) | | | | |"
        );
    }
    format!("{:.0} | {cpu}", events as f64 / elapsed)
}

/// The ceiling of the extra hop: mosquitto → a plain rumqttc subscriber (persistent
/// session, automatic acks, no work per message), timed like the bridge until it has seen
/// every message.
async fn mosquitto_ceiling(qos: u8) -> String {
    let broker = Mosquitto::start();
    let mut options = MqttOptions::new("bench-plain-sub", "127.0.0.1", broker.port());
    options.set_clean_session(qos == 0);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    eventloop.set_network_options(network);
    let q = if qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    client.subscribe(TOPIC, q).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let counter = tokio::spawn(async move {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while n < MESSAGES && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => n += 1,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        (n, Instant::now(), client)
    });
    let (start, cpu) = publish(broker.port(), q, "bench-plain-pub").await;
    let (n, at, _client) = counter.await.expect("counter");
    let cpu = cpu.since(n as u64);
    format!(
        "{:.0} | {cpu}",
        n as f64 / at.duration_since(start).as_secs_f64()
    )
}

/// nats-server's MQTT listener → JetStream (see [`mqtt::gateway`]): `msg/s | CPU`.
async fn gateway(qos: u8, sync_always: bool) -> String {
    let qos = if qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    mqtt::gateway(qos, sync_always, TOPIC, MESSAGES)
        .await
        .to_string()
}

/// Publishes `count` messages at `rate` per second (TCP_NODELAY on), each payload its
/// index (plus `base`); returns when each was handed to the client.
async fn paced_publish(
    port: u16,
    count: usize,
    rate: u32,
    client_id: &str,
    base: usize,
) -> Vec<Instant> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let publisher = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let period = Duration::from_secs(1) / rate;
        let mut sent = Vec::with_capacity(count);
        for i in 0..count {
            tokio::time::sleep_until(start + period * i as u32).await;
            sent.push(Instant::now());
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, (base + i).to_string())
                .await
                .expect("publish");
        }
        (client, sent)
    });
    let mut acked = 0;
    while acked < count {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
    let (client, sent) = publisher.await.expect("publisher");
    let _ = client.disconnect().await;
    for _ in 0..10 {
        if eventloop.poll().await.is_err() {
            break;
        }
    }
    sent
}

/// When each index arrived, as read by `next` (`None`: the stream is done).
async fn arrivals<F, Fut>(count: usize, mut next: F) -> Vec<Option<Instant>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Vec<usize>>>,
{
    let mut at = vec![None; count];
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < count && Instant::now() < deadline {
        let Ok(Some(indices)) = tokio::time::timeout(Duration::from_secs(20), next()).await else {
            break;
        };
        let now = Instant::now();
        for i in indices {
            if let Some(slot) = at.get_mut(i).filter(|slot| slot.is_none()) {
                *slot = Some(now);
                seen += 1;
            }
        }
    }
    at
}

/// | p50 | p99 | max | lost | of arrival − send, in ms.
fn latency_row(sent: &[Instant], at: &[Option<Instant>]) -> String {
    let mut ms: Vec<f64> = sent
        .iter()
        .zip(at)
        .filter_map(|(s, a)| a.map(|a| a.duration_since(*s).as_secs_f64() * 1e3))
        .collect();
    ms.sort_by(f64::total_cmp);
    let lost = sent.len() - ms.len();
    let pick = |q: f64| {
        ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "{:.2} | {:.2} | {:.2} | {lost}",
        pick(0.50),
        pick(0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

/// The index carried by a sensor envelope's value.
fn envelope_index(body: &[u8]) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["payload"]["value"].as_f64().map(|v| v as usize)
}

/// Publish → fsynced in the in-process bridge's outbox.
async fn latency_in_process(count: usize, rate: u32, nodelay: bool) -> String {
    let site = InProcess::start(1, MqttProtocol::V311, nodelay).await;
    let outbox = site.outbox.clone();
    let drain = tokio::spawn(arrivals(count, move || {
        let outbox = outbox.clone();
        async move {
            let batch = outbox.next_batch(512).await;
            let seqs: Vec<u64> = batch.iter().map(|(seq, _)| *seq).collect();
            let indices = batch
                .iter()
                .filter_map(|(_, event)| envelope_index(&event.body))
                .collect();
            outbox.ack(&seqs).await;
            Some(indices)
        }
    }));
    let sent = paced_publish(site.broker.port(), count, rate, "bench-lat-pub", 0).await;
    let at = drain.await.expect("drain");
    site.stop().await;
    latency_row(&sent, &at)
}

/// Collects the indices of the messages of a NATS subscription.
fn from_subscriber(
    sub: async_nats::Subscriber,
    index: fn(&async_nats::Message) -> Option<usize>,
) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<usize>>> + Send>>
{
    let sub = Arc::new(tokio::sync::Mutex::new(sub));
    move || {
        let sub = Arc::clone(&sub);
        Box::pin(async move {
            let message = sub.lock().await.next().await?;
            Some(index(&message).into_iter().collect())
        })
    }
}

/// Publish → the root's NATS, through the member, hub and root agents (release build).
/// `durable`: the hub's and the root's nats-servers with `sync_interval: always`, as the
/// configs we ship (config/nats/); otherwise at nats-server's defaults.
async fn latency_end_to_end(count: usize, rate: u32, durable: bool) -> String {
    let server = || {
        if durable {
            NatsServer::builder().sync_always().start()
        } else {
            NatsServer::start()
        }
    };
    let fleet = Fleet::with_servers(server(), server(), NatsServer::start());
    let broker = Mosquitto::start();
    let root = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("root nats");
    let sub = root
        .subscribe("nexus.salon-001.iot.sensor_data")
        .await
        .expect("subscribe");
    root.flush().await.expect("flush");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(
        fleet::MEMBER,
        &format!(
            "[iot]\nurl = \"{}\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
            broker.url()
        ),
    );
    let mut next = from_subscriber(sub, |m| {
        payload_json(m)["payload"]["value"]
            .as_f64()
            .map(|v| v as usize)
    });
    // Warm up until a reading crosses the whole path (agents connected, streams made).
    let warm = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            // Index far beyond `count`: ignored by `arrivals` if it comes late.
            let _ = paced_publish(broker.port(), 1, 1, "bench-e2e-warm", 1_000_000).await;
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), next()).await {
                break;
            }
        }
    })
    .await;
    if warm.is_err() {
        return format!(
            "(no reading reached the root: {})",
            member
                .log()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let collect = tokio::spawn(arrivals(count, next));
    let sent = paced_publish(broker.port(), count, rate, "bench-e2e-pub", 0).await;
    let at = collect.await.expect("collect");
    latency_row(&sent, &at)
}

/// Publish → a NATS subscriber on the gateway's server.
async fn latency_gateway(count: usize, rate: u32, sync_always: bool) -> String {
    let mqtt_port = free_port();
    let mut builder = NatsServer::builder()
        .server_name("bench-gw-lat")
        .extra(&format!("mqtt {{ listen: 127.0.0.1:{mqtt_port} }}"));
    if sync_always {
        builder = builder.sync_always();
    }
    let server = builder.start();
    let nats = server.client().await;
    let sub = nats
        .subscribe(TOPIC.replace('/', "."))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    // A QoS 1 session subscribed: QoS 1 publishes are stored in JetStream.
    let mut options = MqttOptions::new("bench-gw-lat-sub", "127.0.0.1", mqtt_port);
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
    drop(sub_loop);
    let collect = tokio::spawn(arrivals(
        count,
        from_subscriber(sub, |m| std::str::from_utf8(&m.payload).ok()?.parse().ok()),
    ));
    let sent = paced_publish(mqtt_port, count, rate, "bench-gw-lat-pub", 0).await;
    let at = collect.await.expect("collect");
    latency_row(&sent, &at)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    nexus_federation::tls::install_crypto_provider();
    println!("{MESSAGES} messages of a plain-number payload on {TOPIC}, loopback, 2 cores\n");
    println!(
        "CPU: the whole machine's busy time (/proc/stat) from the first publish to the end, \
         per message, and the mean number of busy cores\n"
    );
    println!("| path | QoS | msg/s | CPU µs/msg | busy cores |\n|---|---:|---:|---:|---:|");
    for qos in [1u8, 0] {
        let ours = bridge(qos, MqttProtocol::V311, true).await;
        println!("| bridge → signed envelope → fsynced outbox | {qos} | {ours} |");
        let off = bridge(qos, MqttProtocol::V311, false).await;
        println!("| the same, TCP_NODELAY off on the bridge's socket | {qos} | {off} |");
        if qos == 1 {
            let v5 = bridge(qos, MqttProtocol::V5, true).await;
            println!("| the same over MQTT 5 | {qos} | {v5} |");
        }
        let plain = mosquitto_ceiling(qos).await;
        println!("| mosquitto → plain rumqttc subscriber (auto-ack, no work) | {qos} | {plain} |");
        let gw = gateway(qos, false).await;
        println!("| nats-server MQTT → JetStream (defaults) | {qos} | {gw} |");
        if qos == 1 {
            let gw_sync = gateway(qos, true).await;
            println!(
                "| nats-server MQTT → JetStream (sync_interval: always) | {qos} | {gw_sync} |"
            );
        }
    }
    let count = LATENCY_MESSAGES;
    println!("\nLatency, QoS 1, {count} messages paced at the given rate, publish → arrival, ms\n");
    println!("| path | msg/s | p50 | p99 | max | lost |\n|---|---:|---:|---:|---:|---:|");
    for rate in [500u32, 5000] {
        let on = latency_in_process(count, rate, true).await;
        println!("| bridge → fsynced outbox (in process) | {rate} | {on} |");
        let off = latency_in_process(count, rate, false).await;
        println!("| the same, TCP_NODELAY off | {rate} | {off} |");
        let gw = latency_gateway(count, rate, false).await;
        println!("| nats-server MQTT → NATS subscriber (defaults) | {rate} | {gw} |");
        let gw_sync = latency_gateway(count, rate, true).await;
        println!("| the same, sync_interval: always | {rate} | {gw_sync} |");
    }
    let e2e = latency_end_to_end(count, 500, false).await;
    println!("| member agent → hub → root → NATS subscriber on the root | 500 | {e2e} |");
    let e2e = latency_end_to_end(count, 500, true).await;
    println!(
        "| the same, hub and root nats-servers `sync_interval: always` (shipped configs) | 500 | {e2e} |"
    );
}
