//! `./dev bench`: the durable path side by side with its anchors, in one run, written as a
//! dated table into docs/benchmarks.md ("The durable path, side by side").
//!
//! `durable [--smoke] [--only TEXT] [--write FILE] [--out FILE]` (cargo bench passes
//! `--bench`, ignored). `--only` runs the sections whose name contains TEXT (to profile one,
//! docs/benchmarks.md); it cannot be combined with `--write`.
//! `--write` replaces the block between `<!-- bench:begin -->` and `<!-- bench:end -->` of
//! FILE, and only when every section succeeded; `--out` writes the block alone to FILE.
//! The block is always printed. `--smoke` runs every section with tiny counts (what
//! `./dev test` runs, to prove the command works). Needs nats-server and mosquitto; the
//! agent is `NEXUS_E2E_AGENT_BIN`, else the one of the harness's own profile directory.
//!
//! Anchors, measured by the harness in the same run:
//! - JetStream publish of the signed events into one file stream, W PubAcks in flight
//!   (W = 1, 64, 1024), at nats-server's defaults and with `sync_interval: always`; and
//!   W = 64 into a stream of three replicas on a three-server cluster (`always`);
//! - a plain async-nats hop: a pull consumer on stream IN (server A) publishes each message
//!   to stream OUT (server B) and acks it after the PubAck, batches of 256; both settings;
//! - Ed25519 verification on one core: `PublicKey::verify` one by one, and
//!   `keys::verify_batch` in batches of 64 and 256;
//! - nats-server's own MQTT gateway, QoS 1, PUBACKs per second; both settings.
//!
//! The agent (release build, the shipped example configs through `ExampleFleet`):
//! - member → hub → root: the harness plays the member's uplink (events signed with the
//!   member's key, published into the hub's `NEXUS_INGRESS` in batches of 256 with
//!   pipelined PubAcks), timed until the journal `NEXUS_EVENTS` holds all; hub and root
//!   servers durable, then at defaults. The added latency per tier comes from the stored
//!   times of each event in the hub's `NEXUS_INGRESS`, the root's `NEXUS_INGRESS` and the
//!   journal, and the envelope's `ts` (created, millisecond precision) → journal. At
//!   defaults also paced: events signed and sent at 5,000/s. Then once more with the
//!   root's NATS a three-server cluster and the root's streams at three replicas. The
//!   whole machine's busy cores and CPU per event over each burst (`/proc/stat`) say
//!   whether a run was short of CPU.
//! - the hub's verify + forward alone: the hub agent's ingress is created by a first start,
//!   the agent stopped, N signed events loaded into it, and the agent started again; the
//!   root side is a plain nats-server with a `NEXUS_INGRESS` stream on `_nexus.ingress.>`
//!   and no agent. Timed from the start until that stream holds all N; the hub's CPU time
//!   from /proc/PID/stat.
//! - MQTT QoS 1 → mosquitto → the member's IoT bridge → hub → root, until the root's
//!   `NEXUS_IOT` holds every reading; durable servers.
//! - a local app requesting through the member's subject bridge (256 in flight, each
//!   answered once fsynced) → hub → root, until the journal holds every event; durable.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::FutureExt as _;
use nexus_e2e::bench::app as local_app;
use nexus_e2e::bench::events::{self, between, sign_events, stream_count, wait_count, SUBJECT};
use nexus_e2e::bench::machine::{replace_block, Setup};
use nexus_e2e::bench::mqtt;
use nexus_e2e::bench::stats::{process_cpu, CpuUse, Latency, MachineCpu};
use nexus_e2e::examples::ExampleFleet;
use nexus_e2e::{fleet, landing, wait_until, AgentProcess, Fleet, NatsCluster, NatsServer};
use nexus_federation::trust::{key_id, CHAINS_BUCKET, TRUST_BUCKET};
use nexus_federation::{subject, SignedEvent};
use rumqttc::QoS;
use tokio::time::Instant;

mod anchors;
mod report;

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";
const INGRESS: &str = "NEXUS_INGRESS";
const JOURNAL: &str = "NEXUS_EVENTS";
const IOT: &str = "NEXUS_IOT";
/// The MQTT topic (the example member maps `sensors/{sensor_id}/{metric}`, plain numbers).
const TOPIC: &str = "sensors/bench-01/temperature";
/// Where the example member's IoT bridge puts those readings.
const IOT_SUBJECT: &str = "nexus.salon-001.iot.sensor_data";
/// The example member's `[[bridge.up]]` maps `app.booking.*` to `booking.*`.
const APP_SUBJECT: &str = "app.booking.bench";
const APP_EVENT_SUBJECT: &str = "nexus.salon-001.booking.bench";
const WINDOWS: [usize; 3] = [1, 64, 1024];
const VERIFY_BATCHES: [usize; 2] = [64, 256];
const HOP_BATCH: usize = 256;
const APP_IN_FLIGHT: usize = 256;
const PACED_RATE: u32 = 5_000;
/// PubAcks in flight of the anchor the durable path is held against (and of its
/// three-replica twin).
const ANCHOR_WINDOW: usize = 64;
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(300);

/// How many messages each section sends.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    raw_w1: usize,
    raw: usize,
    hop: usize,
    verify: usize,
    gateway_defaults: usize,
    gateway_always: usize,
    burst_durable: usize,
    burst_defaults: usize,
    paced: usize,
    hub_alone: usize,
    mqtt: usize,
    app: usize,
}

const FULL: Sizes = Sizes {
    raw_w1: 2_000,
    raw: 20_000,
    hop: 20_000,
    verify: 5_000,
    gateway_defaults: 20_000,
    gateway_always: 5_000,
    burst_durable: 20_000,
    burst_defaults: 30_000,
    paced: 20_000,
    hub_alone: 30_000,
    mqtt: 20_000,
    app: 20_000,
};

const SMOKE: Sizes = Sizes {
    raw_w1: 100,
    raw: 500,
    hop: 500,
    verify: 256,
    gateway_defaults: 200,
    gateway_always: 100,
    burst_durable: 300,
    burst_defaults: 300,
    paced: 300,
    hub_alone: 300,
    mqtt: 200,
    app: 200,
};

#[derive(Debug, Default)]
struct Args {
    smoke: bool,
    only: Option<String>,
    write: Option<PathBuf>,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => args.smoke = true,
            "--bench" => {}
            "--only" => args.only = Some(it.next().ok_or("--only needs a text")?),
            "--write" | "--out" => {
                let path = it.next().ok_or(format!("{arg} needs a file"))?;
                let slot = if arg == "--write" {
                    &mut args.write
                } else {
                    &mut args.out
                };
                *slot = Some(PathBuf::from(path));
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.only.is_some() && args.write.is_some() {
        return Err("--only runs part of the table: use --out, not --write".to_owned());
    }
    Ok(args)
}

fn server(durable: bool) -> NatsServer {
    if durable {
        NatsServer::builder().sync_always().start()
    } else {
        NatsServer::start()
    }
}

fn setting(durable: bool) -> &'static str {
    if durable {
        "`always`"
    } else {
        "defaults"
    }
}

/// Where the member's uplink publishes an event: the hub's ingress.
fn to_ingress(event: &SignedEvent) -> String {
    subject::ingress_subject(&event.subject)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

// ---------------------------------------------------------------------------------------
// The agent

/// Added latency per tier of a set of events.
#[derive(Debug, Clone, Copy, Default)]
struct Tiers {
    /// Hub's NEXUS_INGRESS stored → root's NEXUS_INGRESS stored.
    hub: Latency,
    /// Root's NEXUS_INGRESS stored → journal stored.
    root: Latency,
    /// Envelope `ts` → journal stored.
    created: Latency,
}

/// Waits until the example fleet's hub and root have set up their ingress (each one's
/// chain registry exists, the last step of that) and the root its journal, and presents
/// the member's chain to the hub (the played uplink signs with the member's key). Each
/// section then warms its own path up with one message.
async fn ready(site: &ExampleFleet, hub_js: &jetstream::Context) {
    let registry = wait_until(
        "the hub's chain registry exists",
        SETUP_DEADLINE,
        async || hub_js.get_key_value(CHAINS_BUCKET).await,
    )
    .await;
    present_member(&site.fleet, &registry).await;
    let root_js = &site.root_js;
    wait_until(
        "the root's chain registry and journal exist",
        SETUP_DEADLINE,
        async || {
            root_js
                .get_key_value(CHAINS_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            root_js.get_stream(JOURNAL).await.map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Stops the fleet's three agents together (dropping the fleet stops them one after the
/// other, each taking up to its shutdown grace).
fn stop(site: &ExampleFleet) {
    std::thread::scope(|scope| {
        for agent in [&site.member, &site.hub, &site.root] {
            scope.spawn(move || agent.terminate(Duration::from_secs(5)));
        }
    });
}

/// A message number no timed run uses, for warm-ups.
const WARM_UP: usize = 1_000_000_000;

async fn present_member(fleet: &Fleet, registry: &kv::Store) {
    let key = events::read_key(&fleet.member_key.secret);
    let chain = Bytes::from(std::fs::read(fleet.token_path(fleet::MEMBER)).expect("token"));
    registry
        .put(key_id(&key.public()), chain)
        .await
        .expect("present the member's chain to the hub");
}

/// The tiers of each set of event_ids, from the three streams' stored times.
async fn tiers(
    hub_js: &jetstream::Context,
    root_js: &jetstream::Context,
    sets: &[&[String]],
) -> Vec<Tiers> {
    let ingress = subject::ingress_subject(SUBJECT);
    let hub = events::stored(hub_js, INGRESS, &ingress).await;
    let root = events::stored(root_js, INGRESS, &ingress).await;
    let journal = events::stored(root_js, JOURNAL, SUBJECT).await;
    sets.iter()
        .map(|ids| {
            let (mut h, mut r, mut c) = (Vec::new(), Vec::new(), Vec::new());
            for id in ids.iter() {
                let (hub, root, landed) = (hub.get(id), root.get(id), journal.get(id));
                if let (Some(hub), Some(root)) = (hub, root) {
                    h.push(between(hub.at, root.at));
                }
                if let (Some(root), Some(landed)) = (root, landed) {
                    r.push(between(root.at, landed.at));
                }
                if let Some(landed) = landed {
                    c.extend(landed.created.map(|created| between(created, landed.at)));
                }
            }
            Tiers {
                hub: Latency::of(h),
                root: Latency::of(r),
                created: Latency::of(c),
            }
        })
        .collect()
}

/// The hub's and the root's nats-servers in a member → hub → root run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Servers {
    /// nats-server's defaults (PubAck before fsync).
    Defaults,
    /// `sync_interval: always`, as config/nats/ ships them.
    Durable,
    /// The hub's durable, the root's a three-server cluster (`sync_interval: always`) with
    /// every stream and bucket at three replicas (docs/deploy-root-cluster.md).
    Cluster,
}

impl Servers {
    /// The key of its figures.
    fn key(self) -> &'static str {
        match self {
            Servers::Defaults => "mhr.false",
            Servers::Durable => "mhr.true",
            Servers::Cluster => "mhr.cluster",
        }
    }
}

/// What member → hub → root measured on one fleet.
#[derive(Debug, Clone, Copy)]
struct Federation {
    rate: f64,
    tiers: Tiers,
    paced: Option<Tiers>,
    /// The whole machine's CPU over the burst.
    cpu: CpuUse,
}

/// member → hub → root (module doc) on the example fleet: first `paced` events at
/// [`PACED_RATE`] (if any) on the quiet fleet, then the burst.
async fn member_hub_root(servers: Servers, burst: usize, paced: usize) -> Federation {
    let cluster = (servers == Servers::Cluster).then(|| NatsCluster::start(3));
    let site = match &cluster {
        Some(cluster) => ExampleFleet::start_with_root_cluster(cluster).await,
        None => ExampleFleet::start_with_servers(servers == Servers::Durable).await,
    };
    let hub_js = jetstream::new(site.fleet.hub_nats.client().await);
    ready(&site, &hub_js).await;
    let key = events::read_key(&site.fleet.member_key.secret);
    events::publish_batches(
        &hub_js,
        &sign_events(&key, WARM_UP..WARM_UP + 1),
        1,
        to_ingress,
    )
    .await;
    wait_count(&site.root_js, JOURNAL, SUBJECT, 1, SETUP_DEADLINE).await;
    let mut base = stream_count(&site.root_js, JOURNAL, SUBJECT).await;
    // Paced first, on a quiet fleet (the burst leaves work behind: the domain streams'
    // sourcing catches up after the journal).
    let paced_ids = if paced > 0 {
        let ids =
            events::publish_paced(&hub_js, &key, burst..burst + paced, PACED_RATE, to_ingress)
                .await;
        base += paced;
        wait_count(&site.root_js, JOURNAL, SUBJECT, base, DEADLINE).await;
        Some(ids)
    } else {
        None
    };
    let signed = sign_events(&key, 0..burst);
    let burst_ids: Vec<String> = signed.iter().map(|e| e.event_id.clone()).collect();
    let machine = MachineCpu::now();
    let start = Instant::now();
    let sender = {
        let js = hub_js.clone();
        tokio::spawn(async move {
            events::publish_batches(&js, &signed, landing::BATCH, to_ingress).await;
            Instant::now()
        })
    };
    let landed = wait_count(&site.root_js, JOURNAL, SUBJECT, base + burst, DEADLINE).await;
    let cpu = machine.since(burst as u64);
    let acked = sender.await.expect("the uplink");
    eprintln!(
        "    {burst} landed after {:.2} s (the hub's server acked all after {:.2} s)",
        landed.duration_since(start).as_secs_f64(),
        acked.duration_since(start).as_secs_f64()
    );
    let rate = rate(burst, landed.duration_since(start));
    let mut sets: Vec<&[String]> = vec![&burst_ids];
    sets.extend(paced_ids.as_deref());
    let found = tiers(&hub_js, &site.root_js, &sets).await;
    stop(&site);
    Federation {
        rate,
        tiers: found[0],
        paced: found.get(1).copied(),
        cpu,
    }
}

/// The hub's verify + forward alone (module doc): events/s and the hub's CPU time.
async fn hub_alone(n: usize) -> (f64, Duration, Duration) {
    let fleet = Fleet::with_servers(
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::builder().jetstream(false).start(),
    );
    let root_js = jetstream::new(fleet.root_nats.client().await);
    root_js
        .create_stream(stream::Config {
            name: INGRESS.into(),
            subjects: vec![format!("{}.>", subject::INGRESS_PREFIX)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("the root-side stream");
    for bucket in [CHAINS_BUCKET, TRUST_BUCKET] {
        root_js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("the root-side bucket");
    }
    // Info, as the examples log: the fleet's test configs log at debug.
    let config = fleet
        .config(fleet::HUB, "")
        .replace("level = \"debug\"", "level = \"info\"");
    let hub = AgentProcess::spawn(fleet::HUB, &config, fleet.path());
    let hub_js = jetstream::new(fleet.hub_nats.client().await);
    let registry = wait_until("the hub's ingress is set up", SETUP_DEADLINE, async || {
        hub_js
            .get_stream(INGRESS)
            .await
            .map_err(|e| e.to_string())?;
        hub_js
            .get_key_value(CHAINS_BUCKET)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(
        hub.terminate(Duration::from_secs(10)).is_some(),
        "the hub agent stops on SIGTERM"
    );
    present_member(&fleet, &registry).await;
    let key = events::read_key(&fleet.member_key.secret);
    let signed = sign_events(&key, 0..n);
    events::publish_window(&hub_js, &signed, 1024, to_ingress).await;
    let ingress = subject::ingress_subject(SUBJECT);
    assert_eq!(stream_count(&hub_js, INGRESS, &ingress).await, n);
    hub.restart();
    let start = Instant::now();
    let pid = hub.pid().expect("the hub runs");
    let done = wait_count(&root_js, INGRESS, &ingress, n, DEADLINE).await;
    let cpu = process_cpu(pid).expect("the hub's /proc/PID/stat");
    let elapsed = done.duration_since(start);
    (rate(n, elapsed), elapsed, cpu)
}

/// MQTT QoS 1 → the example member's IoT bridge → hub → root's NEXUS_IOT (durable
/// servers): readings/s until NEXUS_IOT holds all, and until the last PUBACK.
async fn mqtt_to_root(n: usize) -> (f64, f64) {
    let site = ExampleFleet::start().await;
    let hub_js = jetstream::new(site.fleet.hub_nats.client().await);
    ready(&site, &hub_js).await;
    let port = site.broker.port();
    mqtt::publish(port, QoS::AtLeastOnce, "bench-warm-up", TOPIC, 1).await;
    wait_count(&site.root_js, IOT, IOT_SUBJECT, 1, SETUP_DEADLINE).await;
    let before = stream_count(&site.root_js, IOT, IOT_SUBJECT).await;
    let (start, _) = mqtt::publish(port, QoS::AtLeastOnce, "bench-sensors", TOPIC, n).await;
    let acked = start.elapsed();
    let landed = wait_count(&site.root_js, IOT, IOT_SUBJECT, before + n, DEADLINE).await;
    stop(&site);
    (rate(n, landed.duration_since(start.into())), rate(n, acked))
}

/// A local app's requests (256 in flight) → member → hub → root's journal (durable
/// servers): events/s until the journal holds all, and until the last answer.
async fn app_to_root(n: usize) -> (f64, f64) {
    let site = ExampleFleet::start().await;
    let hub_js = jetstream::new(site.fleet.hub_nats.client().await);
    ready(&site, &hub_js).await;
    let app = &site.app;
    local_app::request(app, APP_SUBJECT.to_owned(), WARM_UP).await;
    wait_count(&site.root_js, JOURNAL, APP_EVENT_SUBJECT, 1, SETUP_DEADLINE).await;
    let before = stream_count(&site.root_js, JOURNAL, APP_EVENT_SUBJECT).await;
    let start = Instant::now();
    local_app::drive(0..n, APP_IN_FLIGHT, Duration::ZERO, |k| {
        local_app::request(app, APP_SUBJECT.to_owned(), k)
    })
    .await;
    let answered = start.elapsed();
    let landed = wait_count(
        &site.root_js,
        JOURNAL,
        APP_EVENT_SUBJECT,
        before + n,
        DEADLINE,
    )
    .await;
    stop(&site);
    (rate(n, landed.duration_since(start)), rate(n, answered))
}

// ---------------------------------------------------------------------------------------
// The run

/// Every figure of the run, by key; a section that failed leaves its keys out.
#[derive(Debug, Default)]
struct Figures {
    /// `--only`: the sections to run (a part of the name); `None` runs all.
    only: Option<String>,
    values: HashMap<String, f64>,
    tiers: HashMap<String, Tiers>,
    failed: Vec<String>,
}

impl Figures {
    fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// Runs one section, catching a panic so that it fails that section only (unwinding drops,
/// i.e. stops, its servers and agents) and the run goes on.
async fn section<T>(figures: &mut Figures, name: &str, work: impl Future<Output = T>) -> Option<T> {
    if figures
        .only
        .as_ref()
        .is_some_and(|only| !name.contains(only.as_str()))
    {
        return None;
    }
    eprintln!("==> {name}");
    let start = Instant::now();
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(value) => {
            eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
            Some(value)
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned());
            eprintln!("    FAILED: {why}");
            figures.failed.push(format!("{name}: {why}"));
            None
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("durable: {message}\nusage: durable [--smoke] [--only TEXT] [--write FILE] [--out FILE]");
            return ExitCode::from(2);
        }
    };
    let sizes = if args.smoke { SMOKE } else { FULL };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = Setup::detect(&repo);
    // What the machine does without us: other people's builds make every figure smaller.
    let before = MachineCpu::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_load = before.since(1).busy_cores;
    let started = time::OffsetDateTime::now_utc();
    let clock = Instant::now();
    let mut fig = Figures {
        only: args.only.clone(),
        ..Figures::default()
    };

    let key = nexus_policies::SecretKey::from_seed(&[7; 32]).expect("key");
    let signed = Arc::new(sign_events(
        &key,
        0..sizes.raw.max(sizes.hop).max(sizes.verify),
    ));
    for durable in [false, true] {
        for window in WINDOWS {
            let n = if window == 1 { sizes.raw_w1 } else { sizes.raw };
            let events = Arc::new(signed[..n].to_vec());
            let name = format!("JetStream publish, W = {window}, {}", setting(durable));
            if let Some(v) = section(
                &mut fig,
                &name,
                anchors::raw_publish(events, window, durable),
            )
            .await
            {
                eprintln!("    {v:.0} msg/s");
                fig.values.insert(format!("raw.{durable}.{window}"), v);
            }
        }
        if durable {
            let events = Arc::new(signed[..sizes.raw].to_vec());
            let name = format!("JetStream publish, three replicas, W = {ANCHOR_WINDOW}, `always`");
            let run = anchors::raw_publish_replicated(events, ANCHOR_WINDOW);
            if let Some(v) = section(&mut fig, &name, run).await {
                eprintln!("    {v:.0} msg/s");
                fig.values.insert(format!("raw3.{ANCHOR_WINDOW}"), v);
            }
        }
        let events = Arc::new(signed[..sizes.hop].to_vec());
        let name = format!("plain async-nats hop, {}", setting(durable));
        if let Some(v) = section(&mut fig, &name, anchors::hop(events, durable)).await {
            eprintln!("    {v:.0} msg/s");
            fig.values.insert(format!("hop.{durable}"), v);
        }
        let n = if durable {
            sizes.gateway_always
        } else {
            sizes.gateway_defaults
        };
        let name = format!("nats-server MQTT gateway, QoS 1, {}", setting(durable));
        let run = async move {
            mqtt::gateway(QoS::AtLeastOnce, durable, TOPIC, n)
                .await
                .rate()
        };
        if let Some(v) = section(&mut fig, &name, run).await {
            eprintln!("    {v:.0} PUBACKs/s");
            fig.values.insert(format!("gateway.{durable}"), v);
        }
    }
    let events = Arc::new(signed[..sizes.verify].to_vec());
    let run = async move {
        tokio::task::spawn_blocking(move || {
            let single = anchors::verify_single(&events);
            let batches: Vec<f64> = VERIFY_BATCHES
                .iter()
                .map(|&b| anchors::verify_batch(&events, b))
                .collect();
            (single, batches)
        })
        .await
        .expect("verification")
    };
    if let Some((single, batches)) = section(&mut fig, "Ed25519 verification, one core", run).await
    {
        eprintln!("    single {single:.0}/s, batches {batches:.0?}/s");
        fig.values.insert("verify.single".into(), single);
        for (batch, v) in VERIFY_BATCHES.iter().zip(batches) {
            fig.values.insert(format!("verify.batch.{batch}"), v);
        }
    }

    for servers in [Servers::Durable, Servers::Defaults, Servers::Cluster] {
        let (burst, paced, name) = match servers {
            Servers::Durable => (sizes.burst_durable, 0, "member → hub → root, `always`"),
            Servers::Defaults => (
                sizes.burst_defaults,
                sizes.paced,
                "member → hub → root, defaults",
            ),
            Servers::Cluster => (
                sizes.burst_durable,
                0,
                "member → hub → root on a three-server cluster, `always`",
            ),
        };
        if let Some(f) = section(&mut fig, name, member_hub_root(servers, burst, paced)).await {
            eprintln!(
                "    {:.0} events/s; machine {:.2} cores busy, {:.0} µs CPU per event; tiers {:?}",
                f.rate, f.cpu.busy_cores, f.cpu.micros_per_message, f.tiers
            );
            let key = servers.key();
            fig.values.insert(key.into(), f.rate);
            fig.values.insert(format!("{key}.busy"), f.cpu.busy_cores);
            fig.values
                .insert(format!("{key}.cpu"), f.cpu.micros_per_message);
            fig.tiers.insert(key.into(), f.tiers);
            if let Some(tiers) = f.paced {
                fig.tiers.insert("paced".into(), tiers);
            }
        }
    }
    if let Some((v, elapsed, cpu)) = section(
        &mut fig,
        "hub verify + forward alone",
        hub_alone(sizes.hub_alone),
    )
    .await
    {
        eprintln!(
            "    {v:.0} events/s, CPU {:.2} s over {:.2} s",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        fig.values.insert("hub.rate".into(), v);
        fig.values.insert("hub.cpu".into(), cpu.as_secs_f64());
        fig.values
            .insert("hub.elapsed".into(), elapsed.as_secs_f64());
    }
    if let Some((v, acked)) = section(&mut fig, "MQTT QoS 1 → root", mqtt_to_root(sizes.mqtt)).await
    {
        eprintln!("    {v:.0} readings/s at the root ({acked:.0}/s PUBACKed)");
        fig.values.insert("mqtt.rate".into(), v);
        fig.values.insert("mqtt.acked".into(), acked);
    }
    if let Some((v, answered)) = section(&mut fig, "local app → root", app_to_root(sizes.app)).await
    {
        eprintln!("    {v:.0} events/s at the root ({answered:.0}/s answered)");
        fig.values.insert("app.rate".into(), v);
        fig.values.insert("app.answered".into(), answered);
    }

    let block = report::render(
        &fig,
        &setup,
        idle_load,
        &sizes,
        args.smoke,
        started,
        clock.elapsed(),
    );
    println!("{BEGIN}\n{block}\n{END}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, format!("{BEGIN}\n{block}\n{END}\n")) {
            eprintln!("durable: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    if !fig.failed.is_empty() {
        eprintln!(
            "durable: {} section(s) failed:\n  {}",
            fig.failed.len(),
            fig.failed.join("\n  ")
        );
        if let Some(path) = &args.write {
            eprintln!("durable: {} left as it was", path.display());
        }
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.write {
        if let Err(e) = replace_block(path, BEGIN, END, &block) {
            eprintln!("durable: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("durable: the table is in {}", path.display());
    }
    ExitCode::SUCCESS
}
