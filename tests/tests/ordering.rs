//! Order per source, end to end (docs/delivery.md, "Order per source"): every event a
//! member creates carries its outbox's `epoch` and a `seq` that counts 1, 2, 3, … without
//! gaps, so a consumer of the root's journal restores the member's creation order exactly,
//! whatever the way there did to the order of arrival.
//!
//! Real processes on real servers (`sync_interval: always` at hub and root): a root agent,
//! two hub agents sharing the hub's ingress consumer (the same node, two data dirs), and a
//! member whose subject bridge takes a local app's requests. The app numbers its payloads
//! with its own counter and sends them in order, one connection, a few requests in flight.
//! Mid-stream the hub's nats-server is stopped for 3 s (the member's backlog waits in its
//! outbox) and the root agent is SIGKILLed and restarted (what it had taken comes back after
//! the ack wait, behind newer events).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use nexus_e2e::landing::{landed_count, wait_landed, LANDING};
use nexus_e2e::{fleet, wait_until, AgentProcess, Fleet, NatsServer};
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::{Encoding, Envelope};
use tokio::time::Instant;

/// The local app's events.
const EVENTS: usize = 2_000;
/// Requests the app keeps in flight.
const WINDOW: usize = 16;
/// The app's pace: at most one request this often (so the faults land mid-stream).
const PACE: Duration = Duration::from_millis(5);
/// Setup steps (agents up, streams ready).
const SETUP: Duration = Duration::from_secs(30);
/// How long the last events may take to land after the app is done.
const SETTLE: Duration = Duration::from_secs(40);
/// A short window, so that what the killed root had taken comes back after 5 s (a quarter
/// of it) instead of 30 s; the least `check` accepts with the default request timeout.
const WINDOW_CONFIG: &str = "[ingress]\nduplicate_window = \"20s\"\n";
/// The member's subject bridge.
const BRIDGE: &str = "[bridge]\n[[bridge.up]]\nlocal = \"app.orders.*\"\nevent = \"orders.*\"\n";
/// The event the app's requests become.
const ORDERS: &str = "orders.placed";

fn durable_server() -> NatsServer {
    NatsServer::builder().sync_always().start()
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The local app: requests `app.orders.placed` with `{"n": i}` for i in 0..`n`, in order on
/// one connection (so the member's bridge takes them in that order), up to [`WINDOW`] in
/// flight. Every request must be answered `ok` (the member is never disturbed); `answered`
/// counts them.
async fn app(
    client: async_nats::Client,
    n: usize,
    answered: Arc<AtomicUsize>,
) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let mut pace = tokio::time::interval(PACE);
    let (mut next, mut in_flight) = (0usize, 0usize);
    let mut progress = Instant::now();
    while answered.load(Ordering::SeqCst) < n {
        tokio::select! {
            _ = pace.tick(), if next < n && in_flight < WINDOW => {
                client
                    .publish_with_reply(
                        "app.orders.placed",
                        format!("{inbox}.{next}"),
                        format!(r#"{{"n": {next}}}"#).into(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                next += 1;
                in_flight += 1;
            }
            reply = tokio::time::timeout_at(progress + SETUP, replies.next()) => {
                let reply = reply
                    .map_err(|_| format!("no answer for {SETUP:?} with {in_flight} in flight"))?
                    .ok_or("the reply subscription ended")?;
                let body: serde_json::Value = serde_json::from_slice(&reply.payload)
                    .map_err(|e| format!("an answer that is not JSON: {e}"))?;
                if body["ok"] != true {
                    return Err(format!("request {} refused: {body}", reply.subject));
                }
                in_flight -= 1;
                progress = Instant::now();
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

/// The member's events in the journal, in the order they landed, each event_id once (the
/// first copy); and how many copies beyond one the journal holds.
async fn member_events(root_js: &jetstream::Context) -> (Vec<Envelope>, usize) {
    let mut events = Vec::new();
    let mut seen = HashSet::new();
    let mut copies = 0;
    if landed_count(root_js, "nexus.>").await == 0 {
        return (events, copies);
    }
    let stream = root_js.get_stream(LANDING).await.expect("landing");
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the journal answers within 10 s")
            .expect("the consumer does not end")
            .expect("a message");
        let envelope = Envelope::decode(&next.payload, Encoding::Json, MAX_ENVELOPE_BYTES)
            .expect("a JSON envelope in the journal");
        if envelope.source == fleet::MEMBER {
            if seen.insert(envelope.event_id.clone()) {
                events.push(envelope);
            } else {
                copies += 1;
            }
        }
        if next.info().expect("JetStream info").pending == 0 {
            return (events, copies);
        }
    }
}

/// What the member's events say about its order, once complete.
#[derive(Debug)]
struct Order {
    epoch: String,
    /// The highest seq (every one of 1..=it landed once).
    last: u64,
    /// The app's counters in seq order.
    counters: Vec<u64>,
    /// Events that landed after one with a higher seq.
    out_of_order: usize,
    copies: usize,
}

/// `Ok` once the member's events are complete: one epoch, every seq of 1..=max exactly once
/// (after dedup by event_id), and all [`EVENTS`] of the app among them; `Err` with what is
/// still missing otherwise.
fn order(events: &[Envelope], copies: usize) -> Result<Order, String> {
    let epochs: BTreeSet<Option<&str>> = events.iter().map(|e| e.epoch.as_deref()).collect();
    let [Some(epoch)] = epochs.iter().copied().collect::<Vec<_>>()[..] else {
        return Err(format!("the member's events carry the epochs {epochs:?}"));
    };
    let mut by_seq: BTreeMap<u64, &Envelope> = BTreeMap::new();
    let mut out_of_order = 0;
    let mut highest = 0;
    for event in events {
        let seq = event
            .seq
            .ok_or_else(|| format!("{} has no seq", event.event_id))?;
        if let Some(other) = by_seq.insert(seq, event) {
            return Err(format!(
                "seq {seq} is both {} and {}",
                other.event_id, event.event_id
            ));
        }
        if seq < highest {
            out_of_order += 1;
        }
        highest = highest.max(seq);
    }
    let missing: Vec<u64> = (1..=highest).filter(|s| !by_seq.contains_key(s)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of 1..={highest} not landed yet, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let counters: Vec<u64> = by_seq
        .values()
        .filter(|e| e.event_name == ORDERS)
        .map(|e| e.payload["n"].as_u64().unwrap_or(u64::MAX))
        .collect();
    if counters.len() < EVENTS {
        return Err(format!(
            "{} of the app's {EVENTS} events landed",
            counters.len()
        ));
    }
    Ok(Order {
        epoch: epoch.to_owned(),
        last: highest,
        counters,
        out_of_order,
        copies,
    })
}

/// The member's seqs at the root are exactly 1..=N of one epoch, and sorting by seq gives
/// exactly the app's order, through a hub server outage, a root SIGKILL and two hub
/// instances sharing the ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_events_land_numbered_without_gaps_in_creation_order() {
    let started = Instant::now();
    let fleet = Fleet::with_servers(durable_server(), durable_server(), NatsServer::start());
    let root = fleet.spawn(fleet::ROOT, WINDOW_CONFIG);
    let hub_a = fleet.spawn(fleet::HUB, WINDOW_CONFIG);
    let config_b = fleet.config(fleet::HUB, WINDOW_CONFIG).replace(
        &format!("{}-data", fleet::HUB),
        &format!("{}-b-data", fleet::HUB),
    );
    let hub_b = AgentProcess::spawn("hub-msk-b", &config_b, fleet.path());
    let member = fleet.spawn(fleet::MEMBER, BRIDGE);
    let root_js = jetstream::new(fleet.root_nats.client().await);
    let health = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    let first = wait_landed(&root_js, &health, 1, SETUP).await;
    assert!(
        first >= 1,
        "no heartbeat of the member landed\nmember log tail:\n{}\nroot log tail:\n{}",
        tail(&member.log(), 20),
        tail(&root.log(), 20)
    );
    wait_until("both hub instances take the ingress", SETUP, async || {
        hub_a.log().contains("Ingress ready.") && hub_b.log().contains("Ingress ready.")
    })
    .await;
    wait_until("the member's bridge is subscribed", SETUP, async || {
        member.log().contains("Subject bridge (up) subscribed.")
    })
    .await;

    let answered = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(app(
        fleet.member_nats.client().await,
        EVENTS,
        Arc::clone(&answered),
    ));
    let count = || answered.load(Ordering::SeqCst);

    // (a) The hub's server goes away for 3 s: the member keeps storing (and answering),
    // its backlog waits in the outbox, heartbeats overtake it afterwards.
    wait_until("a fifth of the events is answered", SETUP, async || {
        count() >= EVENTS / 5
    })
    .await;
    fleet.hub_nats.stop();
    let at_stop = count();
    // The outage itself is the scenario (not a synchronisation).
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.hub_nats.restart();

    // (b) The root agent is SIGKILLed and restarted: what it had taken and not acked comes
    // back after its ack wait, behind newer events.
    wait_until(
        "three fifths of the events are answered",
        SETUP,
        async || count() >= 3 * EVENTS / 5,
    )
    .await;
    root.kill();
    let at_kill = count();
    root.restart();

    tokio::time::timeout(SETTLE, producer)
        .await
        .expect("the app is done")
        .expect("the app does not panic")
        .unwrap_or_else(|e| {
            panic!(
                "the app: {e}\nmember log tail:\n{}",
                tail(&member.log(), 30)
            )
        });
    let done = started.elapsed();

    let order = wait_until(
        "the member's events land complete: 1..=N of one epoch, every counter",
        SETTLE,
        async || {
            let (events, copies) = member_events(&root_js).await;
            order(&events, copies)
        },
    )
    .await;
    eprintln!(
        "ordering: {EVENTS} app events (answered {at_stop} at the hub server's stop, \
         {at_kill} at the root's SIGKILL); the member's epoch {} holds seqs 1..={} at the \
         root, gap-free; {} events landed out of seq order (after a higher seq); {} copies \
         in the journal beyond the first; app done after {done:?}, all landed after {:?}",
        order.epoch,
        order.last,
        order.out_of_order,
        order.copies,
        started.elapsed()
    );
    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    assert_eq!(
        order.counters, expected,
        "sorting by seq restores the app's order, each counter once"
    );
    assert!(
        hub_a.is_running() && hub_b.is_running() && root.is_running() && member.is_running(),
        "every agent survives"
    );
}
