//! The test's side of the federation's JetStream paths: a member-like uplink that sends
//! signed events into a hub's ingress until each is acknowledged, and readers of the
//! root's landing stream that count what landed and the copies of each event_id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::StreamExt as _;
use nexus_federation::{subject, NatsProvenance as _, SignedEvent};
use tokio::time::Instant;

use crate::wait::POLL_INTERVAL;

/// The root's landing stream.
pub const LANDING: &str = "NEXUS_EVENTS";
/// Events sent before their PubAcks are awaited.
pub const BATCH: usize = 256;

/// How long [`member_uplink`] goes on without a single PubAck before it gives up: longer
/// than any outage a test stages (the longest is 20 s), shorter than the test runner's
/// 2-minute limit, so a stuck uplink fails with what it saw instead of being killed.
pub const UPLINK_STALL_DEADLINE: Duration = Duration::from_secs(90);

/// The member's uplink, played by the test: a batch of JetStream publishes into the hub's
/// ingress, then every PubAck; what was not acked is sent again after a short backoff.
/// While the client is disconnected it waits for the link instead of queueing into the
/// client. `acked` counts acknowledged events; returns the publish attempts beyond one per
/// event.
///
/// Panics, with the counts and the last publish error, once [`UPLINK_STALL_DEADLINE`]
/// passes without an acknowledgement (the link down all that time, or every publish
/// failing).
pub async fn member_uplink(
    client: async_nats::Client,
    js: jetstream::Context,
    events: Vec<SignedEvent>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let total = events.len();
    let mut resent = 0;
    let mut stalled_since = Instant::now();
    let mut last_error: Option<String> = None;
    for chunk in events.chunks(BATCH) {
        let mut pending: Vec<&SignedEvent> = chunk.iter().collect();
        let mut first = true;
        while !pending.is_empty() {
            let state = |last_error: &Option<String>| {
                format!(
                    "{} of {total} events acknowledged, {} of this batch waiting, no PubAck \
                     for {UPLINK_STALL_DEADLINE:?}; last publish error: {}",
                    acked.load(Ordering::SeqCst),
                    pending.len(),
                    last_error.as_deref().unwrap_or("none"),
                )
            };
            let remaining = UPLINK_STALL_DEADLINE.saturating_sub(stalled_since.elapsed());
            if !first {
                assert!(
                    !remaining.is_zero(),
                    "the test's member uplink gets no PubAck from the hub's ingress ({})",
                    state(&last_error)
                );
                resent += pending.len();
                tokio::time::sleep(Duration::from_millis(200).min(remaining)).await;
            }
            first = false;
            let remaining = UPLINK_STALL_DEADLINE.saturating_sub(stalled_since.elapsed());
            // A plain loop under a timeout, not `wait_until`: its async closure would borrow
            // the client in a way `tokio::spawn` (which runs this) does not accept as Send.
            let reconnected = tokio::time::timeout(remaining, async {
                while client.connection_state() != async_nats::connection::State::Connected {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            })
            .await;
            assert!(
                reconnected.is_ok(),
                "the test's member uplink stays disconnected from the hub's server ({})",
                state(&last_error)
            );
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
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }))
            .await;
            let before = pending.len();
            let mut failed = Vec::new();
            for (event, result) in pending.into_iter().zip(results) {
                if let Err(error) = result {
                    last_error = Some(error);
                    failed.push(event);
                }
            }
            pending = failed;
            if pending.len() < before {
                stalled_since = Instant::now();
            }
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
