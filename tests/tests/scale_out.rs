//! Scale-out on NATS itself: several agent instances of one hub share its ingress's durable
//! consumer (`ingress.consumer`), each message goes to one of them, and losing an instance
//! loses nothing (its unacked messages are redelivered to the other after `ack_wait`).
//!
//! The root and the hub's two instances are real agents on nats-servers with
//! `sync_interval: always`. The instances have the same config (node id, key, token,
//! `[ingress]`) and different data dirs. The test plays the member's uplink as
//! `tests/tests/chaos.rs` does: it signs events with the member's key and JetStream-publishes
//! them into the hub's ingress, each until its PubAck.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use nexus_e2e::landing::{landed_count, member_uplink, read_landed, wait_landed, LANDING};
use nexus_e2e::{fleet, wait_until, AgentProcess, Fleet, NatsServer};
use nexus_federation::trust::{key_id, CHAINS_BUCKET};
use nexus_federation::{Encoding, Envelope, SignedEvent};
use nexus_policies::SecretKey;

/// The subject of the test's events.
const SUBJECT: &str = "nexus.salon-001.iot.scale";
/// Setup steps (agents up, streams ready).
const SETUP: Duration = Duration::from_secs(30);
/// How long everything may take to land (includes one `ack_wait` of 30 s for what the
/// killed instance held).
const SETTLE: Duration = Duration::from_secs(90);
/// Events sent.
const EVENTS: usize = 2_000;

fn durable_server() -> NatsServer {
    NatsServer::builder().sync_always().start()
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` sensor events signed by the member, numbered in their payload from `from`.
fn events(member: &SecretKey, from: usize, n: usize) -> Vec<SignedEvent> {
    (from..from + n)
        .map(|i| {
            let mut payload = serde_json::Map::new();
            payload.insert("n".into(), i.into());
            let envelope = Envelope::new(
                "iot.scale",
                fleet::MEMBER,
                Some(fleet::TENANT),
                payload,
                time::OffsetDateTime::now_utc(),
            );
            SignedEvent::seal(&envelope, Encoding::Json, member).expect("seal")
        })
        .collect()
}

/// Two instances of the hub (same config, different data dirs) share its ingress consumer.
/// Instance A alone forwards the first events; B joins the same durable consumer while A
/// runs; A is SIGKILLed while the second half is still being sent, and B finishes: all
/// 2,000 events land in the root's stream, each exactly once after dedup by event_id (copies
/// in the stream are reported), and each instance provably
/// forwarded some (A: what landed before B started; B: what landed after A died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_instances_share_the_ingress_and_lose_nothing() {
    let fleet = Fleet::with_servers(durable_server(), durable_server(), NatsServer::start());
    let root = fleet.spawn(fleet::ROOT, "");
    let hub_a = fleet.spawn(fleet::HUB, "");
    let hub_client = fleet.hub_nats.client().await;
    let hub_js = jetstream::new(hub_client.clone());
    let root_js = jetstream::new(fleet.root_nats.client().await);
    let registry = wait_until("the hub's chain registry exists", SETUP, async || {
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
    wait_until("the root's landing stream exists", SETUP, async || {
        root_js.get_stream(LANDING).await
    })
    .await;

    let first = events(&member, 0, EVENTS / 2);
    let second = events(&member, EVENTS / 2, EVENTS - EVENTS / 2);
    let sent: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.event_id.to_string())
        .collect();

    // Phase 1: instance A alone.
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(member_uplink(
        hub_client.clone(),
        hub_js.clone(),
        first,
        Arc::clone(&acked),
    ));
    let by_a_alone = wait_landed(&root_js, SUBJECT, EVENTS / 4, SETTLE).await;
    assert!(
        by_a_alone >= EVENTS / 4,
        "only {by_a_alone} of {EVENTS} landed through instance A\nhub A log tail:\n{}",
        tail(&hub_a.log(), 30)
    );

    // Phase 2: instance B joins the same durable consumer (same config, its own data dir).
    let config_b = fleet.config(fleet::HUB, "").replace(
        &format!("{}-data", fleet::HUB),
        &format!("{}-b-data", fleet::HUB),
    );
    assert!(
        config_b.contains("-b-data"),
        "instance B has its own data dir"
    );
    let hub_b = AgentProcess::spawn("hub-msk-b", &config_b, fleet.path());
    wait_until("instance B's ingress is ready", SETUP, async || {
        hub_b.log().contains("Ingress ready.")
    })
    .await;
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("the first half is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let sender = tokio::spawn(member_uplink(
        hub_client.clone(),
        hub_js.clone(),
        second,
        Arc::clone(&acked),
    ));
    wait_until(
        "a tenth of the second half is acknowledged by the hub's server",
        SETUP,
        async || acked.load(Ordering::SeqCst) >= EVENTS / 2 + EVENTS / 10,
    )
    .await;

    // Phase 3: A is SIGKILLed mid-stream; B finishes alone.
    hub_a.kill();
    let at_kill = landed_count(&root_js, SUBJECT).await;
    let acked_at_kill = acked.load(Ordering::SeqCst);
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = wait_landed(&root_js, SUBJECT, EVENTS, SETTLE).await;

    let copies = read_landed(&root_js, SUBJECT).await;
    let lost: Vec<&String> = sent.iter().filter(|id| !copies.contains_key(*id)).collect();
    let delivered = copies.keys().filter(|id| sent.contains(*id)).count();
    let in_stream: u32 = copies
        .iter()
        .filter(|(id, _)| sent.contains(*id))
        .map(|(_, n)| *n)
        .sum();
    let after_kill = EVENTS.saturating_sub(at_kill);
    eprintln!(
        "sent {EVENTS}; landed through A alone (before B started): >= {by_a_alone}; landed at \
         A's kill: {at_kill} (acked by the hub's server then: {acked_at_kill}); landed after \
         the kill, by B alone: {after_kill}; in the end: {landed} in the stream, {delivered} \
         distinct, lost {}, copies in the stream {}",
        lost.len(),
        in_stream as usize - delivered,
    );
    assert!(
        lost.is_empty() && delivered == EVENTS,
        "sent {EVENTS}, delivered {delivered}, lost {}, copies in the stream {}; first lost: \
         {:?}\nhub B log tail:\n{}\nroot log tail:\n{}",
        lost.len(),
        in_stream as usize - delivered,
        &lost[..lost.len().min(5)],
        tail(&hub_b.log(), 30),
        tail(&root.log(), 30),
    );
    assert!(
        by_a_alone > 0 && after_kill > 0,
        "both instances forwarded: A {by_a_alone}, B {after_kill}"
    );
    assert!(hub_b.is_running() && root.is_running());
}
