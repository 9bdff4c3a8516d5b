//! End to end, remote config (docs/remote-config.md): root, hub and member as real
//! processes on real nats-servers and mosquitto, documents pushed with the real CLI.
//!
//! - From the root: a new sensor mapping (a patch of `[iot]`) takes effect on a running
//!   member (its new metric lands) while readings wait in the member's outbox, none lost;
//!   a document that fails validation is refused with its errors reported at the root; one
//!   that breaks the uplink is rolled back by the member itself within its gate; a
//!   document carrying a secret never leaves the CLI.
//! - From the hub, with the root down: its member applies a hub document; one that
//!   widens the member's ACL beyond its token is refused; a member that was offline
//!   during a push applies it on return; the root, back, has the hub's documents and the
//!   outcomes in `config history`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nexus_e2e::examples::text;
use nexus_e2e::landing::read_landed;
use nexus_e2e::{agent_cli, fleet, wait_until, Fleet, Mosquitto, Seen};
use serde_json::Value;

/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(40);
/// The member's health gate in these tests.
const GATE: &str = "4s";

/// The member's `[iot]`: one mapping, `sensors/{sensor_id}/{metric}`.
fn iot(broker: &Mosquitto) -> String {
    format!(
        "[iot]\nurl = \"{}\"\nreconnect_max_delay = \"500ms\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
        broker.url()
    )
}

/// `config push -c CONFIG NODE FILE [--keys KEYS]` with `toml` written to FILE; the
/// version it printed.
fn push(dir: &Path, config: &Path, node: &str, toml: &str, keys: Option<&str>) -> u64 {
    let out = try_push(dir, config, node, toml, keys);
    assert!(out.status.success(), "config push: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_once(" v")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {stdout}"))
}

fn try_push(dir: &Path, config: &Path, node: &str, toml: &str, keys: Option<&str>) -> Output {
    let file = dir.join(format!("push-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&file, toml).expect("write the document");
    let config = config.to_str().expect("utf-8 path");
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec!["config", "push", "-c", config, node, file];
    if let Some(keys) = keys {
        args.extend(["--keys", keys]);
    }
    agent_cli(&args)
}

/// `config VERB -c CONFIG NODE` (diff, history).
fn config_cli(verb: &str, config: &Path, node: &str) -> Output {
    agent_cli(&[
        "config",
        verb,
        "-c",
        config.to_str().expect("utf-8 path"),
        node,
    ])
}

/// `config status --json` at a tier: its row for `node`.
fn status(config: &Path, node: &str) -> Option<Value> {
    let out = agent_cli(&["config", "status", "-c", config.to_str()?, "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
    rows.as_array()?.iter().find(|r| r["node"] == node).cloned()
}

/// Waits until the tier's `config status` row for `node` satisfies `done`.
async fn wait_status(
    config: &Path,
    node: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(
        &format!("config status: {node} {what}"),
        DEADLINE,
        async || match status(config, node) {
            Some(row) if done(&row) => Ok(row),
            Some(row) => Err(Some(row.to_string())),
            None => Err(None),
        },
    )
    .await
}

/// The `config` report of the last heartbeat in `beats`.
fn last_report(beats: &Seen) -> Option<Value> {
    beats.last_payload().map(|p| p["config"].clone())
}

/// Readings at the root by metric.
async fn landed_metrics(js: &async_nats::jetstream::Context) -> (usize, usize) {
    let copies = read_landed(js, "nexus.salon-001.iot.sensor_data").await;
    let total: u32 = copies.values().sum();
    (copies.len(), total as usize)
}

#[tokio::test(flavor = "multi_thread")]
async fn root_documents_apply_refuse_and_roll_back_on_a_running_member() {
    let fleet = Fleet::new();
    let broker = Mosquitto::start();
    let reports = Seen::watch(
        &fleet.root_nats,
        &format!("nexus._core.edge.health.{}", fleet::MEMBER),
    )
    .await;
    let root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    // A slow drain keeps readings queued in the member's outbox across its restart.
    let member_extra = format!(
        "[remote_config]\ngate = \"{GATE}\"\n\n[outbox]\ndrain_rate = 5\n\n{}",
        iot(&broker)
    );
    let member = fleet.spawn(fleet::MEMBER, &member_extra);
    let root_config = root.config_path().to_path_buf();
    wait_until("the member reports a local config", STARTUP, async || {
        last_report(&reports).is_some_and(|r| r["state"] == "local" && r["version"] == 0)
    })
    .await;
    wait_until(
        "the member's MQTT bridge is subscribed",
        STARTUP,
        async || member.log().contains("MQTT subscriptions confirmed"),
    )
    .await;
    let js = async_nats::jetstream::new(fleet.root_nats.client().await);

    // 1. A new mapping while 30 readings wait in the outbox (5/s).
    let readings: Vec<String> = (0..30).map(|i| format!("{}.5", 20 + i % 5)).collect();
    broker.publish_lines(&[], "sensors/t-01/temperature", &readings);
    let patch = format!(
        "{}\n[[iot.sensors]]\ntopic = \"meters/{{sensor_id}}/{{metric}}\"\npayload = \"number\"\nmetrics = {{ power = \"W\" }}\n",
        iot(&broker)
    );
    let pushed = Instant::now();
    let version = push(
        fleet.path(),
        &root_config,
        fleet::MEMBER,
        &patch,
        Some("iot"),
    );
    wait_until(
        "the member restarts with the document",
        DEADLINE,
        async || {
            member
                .log()
                .contains("Desired config written; restarting with it.")
        },
    )
    .await;
    let (at_restart, _) = landed_metrics(&js).await;
    assert!(
        at_restart < 30,
        "readings were still queued at the restart ({at_restart} of 30 landed)"
    );
    let report = wait_until(
        "the member runs the document, healthy",
        DEADLINE,
        async || {
            last_report(&reports).filter(|r| r["state"] == "desired" && r["version"] == version)
        },
    )
    .await;
    let applied_in = pushed.elapsed();
    eprintln!("push → applied and healthy (heartbeat at the root): {applied_in:?}");
    assert!(report["hash"]
        .as_str()
        .is_some_and(|h| h.starts_with("sha256:")));
    wait_until(
        "the member's MQTT bridge is subscribed again",
        STARTUP,
        async || member.log().matches("MQTT subscriptions confirmed").count() >= 2,
    )
    .await;
    broker.publish_lines(&[], "meters/m-01/power", &["1250".to_owned()]);
    let (distinct, copies) = wait_until(
        "31 readings at the root, the new metric too",
        DEADLINE,
        async || {
            let (distinct, copies) = landed_metrics(&js).await;
            if distinct >= 31 {
                Ok((distinct, copies))
            } else {
                Err(Some(format!("{distinct}")))
            }
        },
    )
    .await;
    assert_eq!(
        (distinct, copies),
        (31, 31),
        "every queued reading landed once, and the new one"
    );
    let row = wait_status(&root_config, fleet::MEMBER, "in_sync", |r| {
        r["state"] == "in_sync"
    })
    .await;
    assert_eq!(row["running_version"], version);
    let diff = config_cli("diff", &root_config, fleet::MEMBER);
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("no difference"),
        "{}",
        text(&diff)
    );

    // 2. A document that fails validation: refused, every error at the root.
    let bad = "[heartbeat]\ninterval = \"often\"\n\n[iot]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[[iot.sensors]]\ntopic = \"sensors/{rooms}\"\n";
    let refused = push(
        fleet.path(),
        &root_config,
        fleet::MEMBER,
        bad,
        Some("heartbeat,iot"),
    );
    let row = wait_status(&root_config, fleet::MEMBER, "refused", |r| {
        r["state"] == "refused"
    })
    .await;
    let detail = row["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("heartbeat.interval") && detail.contains("iot.sensors"),
        "{row}"
    );
    assert_eq!(row["desired_version"], refused);
    assert_eq!(
        row["running_version"], version,
        "the previous document still runs"
    );
    let diff = config_cli("diff", &root_config, fleet::MEMBER);
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(
        shown.contains(&format!("--- {} runs v{version}", fleet::MEMBER))
            && shown.contains("+ interval = \"often\"")
            && shown.contains("- topic = \"meters/{sensor_id}/{metric}\""),
        "{}",
        text(&diff)
    );

    // 3. A document that breaks the uplink: the member rolls back by itself.
    let broken = "[uplink]\nurl = \"nats://127.0.0.1:1\"\nreconnect_max_delay = \"500ms\"\n";
    let rolled = push(
        fleet.path(),
        &root_config,
        fleet::MEMBER,
        broken,
        Some("uplink"),
    );
    let row = wait_status(&root_config, fleet::MEMBER, "rolled_back", |r| {
        r["state"] == "rolled_back"
    })
    .await;
    assert_eq!(row["desired_version"], rolled);
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains("uplink link not connected")),
        "{row}"
    );
    let config = std::fs::read_to_string(member.config_path()).expect("member config");
    assert!(
        !config.contains("127.0.0.1:1\""),
        "the previous file is back:\n{config}"
    );
    wait_until(
        "the member is back on its previous document",
        DEADLINE,
        async || {
            last_report(&reports)
                .is_some_and(|r| r["state"] == "rolled_back" && r["version"] == version)
        },
    )
    .await;
    let history = config_cli("history", &root_config, fleet::MEMBER);
    let history = String::from_utf8_lossy(&history.stdout).to_string();
    for expected in [
        format!("v{version} "),
        format!("v{refused} "),
        format!("v{rolled} "),
        "applied".to_owned(),
        "refused".to_owned(),
        "rolled_back".to_owned(),
    ] {
        assert!(
            history.contains(&expected),
            "history lacks {expected}:\n{history}"
        );
    }

    // 4. A secret never leaves the CLI.
    let out = try_push(
        fleet.path(),
        &root_config,
        fleet::MEMBER,
        "[uplink]\nurl = \"nats://app:hunter2@127.0.0.1:4222\"\n",
        Some("uplink"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uplink.url"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_configures_its_member_while_the_root_is_down_and_the_root_learns_later() {
    let fleet = Fleet::new();
    let root = fleet.spawn(fleet::ROOT, "");
    let hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(
        fleet::MEMBER,
        &format!("[remote_config]\ngate = \"{GATE}\"\n"),
    );
    let hub_config = hub.config_path().to_path_buf();
    let root_config = root.config_path().to_path_buf();
    wait_status(&hub_config, fleet::MEMBER, "local", |r| {
        r["state"] == "local"
    })
    .await;

    // The root goes away: agent and server.
    root.kill();
    fleet.root_nats.stop();

    // 1. The hub's document applies.
    let first = push(
        fleet.path(),
        &hub_config,
        fleet::MEMBER,
        "[heartbeat]\ninterval = \"700ms\"\n",
        Some("heartbeat"),
    );
    let row = wait_status(&hub_config, fleet::MEMBER, "in_sync", |r| {
        r["state"] == "in_sync"
    })
    .await;
    assert_eq!(row["running_version"], first);
    let config = std::fs::read_to_string(member.config_path()).expect("member config");
    assert!(config.contains("700ms"), "{config}");

    // 2. Wider than the member's token: refused.
    let wide = "[[acl]]\nprincipal = \"local\"\nallow_publish = [\"nexus.other-tenant.>\"]\n";
    let widened = push(fleet.path(), &hub_config, fleet::MEMBER, wide, Some("acl"));
    let row = wait_status(&hub_config, fleet::MEMBER, "refused", |r| {
        r["state"] == "refused" && r["desired_version"] == widened
    })
    .await;
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains("wider than the node's token grants")),
        "{row}"
    );

    // 3. Offline during the push: applied on return.
    member.terminate(Duration::from_secs(10));
    let later = push(
        fleet.path(),
        &hub_config,
        fleet::MEMBER,
        "[heartbeat]\ninterval = \"800ms\"\n",
        Some("heartbeat"),
    );
    member.restart();
    let row = wait_status(&hub_config, fleet::MEMBER, "in_sync again", |r| {
        r["state"] == "in_sync" && r["running_version"] == later
    })
    .await;
    assert_eq!(row["desired_version"], later);

    // 4. The root comes back and learns the hub's documents and their outcomes.
    fleet.root_nats.restart();
    root.restart();
    let history = wait_until(
        "the root's history has the hub's documents",
        DEADLINE,
        async || {
            let out = agent_cli(&[
                "config",
                "history",
                "-c",
                root_config.to_str()?,
                fleet::MEMBER,
                "--json",
            ]);
            let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = rows.as_array()?.clone();
            let has = |v: u64, result: &str| {
                rows.iter().any(|r| {
                    r["version"] == v && r["issuer"] == fleet::HUB && r["result"] == result
                })
            };
            (has(first, "applied") && has(widened, "refused") && has(later, "applied"))
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(history.len(), 3, "{history:?}");
}
