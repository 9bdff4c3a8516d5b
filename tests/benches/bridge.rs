//! The subject bridge beside the raw NATS path, in one run, and the round trip of a
//! command from the root to a member.
//!
//! `cargo build --release -p nexus-agent && cargo bench -p nexus-e2e --bench bridge`
//! (or point `NEXUS_E2E_AGENT_BIN` at an agent binary). Not a test: it prints tables
//! (docs/benchmarks.md).
//!
//! - **bridge**: a local app requests `app.bench.{n}` on the member's own NATS, 256
//!   requests in flight; the member agent wraps, checks, signs and appends each to its
//!   outbox (fsynced) before answering; the uplink sends them to the hub, which verifies and
//!   forwards to the root, which verifies and lands them (hub and root nats-servers with
//!   `sync_interval: always`). Timed from the first request until a subscriber on the
//!   root's NATS saw every event; latency is per message, request sent → seen at the root.
//!   Then back to back (one request at a time, the next as soon as it is answered), and
//!   spaced (one request every `SPACING`: the latency of a lone message, no queue behind
//!   it). The whole fleet runs twice: hub and root nats-servers as the configs we ship
//!   (`sync_interval: always`), then at nats-server's defaults (PubAck before fsync), to
//!   show what the durable hops cost.
//! - **raw**: the same payloads JetStream-published straight into a file stream on a
//!   `sync_interval: always` nats-server (the same three phases), seen by a subscriber
//!   there.
//! - **agent.ping** and **booking.cancel**: signed commands from the root key, requested
//!   on the root's NATS one after another, routed by the hub to the member and answered
//!   (signed) by it: `agent.ping` by the agent itself, `booking.cancel` by a local app the
//!   member requests it from (with a reply subject of the agent's own, so that an up rule
//!   can tell the delivery apart).
//! - **backlog after an outage**: on each fleet, the hub's nats-server is stopped, the app
//!   requests `BACKLOG` more messages (each answered once fsynced in the member's outbox),
//!   the server is started again; timed from then until the root saw every backlog event,
//!   and until it saw the first member heartbeat (heartbeats are queued during the outage
//!   too, and go before the bulk backlog).

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use nexus_e2e::bench::app::{drive, payload};
use nexus_e2e::bench::stats::{ms, percentile as pct};
use nexus_e2e::{fleet, wait_until, Fleet, NatsServer};
use nexus_federation::command::{self, Issuer};
use nexus_policies::SecretKey;

const MESSAGES: usize = 5_000;
const IN_FLIGHT: usize = 256;
/// Messages of the back-to-back runs, one in flight.
const PACED: usize = 300;
/// Messages of the spaced runs, one every `SPACING`.
const SPACED: usize = 100;
const SPACING: Duration = Duration::from_millis(20);
const PINGS: usize = 200;
/// Messages requested while the hub's nats-server is down.
const BACKLOG: usize = 10_000;
const SETUP: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(300);

fn durable_server() -> NatsServer {
    NatsServer::builder().sync_always().start()
}

/// Receives until every `n` in `range` arrived; returns each one's arrival time by `n`.
fn receiver(
    mut subscription: async_nats::Subscriber,
    range: Range<usize>,
) -> tokio::task::JoinHandle<HashMap<usize, Instant>> {
    tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(range.len());
        while seen.len() < range.len() {
            let Ok(Some(message)) = tokio::time::timeout(DEADLINE, subscription.next()).await
            else {
                break;
            };
            let body: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            // An envelope (bridge) carries the app's object as its payload.
            let n = body["payload"]["n"].as_u64().or(body["n"].as_u64());
            if let Some(n) = n.map(|n| n as usize).filter(|n| range.contains(n)) {
                seen.entry(n).or_insert_with(Instant::now);
            }
        }
        seen
    })
}

fn report(
    name: &str,
    start: Instant,
    sent: &HashMap<usize, Instant>,
    seen: &HashMap<usize, Instant>,
) {
    let last = seen.values().max().copied().unwrap_or(start);
    let secs = last.duration_since(start).as_secs_f64();
    let mut latencies: Vec<Duration> = seen
        .iter()
        .filter_map(|(n, at)| sent.get(n).map(|s| at.saturating_duration_since(*s)))
        .collect();
    latencies.sort_unstable();
    println!(
        "| {name} | {} of {} | {:.0} | {:.1} | {:.1} | {:.1} |",
        seen.len(),
        sent.len(),
        seen.len() as f64 / secs,
        ms(pct(&latencies, 0.5)),
        ms(pct(&latencies, 0.99)),
        ms(pct(&latencies, 1.0)),
    );
}

/// One path measured three times: a burst (`IN_FLIGHT` at a time), back to back (one at a
/// time) and spaced (one every `SPACING`).
async fn measure<F, Fut>(name: &str, client: &async_nats::Client, filter: &str, send: F)
where
    F: Fn(usize) -> Fut + Copy,
    Fut: std::future::Future<Output = ()>,
{
    let paced = MESSAGES + PACED;
    for (phase, range, in_flight, spacing) in [
        ("burst", 0..MESSAGES, IN_FLIGHT, Duration::ZERO),
        ("back to back", MESSAGES..paced, 1, Duration::ZERO),
        ("spaced 20 ms", paced..paced + SPACED, 1, SPACING),
    ] {
        let subscription = client
            .subscribe(filter.to_owned())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let seen = receiver(subscription, range.clone());
        let start = Instant::now();
        let sent = drive(range, in_flight, spacing, send).await;
        let answered = start.elapsed();
        let seen = seen.await.expect("receiver");
        report(&format!("{name}, {phase}"), start, &sent, &seen);
        eprintln!(
            "  ({name}, {phase}: all sent and acknowledged after {:.2} s)",
            answered.as_secs_f64()
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!(
        "~70 B messages; burst: {MESSAGES} with {IN_FLIGHT} in flight; back to back: {PACED} \
         one at a time; spaced: {SPACED}, one every {} ms; loopback, 2 cores\n",
        SPACING.as_millis()
    );
    println!(
        "| path | arrived | msg/s | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|"
    );
    let (ping, durable_backlog) = bridge(true).await;
    let (_, default_backlog) = bridge(false).await;
    raw().await;
    println!();
    println!("| command | answered | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    println!("{}", ping.unwrap_or_default());
    println!();
    println!(
        "| backlog of {BACKLOG} built while the hub's nats-server was down | appended while down, msg/s | \
         1st heartbeat at the root after | backlog events before it | all landed after | drain msg/s |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    println!("{durable_backlog}\n{default_backlog}");
}

/// A local request of payload `n` through the member's bridge, answered once fsynced.
async fn request(app: &async_nats::Client, n: usize) {
    nexus_e2e::bench::app::request(app, format!("app.bench.n{}", n % 16), n).await;
}

/// The backlog phase (module doc); its table row.
async fn backlog(fleet: &Fleet, app: &async_nats::Client, root: &async_nats::Client) -> String {
    let first = MESSAGES + PACED + SPACED;
    let range = first..first + BACKLOG;
    let events = root
        .subscribe("nexus.salon-001.bench.*")
        .await
        .expect("subscribe");
    let mut beats = root
        .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
        .await
        .expect("subscribe");
    root.flush().await.expect("flush");
    let seen = receiver(events, range.clone());

    fleet.hub_nats.stop();
    // Heartbeats that were on their way before the stop are not the ones we wait for.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), beats.next()).await {}
    let start = Instant::now();
    drive(range, IN_FLIGHT, Duration::ZERO, |n| request(app, n)).await;
    let appended = start.elapsed();

    fleet.hub_nats.restart();
    let back = Instant::now();
    tokio::time::timeout(DEADLINE, beats.next())
        .await
        .expect("a member heartbeat reaches the root after the outage");
    let heartbeat = Instant::now();
    let seen = seen.await.expect("receiver");
    let before_heartbeat = seen.values().filter(|at| **at < heartbeat).count();
    let first_at = seen.values().min().copied().unwrap_or(back);
    let last_at = seen.values().max().copied().unwrap_or(back);
    let drain = last_at.saturating_duration_since(first_at).as_secs_f64();
    format!(
        "| {} of {BACKLOG} landed | {:.0} | {:.2} s | {before_heartbeat} | {:.2} s | {:.0} |",
        seen.len(),
        BACKLOG as f64 / appended.as_secs_f64(),
        heartbeat.duration_since(back).as_secs_f64(),
        last_at.saturating_duration_since(back).as_secs_f64(),
        seen.len() as f64 / drain.max(f64::EPSILON),
    )
}

/// The bridge through a fleet whose hub and root nats-servers are `durable`
/// (`sync_interval: always`, the shipped configs) or at nats-server's defaults; with
/// durable servers, then the `agent.ping` row; then the backlog row.
async fn bridge(durable: bool) -> (Option<String>, String) {
    let server = || {
        if durable {
            durable_server()
        } else {
            NatsServer::start()
        }
    };
    let fleet = Fleet::with_servers(server(), server(), NatsServer::start());
    let root_client = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("root nats");
    let mut beats = root_client
        .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
        .await
        .expect("subscribe");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let _member = fleet.spawn(
        fleet::MEMBER,
        "[bridge]\n[[bridge.up]]\nlocal = \"app.bench.*\"\nevent = \"bench.*\"\n\
         [[bridge.down]]\ncommand = \"booking.cancel\"\nlocal = \"app.cmd.booking.cancel\"\n",
    );
    tokio::time::timeout(SETUP, beats.next())
        .await
        .expect("the member's heartbeat reaches the root");

    // Bridge: local request → member outbox (fsync) → answer; → hub → root → subscriber.
    let app = async_nats::connect(fleet.member_nats.url())
        .await
        .expect("member nats");
    let app = &app;
    let servers = if durable {
        "hub and root `sync_interval: always`"
    } else {
        "hub and root nats-server defaults"
    };
    measure(
        &format!("local app → member bridge (outbox fsync) → hub → root ({servers})"),
        &root_client,
        "nexus.salon-001.bench.*",
        |n| request(app, n),
    )
    .await;
    let ping = if durable {
        Some(commands(&fleet, &root_client, app).await)
    } else {
        None
    };
    let backlog = backlog(&fleet, app, &root_client).await;
    (
        ping,
        format!("| {servers}: {}", backlog.trim_start_matches("| ")),
    )
}

/// Raw: the same payloads JetStream-published into a durable stream, seen by a subscriber.
async fn raw() {
    let raw_server = durable_server();
    let raw = async_nats::connect(raw_server.url())
        .await
        .expect("raw nats");
    let js = jetstream::new(raw.clone());
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("stream");
    let js = &js;
    measure(
        "the same payloads JetStream-published straight into a root-like NATS",
        &raw,
        "raw.>",
        |n| async move {
            js.publish(format!("raw.bench.n{}", n % 16), payload(n))
                .await
                .expect("publish")
                .await
                .expect("PubAck");
        },
    )
    .await;
}

/// The command rows: `agent.ping` (answered by the member agent itself) and
/// `booking.cancel` (delivered to a local app on the member's NATS, which answers at once),
/// root → hub → member → back, one at a time.
async fn commands(
    fleet: &Fleet,
    root_client: &async_nats::Client,
    app: &async_nats::Client,
) -> String {
    let mut requests = app
        .subscribe("app.cmd.booking.cancel")
        .await
        .expect("subscribe");
    app.flush().await.expect("flush");
    let answerer = app.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = answerer.publish(reply, "{\"cancelled\":true}".into()).await;
            }
        }
    });
    let ping = round_trips(fleet, root_client, "agent.ping").await;
    let cancel = round_trips(fleet, root_client, "booking.cancel").await;
    format!(
        "| `agent.ping` root → hub → member → root (signed both ways, verified at hub and member) | {ping}\n\
         | `booking.cancel` root → hub → member → local app (a NATS request with the agent's own reply subject) → root | {cancel}"
    )
}

/// `command` from the root key to the member, one at a time: the row's figures.
async fn round_trips(fleet: &Fleet, root_client: &async_nats::Client, name: &str) -> String {
    let root_key =
        SecretKey::parse(&std::fs::read_to_string(&fleet.root_key.secret).expect("root key file"))
            .expect("root key");
    let issuer = Issuer {
        node_id: fleet::ROOT,
        key: &root_key,
        chain: None,
    };
    let once = async || {
        let sealed = command::seal(
            &issuer,
            fleet::MEMBER,
            name,
            serde_json::Map::new(),
            Duration::from_secs(5),
            time::OffsetDateTime::now_utc(),
        )
        .expect("seal");
        let request = async_nats::Request::new()
            .payload(sealed.body)
            .headers(sealed.headers)
            .timeout(Some(Duration::from_secs(5)));
        let started = Instant::now();
        let answer = root_client.send_request(sealed.subject, request).await;
        answer.ok().map(|_| started.elapsed())
    };
    wait_until(&format!("the member answers {name}"), SETUP, async || {
        once().await
    })
    .await;
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        if let Some(rtt) = once().await {
            rtts.push(rtt);
        }
    }
    rtts.sort_unstable();
    format!(
        "{} of {PINGS} | {:.2} | {:.2} | {:.2} |",
        rtts.len(),
        ms(pct(&rtts, 0.5)),
        ms(pct(&rtts, 0.99)),
        ms(pct(&rtts, 1.0)),
    )
}
