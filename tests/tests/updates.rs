//! End to end, agent updates (docs/updates.md): root, hub and two members as real processes
//! on real nats-servers, each member under a supervisor that restarts it when it exits
//! (as systemd's `Restart=always` does), releases published and rolled out with the real
//! CLI. The releases are the agent itself built again by `./dev update-fixtures`: as 0.9.0,
//! and as a broken 0.9.1 that exits at start.
//!
//! - 0.9.0 rolls out to both members: each downloads it from its hub's cache, switches, and
//!   keeps it once healthy; heartbeats keep landing at the root from the new version. One
//!   member is SIGKILLed in the middle of its download and resumes it from what it kept.
//! - The broken 0.9.1 with `--max-failures 0`: the first member installs it, it exits at
//!   start three times, the member switches back to 0.9.0 by itself and reports
//!   `rolled_back`; the hub starts no other member.
//! - A downgrade the rollout does not allow, a tampered binary, a manifest for another target
//!   and one signed by a key that is not a release key (the last three put in the hub's
//!   cache, as a compromised hub could): refused by the member with the reason, in
//!   `rollout status` at the root.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_e2e::examples::text;
use nexus_e2e::releases::{
    agent_target, cli_ok, publish_release, start_rollout, update_fixture, update_state,
};
use nexus_e2e::{
    agent_cli, fleet, keygen, wait_until, AgentProcess, Fleet, LogsOnPanic, Proxy, Seen,
};
use nexus_policies::{AgentVersion, ReleaseManifest, ReleaseSpec, SecretKey, UnixTime};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(60);
/// The second member.
const MEMBER2: &str = "edge-msk-02";
/// Restarts an agent whenever it exits, like systemd's `Restart=always` (after 200 ms).
struct Supervised {
    agent: Arc<AgentProcess>,
    restarts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Supervised {
    fn start(agent: AgentProcess) -> Self {
        let agent = Arc::new(agent);
        let restarts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, s) = (Arc::clone(&agent), Arc::clone(&restarts), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if !a.is_running() && !s.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    a.restart();
                    r.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            agent,
            restarts,
            stop,
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The config of `node` with `trust.release_keys`.
fn with_release_key(toml: &str, release: &str) -> String {
    toml.replacen(
        "root_keys = [",
        &format!("release_keys = [\"{release}\"]\nroot_keys = ["),
        1,
    )
}

/// The last heartbeat payload of a node.
fn beat(seen: &Seen) -> Value {
    seen.last_payload().unwrap_or(Value::Null)
}

/// `rollout status --json` at the root: the node's row.
fn rollout_row(root_config: &str, node: &str) -> Option<Value> {
    let out = agent_cli(&["rollout", "status", "-c", root_config, "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).ok()?;
    status["nodes"]
        .as_array()?
        .iter()
        .find(|r| r["node"] == node)
        .cloned()
}

/// Puts a manifest and a binary into the hub's cache, as a compromised hub could.
async fn poison_hub(fleet: &Fleet, version: AgentVersion, manifest: &[u8], binary: &[u8]) {
    let js = async_nats::jetstream::new(fleet.hub_nats.client().await);
    let target = agent_target();
    let objects = js
        .get_object_store("NEXUS_RELEASES")
        .await
        .expect("the hub's release store");
    let name = format!("nexus-agent-{version}-{target}");
    objects
        .put(name.as_str(), &mut &binary[..])
        .await
        .expect("put the binary");
    let kv = js
        .get_key_value("NEXUS_UPDATES")
        .await
        .expect("the hub's bucket");
    kv.put(
        format!("manifest.{version}.{target}"),
        manifest.to_vec().into(),
    )
    .await
    .expect("put the manifest");
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_roll_out_in_waves_roll_back_by_themselves_and_are_refused_when_they_do_not_verify(
) {
    let good = update_fixture("0.9.0");
    let target = agent_target();
    let target = target.as_str();
    let bad = update_fixture("0.9.1");
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_secs(1);
    let (release_key, release_public) = keygen(&fleet.path().join("keys"), "release");
    // The second member: its own key and token, issued by the hub.
    let (member2_key, member2_public) = keygen(&fleet.path().join("keys"), "member2");
    let member2_token = fleet.token_path(MEMBER2);
    fleet.issue(
        &fleet.hub_key,
        Some(&fleet.token_path(fleet::HUB)),
        MEMBER2,
        &member2_public,
        "member",
        &[
            "nexus._core.edge.health.edge-msk-02",
            "nexus._core.audit.>",
            "nexus.salon-001.>",
        ],
        &member2_token,
        &[],
    );
    let beats1 = Seen::watch(&fleet.root_nats, "nexus._core.edge.health.edge-msk-01").await;
    let beats2 = Seen::watch(&fleet.root_nats, "nexus._core.edge.health.edge-msk-02").await;
    let dir = fleet.path().to_path_buf();
    let root = AgentProcess::spawn(
        fleet::ROOT,
        &with_release_key(&fleet.config(fleet::ROOT, ""), &release_public),
        &dir,
    );
    let _hub = AgentProcess::spawn(
        fleet::HUB,
        &with_release_key(&fleet.config(fleet::HUB, ""), &release_public),
        &dir,
    );
    let member_toml = with_release_key(
        &fleet.config(fleet::MEMBER, "[updates]\ngate = \"10s\"\n"),
        &release_public,
    );
    let member2_toml = member_toml
        .replace("id = \"edge-msk-01\"", "id = \"edge-msk-02\"")
        .replace("edge-msk-01-data", "edge-msk-02-data")
        .replace(
            &fleet.member_key.secret.display().to_string(),
            &member2_key.display().to_string(),
        )
        .replace(
            &fleet.token_path(fleet::MEMBER).display().to_string(),
            &member2_token.display().to_string(),
        );
    let m1 = Supervised::start(AgentProcess::spawn(fleet::MEMBER, &member_toml, &dir));
    let m2 = Supervised::start(AgentProcess::spawn(MEMBER2, &member2_toml, &dir));
    let root_config = root.config_path().to_str().expect("utf-8").to_owned();
    let _logs = LogsOnPanic(vec![
        m1.agent.log_path().to_path_buf(),
        m2.agent.log_path().to_path_buf(),
        _hub.log_path().to_path_buf(),
    ]);
    let _ = &release_public;
    wait_until(
        "both members report their update state",
        STARTUP,
        async || {
            [&beats1, &beats2].iter().all(|b| {
                beat(b)["update"]["target"] == target && beat(b)["agent_version"] == "0.1.0"
            })
        },
    )
    .await;

    // 1. 0.9.0 to both; the first member is killed in the middle of its download.
    let publish = |bin: &Path, version: &str| {
        publish_release(&root_config, &release_key, bin, target, version)
    };
    publish(&good, "0.9.0");
    let listed = cli_ok(&["release", "list", "-c", &root_config]);
    assert!(listed.contains(&format!("0.9.0 {target}")), "{listed}");
    let started = Instant::now();
    start_rollout(&root_config, "0.9.0", "edge-*");
    let part = fleet
        .data_dir(fleet::MEMBER)
        .join("downloads")
        .join(format!("nexus-agent-0.9.0-{target}.resume"));
    let first = wait_until(
        "a member keeps a resume point of its download",
        DEADLINE,
        async || {
            if part.is_file() {
                Some(fleet::MEMBER)
            } else if fleet
                .data_dir(MEMBER2)
                .join("downloads")
                .join(format!("nexus-agent-0.9.0-{target}.resume"))
                .is_file()
            {
                Some(MEMBER2)
            } else {
                None
            }
        },
    )
    .await;
    let killed = if first == fleet::MEMBER { &m1 } else { &m2 };
    killed.agent.kill();
    wait_until("both members run 0.9.0", DEADLINE, async || {
        [&beats1, &beats2]
            .iter()
            .all(|b| beat(b)["agent_version"] == "0.9.0" && beat(b)["status"] == "healthy")
    })
    .await;
    let rolled_out_in = started.elapsed();
    eprintln!(
        "rollout start → 2 members on 0.9.0 (healthy heartbeat at the root): {rolled_out_in:?}"
    );
    assert!(
        killed.agent.log().contains("Resuming the download."),
        "the killed member resumed its download:\n{}",
        killed.agent.log()
    );
    let status = agent_cli(&["rollout", "status", "-c", &root_config]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    // Heartbeats keep landing from the new version.
    let before = beats1.len();
    wait_until("more heartbeats from 0.9.0", DEADLINE, async || {
        beats1.len() > before + 2 && beat(&beats1)["agent_version"] == "0.9.0"
    })
    .await;

    // 2. The broken 0.9.1, max failures 0: one member rolls back by itself, the other is
    //    never started.
    publish(&bad, "0.9.1");
    cli_ok(&[
        "rollout",
        "start",
        "-c",
        &root_config,
        "--version",
        "0.9.1",
        "--to",
        "edge-*",
        "--max-failures",
        "0",
    ]);
    let (failed, spared) = wait_until("a member rolled back 0.9.1", DEADLINE, async || {
        for (id, seen, other) in [
            (fleet::MEMBER, &beats1, MEMBER2),
            (MEMBER2, &beats2, fleet::MEMBER),
        ] {
            let b = beat(seen);
            if b["update"]["state"] == "rolled_back" && b["agent_version"] == "0.9.0" {
                return Some((id, other));
            }
        }
        None
    })
    .await;
    let (failed_seen, spared_seen, failed_agent) = if failed == fleet::MEMBER {
        (&beats1, &beats2, &m1)
    } else {
        (&beats2, &beats1, &m2)
    };
    let cause = beat(failed_seen)["update"]["cause"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(cause.contains("stopped 3 times"), "{cause}");
    assert!(
        failed_agent.restarts.load(Ordering::SeqCst) >= 3,
        "the supervisor restarted it"
    );
    let row = wait_until("rollout status shows the rollback", DEADLINE, async || {
        rollout_row(&root_config, failed).filter(|r| r["state"] == "rolled_back")
    })
    .await;
    assert!(
        row["cause"]
            .as_str()
            .is_some_and(|c| c.contains("stopped 3 times")),
        "{row}"
    );
    // The hub halted: the other member has no start and stays on 0.9.0.
    let hub_kv = async_nats::jetstream::new(fleet.hub_nats.client().await)
        .get_key_value("NEXUS_UPDATES")
        .await
        .expect("the hub's bucket");
    let go = hub_kv.get(format!("go.{spared}")).await.expect("read");
    let go_rollout = go
        .and_then(|b| nexus_policies::Rollout::decode(&b).ok())
        .map(|r| r.spec().version);
    assert_eq!(
        go_rollout,
        Some(AgentVersion(0, 9, 0)),
        "{spared} was never started on 0.9.1"
    );
    assert_eq!(beat(spared_seen)["agent_version"], "0.9.0");

    // 3. Refusals, each of a release published at the root but poisoned in the hub's
    //    cache before its rollout starts: a tampered binary (the root's manifest, other
    //    bytes of the same size), a manifest for another target, a manifest signed by a
    //    key that is not a release key.
    let original = std::fs::read(&good).expect("the fixture");
    let root_kv = async_nats::jetstream::new(fleet.root_nats.client().await)
        .get_key_value("NEXUS_UPDATES")
        .await
        .expect("the root's bucket");
    let other_key = SecretKey::from_seed(&[42; 32]).expect("a key");
    let foreign = |version: AgentVersion, target: &str, key: &SecretKey| {
        ReleaseManifest::issue(
            ReleaseSpec {
                version,
                target: target.to_owned(),
                size: original.len() as u64,
                sha256: [0; 32],
                min_version: AgentVersion(0, 0, 0),
                issued_at: UnixTime(time::OffsetDateTime::now_utc().unix_timestamp()),
            },
            key,
        )
        .expect("a manifest")
        .encode()
    };
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    let release_secret = SecretKey::parse(
        std::fs::read_to_string(&release_key)
            .expect("the release key")
            .trim(),
    )
    .expect("a key");
    for (version, reason) in [
        (AgentVersion(0, 5, 0), "would downgrade"),
        (AgentVersion(0, 9, 5), "altered"),
        (AgentVersion(0, 9, 6), "built for aarch64-unknown-linux-gnu"),
        (AgentVersion(0, 9, 7), "not signed by a release key"),
    ] {
        publish(&good, &version.to_string());
        // 0.5.0 is published as it is, not poisoned: the member refuses it before
        // downloading anything.
        let poison = match (version.1, version.2) {
            (5, _) => None,
            (_, 5) => {
                let root_manifest = root_kv
                    .get(format!("manifest.{version}.{target}"))
                    .await
                    .expect("read")
                    .expect("the root's manifest");
                Some((root_manifest.to_vec(), &tampered))
            }
            (_, 6) => Some((
                foreign(version, "aarch64-unknown-linux-gnu", &release_secret),
                &original,
            )),
            _ => Some((foreign(version, target, &other_key), &original)),
        };
        if let Some((manifest, stored)) = poison {
            poison_hub(&fleet, version, &manifest, stored).await;
        }
        start_rollout(&root_config, &version.to_string(), spared);
        let row = wait_until(
            &format!("{spared} refuses {version}"),
            DEADLINE,
            async || rollout_row(&root_config, spared).filter(|r| r["state"] == "refused"),
        )
        .await;
        assert!(
            row["cause"].as_str().is_some_and(|c| c.contains(reason)),
            "{reason}: {row}"
        );
        assert_eq!(beat(spared_seen)["agent_version"], "0.9.0");
    }
    drop(m1);
    drop(m2);
}

/// One member behind a link that can be cut (tests/src/proxy.rs), under a supervisor:
///
/// - its link to the hub goes silent in the middle of the download: the download stalls, is
///   put off, and resumes from its last resume point once the link is back, in the same
///   process;
/// - the root's server is stopped once the hub holds the rollout and the release: the hub
///   carries the rollout on by itself;
/// - the member is SIGKILLed the moment its trial is recorded (between the install and the
///   new version's health gate): the supervisor starts the packaged binary, which counts
///   the start and runs the trial, and the release is applied;
/// - the root, back, shows the member's outcome in `rollout status`.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_outlives_a_link_cut_a_hub_cut_off_from_the_root_and_a_power_cut_before_its_trial(
) {
    let good = update_fixture("0.9.0");
    let target = agent_target();
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_secs(1);
    let (release_key, release_public) = keygen(&fleet.path().join("keys"), "release");
    let dir = fleet.path().to_path_buf();
    let root = AgentProcess::spawn(
        fleet::ROOT,
        &with_release_key(&fleet.config(fleet::ROOT, ""), &release_public),
        &dir,
    );
    let hub = AgentProcess::spawn(
        fleet::HUB,
        &with_release_key(&fleet.config(fleet::HUB, ""), &release_public),
        &dir,
    );
    let proxy = Proxy::start(fleet.hub_nats.port()).await;
    let direct = format!("[uplink]\nurl = \"{}\"\n", fleet.hub_nats.url());
    let member_toml = with_release_key(
        &fleet.config(fleet::MEMBER, "[updates]\ngate = \"10s\"\n"),
        &release_public,
    );
    assert!(
        member_toml.contains(&direct),
        "the fleet's member config changed"
    );
    let member_toml =
        member_toml.replace(&direct, &format!("[uplink]\nurl = \"{}\"\n", proxy.url()));
    let member = Supervised::start(AgentProcess::spawn(fleet::MEMBER, &member_toml, &dir));
    let _logs = LogsOnPanic(vec![
        member.agent.log_path().to_path_buf(),
        hub.log_path().to_path_buf(),
    ]);
    let root_config = root.config_path().to_str().expect("utf-8").to_owned();
    wait_until("the member's uplink is up", STARTUP, async || {
        member
            .agent
            .log()
            .contains("Link connected. link=\"uplink\"")
    })
    .await;
    publish_release(&root_config, &release_key, &good, &target, "0.9.0");
    start_rollout(&root_config, "0.9.0", fleet::MEMBER);

    // The link goes silent in the middle of the download; the root's server stops.
    let resume = fleet
        .data_dir(fleet::MEMBER)
        .join("downloads")
        .join(format!("nexus-agent-0.9.0-{target}.resume"));
    wait_until("the member keeps a resume point", DEADLINE, async || {
        resume.is_file()
    })
    .await;
    proxy.freeze(true);
    fleet.root_nats.stop();
    wait_until("the member puts the download off", DEADLINE, async || {
        member
            .agent
            .log()
            .contains("Update postponed; trying again.")
    })
    .await;
    assert!(
        !member.agent.log().contains("Resuming the download."),
        "nothing resumed before the link came back"
    );
    proxy.freeze(false);

    // The moment the trial is recorded: a power cut.
    wait_until("the member puts 0.9.0 on trial", DEADLINE, async || {
        update_state(&fleet.data_dir(fleet::MEMBER))["pending"]["slot"]["version"] == "0.9.0"
    })
    .await;
    member.agent.kill();
    // Killed before the trial passed its gate (which takes a connected uplink first).
    let at_kill = update_state(&fleet.data_dir(fleet::MEMBER));
    assert_eq!(at_kill["pending"]["slot"]["version"], "0.9.0", "{at_kill}");
    let log = member.agent.log();
    let resumed = log
        .lines()
        .find(|l| l.contains("Resuming the download."))
        .unwrap_or_else(|| panic!("the download resumed after the link cut:\n{log}"));
    assert!(!resumed.contains(" at=0 "), "{resumed}");
    assert_eq!(
        member.restarts.load(Ordering::SeqCst),
        0,
        "the download resumed in the process that began it"
    );
    let applied = wait_until("the member applies 0.9.0", DEADLINE, async || {
        let state = update_state(&fleet.data_dir(fleet::MEMBER));
        (state["last"]["result"] == "applied" && state["active"]["version"] == "0.9.0")
            .then_some(state)
    })
    .await;
    assert!(applied["pending"].is_null(), "{applied}");
    assert!(
        member.restarts.load(Ordering::SeqCst) >= 1,
        "the supervisor restarted it"
    );
    assert!(
        !fleet.root_nats.is_running(),
        "the root's server stayed down through the install"
    );
    assert!(
        member
            .agent
            .log()
            .contains("New agent version applied and healthy. version=\"0.9.0\""),
        "{}",
        member.agent.log()
    );

    // The root, back, learns the outcome.
    fleet.root_nats.restart();
    let row = wait_until(
        "rollout status at the root shows it updated",
        DEADLINE,
        async || rollout_row(&root_config, fleet::MEMBER).filter(|r| r["state"] == "updated"),
    )
    .await;
    assert_eq!(row["version"], "0.9.0", "{row}");
    drop(member);
}
