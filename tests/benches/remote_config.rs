//! Remote config: the time from `config push` at the root to the member running the
//! document, healthy (docs/benchmarks.md, "Remote config").
//!
//! `cargo build --release -p nexus-agent && NEXUS_E2E_AGENT_BIN=$PWD/target/release/nexus-agent
//! cargo bench --profile dev -p nexus-e2e --bench remote_config` (needs nats-server; the
//! variable must be an absolute path: a bench runs in tests/). Root,
//! hub and member are real agents on loopback nats-servers, heartbeats every second. Each
//! round pushes a patch of `[heartbeat]` with the real CLI (the root signs it and stores it
//! in its bucket, the hub copies it for its site, the member validates it, writes it,
//! restarts, connects and passes the health gate), timed until:
//! - **on the box**: the member's state file says the version is applied (trial passed);
//! - **at the root**: a heartbeat of the member reporting it `desired` reaches the root's
//!   NATS (adds up to one heartbeat interval and the two hops).
//!
//! `--rounds N` (default 10).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_e2e::{agent_bin, fleet, wait_until, Fleet, Seen};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let mut rounds = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--rounds N");
        }
        // `cargo bench` passes `--bench`; nothing else is ours.
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(rounds));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn bench(rounds: usize) {
    let fleet = Fleet::new();
    let beats = Seen::watch(
        &fleet.root_nats,
        &format!("nexus._core.edge.health.{}", fleet::MEMBER),
    )
    .await;
    let report = || beats.last_payload().map(|p| p["config"].clone());
    let root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(fleet::MEMBER, "[remote_config]\ngate = \"30s\"\n");
    let state_file = {
        let mut name = member.config_path().as_os_str().to_owned();
        name.push(".remote.json");
        std::path::PathBuf::from(name)
    };
    wait_until("the member's first config report", DEADLINE, async || {
        report().is_some_and(|r| r["state"] == "local")
    })
    .await;
    let (mut on_box, mut at_root) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let interval = if round % 2 == 0 { "900ms" } else { "1s" };
        let file = fleet.path().join(format!("bench-{round}.toml"));
        std::fs::write(&file, format!("[heartbeat]\ninterval = \"{interval}\"\n")).expect("write");
        let pushed = Instant::now();
        let out = Command::new(agent_bin())
            .args(["config", "push", "-c"])
            .arg(root.config_path())
            .arg(fleet::MEMBER)
            .arg(&file)
            .args(["--keys", "heartbeat"])
            .stdin(Stdio::null())
            .output()
            .expect("config push");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let version: u64 = stdout
            .split_once(" v")
            .and_then(|(_, r)| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("a version");
        wait_until("the member's state says applied", DEADLINE, async || {
            let state: Value = std::fs::read(&state_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            state["applied"]["version"] == version && state["pending"].is_null()
        })
        .await;
        on_box.push(pushed.elapsed());
        wait_until("the root hears the member runs it", DEADLINE, async || {
            report().is_some_and(|r| r["state"] == "desired" && r["version"] == version)
        })
        .await;
        at_root.push(pushed.elapsed());
    }
    on_box.sort();
    at_root.sort();
    println!("remote config, {rounds} pushes of a [heartbeat] patch, root → hub → member");
    println!("| measured until | p50 | min | max |");
    println!("|---|---:|---:|---:|");
    for (what, list) in [
        ("applied and healthy on the box (state file)", &on_box),
        ("the member's heartbeat says so at the root", &at_root),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            ms(percentile(list, 0.5)),
            ms(list[0]),
            ms(list[list.len() - 1])
        );
    }
}
