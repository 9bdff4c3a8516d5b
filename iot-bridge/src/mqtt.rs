//! The two MQTT versions behind one small interface, so that the bridge has one poller, one
//! mapping and one store-then-ack pipeline for both.
//!
//! rumqttc has a client per version (`rumqttc` for 3.1.1, `rumqttc::v5` for 5) with the
//! same shape but different types. [`Mqtt`] names what the bridge needs of one: build a
//! client and its event loop from the common [`Settings`], poll the loop into an
//! [`Incoming`], read a publish, ack it without waiting, subscribe. [`V311`] and [`V5`]
//! implement it; everything else is generic over it.
//!
//! What MQTT 5 needs beyond 3.1.1 for the same guarantees:
//! - A persistent session is `clean_start = false` **and** a session expiry interval
//!   above 0: with the default 0, the broker drops the session (subscriptions and queued
//!   QoS 1 messages) the moment the connection ends.
//! - The maximum packet size is also announced to the broker, which then silently
//!   discards larger messages instead of sending them: we announce MQTT's maximum, so that
//!   oversized payloads reach us and are dead-lettered like with 3.1.1.
//! - Receive Maximum bounds how many unacked QoS 1 messages the broker sends us: the queue
//!   plus what is being stored, so the broker's window matches ours.
//! - Topics are bytes in rumqttc's v5 types: a topic that is not UTF-8 is dead-lettered
//!   (`invalid_utf8`), never mapped.
//! - Topic aliases stay off (we announce no Topic Alias Maximum), so every publish carries
//!   its topic.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as packet5;
use rumqttc::{NetworkOptions, QoS, Transport};

/// MQTT's largest packet (the remaining-length field's maximum).
pub(crate) const MQTT_MAX_PACKET: usize = 268_435_455;

/// What both versions are configured with.
#[derive(Clone)]
pub(crate) struct Settings {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    /// QoS 1: a persistent session; QoS 0: a clean one.
    pub persistent: bool,
    /// MQTT 5: how long the broker keeps the persistent session after a disconnect.
    pub session_expiry: Duration,
    pub credentials: Option<(String, String)>,
    pub transport: Transport,
    /// rumqttc's request channel: acks and subscribe requests.
    pub requests: usize,
    /// MQTT 5: the most unacked QoS 1 messages the broker may send us.
    pub receive_maximum: u16,
    pub tcp_nodelay: bool,
}

impl Settings {
    fn network(&self) -> NetworkOptions {
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(self.tcp_nodelay);
        network.set_connection_timeout(10);
        network
    }
}

/// An event of the connection, reduced to what the bridge acts on.
#[derive(Debug)]
pub(crate) enum Incoming<P> {
    /// Connected (again).
    ConnAck { session_present: bool },
    /// A message from a sensor.
    Publish(P),
    /// The answer to our subscriptions: `refused` when the broker refused any.
    SubAck { refused: bool, codes: String },
    /// The broker closes the connection and says why (MQTT 5 only).
    Disconnect { reason: String },
    /// Anything else (pings, acks of our own requests, outgoing packets).
    Other,
}

/// One MQTT version, as the bridge uses it.
pub(crate) trait Mqtt: Send + Sync + 'static {
    /// An incoming PUBLISH.
    type Publish: Send + Sync + 'static;
    /// The request side (acks, subscriptions); cheap to clone.
    type Client: Clone + Send + Sync + 'static;
    /// The connection; polled by one task.
    type EventLoop: Send + 'static;

    /// The version, for logs.
    const NAME: &'static str;

    /// A client and its (not yet connected) event loop.
    fn open(settings: &Settings) -> (Self::Client, Self::EventLoop);

    /// The next event; an `Err` (described) means the connection is down, and the next
    /// poll reconnects.
    fn poll(
        eventloop: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<Incoming<Self::Publish>, String>> + Send + '_;

    /// The topic, or `None` when it is not UTF-8.
    fn topic(publish: &Self::Publish) -> Option<&str>;

    /// The topic for logs and the dead-letter store.
    fn topic_lossy(publish: &Self::Publish) -> Cow<'_, str> {
        match Self::topic(publish) {
            Some(topic) => Cow::Borrowed(topic),
            None => Cow::Owned(Self::raw_topic_lossy(publish)),
        }
    }

    /// The topic with invalid UTF-8 replaced.
    fn raw_topic_lossy(publish: &Self::Publish) -> String;

    fn payload(publish: &Self::Publish) -> &[u8];

    /// The delivered QoS (0 or 1; a QoS 2 publish counts as 1).
    fn at_least_once(publish: &Self::Publish) -> bool;

    /// The QoS as a digit, for the dead-letter store.
    fn qos_digit(publish: &Self::Publish) -> u8;

    /// Hands the acknowledgement of `publish` to the event loop without waiting: `false`
    /// when the request channel is full (try again) or closed (shutting down).
    fn try_ack(client: &Self::Client, publish: &Self::Publish) -> bool;

    /// Queues one SUBSCRIBE for all `filters`.
    fn subscribe(
        client: Self::Client,
        filters: Vec<String>,
        at_least_once: bool,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static;

    /// Queues a DISCONNECT if there is room; no wait.
    fn try_disconnect(client: &Self::Client);
}

/// MQTT 3.1.1 (rumqttc's v4 client).
pub(crate) struct V311;

impl Mqtt for V311 {
    type Publish = rumqttc::Publish;
    type Client = rumqttc::AsyncClient;
    type EventLoop = rumqttc::EventLoop;

    const NAME: &'static str = "3.1.1";

    fn open(s: &Settings) -> (Self::Client, Self::EventLoop) {
        let mut options = rumqttc::MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            .set_keep_alive(s.keep_alive)
            .set_clean_session(!s.persistent)
            .set_manual_acks(true)
            .set_max_packet_size(MQTT_MAX_PACKET, 64 * 1024)
            .set_request_channel_capacity(s.requests)
            .set_transport(s.transport.clone());
        if let Some((user, password)) = &s.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, s.requests);
        eventloop.set_network_options(s.network());
        (client, eventloop)
    }

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Incoming<Self::Publish>, String> {
        use rumqttc::{Event, Packet, SubscribeReasonCode};
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Ok(Incoming::ConnAck {
                session_present: ack.session_present,
            }),
            Ok(Event::Incoming(Packet::Publish(publish))) => Ok(Incoming::Publish(publish)),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Ok(Incoming::SubAck {
                refused: ack.return_codes.contains(&SubscribeReasonCode::Failure),
                codes: format!("{:?}", ack.return_codes),
            }),
            Ok(_) => Ok(Incoming::Other),
            Err(error) => Err(error.to_string()),
        }
    }

    fn topic(publish: &Self::Publish) -> Option<&str> {
        Some(&publish.topic)
    }

    fn raw_topic_lossy(publish: &Self::Publish) -> String {
        publish.topic.clone()
    }

    fn payload(publish: &Self::Publish) -> &[u8] {
        &publish.payload
    }

    fn at_least_once(publish: &Self::Publish) -> bool {
        publish.qos != QoS::AtMostOnce
    }

    fn qos_digit(publish: &Self::Publish) -> u8 {
        publish.qos as u8
    }

    fn try_ack(client: &Self::Client, publish: &Self::Publish) -> bool {
        client.try_ack(publish).is_ok()
    }

    fn subscribe(
        client: Self::Client,
        filters: Vec<String>,
        at_least_once: bool,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let qos = if at_least_once {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let filters: Vec<rumqttc::SubscribeFilter> = filters
            .into_iter()
            .map(|f| rumqttc::SubscribeFilter::new(f, qos))
            .collect();
        async move {
            client
                .subscribe_many(filters)
                .await
                .map_err(|e| e.to_string())
        }
    }

    fn try_disconnect(client: &Self::Client) {
        let _ = client.try_disconnect();
    }
}

/// MQTT 5 (rumqttc's v5 client).
pub(crate) struct V5;

impl Mqtt for V5 {
    type Publish = packet5::Publish;
    type Client = v5::AsyncClient;
    type EventLoop = v5::EventLoop;

    const NAME: &'static str = "5";

    fn open(s: &Settings) -> (Self::Client, Self::EventLoop) {
        let mut options = v5::MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            // rumqttc's v5 options refuse (panic on) a keep-alive under 5 s: the config
            // validation keeps it at 5 s or more.
            .set_keep_alive(s.keep_alive.max(Duration::from_secs(5)))
            .set_clean_start(!s.persistent)
            .set_manual_acks(true)
            // Also our incoming cap (rumqttc's default is 10 KiB).
            .set_max_packet_size(Some(MQTT_MAX_PACKET as u32))
            .set_receive_maximum(Some(s.receive_maximum.max(1)))
            .set_request_channel_capacity(s.requests)
            .set_transport(s.transport.clone())
            .set_network_options(s.network());
        if s.persistent {
            let secs = u32::try_from(s.session_expiry.as_secs())
                .unwrap_or(u32::MAX - 1)
                .clamp(1, u32::MAX - 1);
            options.set_session_expiry_interval(Some(secs));
        }
        if let Some((user, password)) = &s.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        v5::AsyncClient::new(options, s.requests)
    }

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Incoming<Self::Publish>, String> {
        use packet5::{Packet, SubscribeReasonCode};
        match eventloop.poll().await {
            Ok(v5::Event::Incoming(Packet::ConnAck(ack))) => Ok(Incoming::ConnAck {
                session_present: ack.session_present,
            }),
            Ok(v5::Event::Incoming(Packet::Publish(publish))) => Ok(Incoming::Publish(publish)),
            Ok(v5::Event::Incoming(Packet::SubAck(ack))) => Ok(Incoming::SubAck {
                refused: ack
                    .return_codes
                    .iter()
                    .any(|code| !matches!(code, SubscribeReasonCode::Success(_))),
                codes: format!("{:?}", ack.return_codes),
            }),
            Ok(v5::Event::Incoming(Packet::Disconnect(disconnect))) => {
                let detail = disconnect
                    .properties
                    .and_then(|p| p.reason_string)
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                Ok(Incoming::Disconnect {
                    reason: format!("{:?}{detail}", disconnect.reason_code),
                })
            }
            Ok(_) => Ok(Incoming::Other),
            Err(error) => Err(error.to_string()),
        }
    }

    fn topic(publish: &Self::Publish) -> Option<&str> {
        std::str::from_utf8(&publish.topic).ok()
    }

    fn raw_topic_lossy(publish: &Self::Publish) -> String {
        String::from_utf8_lossy(&publish.topic).into_owned()
    }

    fn payload(publish: &Self::Publish) -> &[u8] {
        &publish.payload
    }

    fn at_least_once(publish: &Self::Publish) -> bool {
        publish.qos != v5::mqttbytes::QoS::AtMostOnce
    }

    fn qos_digit(publish: &Self::Publish) -> u8 {
        publish.qos as u8
    }

    fn try_ack(client: &Self::Client, publish: &Self::Publish) -> bool {
        client.try_ack(publish).is_ok()
    }

    fn subscribe(
        client: Self::Client,
        filters: Vec<String>,
        at_least_once: bool,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let qos = if at_least_once {
            v5::mqttbytes::QoS::AtLeastOnce
        } else {
            v5::mqttbytes::QoS::AtMostOnce
        };
        let filters: Vec<packet5::Filter> = filters
            .into_iter()
            .map(|f| packet5::Filter::new(f, qos))
            .collect();
        async move {
            client
                .subscribe_many(filters)
                .await
                .map_err(|e| e.to_string())
        }
    }

    fn try_disconnect(client: &Self::Client) {
        let _ = client.try_disconnect();
    }
}
