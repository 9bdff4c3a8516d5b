//! A member's footprint, natively: start-up time to its first heartbeat at the root, resident
//! memory idle and under load.
//!
//! `cargo build --release -p nexus-agent && NEXUS_E2E_AGENT_BIN=target/release/nexus-agent
//! cargo bench --profile dev -p nexus-e2e --bench footprint` (`./dev footprint` does that and
//! adds the binary sizes; needs nats-server and mosquitto). Every agent is the release
//! binary; the harness only spawns, samples /proc and counts. Not a test: it prints figures
//! (docs/benchmarks.md, "Footprint").
//!
//! - **start-up**: a fresh member process (new data dir each time: empty outbox) until its
//!   first heartbeat reaches a subscriber on the root's NATS, through a running hub and
//!   root; 5 starts.
//! - **idle**: the member running with its uplink connected and a heartbeat every second,
//!   no sensors publishing, for 30 s: VmRSS at the end (anonymous and file-backed), its
//!   peak (VmHWM) and Pss (shared pages, such as libc's, divided among their users). The
//!   member runs from a copy of the binary so that its code pages are not shared with the
//!   hub and root of the same machine.
//! - **loaded**: 20,000 MQTT messages (QoS 1, plain numbers on 50 sensors' topics) from one
//!   `mosquitto_pub -l` through mosquitto into the member's IoT bridge: mapped, schema-checked,
//!   signed, fsynced into the outbox, forwarded through the hub to the root; timed until the
//!   root's subscriber has all 20,000; VmRSS sampled every 100 ms, VmHWM at the end.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nexus_e2e::{
    agent_bin, fleet, mosquitto_client_bin, wait_until, AgentProcess, Fleet, Launch, Mosquitto,
};

const STARTS: usize = 5;
const IDLE: Duration = Duration::from_secs(30);
const MESSAGES: usize = 20_000;
const SENSORS: usize = 50;
const DEADLINE: Duration = Duration::from_secs(300);

/// `VmRSS`, `VmHWM` (KiB) and `Threads` of a process, from /proc.
fn status(pid: u32) -> (u64, u64, u64) {
    (
        field(pid, "VmRSS:"),
        field(pid, "VmHWM:"),
        field(pid, "Threads:"),
    )
}

/// One number of /proc/PID/status (KiB for sizes); 0 if absent.
fn field(pid: u32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where the resident memory is: anonymous (heap, stacks) vs file-backed (the binary's
/// and libraries' pages, shared with every other process mapping them), and the
/// proportional set size (shared pages divided among the processes that map them).
fn split(pid: u32) -> String {
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!(
        "RssAnon {}, RssFile {}, Pss {}",
        mib(field(pid, "RssAnon:")),
        mib(field(pid, "RssFile:")),
        mib(pss)
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn iot_config(broker: &Mosquitto) -> String {
    format!(
        "\n[iot]\nurl = \"{}\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
        broker.url()
    )
}

fn member_config(fleet: &Fleet, broker: &Mosquitto, data_dir: &str) -> String {
    fleet
        .config(fleet::MEMBER, &iot_config(broker))
        .replace("edge-msk-01-data", data_dir)
        // Info, as in production; the bridge at debug for its "subscriptions confirmed" line.
        .replace(
            "level = \"debug\"",
            "level = \"info,nexus_iot_bridge=debug\"",
        )
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::new();
    let broker = Mosquitto::start();
    let client = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("root nats");
    let mut health = client
        .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
        .await
        .expect("subscribe");
    let mut landed = client
        .subscribe("nexus.salon-001.iot.sensor_data")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    // The member runs from its own copy of the binary: its code pages are then its own, as
    // on an edge box, not shared with the hub's and the root's (which would halve its Pss).
    let member_bin = fleet.path().join("nexus-agent-member");
    std::fs::copy(agent_bin(), &member_bin).expect("copy the agent binary");
    let launch = Launch {
        program: Some(member_bin),
        ..Launch::default()
    };

    // Start-up to the first heartbeat at the root.
    let mut startups = Vec::new();
    for n in 0..=STARTS {
        let member = AgentProcess::spawn_with(
            &launch,
            fleet::MEMBER,
            &member_config(&fleet, &broker, &format!("member-start-{n}")),
            &fleet.path().join(format!("start-{n}")),
        );
        let started = Instant::now();
        tokio::time::timeout(DEADLINE, health.next())
            .await
            .expect("a heartbeat within the deadline")
            .expect("subscription open");
        let elapsed = started.elapsed();
        member.terminate(Duration::from_secs(5));
        // Heartbeats sent while stopping must not count for the next start.
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), health.next()).await
        {}
        // The first start also waits for the hub's and the root's own start: not counted.
        if n > 0 {
            startups.push(elapsed);
        }
    }
    startups.sort();

    // Idle.
    let member = AgentProcess::spawn_with(
        &launch,
        fleet::MEMBER,
        &member_config(&fleet, &broker, "member-data"),
        fleet.path(),
    );
    let pid = member.pid().expect("member pid");
    wait_until("the member's bridge is subscribed", DEADLINE, async || {
        member.log().contains("MQTT subscriptions confirmed")
    })
    .await;
    tokio::time::sleep(IDLE).await;
    let (idle_rss, idle_hwm, idle_threads) = status(pid);
    let idle_split = split(pid);
    if std::env::var_os("FOOTPRINT_SMAPS").is_some() {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        println!("{smaps}");
    }

    // Loaded.
    let lines: Vec<String> = (0..MESSAGES)
        .map(|i| format!("{:.2}", 20.0 + (i % 100) as f64 / 10.0))
        .collect();
    let started = Instant::now();
    let publishers: Vec<_> = (0..SENSORS)
        .map(|s| {
            let mut child = Command::new(mosquitto_client_bin("mosquitto_pub"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &broker.port().to_string(),
                    "-q",
                    "1",
                ])
                .args(["-t", &format!("sensors/bench-{s:02}/temperature"), "-l"])
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run mosquitto_pub -l");
            let mut stdin = child.stdin.take().expect("stdin");
            for line in lines.iter().skip(s).step_by(SENSORS) {
                writeln!(stdin, "{line}").expect("write a line");
            }
            drop(stdin);
            child
        })
        .collect();
    let mut seen = 0usize;
    let mut peak_rss = 0;
    let deadline = Instant::now() + DEADLINE;
    while seen < MESSAGES && Instant::now() < deadline {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), landed.next()).await {
            seen += 1;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, landed.next()).await {
                seen += 1;
            }
        }
        peak_rss = peak_rss.max(status(pid).0);
    }
    let loaded = started.elapsed();
    for mut publisher in publishers {
        let _ = publisher.wait();
    }
    let (after_rss, loaded_hwm, loaded_threads) = status(pid);
    let loaded_split = split(pid);
    assert_eq!(seen, MESSAGES, "every message reached the root");

    println!("member footprint (native, {})", std::env::consts::ARCH);
    println!(
        "  start-up to first heartbeat at the root: min {:?}, median {:?}, max {:?} ({STARTS} starts)",
        startups[0],
        startups[STARTS / 2],
        startups[STARTS - 1]
    );
    println!(
        "  idle {}s: VmRSS {} ({idle_split}), VmHWM {}, threads {idle_threads}",
        IDLE.as_secs(),
        mib(idle_rss),
        mib(idle_hwm)
    );
    println!(
        "  loaded ({MESSAGES} MQTT messages → root in {:.1} s, {:.0} msg/s): peak VmRSS {}, VmHWM {}, VmRSS after {} ({loaded_split}), threads {loaded_threads}",
        loaded.as_secs_f64(),
        MESSAGES as f64 / loaded.as_secs_f64(),
        mib(peak_rss),
        mib(loaded_hwm),
        mib(after_rss)
    );
}
