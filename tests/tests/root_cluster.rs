//! A clustered root (docs/deploy-root-cluster.md): the root's NATS is a JetStream cluster of
//! three real nats-servers (`sync_interval: always`), the root config says `replicas = 3` for
//! `[ingress]` and `[landing]`, and faults inside the cluster lose nothing.
//!
//! The fleet is real (root and hub agents, the hub on its own durable server); for volume the
//! test plays the member's uplink as `tests/tests/chaos.rs` does (numbered events signed with
//! the member's key, JetStream-published into the hub's ingress, each until its PubAck). Every
//! volume test prints its counts and asserts `lost = 0` and `duplicates after dedup = 0` in
//! the journal `NEXUS_EVENTS`; every stream and bucket the root creates is checked to have
//! 3 replicas (its config, and 3 peers placed).
//!
//! The root's `duplicate_window` is 40 s here (the least `check` allows is 20 s with the
//! default `request_timeout` of 5 s), so the consumer's ack wait is 10 s instead of 30 s: a
//! message delivered to a server or an agent that died comes back within the test's time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nexus_e2e::cluster::Placement;
use nexus_e2e::landing::{
    landed_count, member_uplink, numbered_events, present_member, read_landed, wait_landed, Report,
    LANDING,
};
use nexus_e2e::{fleet, wait_until, AgentProcess, Fleet, NatsCluster, NatsServer};
use nexus_federation::SignedEvent;
use nexus_policies::SecretKey;

/// The subject of the test's events.
const SUBJECT: &str = "nexus.salon-001.iot.cluster";
/// Setup steps (cluster, agents, streams).
const SETUP: Duration = Duration::from_secs(30);
/// How long everything may take to land once the fault is over (an election, an ack wait).
const SETTLE: Duration = Duration::from_secs(60);
/// Events sent by each volume test.
const EVENTS: usize = 2_000;
/// The root's config beyond the fleet's: three replicas of everything it creates.
const ROOT_R3: &str =
    "[ingress]\nreplicas = 3\nduplicate_window = \"40s\"\n\n[landing]\nreplicas = 3\n";
/// The streams the root creates on its cluster: the ingress, the journal, the default
/// domains, and the key-value buckets (streams `KV_<bucket>`).
const ROOT_STREAMS: &[&str] = &[
    "NEXUS_INGRESS",
    "NEXUS_EVENTS",
    "NEXUS_CORE",
    "NEXUS_IOT",
    "KV_NEXUS_LANDED",
    "KV_NEXUS_LANDED_SEQ",
    "KV_NEXUS_TRUST",
    "KV_NEXUS_CHAINS",
];

/// A fleet whose root runs on a three-server cluster.
struct ClusteredRoot {
    cluster: NatsCluster,
    fleet: Fleet,
    root: AgentProcess,
    hub: AgentProcess,
    hub_client: async_nats::Client,
    hub_js: jetstream::Context,
    /// A client knowing every server of the cluster.
    root_client: async_nats::Client,
    root_js: jetstream::Context,
    member: SecretKey,
}

impl ClusteredRoot {
    /// The cluster, the hub's durable server, the root (`root_extra` appended to its config)
    /// and the hub; returns once the member's chain is presented and the journal exists.
    async fn start(root_extra: &str) -> Self {
        let cluster = NatsCluster::start(3);
        let fleet = Fleet::with_root_cluster(
            &cluster,
            NatsServer::builder().sync_always().start(),
            NatsServer::start(),
        );
        let root = fleet.spawn(fleet::ROOT, root_extra);
        let hub = fleet.spawn(fleet::HUB, "");
        let hub_client = fleet.hub_nats.client().await;
        let hub_js = jetstream::new(hub_client.clone());
        let root_client = cluster.client().await;
        let root_js = jetstream::new(root_client.clone());
        let member = present_member(&fleet, &hub_js, SETUP).await;
        wait_until("the root's journal exists", SETUP, async || {
            root_js.get_stream(LANDING).await
        })
        .await;
        Self {
            cluster,
            fleet,
            root,
            hub,
            hub_client,
            hub_js,
            root_client,
            root_js,
            member,
        }
    }

    /// `n` numbered events of the member, in a fresh epoch.
    fn events(&self, n: usize) -> Vec<SignedEvent> {
        let epoch = uuid::Uuid::now_v7().to_string();
        numbered_events(&self.member, "iot.cluster", &epoch, n)
    }

    /// Starts the test's member uplink into the hub's ingress.
    fn send(
        &self,
        events: Vec<SignedEvent>,
        acked: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(member_uplink(
            self.hub_client.clone(),
            self.hub_js.clone(),
            events,
            acked,
        ))
    }

    async fn landed(&self) -> usize {
        landed_count(&self.root_js, SUBJECT).await
    }

    /// Waits until `stream` has a leader, `num_replicas = 3` and 3 peers; returns where.
    async fn placed_on_three(&self, stream: &str) -> Placement {
        wait_until(
            &format!("{stream} is kept by 3 servers"),
            SETUP,
            async || match self.cluster.stream_placement(&self.root_js, stream).await {
                Ok(p) if p.replicas == 3 && p.peers == 3 => Ok(p),
                Ok(p) => Err(format!("{p:?}")),
                Err(e) => Err(e),
            },
        )
        .await
    }

    /// Every stream and bucket the root creates, and the ingress consumer, on 3 servers.
    async fn assert_everything_on_three(&self) {
        for stream in ROOT_STREAMS {
            let placement = self.placed_on_three(stream).await;
            eprintln!("{stream}: {placement:?}");
        }
        let consumer_peers = wait_until(
            "the root's ingress consumer is kept by 3 servers",
            SETUP,
            async || {
                let mut consumer: jetstream::consumer::PullConsumer = self
                    .root_js
                    .get_stream("NEXUS_INGRESS")
                    .await
                    .map_err(|e| e.to_string())?
                    .get_consumer("nexus-agent")
                    .await
                    .map_err(|e| e.to_string())?;
                let info = consumer.info().await.map_err(|e| e.to_string())?;
                let peers = info
                    .cluster
                    .as_ref()
                    .map_or(0, |c| usize::from(c.leader.is_some()) + c.replicas.len());
                if peers == 3 {
                    Ok(peers)
                } else {
                    Err(format!("{peers} peers: {:?}", info.cluster))
                }
            },
        )
        .await;
        assert_eq!(consumer_peers, 3);
    }

    /// Reads the journal, prints the counts and asserts nothing was lost and each event is
    /// there once after dedup by event_id.
    async fn assert_all_landed(&self, what: &str, sent: &[String], roots: &[&AgentProcess]) {
        let copies = read_landed(&self.root_js, SUBJECT).await;
        let (report, first_lost) = Report::compare(sent, &copies);
        eprintln!("{what}: {report:?}");
        let logs: Vec<String> = roots
            .iter()
            .map(|r| format!("{} log tail:\n{}", r.name(), tail(&r.log(), 30)))
            .collect();
        if !report.is_exact() {
            // The numbers (seq - 1) of what was lost, as ranges.
            let mut lost_ranges: Vec<(usize, usize)> = Vec::new();
            for (n, id) in sent.iter().enumerate() {
                if copies.contains_key(id) {
                    continue;
                }
                match lost_ranges.last_mut() {
                    Some((_, last)) if *last + 1 == n => *last = n,
                    _ => lost_ranges.push((n, n)),
                }
            }
            let dropped: usize = roots
                .iter()
                .map(|r| r.log().matches("Event landed before; dropped.").count())
                .sum();
            panic!(
                "{what}: {report:?}; first lost: {first_lost:?}; lost numbers: \
                 {lost_ranges:?}\nhub's ingress: {}\nroot's \
                 ingress: {}\nroot: {dropped} events dropped as landed before; records of \
                 what landed: {}\nhub log tail:\n{}\n{}",
                consumer_state(&self.hub_js).await,
                consumer_state(&self.root_js).await,
                landed_records(&self.root_js).await,
                tail(&self.hub.log(), 30),
                logs.join("\n"),
            );
        }
    }
}

/// The root's records of landed sequence numbers (for a failure's message).
async fn landed_records(js: &jetstream::Context) -> String {
    let Ok(bucket) = js.get_key_value("NEXUS_LANDED_SEQ").await else {
        return "no bucket".to_owned();
    };
    let Ok(mut keys) = bucket.keys().await else {
        return "no keys".to_owned();
    };
    let mut out = Vec::new();
    while let Some(Ok(key)) = futures::StreamExt::next(&mut keys).await {
        let value = bucket.get(&key).await.ok().flatten().unwrap_or_default();
        let value = String::from_utf8_lossy(&value);
        let ranges = value.split(',').count();
        let shown: String = value.chars().take(300).collect();
        out.push(format!("{key}: {ranges} ranges: {shown}"));
    }
    out.join("; ")
}

/// Where the ingress consumer of a tier stands (for a failure's message).
async fn consumer_state(js: &jetstream::Context) -> String {
    let consumer: Result<jetstream::consumer::PullConsumer, String> = async {
        js.get_stream("NEXUS_INGRESS")
            .await
            .map_err(|e| e.to_string())?
            .get_consumer("nexus-agent")
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match consumer {
        Ok(mut consumer) => match consumer.info().await {
            Ok(i) => format!(
                "delivered up to {}, acked up to {}, {} pending, {} awaiting their ack, {} \
                 redelivered, {} pull requests waiting, leader {:?}",
                i.delivered.stream_sequence,
                i.ack_floor.stream_sequence,
                i.num_pending,
                i.num_ack_pending,
                i.num_redelivered,
                i.num_waiting,
                i.cluster.as_ref().and_then(|c| c.leader.clone())
            ),
            Err(e) => e.to_string(),
        },
        Err(e) => e,
    }
}

/// The last `n` lines of an agent's log above DEBUG (its heartbeats are DEBUG lines).
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ids(events: &[SignedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

/// Events flow while the server leading the journal is SIGKILLed mid-stream (the streams
/// it led elect new leaders among the two others, which still form a quorum) and restarted
/// later on the same ports and store: every event lands once, and the restarted server
/// catches up as a replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_server_killed_mid_stream_and_restarted_loses_nothing() {
    let root = ClusteredRoot::start(ROOT_R3).await;
    root.assert_everything_on_three().await;
    let events = root.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = root.send(events, Arc::clone(&acked));
    let before = wait_landed(&root.root_js, SUBJECT, EVENTS / 5, SETTLE).await;
    assert!(before >= EVENTS / 5, "only {before} landed before the kill");
    let leader = root.placed_on_three(LANDING).await.leader;
    // Counted before the kill: the journal answers no stream info until it has a new leader.
    let at_kill = root.landed().await;
    let acked_at_kill = acked.load(Ordering::SeqCst);
    let killed_at = Instant::now();
    root.cluster.kill(leader);
    // Traffic goes on with two servers of three (a quorum): wait for progress, then bring
    // the dead server back.
    let while_down = wait_landed(&root.root_js, SUBJECT, at_kill + EVENTS / 5, SETTLE).await;
    let down_for = killed_at.elapsed();
    root.cluster.restart(leader);
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = wait_landed(&root.root_js, SUBJECT, EVENTS, SETTLE).await;
    let new_leader = root.placed_on_three(LANDING).await.leader;
    let caught_up = wait_until(
        "the restarted server is a current replica of the journal again",
        SETTLE,
        async || match root.cluster.stream_placement(&root.root_js, LANDING).await {
            Ok(p) if p.current == 3 => Ok(p),
            Ok(p) => Err(format!("{p:?}")),
            Err(e) => Err(e),
        },
    )
    .await;
    eprintln!("journal after the restart: {caught_up:?}");
    eprintln!(
        "killed node-{} (led the journal) after {before} landed ({at_kill} at the kill, \
         {acked_at_kill} acked by the hub's server); \
         {while_down} landed while it was down ({down_for:?}); journal led by node-{} after; \
         {landed} in the end",
        char::from(b'a' + leader as u8),
        char::from(b'a' + new_leader as u8),
    );
    assert!(
        while_down > at_kill,
        "nothing landed while one server of three was down"
    );
    root.assert_all_landed("cluster server SIGKILL", &sent, &[&root.root])
        .await;
    root.assert_everything_on_three().await;
    assert!(root.root.is_running() && root.hub.is_running());
}

/// The leaders of the journal and of the root's ingress stream are moved mid-stream
/// (`$JS.API.STREAM.LEADER.STEPDOWN.<stream>`), one after the other: every event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leaders_moved_mid_stream_lose_nothing() {
    let root = ClusteredRoot::start(ROOT_R3).await;
    root.assert_everything_on_three().await;
    let events = root.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = root.send(events, Arc::clone(&acked));
    let mut moves = Vec::new();
    for (stream, at) in [(LANDING, EVENTS / 5), ("NEXUS_INGRESS", EVENTS * 2 / 5)] {
        let landed = wait_landed(&root.root_js, SUBJECT, at, SETTLE).await;
        assert!(
            landed >= at,
            "only {landed} landed before moving {stream}'s leader"
        );
        let before = root.placed_on_three(stream).await.leader;
        let after = root
            .cluster
            .step_down(&root.root_client, stream, SETUP)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        moves.push(format!(
            "{stream}: node-{} -> node-{} after {landed} landed",
            char::from(b'a' + before as u8),
            char::from(b'a' + after as u8)
        ));
    }
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = wait_landed(&root.root_js, SUBJECT, EVENTS, SETTLE).await;
    eprintln!("leaders moved: {}; {landed} in the end", moves.join("; "));
    root.assert_all_landed("stream leaders moved", &sent, &[&root.root])
        .await;
    assert!(root.root.is_running() && root.hub.is_running());
}

/// Two root agents (same config, their own data dirs) share the ingress consumer on the
/// cluster; A lands alone first, B joins, A is SIGKILLed mid-stream and B finishes: every
/// event lands once, and each instance provably landed some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_root_agents_share_the_ingress_and_one_is_killed_mid_stream() {
    let root = ClusteredRoot::start(ROOT_R3).await;
    root.assert_everything_on_three().await;
    let events = root.events(EVENTS);
    let sent = ids(&events);
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = root.send(events, Arc::clone(&acked));
    let by_a_alone = wait_landed(&root.root_js, SUBJECT, EVENTS / 5, SETTLE).await;
    assert!(
        by_a_alone >= EVENTS / 5,
        "only {by_a_alone} landed through root A"
    );
    let config_b = root.fleet.config(fleet::ROOT, ROOT_R3).replace(
        &format!("{}-data", fleet::ROOT),
        &format!("{}-b-data", fleet::ROOT),
    );
    assert!(config_b.contains("-b-data"), "root B has its own data dir");
    let root_b = AgentProcess::spawn("root-b", &config_b, root.fleet.path());
    wait_until("root B's ingress is ready", SETUP, async || {
        root_b.log().contains("Ingress ready.")
    })
    .await;
    let at_join = root.landed().await;
    let before_kill = wait_landed(&root.root_js, SUBJECT, EVENTS / 2, SETTLE).await;
    root.root.kill();
    let at_kill = root.landed().await;
    tokio::time::timeout(SETTLE, sender)
        .await
        .expect("every event is acknowledged by the hub's server")
        .expect("the sender does not panic");
    let landed = wait_landed(&root.root_js, SUBJECT, EVENTS, SETTLE).await;
    let after_kill = landed.saturating_sub(at_kill);
    eprintln!(
        "landed through A alone: >= {by_a_alone}; when B was ready: {at_join}; before A's \
         SIGKILL: {before_kill} ({at_kill} at the kill); after the kill, by B alone: \
         {after_kill}; {landed} in the end"
    );
    root.assert_all_landed("root agent SIGKILL", &sent, &[&root.root, &root_b])
        .await;
    assert!(
        by_a_alone > 0 && after_kill > 0,
        "both instances landed: A {by_a_alone}, B {after_kill}"
    );
    assert!(root_b.is_running() && root.hub.is_running());
}

/// A root that ran with one replica (the default) and restarts with `replicas = 3` scales
/// what it created in place: every stream and bucket ends up on 3 servers, and what landed
/// before is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_restarted_with_three_replicas_scales_its_streams_and_buckets_in_place() {
    let root = ClusteredRoot::start("[ingress]\nduplicate_window = \"40s\"\n").await;
    let first = root.events(100);
    let acked = Arc::new(AtomicUsize::new(0));
    root.send(first.clone(), Arc::clone(&acked))
        .await
        .expect("the sender does not panic");
    let landed = wait_landed(&root.root_js, SUBJECT, first.len(), SETTLE).await;
    assert_eq!(
        landed,
        first.len(),
        "the first events land with one replica"
    );
    for stream in ROOT_STREAMS {
        let placement = root
            .cluster
            .stream_placement(&root.root_js, stream)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (placement.replicas, placement.peers),
            (1, 1),
            "{stream} starts with one replica"
        );
    }
    // The same root, restarted with three replicas.
    root.root.terminate(Duration::from_secs(5));
    let config = root.fleet.config(fleet::ROOT, ROOT_R3);
    std::fs::write(root.root.config_path(), config).expect("the root's config");
    root.root.restart();
    root.assert_everything_on_three().await;
    let second = root.events(100);
    let mut sent = ids(&first);
    sent.extend(ids(&second));
    root.send(second, Arc::clone(&acked))
        .await
        .expect("the sender does not panic");
    wait_landed(&root.root_js, SUBJECT, sent.len(), SETTLE).await;
    root.assert_all_landed("scaled from 1 to 3 replicas", &sent, &[&root.root])
        .await;
    assert!(
        root.root
            .log()
            .contains("scaled to the configured replicas"),
        "the root says which buckets it scaled:\n{}",
        tail(&root.root.log(), 40)
    );
}

/// `replicas = 3` on a single nats-server (not a cluster): the server refuses the streams,
/// and the root's log says which key and what to do instead of retrying silently. The
/// landing is set up first (the ingress waits for it), so each key is tried on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_single_server_are_refused_naming_the_key() {
    let fleet = Fleet::with_servers(
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    );
    let root = fleet.spawn(fleet::ROOT, "[landing]\nreplicas = 3\n");
    for key in ["landing.replicas", "ingress.replicas"] {
        if key == "ingress.replicas" {
            root.terminate(Duration::from_secs(5));
            let config = fleet.config(fleet::ROOT, "[ingress]\nreplicas = 3\n");
            std::fs::write(root.config_path(), config).expect("the root's config");
            root.restart();
        }
        let fix = format!("set {key} = 1");
        let line = wait_until(
            &format!("the root says {key} cannot be placed"),
            SETUP,
            async || {
                root.log()
                    .lines()
                    .find(|l| l.contains(&fix))
                    .map(str::to_owned)
            },
        )
        .await;
        eprintln!("{line}");
        assert!(
            line.contains("not part of a JetStream cluster") && line.contains("retrying"),
            "the reason is given: {line}"
        );
        assert!(root.is_running(), "the root keeps retrying");
    }
}
