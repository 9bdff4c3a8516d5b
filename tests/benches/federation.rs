//! End-to-end member → hub → root throughput with durability on, side by side in one run
//! with the raw NATS path.
//!
//! `cargo bench -p nexus-e2e --bench federation` (needs nats-server; builds nothing else:
//! run `cargo build --release -p nexus-agent` first, or point `NEXUS_E2E_AGENT_BIN` at an
//! agent binary). Not a test: it prints a table (docs/benchmarks.md).
//!
//! - **federation**: the real root and hub agents on nats-servers with
//!   `sync_interval: always`. The bench plays the member's uplink (as the chaos tests do):
//!   N events signed with the member's key (signing is not timed) are JetStream-published
//!   into the hub's ingress in batches of 256 with pipelined PubAcks. Timed from the first
//!   publish until the root's `NEXUS_EVENTS` holds all N (the hub verifies and forwards to
//!   the root's ingress, the root verifies, lands, and records the event_id).
//! - **raw**: the same N signed events (same bodies, same `Nats-Msg-Id` headers)
//!   JetStream-published straight into a file stream on a fresh `sync_interval: always`
//!   nats-server, same batches; timed until the last PubAck.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use nexus_e2e::bench::events::{publish_batches, read_key, sign_events, SUBJECT};
use nexus_e2e::landing::{landed_count, BATCH, LANDING};
use nexus_e2e::{fleet, wait_until, Fleet, NatsServer};
use nexus_federation::trust::{key_id, CHAINS_BUCKET};
use nexus_federation::{subject, SignedEvent};
use nexus_policies::SecretKey;

const EVENTS: usize = 5_000;
const SETUP: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(300);

fn durable_server() -> NatsServer {
    NatsServer::builder().sync_always().start()
}

/// member → hub → root with the real agents; returns (events/s, seconds, acked-by-hub s).
async fn federation(
    events: Arc<Vec<SignedEvent>>,
    member: &SecretKey,
    fleet: &Fleet,
) -> (f64, f64, f64) {
    let root = fleet.spawn(fleet::ROOT, "");
    let hub = fleet.spawn(fleet::HUB, "");
    let hub_js = jetstream::new(fleet.hub_nats.client().await);
    let root_js = jetstream::new(fleet.root_nats.client().await);
    let registry = wait_until("the hub's chain registry exists", SETUP, async || {
        hub_js.get_key_value(CHAINS_BUCKET).await
    })
    .await;
    let chain = Bytes::from(std::fs::read(fleet.token_path(fleet::MEMBER)).expect("token"));
    registry
        .put(key_id(&member.public()), chain)
        .await
        .expect("present the member's chain to the hub");
    wait_until("the root's landing stream exists", SETUP, async || {
        root_js.get_stream(LANDING).await
    })
    .await;
    wait_until("the hub's ingress is ready", SETUP, async || {
        hub.log().contains("Ingress ready.")
    })
    .await;
    let start = Instant::now();
    let sender = {
        let (js, events) = (hub_js.clone(), Arc::clone(&events));
        tokio::spawn(async move {
            publish_batches(&js, &events, BATCH, |e| {
                subject::ingress_subject(&e.subject)
            })
            .await;
            Instant::now()
        })
    };
    let end = start + DEADLINE;
    let mut landed = 0;
    while landed < EVENTS {
        assert!(
            Instant::now() < end,
            "only {landed} of {EVENTS} landed in {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        landed = landed_count(&root_js, SUBJECT).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let acked_at = sender.await.expect("sender");
    assert!(hub.is_running() && root.is_running());
    (
        EVENTS as f64 / elapsed,
        elapsed,
        acked_at.duration_since(start).as_secs_f64(),
    )
}

/// The same events straight into a landing-like stream on a fresh durable server.
async fn raw(events: &[SignedEvent]) -> (f64, f64) {
    let server = durable_server();
    let js = jetstream::new(server.client().await);
    js.create_stream(stream::Config {
        name: "RAW_LANDING".into(),
        subjects: vec!["nexus.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");
    let start = Instant::now();
    publish_batches(&js, events, BATCH, |e| e.subject.to_string()).await;
    let elapsed = start.elapsed().as_secs_f64();
    (EVENTS as f64 / elapsed, elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fleet = Fleet::with_servers(durable_server(), durable_server(), NatsServer::start());
    let member = read_key(&fleet.member_key.secret);
    let events = Arc::new(sign_events(&member, 0..EVENTS));
    let bytes: usize = events.iter().map(|e| e.body.len()).sum();
    println!(
        "{EVENTS} signed events ({} B each on average), batches of {BATCH} with pipelined \
         PubAcks, every nats-server `sync_interval: always`, loopback, 2 cores\n",
        bytes / EVENTS
    );
    println!("| path | events/s | all landed after |\n|---|---:|---:|");
    let (rate, secs, acked) = federation(Arc::clone(&events), &member, &fleet).await;
    println!(
        "| member → hub ingress → hub agent → root ingress → root agent → `NEXUS_EVENTS` | \
         {rate:.0} | {secs:.2} s (hub acked all after {acked:.2} s) |"
    );
    let (rate, secs) = raw(&events).await;
    println!("| the same events JetStream-published straight into a landing stream | {rate:.0} | {secs:.2} s |");
}
