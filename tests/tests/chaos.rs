//! Chaos at every tier, with real processes and real servers: nothing acknowledged is lost,
//! and a consumer deduplicating by `event_id` sees every event exactly once.
//!
//! The root and the hub are real agents on nats-servers with `sync_interval: always` (as the
//! configs we ship). For volume the test plays the member's uplink: it holds the member's key
//! and token chain, signs N events and JetStream-publishes them into the hub's ingress exactly
//! as the member's uplink does — a batch, then every PubAck, resending what was not acked, and
//! waiting while the link is down instead of queueing into the client. The member-crash tests
//! run the real member agent: one follows the heartbeats in its outbox, one the local apps'
//! requests answered by its subject bridge.
//!
//! Every test reports `sent`, `landed` (distinct event ids in the root's `NEXUS_EVENTS`),
//! `lost` and the copies the stream holds beyond one per event (JetStream dedup inside
//! `duplicate_window` should make those 0 too; a consumer deduplicating by event_id is
//! correct either way), and asserts `lost = 0` and `duplicates after dedup = 0`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nexus_e2e::landing::{
    landed_count, member_uplink, numbered_events, present_member, read_landed, Report, LANDING,
};
use nexus_e2e::{fleet, wait_until, AgentProcess, Fleet, Launch, NatsServer, Proxy};
use nexus_federation::{
    subject, Encoding, Envelope, NatsProvenance as _, Outbox, OutboxOptions, SignedEvent,
};
use nexus_policies::SecretKey;

/// The subject of the test's events.
const CHAOS_SUBJECT: &str = "nexus.salon-001.iot.chaos";
/// Setup steps (agents up, streams ready).
const SETUP: Duration = Duration::from_secs(30);
/// How long everything may take to land once the fault is over.
const SETTLE: Duration = Duration::from_secs(60);
/// Events sent by the volume tests.
const EVENTS: usize = 5_000;

/// Root and hub agents on durable servers, a connection to each server, the member's key.
struct Chaos {
    fleet: Fleet,
    root: AgentProcess,
    hub: AgentProcess,
    /// JetStream on the hub's NATS (the member's uplink).
    hub_js: jetstream::Context,
    hub_client: async_nats::Client,
    /// JetStream on the root's NATS (where events land).
    root_js: jetstream::Context,
    member: SecretKey,
}

fn durable_server() -> NatsServer {
    NatsServer::builder().sync_always().start()
}

fn durable_fleet() -> Fleet {
    Fleet::with_servers(durable_server(), durable_server(), NatsServer::start())
}

impl Chaos {
    async fn start(fleet: Fleet) -> Self {
        Self::start_with(fleet, "", "").await
    }

    /// [`Self::start`] with `root_extra` and `hub_extra` appended to their configs.
    async fn start_with(fleet: Fleet, root_extra: &str, hub_extra: &str) -> Self {
        Self::start_env(fleet, (root_extra, &[]), (hub_extra, &[])).await
    }

    /// [`Self::start_with`], with config overrides from the environment too (`NEXUS_…`),
    /// for keys the fleet's config already sets.
    async fn start_env(
        fleet: Fleet,
        (root_extra, root_env): (&str, &[(&str, &str)]),
        (hub_extra, hub_env): (&str, &[(&str, &str)]),
    ) -> Self {
        let launch = |env: &[(&str, &str)]| Launch {
            env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            ..Launch::default()
        };
        let root = fleet.spawn_with(fleet::ROOT, root_extra, &launch(root_env));
        let hub = fleet.spawn_with(fleet::HUB, hub_extra, &launch(hub_env));
        let hub_client = fleet.hub_nats.client().await;
        let hub_js = jetstream::new(hub_client.clone());
        let root_js = jetstream::new(fleet.root_nats.client().await);
        let member = present_member(&fleet, &hub_js, SETUP).await;
        wait_until("the root's landing stream exists", SETUP, async || {
            root_js.get_stream(LANDING).await
        })
        .await;
        Self {
            fleet,
            root,
            hub,
            hub_js,
            hub_client,
            root_js,
            member,
        }
    }

    /// `n` sensor events signed by the member, numbered in their payload and as the
    /// member's outbox numbers them: one fresh epoch, `seq` 1..=n (the root records what
    /// landed by these numbers).
    fn events(&self, n: usize) -> Vec<SignedEvent> {
        let epoch = uuid::Uuid::now_v7().to_string();
        numbered_events(&self.member, "iot.chaos", &epoch, n)
    }

    /// `n` events without a sequence number (as agents before it, or the CLI, send them):
    /// the root records them by event_id.
    fn unnumbered_events(&self, n: usize) -> Vec<SignedEvent> {
        (0..n)
            .map(|i| {
                let mut payload = serde_json::Map::new();
                payload.insert("n".into(), i.into());
                let envelope = Envelope::new(
                    "iot.chaos",
                    fleet::MEMBER,
                    Some(fleet::TENANT),
                    payload,
                    time::OffsetDateTime::now_utc(),
                );
                SignedEvent::seal(&envelope, Encoding::Json, &self.member).expect("seal")
            })
            .collect()
    }

    /// Starts the test's uplink: sends `events` into the hub's ingress in batches, each
    /// event until its PubAck. `acked` counts the events acknowledged so far.
    fn send(&self, events: Vec<SignedEvent>, acked: Arc<AtomicUsize>) -> Sender {
        tokio::spawn(member_uplink(
            self.hub_client.clone(),
            self.hub_js.clone(),
            events,
            acked,
        ))
    }

    /// How many messages the landing stream holds on `filter` (cheap: stream info).
    async fn landed_count(&self, filter: &str) -> usize {
        landed_count(&self.root_js, filter).await
    }

    /// Waits (bounded) until the landing stream holds at least `n` messages on `filter`;
    /// returns the last count seen, reached or not (the caller asserts with every count).
    async fn wait_landed(&self, filter: &str, n: usize, deadline: Duration) -> usize {
        let end = Instant::now() + deadline;
        loop {
            let count = self.landed_count(filter).await;
            if count >= n || Instant::now() >= end {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads every message on `filter` in the landing stream, as a consumer would, and
    /// counts the copies of each event_id.
    async fn read_landed(&self, filter: &str) -> HashMap<String, u32> {
        read_landed(&self.root_js, filter).await
    }

    /// Compares what landed with `sent`; panics with every count unless nothing was lost
    /// and a consumer deduplicating by event_id sees each event exactly once.
    async fn assert_all_landed(&self, what: &str, sent: &[String], filter: &str) -> Report {
        let copies = self.read_landed(filter).await;
        let (report, lost) = Report::compare(sent, &copies);
        eprintln!("{what}: {report:?}");
        assert!(
            report.is_exact(),
            "{what}: {report:?}; first lost: {lost:?}\nhub log tail:\n{}\nroot log tail:\n{}",
            tail(&self.hub.log(), 30),
            tail(&self.root.log(), 30),
        );
        report
    }
}

type Sender = tokio::task::JoinHandle<usize>;

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ids(events: &[SignedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

/// The hub's nats-server is stopped for 20 s while 5,000 events flow from the member: all
/// 5,000 reach the root's stream, and a consumer deduplicating by event_id sees each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_server_outage_of_20_s_mid_stream_loses_nothing() {
    let chaos = Chaos::start(durable_fleet()).await;
    let events = chaos.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = chaos.send(events, Arc::clone(&acked));
    wait_until(
        "a fifth of the events is acknowledged by the hub",
        SETUP,
        async || acked.load(Ordering::SeqCst) >= EVENTS / 5,
    )
    .await;
    let started = Instant::now();
    chaos.fleet.hub_nats.stop();
    let at_stop = acked.load(Ordering::SeqCst);
    // The outage itself is the scenario (not a synchronisation): the member keeps trying.
    tokio::time::sleep(Duration::from_secs(20)).await;
    chaos.fleet.hub_nats.restart();
    let resent = tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub after the outage")
        .expect("the sender does not panic");
    let landed = chaos.wait_landed(CHAOS_SUBJECT, EVENTS, SETTLE).await;
    eprintln!(
        "acked before the stop: {at_stop}; resent by the member: {resent}; landed {landed} \
         within {:?} of the stop",
        started.elapsed()
    );
    chaos
        .assert_all_landed("hub server outage", &sent, CHAOS_SUBJECT)
        .await;
    assert!(chaos.hub.is_running() && chaos.root.is_running());
}

/// The hub agent is SIGKILLed mid-stream and restarted: nothing is lost (its consumer
/// redelivers what it had not acked; the root dedups what it had already forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_agent_killed_mid_stream_and_restarted_loses_nothing() {
    let chaos = Chaos::start(durable_fleet()).await;
    let events = chaos.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = chaos.send(events, Arc::clone(&acked));
    let before = chaos.wait_landed(CHAOS_SUBJECT, EVENTS / 5, SETTLE).await;
    assert!(before >= EVENTS / 5, "only {before} landed before the kill");
    chaos.hub.kill();
    let at_kill = chaos.landed_count(CHAOS_SUBJECT).await;
    chaos.hub.restart();
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = chaos.wait_landed(CHAOS_SUBJECT, EVENTS, SETTLE).await;
    eprintln!("landed at the kill: {at_kill}; landed in the end: {landed}");
    chaos
        .assert_all_landed("hub agent SIGKILL", &sent, CHAOS_SUBJECT)
        .await;
}

/// The root's nats-server is restarted mid-stream: nothing is lost (the hub naks and
/// resends what the root did not acknowledge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_server_restart_mid_stream_loses_nothing() {
    let chaos = Chaos::start(durable_fleet()).await;
    let events = chaos.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = chaos.send(events, Arc::clone(&acked));
    let before = chaos.wait_landed(CHAOS_SUBJECT, EVENTS / 5, SETTLE).await;
    assert!(
        before >= EVENTS / 5,
        "only {before} landed before the restart"
    );
    chaos.fleet.root_nats.restart();
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = chaos.wait_landed(CHAOS_SUBJECT, EVENTS, SETTLE).await;
    eprintln!("landed before the restart: {before}; in the end: {landed}");
    chaos
        .assert_all_landed("root server restart", &sent, CHAOS_SUBJECT)
        .await;
    assert!(chaos.hub.is_running() && chaos.root.is_running());
}

/// The member agent is SIGKILLed while its uplink is down and restarted: every heartbeat it
/// had acknowledged into its outbox (fsynced) reaches the root once the uplink is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_agent_killed_with_a_backlog_delivers_its_acknowledged_events() {
    let mut fleet = durable_fleet();
    fleet.interval = Duration::from_millis(200);
    let chaos = Chaos::start(fleet).await;
    let member = chaos.fleet.spawn(fleet::MEMBER, "");
    let health = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    chaos.wait_landed(&health, 1, SETUP).await;
    // Cut the member's uplink; its heartbeats queue in its outbox.
    chaos.fleet.hub_nats.stop();
    wait_until("the member notices its uplink is down", SETUP, async || {
        member.log().contains("Link disconnected")
    })
    .await;
    let queued_at_stop = member.log().matches("Heartbeat queued.").count();
    wait_until("the member queues 10 more heartbeats", SETUP, async || {
        member.log().matches("Heartbeat queued.").count() >= queued_at_stop + 10
    })
    .await;
    member.kill();
    // What the member had acknowledged and not yet delivered: its outbox, read after the
    // crash (the agent holds an exclusive lock while it runs).
    let backlog: Vec<String> = {
        let outbox = Outbox::open(
            &chaos.fleet.data_dir(fleet::MEMBER).join("outbox.db"),
            OutboxOptions::new(u64::MAX),
        )
        .expect("the member's outbox opens after SIGKILL");
        let batch = outbox.next_batch(100_000).await;
        batch.iter().map(|(_, e)| e.event_id.to_string()).collect()
    };
    assert!(
        backlog.len() >= 10,
        "the outbox held only {} events at the kill",
        backlog.len()
    );
    chaos.fleet.hub_nats.restart();
    member.restart();
    // Heartbeats are Control events: the backlog is sent oldest first; wait for the newest.
    let newest = backlog.last().cloned().expect("non-empty");
    wait_until(
        "the member's newest queued heartbeat lands",
        SETTLE,
        async || chaos.read_landed(&health).await.contains_key(&newest),
    )
    .await;
    eprintln!("heartbeats in the outbox at the kill: {}", backlog.len());
    chaos
        .assert_all_landed("member agent SIGKILL", &backlog, &health)
        .await;
}

/// Local apps keep requesting through the member's subject bridge while the member agent is
/// SIGKILLed and restarted: every request answered `ok` (its event fsynced in the outbox)
/// reaches the root, once after dedup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_requests_answered_before_a_member_sigkill_all_land() {
    let chaos = Chaos::start(durable_fleet()).await;
    let member = chaos.fleet.spawn(
        fleet::MEMBER,
        "[bridge]\n[[bridge.up]]\nlocal = \"app.orders.*\"\nevent = \"orders.*\"\n",
    );
    let health = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    chaos.wait_landed(&health, 1, SETUP).await;
    let app = chaos.fleet.member_nats.client().await;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The app: 32 requests in flight, forever; an unanswered one is simply tried again.
    let driver = {
        let (acked, failures, stop) =
            (Arc::clone(&acked), Arc::clone(&failures), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let answers = futures::future::join_all((0..32).map(|i| {
                    let app = app.clone();
                    let body = format!(r#"{{"order": {}}}"#, n + i);
                    async move {
                        let request = async_nats::Request::new()
                            .payload(body.into())
                            .timeout(Some(Duration::from_secs(2)));
                        app.send_request("app.orders.placed", request).await
                    }
                }))
                .await;
                n += 32;
                let before = failures.load(Ordering::SeqCst);
                for answer in answers {
                    let ok = answer.ok().and_then(|m| {
                        let body: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                        (body["ok"] == true)
                            .then(|| body["event_id"].as_str().map(str::to_owned))?
                    });
                    match ok {
                        Some(id) => acked.lock().expect("lock").push(id),
                        None => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                // While nobody answers, an app backs off rather than spin.
                if failures.load(Ordering::SeqCst) >= before + 32 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let count = || acked.lock().expect("lock").len();
    wait_until("500 requests answered", SETUP, async || count() >= 500).await;
    let failures_before_kill = failures.load(Ordering::SeqCst);
    member.kill();
    let at_kill = count();
    wait_until(
        "the app sees its requests go unanswered",
        SETUP,
        async || failures.load(Ordering::SeqCst) >= failures_before_kill + 32,
    )
    .await;
    member.restart();
    wait_until(
        "300 more requests answered after the restart",
        SETTLE,
        async || count() >= at_kill + 300,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    driver.await.expect("driver");
    let sent = acked.lock().expect("lock").clone();
    let subject = "nexus.salon-001.orders.placed";
    chaos.wait_landed(subject, sent.len(), SETTLE).await;
    eprintln!(
        "answered before the kill: {at_kill}, after: {}, unanswered: {}",
        sent.len() - at_kill,
        failures.load(Ordering::SeqCst)
    );
    chaos
        .assert_all_landed("member SIGKILL under local requests", &sent, subject)
        .await;
}

/// An event the root cannot land (its landing stream was deleted under it) is retried with
/// backoff until JetStream has delivered it `ingress.max_deliver` times, then goes to the
/// root's dead-letter store as `undeliverable`, with the attempts and first/last times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_onward_max_deliver_times_is_dead_lettered() {
    let chaos = Chaos::start_with(durable_fleet(), "[ingress]\nmax_deliver = 3\n", "").await;
    chaos
        .root_js
        .delete_stream(LANDING)
        .await
        .expect("delete the landing stream");
    let event = chaos.events(1).remove(0);
    let id = event.event_id.to_string();
    let acked = Arc::new(AtomicUsize::new(0));
    tokio::time::timeout(SETUP, chaos.send(vec![event], acked))
        .await
        .expect("the hub acknowledges the event")
        .expect("the sender does not panic");
    let letter = wait_until("the root dead-letters the event", SETUP, async || {
        let out = std::process::Command::new(nexus_e2e::agent_bin())
            .args(["dlq", "list", "--json", "--reason", "undeliverable", "-c"])
            .arg(chaos.root.config_path())
            .output()
            .expect("nexus-agent dlq runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("salon-001.iot.chaos"))
            })
            .ok_or(text)
    })
    .await;
    eprintln!("dead letter: {letter}");
    assert_eq!(letter["reason"], "undeliverable", "{letter}");
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert!(
        letter["first_at"].as_str() <= letter["last_at"].as_str(),
        "{letter}"
    );
    let show = std::process::Command::new(nexus_e2e::agent_bin())
        .args(["dlq", "show", "-c"])
        .arg(chaos.root.config_path())
        .arg(letter["id"].to_string())
        .output()
        .expect("nexus-agent dlq show runs");
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains(&id),
        "the dead letter keeps the event: {shown}"
    );
    assert!(chaos.root.is_running(), "the root survives");
}

/// The root's link to its own NATS (where it lands events and takes its ingress) goes
/// through a proxy that is frozen twice for 3 s while 5,000 events flow, with a short
/// `duplicate_window` (8 s; onward PubAcks awaited at most 1 s): the publishes in flight at
/// the freeze were stored, but their PubAcks, the naks that follow and the acks are lost.
/// Those messages come back after the consumer's ack wait, derived from the window (2 s),
/// and the journal's dedup drops their copies. With the fixed 30 s ack wait of before,
/// they came back after the window and were stored twice.
///
/// The link's `connect_timeout` is 1 s: the agent notices the silence after up to three
/// missed pings, and a reconnect attempt started before the thaw waits out its whole
/// `connect_timeout` (the default 5 s) for the server's INFO that the proxy discarded. 3 s +
/// 5 s + the ack wait is beyond the 8 s window, and when the pings lined up that way the
/// copies were stored twice (51 of 5,000 in one CI run; 380 with a 4.5 s freeze, 11 with
/// the 1 s timeout): docs/delivery.md, "The gap between landing and remembering".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_losing_its_pubacks_with_a_short_window_lands_each_event_once() {
    let fleet = durable_fleet();
    let proxy = Proxy::start(fleet.root_nats.port()).await;
    let chaos = Chaos::start_env(
        fleet,
        (
            "[ingress]\nduplicate_window = \"8s\"\n",
            &[
                ("NEXUS_LOCAL__URL", &proxy.url()),
                ("NEXUS_LOCAL__REQUEST_TIMEOUT", "1s"),
                ("NEXUS_LOCAL__CONNECT_TIMEOUT", "1s"),
            ],
        ),
        ("", &[]),
    )
    .await;
    let events = chaos.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = chaos.send(events, Arc::clone(&acked));
    for freeze in 1..=2 {
        let before = chaos
            .wait_landed(CHAOS_SUBJECT, freeze * EVENTS / 4, SETTLE)
            .await;
        assert!(
            before >= freeze * EVENTS / 4,
            "only {before} landed before freeze {freeze}"
        );
        proxy.freeze(true);
        // The scenario, not a synchronisation: longer than request_timeout, so that the
        // naks of the timed-out publishes are lost too.
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.freeze(false);
    }
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = chaos.wait_landed(CHAOS_SUBJECT, EVENTS, SETTLE).await;
    eprintln!("landed in the end: {landed}");
    let report = chaos
        .assert_all_landed("root PubAcks lost twice, 8 s window", &sent, CHAOS_SUBJECT)
        .await;
    assert_eq!(
        report.duplicates_in_stream, 0,
        "copies stored twice in the journal: {report:?}"
    );
}

/// An event resent after an outage longer than every JetStream `duplicate_window` on its way
/// (1 s here, at the hub's ingress, the root's ingress and the landing) passes every stream's
/// dedup, and is still dropped at the root by its record of what landed: by `seq` in
/// `NEXUS_LANDED_SEQ` for a numbered event, by event_id in `NEXUS_LANDED` for one without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_resent_after_the_duplicate_window_lands_once() {
    resent_after_the_window(true).await;
}

/// [`a_copy_resent_after_the_duplicate_window_lands_once`] for events without `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnumbered_copy_resent_after_the_duplicate_window_lands_once() {
    resent_after_the_window(false).await;
}

async fn resent_after_the_window(numbered: bool) {
    // The shortest window the config allows with onward PubAcks awaited 250 ms.
    let short = "[ingress]\nduplicate_window = \"1s\"\n";
    let chaos = Chaos::start_env(
        durable_fleet(),
        (short, &[("NEXUS_LOCAL__REQUEST_TIMEOUT", "250ms")]),
        (short, &[("NEXUS_UPLINK__REQUEST_TIMEOUT", "250ms")]),
    )
    .await;
    let mut events = if numbered {
        chaos.events(2)
    } else {
        chaos.unnumbered_events(2)
    };
    let later = events.pop().expect("two");
    let first = events.pop().expect("two");
    let acked = Arc::new(AtomicUsize::new(0));
    let send = async |events: Vec<SignedEvent>| {
        tokio::time::timeout(SETUP, chaos.send(events, Arc::clone(&acked)))
            .await
            .expect("the hub acknowledges")
            .expect("the sender does not panic");
    };
    send(vec![first.clone()]).await;
    assert_eq!(chaos.wait_landed(CHAOS_SUBJECT, 1, SETUP).await, 1);
    // The outage (scenario, not synchronisation): longer than every duplicate_window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = chaos
        .hub_js
        .publish_with_headers(
            subject::ingress_subject(&first.subject),
            first.headers(),
            first.body.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    assert!(
        !again.duplicate,
        "the hub's ingress window is over: it stores the copy"
    );
    // One stream in order: once `later` has landed, the copy before it was processed.
    send(vec![later.clone()]).await;
    chaos.wait_landed(CHAOS_SUBJECT, 2, SETUP).await;
    let copies = chaos.read_landed(CHAOS_SUBJECT).await;
    let report = Report {
        sent: 2,
        landed: copies.len(),
        lost: [&first, &later]
            .iter()
            .filter(|e| !copies.contains_key(&e.event_id))
            .count(),
        duplicates_in_stream: copies.values().map(|n| *n as usize).sum::<usize>() - copies.len(),
        duplicates_after_dedup: 0,
    };
    eprintln!("resent after the window: {report:?}");
    assert!(
        report.lost == 0 && report.duplicates_in_stream == 0,
        "the landing holds each event once: {report:?} {copies:?}"
    );
}

/// The three servers of the clustered root (docs/deploy-root-cluster.md).
const ROOT_CLUSTER_CONFIGS: [&str; 3] = [
    "root-cluster/node-a.conf",
    "root-cluster/node-b.conf",
    "root-cluster/node-c.conf",
];

/// The nats-server configs we ship for hub and root (single and clustered) fsync before
/// every PubAck (`sync_interval: always`) and are accepted by `nats-server -t`.
#[test]
fn the_shipped_nats_server_configs_fsync_before_acking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nats");
    for name in ["hub.conf", "root.conf"]
        .into_iter()
        .chain(ROOT_CLUSTER_CONFIGS)
    {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("shipped config");
        assert!(
            text.lines().any(|l| l.trim() == "sync_interval: always"),
            "{name} must set `jetstream {{ sync_interval: always }}`"
        );
        let out = std::process::Command::new(nexus_e2e::nats_server_bin())
            .arg("-c")
            .arg(&path)
            .arg("-t")
            .output()
            .expect("nats-server runs");
        assert!(
            out.status.success(),
            "nats-server -t {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The clustered root's three configs are one cluster of three servers: the same cluster
/// name and routes to all three, a server name and a store of their own each, and no
/// JetStream domain (the single root's config has none either: the hubs' uplink needs none).
#[test]
fn the_shipped_root_cluster_configs_are_three_distinct_servers_of_one_cluster() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nats");
    let value = |text: &str, key: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    let mut names = std::collections::BTreeSet::new();
    let mut stores = std::collections::BTreeSet::new();
    for name in ROOT_CLUSTER_CONFIGS {
        let text = std::fs::read_to_string(dir.join(name)).expect("shipped config");
        names.insert(value(&text, "server_name").expect("server_name"));
        stores.insert(value(&text, "store_dir").expect("store_dir"));
        assert_eq!(
            value(&text, "name").as_deref(),
            Some("nexus-root"),
            "{name}: cluster name"
        );
        let routes = text.matches("nats-route://").count();
        assert_eq!(routes, 3, "{name} routes to the three servers");
        assert!(
            value(&text, "domain").is_none(),
            "{name}: no JetStream domain"
        );
    }
    assert_eq!(names.len(), 3, "distinct server names: {names:?}");
    assert_eq!(stores.len(), 3, "distinct store dirs: {stores:?}");
}
