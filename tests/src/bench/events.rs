//! Signed events and the JetStream side of the benchmarks: the member's uplink played by
//! the harness (batches with pipelined PubAcks, a window of PubAcks in flight, a paced
//! publisher that signs each event as it sends it), and readers of what a stream holds
//! (counts, and when each event was stored).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use nexus_federation::envelope::Sequence;
use nexus_federation::{Encoding, Envelope, NatsProvenance as _, SignedEvent};
use nexus_policies::SecretKey;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::fleet;

/// A PubAck being awaited.
type AckFuture =
    <async_nats::jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture;

/// The event name of the benchmarks' events (`iot.bench`, a member's sensor-like event).
pub const EVENT: &str = "iot.bench";
/// Its subject at the root.
pub const SUBJECT: &str = "nexus.salon-001.iot.bench";

/// The `epoch` of the events the harness creates: one per process, as one member's outbox
/// database has one.
fn epoch() -> &'static str {
    static EPOCH: OnceLock<String> = OnceLock::new();
    EPOCH.get_or_init(|| uuid::Uuid::now_v7().hyphenated().to_string())
}

/// Event `n`, created now by the fleet's member (`payload: {n, celsius}`, ~270 B as JSON),
/// numbered as the member's outbox numbers its events (this process's epoch, `seq` n + 1:
/// the root records what it landed per source as ranges of these, not one key per event)
/// and signed with `key`.
pub fn sign_event(key: &SecretKey, n: usize) -> SignedEvent {
    let mut payload = serde_json::Map::new();
    payload.insert("n".into(), n.into());
    payload.insert("celsius".into(), (20.0 + (n % 40) as f64 / 10.0).into());
    let mut envelope = Envelope::new(
        EVENT,
        fleet::MEMBER,
        Some(fleet::TENANT),
        payload,
        OffsetDateTime::now_utc(),
    );
    envelope.set_sequence(Some(Sequence {
        epoch: epoch().to_owned(),
        seq: n as u64 + 1,
    }));
    SignedEvent::seal(&envelope, Encoding::Json, key).expect("seal")
}

/// Events `range`, signed with `key` (before any clock starts).
pub fn sign_events(key: &SecretKey, range: Range<usize>) -> Vec<SignedEvent> {
    range.map(|n| sign_event(key, n)).collect()
}

/// The secret key in a key file written by `nexus-agent keygen`.
pub fn read_key(path: &std::path::Path) -> SecretKey {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    SecretKey::parse(&text).unwrap_or_else(|e| panic!("{} is no key: {e}", path.display()))
}

fn message(event: &SignedEvent) -> PublishMessage {
    PublishMessage::build()
        .payload(event.body.clone())
        .headers(event.headers())
}

/// Publishes every event to `to(event)` in batches of `batch`, each batch's PubAcks awaited
/// together (what a member's uplink does); panics on a failed publish (nothing fails on
/// loopback).
pub async fn publish_batches(
    js: &jetstream::Context,
    events: &[SignedEvent],
    batch: usize,
    to: impl Fn(&SignedEvent) -> String,
) {
    for chunk in events.chunks(batch.max(1)) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            acks.push(
                js.send_publish(to(event), message(event))
                    .await
                    .expect("publish"),
            );
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.expect("PubAck");
        }
    }
}

/// Publishes every event to `to(event)` keeping up to `window` PubAcks in flight: the next
/// publish goes out as soon as fewer are outstanding. Panics on a failed publish.
pub async fn publish_window(
    js: &jetstream::Context,
    events: &[SignedEvent],
    window: usize,
    to: impl Fn(&SignedEvent) -> String,
) {
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    for event in events {
        if acks.len() >= window.max(1) {
            if let Some(ack) = acks.next().await {
                ack.expect("PubAck");
            }
        }
        let ack = js
            .send_publish(to(event), message(event))
            .await
            .expect("publish");
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = acks.next().await {
        ack.expect("PubAck");
    }
}

/// Signs and publishes events `range` to `to(event)` at `rate` per second (each event
/// created, i.e. its `ts` set, as it is sent; tokio's timer paces in 1 ms ticks), PubAcks
/// awaited on the side; returns the event_ids once every PubAck arrived.
pub async fn publish_paced(
    js: &jetstream::Context,
    key: &SecretKey,
    range: Range<usize>,
    rate: u32,
    to: impl Fn(&SignedEvent) -> String,
) -> Vec<String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        let mut pending: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                next = rx.recv(), if open => match next {
                    Some(ack) => pending.push(std::future::IntoFuture::into_future(ack)),
                    None => open = false,
                },
                Some(ack) = pending.next(), if !pending.is_empty() => {
                    ack.expect("PubAck");
                }
            }
        }
    });
    let period = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now();
    let mut ids = Vec::with_capacity(range.len());
    for (k, n) in range.enumerate() {
        tokio::time::sleep_until(start + period * u32::try_from(k).unwrap_or(u32::MAX)).await;
        let event = sign_event(key, n);
        let ack = js
            .send_publish(to(&event), message(&event))
            .await
            .expect("publish");
        tx.send(ack).expect("the acker runs");
        ids.push(event.event_id);
    }
    drop(tx);
    acker.await.expect("every PubAck");
    ids
}

/// How many messages `stream` holds on `filter` (0 while the stream does not exist).
pub async fn stream_count(js: &jetstream::Context, stream: &str, filter: &str) -> usize {
    let Ok(stream) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(subjects) = stream.info_with_subjects(filter).await else {
        return 0;
    };
    subjects
        .filter_map(|s| async move { s.ok() })
        .fold(0, |sum, (_, n)| async move { sum + n })
        .await
}

/// Polls (every 20 ms) until `stream` holds at least `n` on `filter`; returns when it saw
/// them. Panics with the count once `deadline` has passed.
pub async fn wait_count(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    n: usize,
    deadline: Duration,
) -> Instant {
    let end = Instant::now() + deadline;
    loop {
        let count = stream_count(js, stream, filter).await;
        if count >= n {
            return Instant::now();
        }
        assert!(
            Instant::now() < end,
            "{stream} holds {count} of {n} on {filter} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One stored copy of an event: when the server stored it and, for an envelope, when it
/// was created (its `ts`, millisecond precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stream's timestamp of the message.
    pub at: OffsetDateTime,
    /// The envelope's `ts`, if the body is a JSON envelope.
    pub created: Option<OffsetDateTime>,
}

/// Every message of `stream` on `filter`, by its `Nats-Msg-Id` (the event_id; else the
/// body's `event_id`), the first copy of each. Empty if the stream holds none.
pub async fn stored(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> HashMap<String, Stored> {
    let mut found = HashMap::new();
    let total = stream_count(js, stream, filter).await;
    if total == 0 {
        return found;
    }
    let consumer = js
        .get_stream(stream)
        .await
        .expect("the stream")
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("{stream} delivers within 10 s"))
            .expect("the consumer does not end")
            .expect("a message");
        let info = next.info().expect("JetStream info");
        let (at, pending) = (info.published, info.pending);
        let body: serde_json::Value = serde_json::from_slice(&next.payload).unwrap_or_default();
        let id = next
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .or_else(|| body["event_id"].as_str().map(str::to_owned));
        let created = body["ts"].as_str().and_then(|ts| {
            OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
        });
        if let Some(id) = id {
            found.entry(id).or_insert(Stored { at, created });
        }
        if pending == 0 {
            return found;
        }
    }
}

/// `later − earlier` as a latency (negative differences, from clock granularity, count as
/// zero).
pub fn between(earlier: OffsetDateTime, later: OffsetDateTime) -> Duration {
    Duration::try_from(later - earlier).unwrap_or_default()
}
