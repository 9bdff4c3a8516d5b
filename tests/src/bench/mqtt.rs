//! MQTT for the benchmarks: a rumqttc publisher timed to its last PUBACK, and nats-server's
//! own MQTT gateway (the anchor of the IoT bridge: the same publisher into JetStream).

use std::fmt;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::stats::{CpuUse, MachineCpu};
use crate::NatsServer;

/// How many QoS 1 publishes the publishers keep unacknowledged.
pub const IN_FLIGHT: u16 = 100;

/// A port that was free a moment ago (for listeners that cannot pick their own).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Publishes `messages` plain-number payloads on `topic` at `qos` (in flight
/// [`IN_FLIGHT`]); resolves when every PUBACK arrived (QoS 1) or everything was written
/// (QoS 0), with the time and the machine's CPU counters at the first publish (connection
/// set-up is not timed).
pub async fn publish(
    port: u16,
    qos: QoS,
    client_id: &str,
    topic: &str,
    messages: usize,
) -> (Instant, MachineCpu) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(IN_FLIGHT);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let cpu = MachineCpu::now();
    let start = Instant::now();
    let topic = topic.to_owned();
    let publisher = tokio::spawn(async move {
        for i in 0..messages {
            let payload = format!("{}.5", i % 40);
            client
                .publish(topic.as_str(), qos, false, payload)
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    let mut sent = 0;
    while (qos == QoS::AtLeastOnce && acked < messages)
        || (qos == QoS::AtMostOnce && sent < messages)
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
    (start, cpu)
}

/// Messages carried in a timed window, and what the machine spent on them.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Messages carried.
    pub messages: usize,
    /// The timed window.
    pub elapsed: Duration,
    /// The whole machine's CPU over the window.
    pub cpu: CpuUse,
}

impl Throughput {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// `msg/s | µs/msg | busy cores`, three cells of a markdown row.
impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.0} | {}", self.rate(), self.cpu)
    }
}

/// nats-server's MQTT listener taking `messages` publishes on `topic` into JetStream (a QoS 1
/// session is subscribed, so that QoS 1 messages are stored), at nats-server's defaults or
/// with `sync_interval: always`. QoS 1 is timed from the first publish until the publisher
/// has every PUBACK; QoS 0 until a NATS subscriber saw every message.
pub async fn gateway(qos: QoS, sync_always: bool, topic: &str, messages: usize) -> Throughput {
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
        .subscribe(topic.replace('/', "."))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let counter = tokio::spawn(async move {
        let mut n = 0;
        while n < messages {
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
    let mut options = MqttOptions::new("bench-gw-sub", "127.0.0.1", mqtt_port);
    options.set_clean_session(false);
    let (sub_client, mut sub_loop) = AsyncClient::new(options, 10);
    sub_client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("mqtt subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    drop(sub_loop); // disconnected: its messages are kept in its session (JetStream)
    let (start, cpu) = publish(mqtt_port, qos, "bench-gw-pub", topic, messages).await;
    let (received, at) = if qos == QoS::AtLeastOnce {
        counter.abort();
        (messages, Instant::now())
    } else {
        counter.await.expect("counter")
    };
    Throughput {
        messages: received,
        elapsed: at.duration_since(start),
        cpu: cpu.since(received as u64),
    }
}
