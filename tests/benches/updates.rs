//! Updates: the time from `rollout start` at the root to a site of N members running the
//! new release, healthy (docs/benchmarks.md, "Updates").
//!
//! `./dev update-fixtures && cargo bench --profile dev -p nexus-e2e --bench updates`
//! (needs nats-server). Root, hub and N members (default 8) are real agents on loopback
//! nats-servers, heartbeats every second; the release is the agent built again as 0.9.0 by
//! `./dev update-fixtures` (a stripped debug build, ~37 MB: the transfer weighs about four
//! times what a release build's would). Each run starts a fresh fleet, publishes the
//! release with the real CLI and starts the rollout to `edge-*`: the hub copies the release
//! into its cache once and starts the members in waves of 1, 1, 2, 4, …; each member
//! downloads, checks and installs it, re-executes into it and passes its health gate.
//! Timed from `rollout start` until:
//! - **each member applied it**: its `update.json` says `applied` (the trial passed), which
//!   gives each wave's finish;
//! - **the site at the root**: every member's heartbeat reports 0.9.0 and `healthy` at the
//!   root's NATS (adds up to one heartbeat interval and the two hops).
//!
//! `--members N` (default 8), `--runs R` (default 3).

use std::time::{Duration, Instant};

use nexus_e2e::releases::{
    agent_target, publish_release, start_rollout, update_fixture, update_state,
};
use nexus_e2e::{fleet, keygen, wait_until, AgentProcess, Fleet, Seen};

const DEADLINE: Duration = Duration::from_secs(180);

fn main() {
    let (mut members, mut runs) = (8usize, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} N"))
        };
        match arg.as_str() {
            "--members" => members = number("--members"),
            "--runs" => runs = number("--runs"),
            // `cargo bench` passes `--bench`; nothing else is ours.
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("updates: rollout start → {members} members on the new release, {runs} runs");
    println!(
        "| run | first member applied | half applied | all applied | all healthy at the root |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for run in 1..=runs {
        let times = runtime.block_on(one_run(members));
        println!(
            "| {run} | {} | {} | {} | {} |",
            secs(times.applied[0]),
            secs(times.applied[(members - 1) / 2]),
            secs(times.applied[members - 1]),
            secs(times.at_root)
        );
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

struct Times {
    /// When each member applied it, in order.
    applied: Vec<Duration>,
    /// When the last member's heartbeat reported it healthy at the root.
    at_root: Duration,
}

async fn one_run(members: usize) -> Times {
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_secs(1);
    let keys = fleet.path().join("keys");
    let (release_key, release_public) = keygen(&keys, "release");
    let with_release_key = |toml: String| {
        toml.replacen(
            "root_keys = [",
            &format!("release_keys = [\"{release_public}\"]\nroot_keys = ["),
            1,
        )
    };
    let dir = fleet.path().to_path_buf();
    let root = AgentProcess::spawn(
        fleet::ROOT,
        &with_release_key(fleet.config(fleet::ROOT, "")),
        &dir,
    );
    let _hub = AgentProcess::spawn(
        fleet::HUB,
        &with_release_key(fleet.config(fleet::HUB, "")),
        &dir,
    );
    // The fleet's member config, made the template of every member: no [local] (a member
    // needs none, and N members must not share one server's streams).
    let template = with_release_key(fleet.config(fleet::MEMBER, "[updates]\ngate = \"60s\"\n"));
    let local = template
        .find("\n[local]\n")
        .map(|start| {
            let end = template[start + 1..]
                .find("\n\n")
                .map_or(template.len(), |e| start + 1 + e);
            template[start..end].to_owned()
        })
        .expect("a [local] section");
    let template = template.replace(&local, "");
    let mut agents = Vec::new();
    let mut data_dirs = Vec::new();
    let mut beats = Vec::new();
    for i in 1..=members {
        let id = format!("edge-bench-{i:02}");
        let (key, public) = keygen(&keys, &id);
        let token = fleet.token_path(&id);
        let health = format!("nexus._core.edge.health.{id}");
        fleet.issue(
            &fleet.hub_key,
            Some(&fleet.token_path(fleet::HUB)),
            &id,
            &public,
            "member",
            &[health.as_str(), "nexus._core.audit.>", "nexus.salon-001.>"],
            &token,
            &[],
        );
        let toml = template
            .replace("id = \"edge-msk-01\"", &format!("id = \"{id}\""))
            .replace("edge-msk-01-data", &format!("{id}-data"))
            .replace(
                &fleet.member_key.secret.display().to_string(),
                &key.display().to_string(),
            )
            .replace(
                &fleet.token_path(fleet::MEMBER).display().to_string(),
                &token.display().to_string(),
            );
        beats.push(Seen::watch(&fleet.root_nats, &health).await);
        data_dirs.push(fleet.data_dir(&id));
        agents.push(AgentProcess::spawn(&id, &toml, &dir));
    }
    let target = agent_target();
    wait_until("every member reports to the root", DEADLINE, async || {
        beats.iter().all(|b| {
            b.last_payload()
                .is_some_and(|p| p["update"]["target"] == target.as_str())
        })
    })
    .await;
    let root_config = root.config_path().to_str().expect("utf-8").to_owned();
    publish_release(
        &root_config,
        &release_key,
        &update_fixture("0.9.0"),
        &target,
        "0.9.0",
    );
    let started = Instant::now();
    start_rollout(&root_config, "0.9.0", "edge-*");
    let mut applied: Vec<Option<Duration>> = vec![None; members];
    let at_root = wait_until(
        "the site runs 0.9.0, healthy at the root",
        DEADLINE,
        async || {
            for (i, data) in data_dirs.iter().enumerate() {
                if applied[i].is_none() && update_state(data)["last"]["result"] == "applied" {
                    applied[i] = Some(started.elapsed());
                }
            }
            let healthy = beats.iter().all(|b| {
                b.last_payload()
                    .is_some_and(|p| p["agent_version"] == "0.9.0" && p["status"] == "healthy")
            });
            (healthy && applied.iter().all(Option::is_some)).then(|| started.elapsed())
        },
    )
    .await;
    let mut applied: Vec<Duration> = applied.into_iter().flatten().collect();
    applied.sort();
    drop(agents);
    Times { applied, at_root }
}
