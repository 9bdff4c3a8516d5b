//! A thousand members per hub (docs/benchmarks.md): N simulated members in this process
//! (`nexus_e2e::bench::members`), each with its own key and a chain issued by the hub,
//! against a real hub agent and root agent, each with its own nats-server.
//!
//! `members [--smoke] [--sizes 100,1000] [--write FILE] [--out FILE]` (cargo bench passes
//! `--bench`, ignored). `--write` replaces the block between `<!-- members:begin -->` and
//! `<!-- members:end -->` of FILE, only when every size ran; `--out` writes the block alone.
//! `--smoke`: 20 members, short windows, the table printed only. The agent is
//! `NEXUS_E2E_AGENT_BIN`, else the one of the harness's own profile directory.
//!
//! Per N: the hub's RSS and CPU (from /proc) without members; the members start (chains
//! presented, heartbeats every [`MEMBER_INTERVAL`], the default, spread over it); the
//! root's and the hub's heartbeats must count all N online; the hub's RSS and CPU over a
//! window of heartbeats only, again with heartbeats every [`FAST_INTERVAL`], then at
//! [`RATE`] readings/s per member; one member is stopped and the time until the hub's and
//! the root's census count it offline is taken from its last acknowledged heartbeat; then,
//! the members paused, the first event of fresh members (whose chain the hub has never
//! read) against their second: latency to the root one at a time, and the hub's CPU for a
//! burst of them; the chain registries' sizes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use nexus_e2e::bench::events::{read_key, stream_count};
use nexus_e2e::bench::machine::{replace_block, Setup};
use nexus_e2e::bench::members::{self, Censuses, SimMember, Swarm, MEMBERS_PER_CONNECTION};
use nexus_e2e::bench::stats::{ms, percentile, process_cpu};
use nexus_e2e::prometheus::http_get;
use nexus_e2e::{fleet, wait_until, AgentProcess, Fleet, Launch};
use nexus_federation::trust::CHAINS_BUCKET;
use tokio::time::Instant;

const BEGIN: &str = "<!-- members:begin -->";
const END: &str = "<!-- members:end -->";
/// The members' heartbeat interval: the default `heartbeat.interval`.
const MEMBER_INTERVAL: Duration = Duration::from_secs(10);
/// The members' interval in the second idle window.
const FAST_INTERVAL: Duration = Duration::from_secs(2);
/// The hub's and the root's `heartbeat.interval`: short, so that their census is read often.
const AGENT_INTERVAL: Duration = Duration::from_secs(2);
/// The hub's and the root's `offline_after`: the default for the members' interval.
const OFFLINE_AFTER: Duration = Duration::from_secs(30);
/// The hub's CPU without members is measured over this long.
const BASELINE: Duration = Duration::from_secs(10);
/// Readings per second per member in the loaded window.
const RATE: f64 = 5.0;
const JOURNAL: &str = "NEXUS_EVENTS";
const READINGS: &str = "nexus.salon-001.iot.sensor_data";
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// Budgets of the issue: a hub with 1,000 idle members.
const BUDGET_CPU_PCT: f64 = 5.0;
const BUDGET_RSS_MIB: f64 = 64.0;

#[derive(Debug, Clone, Copy)]
struct Plan {
    window: Duration,
    /// Fresh members timed one at a time (first event, then second).
    probes: usize,
    /// Fresh members whose first events come together (the hub's CPU for them).
    burst: usize,
}

const FULL: Plan = Plan {
    window: Duration::from_secs(30),
    probes: 20,
    burst: 200,
};
const SMOKE: Plan = Plan {
    window: Duration::from_secs(4),
    probes: 3,
    burst: 10,
};

#[derive(Debug, Default)]
struct Args {
    smoke: bool,
    sizes: Option<Vec<usize>>,
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
            "--sizes" => {
                let list = it.next().ok_or("--sizes needs a list, e.g. 100,1000")?;
                let sizes = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n >= 2))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(format!(
                        "--sizes {list}: numbers of at least 2, comma-separated"
                    ))?;
                args.sizes = Some(sizes);
            }
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
    Ok(args)
}

/// The figures of one N.
#[derive(Debug, Default, Clone)]
struct Figures {
    n: usize,
    /// Seconds from starting the members until both censuses counted all of them.
    all_online_s: f64,
    rss_empty_mib: f64,
    cpu_none_pct: f64,
    cpu_idle_fast_pct: f64,
    rss_idle_mib: f64,
    rss_loaded_mib: f64,
    rss_loaded_peak_mib: f64,
    cpu_idle_pct: f64,
    cpu_loaded_pct: f64,
    root_cpu_idle_pct: f64,
    root_cpu_loaded_pct: f64,
    root_rss_idle_mib: f64,
    offered_per_s: f64,
    landed_per_s: f64,
    census_ok_loaded: bool,
    hub_census: (u64, u64),
    root_census: (u64, u64),
    offline_hub_s: f64,
    offline_root_s: f64,
    /// The hub's `edge.node_status` report of the stopped member, seen at the root.
    reported_s: f64,
    /// The hub's `/metrics`: median time of a scrape, ms, and its size.
    metrics_ms: f64,
    metrics_bytes: usize,
    /// The hub's fleet page in headless Chromium: rows drawn, the first full draw (ms), and
    /// `GET /api/fleet` (median of 5, ms; size).
    page_rows: u64,
    page_render_ms: f64,
    page_api_ms: f64,
    page_api_bytes: usize,
    first: Vec<Duration>,
    second: Vec<Duration>,
    first_cpu_us: f64,
    second_cpu_us: f64,
    hub_registry: (u64, u64),
    root_registry: (u64, u64),
    chain_bytes: usize,
}

/// Resident memory of a process, MiB (VmRSS of /proc/PID/status).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Over `window`: each process's CPU as % of one core, and its RSS at the end and at its
/// peak (sampled every second).
async fn observe(pids: &[u32], window: Duration) -> Vec<(f64, f64, f64)> {
    let start = Instant::now();
    let cpu0: Vec<Duration> = pids
        .iter()
        .map(|p| process_cpu(*p).unwrap_or_default())
        .collect();
    let mut peak = vec![0.0f64; pids.len()];
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1).min(window)).await;
        for (i, pid) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_mib(*pid));
        }
    }
    let wall = start.elapsed().as_secs_f64();
    pids.iter()
        .enumerate()
        .map(|(i, pid)| {
            let cpu = process_cpu(*pid)
                .unwrap_or_default()
                .saturating_sub(cpu0[i]);
            (cpu.as_secs_f64() / wall * 100.0, rss_mib(*pid), peak[i])
        })
        .collect()
}

async fn bucket_size(client: &async_nats::Client) -> (u64, u64) {
    let js = async_nats::jetstream::new(client.clone());
    match js.get_key_value(CHAINS_BUCKET).await {
        Ok(store) => match store.status().await {
            Ok(status) => (status.values(), status.info.state.bytes),
            Err(_) => (0, 0),
        },
        Err(_) => (0, 0),
    }
}

fn agent(
    fleet: &Fleet,
    node: &str,
    metrics: Option<SocketAddr>,
    page: Option<SocketAddr>,
) -> AgentProcess {
    let mut env = vec![
        ("NEXUS_LOG__LEVEL".into(), "info".into()),
        (
            "NEXUS_HEARTBEAT__OFFLINE_AFTER".into(),
            format!("{}s", OFFLINE_AFTER.as_secs()).into(),
        ),
    ];
    if let Some(address) = metrics {
        env.push(("NEXUS_METRICS__LISTEN".into(), address.to_string().into()));
    }
    if let Some(address) = page {
        env.push(("NEXUS_PAGE__LISTEN".into(), address.to_string().into()));
    }
    let launch = Launch {
        env,
        ..Launch::default()
    };
    fleet.spawn_with(node, "", &launch)
}

/// A loopback address with a port free now.
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The hub's fleet page opened in headless Chromium: the rows of its first full draw
/// (every member and the hub) and how long that draw took in the page (ms).
async fn page_render(address: SocketAddr, n: usize) -> (u64, f64) {
    let browser = nexus_e2e::Browser::start().await;
    browser.goto(&format!("http://{address}/")).await;
    let script = "return [Number(document.body.dataset.rows || 0), \
                  Number(document.body.dataset.renderMs || 0)];";
    let mut drawn = (0, 0.0);
    wait_until("the page draws every member", SETUP_DEADLINE, async || {
        let got = browser.eval(script).await;
        drawn = (got[0].as_u64().unwrap_or(0), got[1].as_f64().unwrap_or(0.0));
        drawn.0 > n as u64
    })
    .await;
    drawn
}

/// Five GETs of `path` at `address`: the median time (ms) and the body's size.
fn scrape_path(address: SocketAddr, path: &str) -> (f64, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        match http_get(address, path) {
            Ok((200, body)) => size = body.len(),
            other => panic!("GET {path} at {address}: {other:?}"),
        }
        times.push(start.elapsed());
    }
    times.sort();
    (ms(times[2]), size)
}

/// One N: a fresh hub and root, the swarm, every measurement.
async fn run(n: usize, plan: Plan) -> Figures {
    let mut fleet = Fleet::new();
    fleet.interval = AGENT_INTERVAL;
    let root_client = fleet.root_nats.client().await;
    let censuses = Censuses::watch(&root_client, &[fleet::ROOT, fleet::HUB]).await;
    let hub_metrics = free_address();
    let hub_page = free_address();
    let root = agent(&fleet, fleet::ROOT, None, None);
    let hub = agent(&fleet, fleet::HUB, Some(hub_metrics), Some(hub_page));
    let (hub_pid, root_pid) = (hub.pid().expect("hub pid"), root.pid().expect("root pid"));
    let mut swarm = Swarm::connect(
        &fleet.hub_nats.url(),
        read_key(&fleet.hub_key.secret),
        &fleet.token_path(fleet::HUB),
        MEMBER_INTERVAL,
        n.div_ceil(MEMBERS_PER_CONNECTION),
        SETUP_DEADLINE,
    )
    .await;
    // The hub's own heartbeat reaches the root: both are up.
    wait_until(
        "the hub's heartbeat reaches the root",
        SETUP_DEADLINE,
        async || censuses.latest(fleet::ROOT).is_some_and(|c| c.online >= 1),
    )
    .await;
    let none = observe(&[hub_pid], BASELINE).await;
    let mut fig = Figures {
        n,
        cpu_none_pct: none[0].0,
        rss_empty_mib: none[0].1,
        ..Figures::default()
    };

    eprintln!("  {n} members start");
    let started = Instant::now();
    let sims: Vec<SimMember> = (0..n).map(|i| swarm.issue(&format!("m{i:05}"))).collect();
    fig.chain_bytes = sims.first().map_or(0, |m| m.chain().len());
    swarm.start(sims).await;
    let all_online = || {
        censuses.counts(fleet::HUB, n as u64, 0) && censuses.counts(fleet::ROOT, n as u64 + 1, 0)
    };
    wait_until(
        "both censuses count every member online",
        SETUP_DEADLINE,
        async || all_online(),
    )
    .await;
    fig.all_online_s = started.elapsed().as_secs_f64();
    // Let the start-up's first fetches and verifications pass before measuring.
    tokio::time::sleep(AGENT_INTERVAL).await;

    eprintln!("  idle window ({:?})", plan.window);
    let idle = observe(&[hub_pid, root_pid], plan.window).await;
    (fig.cpu_idle_pct, fig.rss_idle_mib) = (idle[0].0, idle[0].1);
    (fig.root_cpu_idle_pct, fig.root_rss_idle_mib) = (idle[1].0, idle[1].1);
    let read = |node| {
        censuses
            .latest(node)
            .map_or((0, 0), |c| (c.online, c.offline))
    };
    fig.hub_census = read(fleet::HUB);
    fig.root_census = read(fleet::ROOT);

    eprintln!("  idle window, heartbeats every {FAST_INTERVAL:?}");
    swarm.set_interval(FAST_INTERVAL);
    // Every member takes it after its next heartbeat.
    tokio::time::sleep(MEMBER_INTERVAL + FAST_INTERVAL).await;
    fig.cpu_idle_fast_pct = observe(&[hub_pid], plan.window).await[0].0;
    swarm.set_interval(MEMBER_INTERVAL);

    eprintln!("  loaded window: {RATE} readings/s per member");
    let root_js = async_nats::jetstream::new(root_client.clone());
    swarm.set_rate(RATE);
    // Every member takes the rate at its next heartbeat (within a fast interval); a warm-up.
    tokio::time::sleep(FAST_INTERVAL * 3).await;
    let (acked0, landed0) = (
        swarm
            .counts()
            .readings
            .load(std::sync::atomic::Ordering::Relaxed),
        stream_count(&root_js, JOURNAL, READINGS).await,
    );
    let start = Instant::now();
    let loaded = observe(&[hub_pid, root_pid], plan.window).await;
    let wall = start.elapsed().as_secs_f64();
    let (acked1, landed1) = (
        swarm
            .counts()
            .readings
            .load(std::sync::atomic::Ordering::Relaxed),
        stream_count(&root_js, JOURNAL, READINGS).await,
    );
    (
        fig.cpu_loaded_pct,
        fig.rss_loaded_mib,
        fig.rss_loaded_peak_mib,
    ) = loaded[0];
    fig.root_cpu_loaded_pct = loaded[1].0;
    fig.offered_per_s = (acked1 - acked0) as f64 / wall;
    fig.landed_per_s = landed1.saturating_sub(landed0) as f64 / wall;
    fig.census_ok_loaded = all_online();
    swarm.set_rate(0.0);
    let acked = swarm
        .counts()
        .readings
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    wait_until(
        "the root landed every reading",
        Duration::from_secs(180),
        async || stream_count(&root_js, JOURNAL, READINGS).await >= acked,
    )
    .await;

    (fig.metrics_ms, fig.metrics_bytes) = scrape_path(hub_metrics, "/metrics");
    (fig.page_api_ms, fig.page_api_bytes) = scrape_path(hub_page, "/api/fleet");
    (fig.page_rows, fig.page_render_ms) = page_render(hub_page, n).await;

    eprintln!("  one member stops");
    let mut reports = root_client
        .subscribe("nexus._core.edge.node_status.>")
        .await
        .expect("subscribe to node status");
    root_client.flush().await.expect("flush");
    let last = swarm.stop(0).expect("member 0 heartbeated");
    let reported = tokio::spawn(async move {
        while let Some(message) = reports.next().await {
            let body: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            if body["payload"]["node_id"] == "m00000" && body["payload"]["status"] == "offline" {
                return Some(Instant::now());
            }
        }
        None
    });
    let (mut hub_seen, mut root_seen) = (None, None);
    wait_until(
        "both censuses count the stopped member offline",
        Duration::from_secs(60),
        async || {
            for (node, seen) in [(fleet::HUB, &mut hub_seen), (fleet::ROOT, &mut root_seen)] {
                if seen.is_none() {
                    *seen = censuses
                        .latest(node)
                        .filter(|c| c.offline >= 1)
                        .map(|c| c.at);
                }
            }
            hub_seen.is_some() && root_seen.is_some()
        },
    )
    .await;
    let after = |t: Option<Instant>| t.map_or(0.0, |t| t.duration_since(last).as_secs_f64());
    (fig.offline_hub_s, fig.offline_root_s) = (after(hub_seen), after(root_seen));
    let report = tokio::time::timeout(Duration::from_secs(30), reported)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    fig.reported_s = after(report);

    eprintln!("  first events of fresh members (the others paused)");
    swarm.pause(true);
    // What the members sent before the pause passes.
    tokio::time::sleep(AGENT_INTERVAL).await;
    admission(&mut fig, &swarm, &root_client, hub_pid, plan).await;
    fig.hub_registry = bucket_size(&fleet.hub_nats.client().await).await;
    fig.root_registry = bucket_size(&root_client).await;
    swarm.stop_all();
    drop((hub, root));
    fig
}

/// Each fresh member's first event (the hub reads and verifies its chain) against its
/// second: the latency to the root, one member at a time; the hub's CPU for a burst.
async fn admission(
    fig: &mut Figures,
    swarm: &Swarm,
    root: &async_nats::Client,
    hub_pid: u32,
    plan: Plan,
) {
    let js = swarm.context(0);
    let mut fresh: Vec<SimMember> = (0..plan.probes + plan.burst)
        .map(|i| swarm.issue(&format!("p{i:05}")))
        .collect();
    futures::future::join_all(fresh.iter().map(|m| m.present(swarm.registry()))).await;
    let (probes, burst) = fresh.split_at_mut(plan.probes);
    for member in probes.iter_mut() {
        let mut sub = root
            .subscribe(format!("nexus._core.edge.health.{}", member.id))
            .await
            .expect("subscribe");
        root.flush().await.expect("flush");
        for times in [&mut fig.first, &mut fig.second] {
            let event = member.heartbeat();
            let sent = Instant::now();
            assert!(
                members::send(js, &event).await,
                "the hub's ingress takes it"
            );
            tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .expect("the event reaches the root within 30 s")
                .expect("the subscription is open");
            times.push(sent.elapsed());
        }
    }
    // The burst: every fresh member's first event together, then every second one.
    let mut sub = root
        .subscribe("nexus._core.edge.health.*")
        .await
        .expect("subscribe");
    root.flush().await.expect("flush");
    let ids: HashSet<String> = burst.iter().map(|m| m.id.clone()).collect();
    let idle_cpu_per_s = fig.cpu_none_pct / 100.0;
    let mut costs = Vec::new();
    for _ in 0..2 {
        let events: Vec<_> = burst.iter_mut().map(SimMember::heartbeat).collect();
        let cpu0 = process_cpu(hub_pid).unwrap_or_default();
        let start = Instant::now();
        let sends = events
            .iter()
            .enumerate()
            .map(|(i, e)| members::send(swarm.context(i), e));
        assert!(futures::future::join_all(sends)
            .await
            .into_iter()
            .all(|ok| ok));
        let mut seen = HashSet::new();
        while seen.len() < ids.len() {
            let msg = tokio::time::timeout(Duration::from_secs(60), sub.next())
                .await
                .expect("the burst reaches the root within 60 s")
                .expect("the subscription is open");
            if let Some(id) = msg.subject.as_str().rsplit('.').next() {
                if ids.contains(id) {
                    seen.insert(id.to_owned());
                }
            }
        }
        let cpu = process_cpu(hub_pid)
            .unwrap_or_default()
            .saturating_sub(cpu0);
        // What the hub spends without members.
        let background = start.elapsed().as_secs_f64() * idle_cpu_per_s;
        costs.push(((cpu.as_secs_f64() - background).max(0.0)) / ids.len() as f64 * 1e6);
    }
    (fig.first_cpu_us, fig.second_cpu_us) = (costs[0], costs[1]);
}

fn render(figures: &[Figures], setup: &Setup, command: &str, plan: Plan) -> String {
    let mut out = String::new();
    let date = time::OffsetDateTime::now_utc().date();
    out.push_str(&format!(
        "Measured {date} with `{command}`: {} · {} cores · {} · {} · load {} at the start · \
         {} · {} · agent {}, {}.\n\n",
        setup.cpu,
        setup.cores,
        setup.ram,
        setup.os,
        setup.load,
        setup.nats_server,
        setup.rustc,
        setup.agent,
        setup.commit
    ));
    out.push_str(&format!(
        "Settings: members heartbeat every {MEMBER_INTERVAL:?} (the default `heartbeat.interval`), \
         spread over it, and every {FAST_INTERVAL:?} in the second idle window; loaded: that \
         plus {RATE} readings/s per member. Hub and root: `heartbeat.interval` \
         {AGENT_INTERVAL:?} (their census is published that often), `offline_after` \
         {OFFLINE_AFTER:?} (the default for 10 s heartbeats), log level `info`. Windows of \
         {:?}, the hub without members over {BASELINE:?}. The members (this process) share \
         one NATS connection per {MEMBERS_PER_CONNECTION}.\n\n",
        plan.window
    ));
    out.push_str(
        "| members | hub RSS, MiB: none / idle / loaded (peak) | RSS per member | hub CPU, % of a core: none / idle | per member | idle, heartbeats every 2 s | per heartbeat | loaded | per reading | readings/s offered → landed | root CPU idle / loaded |\n\
         |---:|---|---:|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for f in figures {
        let n = f.n as f64;
        let per_member_kib = (f.rss_idle_mib - f.rss_empty_mib) * 1024.0 / n;
        let per_member_pct = (f.cpu_idle_pct - f.cpu_none_pct) / n;
        let fast_rate = n / FAST_INTERVAL.as_secs_f64();
        let per_heartbeat_us = (f.cpu_idle_fast_pct - f.cpu_none_pct) / 100.0 / fast_rate * 1e6;
        let per_reading_us = if f.offered_per_s > 0.0 {
            (f.cpu_loaded_pct - f.cpu_idle_pct) / 100.0 / f.offered_per_s * 1e6
        } else {
            0.0
        };
        out.push_str(&format!(
            "| {} | {:.1} / {:.1} / {:.1} ({:.1}) | {:.1} KiB | {:.2} / {:.2} % | {:.4} % | {:.1} % | {:.0} µs | {:.1} % | {:.0} µs | {:.0} → {:.0} | {:.1} % / {:.1} % |\n",
            f.n, f.rss_empty_mib, f.rss_idle_mib, f.rss_loaded_mib, f.rss_loaded_peak_mib,
            per_member_kib, f.cpu_none_pct, f.cpu_idle_pct, per_member_pct, f.cpu_idle_fast_pct,
            per_heartbeat_us, f.cpu_loaded_pct, per_reading_us, f.offered_per_s, f.landed_per_s,
            f.root_cpu_idle_pct, f.root_cpu_loaded_pct
        ));
    }
    out.push_str(
        "\n| members | all online after | census hub / root (online, offline) | still all online when loaded | stopped member offline after: hub / root census, hub's report | first event → root: p50 / max | second event | hub CPU per first / second event | chain registry: hub / root bucket (entries, bytes) | chain per member |\n\
         |---:|---:|---|---|---|---|---|---|---|---:|\n",
    );
    for f in figures {
        let lat = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            format!(
                "{:.1} / {:.1} ms",
                ms(percentile(&v, 0.5)),
                ms(v.last().copied().unwrap_or_default())
            )
        };
        out.push_str(&format!(
            "| {} | {:.1} s | {} ({}, {}) / {} ({}, {}) | {} | {:.1} s / {:.1} s, {:.1} s | {} | {} | {:.0} / {:.0} µs | {} ({} KiB) / {} ({} KiB) | {} B |\n",
            f.n, f.all_online_s, f.n, f.hub_census.0, f.hub_census.1, f.n + 1, f.root_census.0,
            f.root_census.1, if f.census_ok_loaded { "yes" } else { "**no**" }, f.offline_hub_s,
            f.offline_root_s, f.reported_s, lat(&f.first), lat(&f.second), f.first_cpu_us, f.second_cpu_us,
            f.hub_registry.0, f.hub_registry.1 / 1024, f.root_registry.0, f.root_registry.1 / 1024,
            f.chain_bytes
        ));
    }
    out.push_str(
        "\n| members | hub `GET /metrics`: median of 5 | exposition size |\n|---:|---:|---:|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {:.2} ms | {:.1} KiB |\n",
            f.n,
            f.metrics_ms,
            f.metrics_bytes as f64 / 1024.0
        ));
    }
    out.push_str(
        "\n| members | hub fleet page in headless Chromium: rows, first full draw | \
         `GET /api/fleet`: median of 5 | its size |\n|---:|---:|---:|---:|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} rows, {:.0} ms | {:.1} ms | {:.0} KiB |\n",
            f.n,
            f.page_rows,
            f.page_render_ms,
            f.page_api_ms,
            f.page_api_bytes as f64 / 1024.0
        ));
    }
    if let Some(f) = figures.iter().find(|f| f.n == 1000) {
        let met = |ok: bool| if ok { "met" } else { "**missed**" };
        out.push_str(&format!(
            "\nBudgets, 1,000 idle members (heartbeats every 10 s): hub CPU {:.2} % of a core (< {BUDGET_CPU_PCT} %: {}), \
             RSS {:.1} MiB (< {BUDGET_RSS_MIB} MiB: {}); a stopped member reported offline \
             within `offline_after` + one interval (the census goes out with the next \
             heartbeat): hub {:.1} s, root {:.1} s (≤ {:?}: {}).\n",
            f.cpu_idle_pct,
            met(f.cpu_idle_pct < BUDGET_CPU_PCT),
            f.rss_idle_mib,
            met(f.rss_idle_mib < BUDGET_RSS_MIB),
            f.offline_hub_s,
            f.offline_root_s,
            OFFLINE_AFTER + AGENT_INTERVAL,
            met(f.offline_root_s.max(f.offline_hub_s)
                <= (OFFLINE_AFTER + AGENT_INTERVAL).as_secs_f64() + 1.0)
        ));
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("members: {error}");
            return ExitCode::from(2);
        }
    };
    let plan = if args.smoke { SMOKE } else { FULL };
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if args.smoke {
            vec![20]
        } else {
            vec![100, 1000]
        }
    });
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = Setup::detect(&repo);
    let command = std::env::var("NEXUS_BENCH_COMMAND")
        .unwrap_or_else(|_| "cargo bench -p nexus-e2e --bench members".to_owned());
    let mut figures = Vec::new();
    let mut failed = false;
    for n in sizes {
        eprintln!("==> {n} members");
        let began = Instant::now();
        // A panic fails this size only (unwinding stops its servers and agents).
        match std::panic::AssertUnwindSafe(run(n, plan))
            .catch_unwind()
            .await
        {
            Ok(fig) => {
                eprintln!("    done in {:.0} s", began.elapsed().as_secs_f64());
                figures.push(fig);
            }
            Err(_) => {
                eprintln!("    FAILED (the panic above)");
                failed = true;
            }
        }
    }
    let block = render(&figures, &setup, &command, plan);
    println!("{block}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, &block) {
            eprintln!("members: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    if failed {
        eprintln!("members: a size failed; nothing written into the docs");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.write {
        if let Err(e) = replace_block(path, BEGIN, END, &block) {
            eprintln!("members: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("members: the table is in {}", path.display());
    }
    ExitCode::SUCCESS
}
