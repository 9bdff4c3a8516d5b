//! The test's side of the federation's JetStream paths: a member-like uplink that sends
//! signed events into a hub's ingress until each is acknowledged, and readers of the
//! root's landing stream that count what landed and the copies of each event_id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::StreamExt as _;
use nexus_federation::{subject, SignedEvent};
use tokio::time::Instant;

/// The root's landing stream.
pub const LANDING: &str = "NEXUS_EVENTS";
/// Events sent before their PubAcks are awaited.
pub const BATCH: usize = 256;

/// The member's uplink, played by the test: a batch of JetStream publishes into the hub's
/// ingress, then every PubAck; what was not acked is sent again after a short backoff.
/// While the client is disconnected it waits for the link instead of queueing into the
/// client. `acked` counts acknowledged events; returns the publish attempts beyond one per
/// event.
pub async fn member_uplink(
    client: async_nats::Client,
    js: jetstream::Context,
    events: Vec<SignedEvent>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let mut resent = 0;
    for chunk in events.chunks(BATCH) {
        let mut pending: Vec<&SignedEvent> = chunk.iter().collect();
        let mut first = true;
        while !pending.is_empty() {
            if !first {
                resent += pending.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            first = false;
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut acks = Vec::with_capacity(pending.len());
            for event in &pending {
                let message = PublishMessage::build()
                    .payload(event.body.clone())
                    .headers(event.headers());
                acks.push(
                    js.send_publish(subject::ingress_subject(&event.subject), message)
                        .await,
                );
            }
            let results = futures::future::join_all(acks.into_iter().map(|sent| async move {
                match sent {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }))
            .await;
            let before = pending.len();
            pending = pending
                .into_iter()
                .zip(results)
                .filter_map(|(event, ok)| (!ok).then_some(event))
                .collect();
            acked.fetch_add(before - pending.len(), Ordering::SeqCst);
        }
    }
    resent
}

/// How many messages the landing stream holds on `filter` (stream info; 0 if none yet).
pub async fn landed_count(root_js: &jetstream::Context, filter: &str) -> usize {
    let Ok(stream) = root_js.get_stream(LANDING).await else {
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

/// Waits (bounded) until the landing holds at least `n` on `filter`; returns the last count
/// seen, reached or not (the caller asserts with every count).
pub async fn wait_landed(
    root_js: &jetstream::Context,
    filter: &str,
    n: usize,
    deadline: Duration,
) -> usize {
    let end = Instant::now() + deadline;
    loop {
        let count = landed_count(root_js, filter).await;
        if count >= n || Instant::now() >= end {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every message on `filter` in the landing, as a consumer would, and counts the
/// copies of each event_id.
pub async fn read_landed(root_js: &jetstream::Context, filter: &str) -> HashMap<String, u32> {
    let mut copies = HashMap::new();
    if landed_count(root_js, filter).await == 0 {
        return copies;
    }
    let stream = root_js.get_stream(LANDING).await.expect("landing");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the landing stream answers within 10 s")
            .expect("the consumer does not end")
            .expect("a message");
        let body: serde_json::Value =
            serde_json::from_slice(&next.payload).expect("a JSON envelope");
        let id = body["event_id"].as_str().expect("event_id").to_owned();
        *copies.entry(id).or_insert(0) += 1;
        if next.info().expect("JetStream info").pending == 0 {
            return copies;
        }
    }
}
