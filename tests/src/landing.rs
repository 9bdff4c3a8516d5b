//! The test's side of the federation's JetStream paths: a member-like uplink that sends
//! signed events into a hub's ingress until each is acknowledged, and readers of the
//! root's landing stream that count what landed and the copies of each event_id; the
//! member's numbered events, its chain presented to the hub, and the [`Report`] every volume
//! test prints and asserts.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_federation::trust::{key_id, CHAINS_BUCKET};
use nexus_federation::{subject, Encoding, Envelope, NatsProvenance as _, SignedEvent};
use nexus_policies::SecretKey;
use tokio::time::Instant;

use crate::fleet::{self, Fleet};
use crate::wait::{wait_until, POLL_INTERVAL};

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

/// `n` sensor events `event` (e.g. `iot.chaos`) of the fleet's member, signed with
/// `member`, numbered in their payload (`n`: 0, 1, …) and as the member's outbox numbers
/// them: `epoch` (a UUIDv7), `seq` 1..=n (the root records what landed by these numbers).
pub fn numbered_events(member: &SecretKey, event: &str, epoch: &str, n: usize) -> Vec<SignedEvent> {
    (0..n)
        .map(|i| {
            let mut payload = serde_json::Map::new();
            payload.insert("n".into(), i.into());
            let mut envelope = Envelope::new(
                event,
                fleet::MEMBER,
                Some(fleet::TENANT),
                payload,
                time::OffsetDateTime::now_utc(),
            );
            envelope.epoch = Some(epoch.to_owned());
            envelope.seq = Some(i as u64 + 1);
            SignedEvent::seal(&envelope, Encoding::Json, member).expect("seal")
        })
        .collect()
}

/// The fleet's member key, after presenting its token chain to the hub (as the member's
/// uplink does), once the hub's ingress has created its chain registry (bounded by
/// `deadline`).
pub async fn present_member(
    fleet: &Fleet,
    hub_js: &jetstream::Context,
    deadline: Duration,
) -> SecretKey {
    let registry = wait_until("the hub's chain registry exists", deadline, async || {
        hub_js.get_key_value(CHAINS_BUCKET).await
    })
    .await;
    let member = SecretKey::parse(
        &std::fs::read_to_string(&fleet.member_key.secret).expect("member key file"),
    )
    .expect("member key");
    let chain = Bytes::from(std::fs::read(fleet.token_path(fleet::MEMBER)).expect("token"));
    registry
        .put(key_id(&member.public()), chain)
        .await
        .expect("present the member's chain to the hub");
    member
}

/// What landed of the events a test sent: the counts every volume test prints and asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Distinct events sent.
    pub sent: usize,
    /// Of those, the distinct event_ids in the landing (what a consumer deduplicating by
    /// event_id delivers).
    pub landed: usize,
    /// Sent but not in the landing.
    pub lost: usize,
    /// Copies in the stream beyond one per event (JetStream's window and the root's record
    /// of what landed should make these 0 too; a consumer deduplicating is correct either way).
    pub duplicates_in_stream: usize,
    /// Copies a consumer deduplicating by event_id would still see: 0 by construction.
    pub duplicates_after_dedup: usize,
}

impl Report {
    /// Compares the copies of each event_id in the landing ([`read_landed`]) with the
    /// event_ids `sent`; returns the report and the first few lost ids.
    pub fn compare(sent: &[String], copies: &HashMap<String, u32>) -> (Report, Vec<String>) {
        let wanted: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
        let lost: Vec<String> = wanted
            .iter()
            .filter(|id| !copies.contains_key(**id))
            .map(|id| (*id).to_owned())
            .collect();
        let mine = || copies.iter().filter(|(id, _)| wanted.contains(id.as_str()));
        let landed = mine().count();
        let in_stream: usize = mine().map(|(_, n)| *n as usize).sum();
        let report = Report {
            sent: wanted.len(),
            landed,
            lost: lost.len(),
            duplicates_in_stream: in_stream - landed,
            duplicates_after_dedup: 0,
        };
        (report, lost.into_iter().take(5).collect())
    }

    /// Nothing lost, each event once after dedup by event_id.
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.duplicates_after_dedup == 0 && self.landed == self.sent
    }
}
