//! `./dev demo`: a whole fleet on loopback for a person to watch, on the shipped example
//! configs (see `nexus_e2e::examples`): root, hub and member agents with their own
//! nats-servers, a mosquitto with two simulated sensors, a local app answering the example's
//! command, and the root's events printed as they land (`nexus-agent tail`).
//!
//! `demo [--for SECONDS]`: Ctrl-C (or the time given) stops everything; the configs, logs
//! and overrides are copied to `.demo/` in the repository. `tests/tests/examples.rs` runs it
//! briefly, so it cannot rot.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use nexus_e2e::examples::{text, ExampleFleet};
use nexus_e2e::{agent_bin, fleet};
use serde_json::{json, Value};

/// How often the simulated sensors publish.
const SENSOR_PERIOD: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let duration = match parse_args() {
        Ok(duration) => duration,
        Err(message) => {
            eprintln!("demo: {message}\nusage: demo [--for SECONDS]");
            return std::process::ExitCode::from(2);
        }
    };
    let site = ExampleFleet::start().await;
    let dir = site.fleet.path().to_path_buf();
    print_banner(&site, &dir);
    tokio::spawn(answer_cancellations(site.app.clone()));
    tokio::spawn(simulate_sensors(site.broker.port()));
    ping(&site).await;

    let mut tail = tokio::process::Command::new(agent_bin())
        .args(["tail", "nexus.>", "--server", &site.fleet.root_nats.url()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nexus-agent tail runs");
    let stopped = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let healthy = tokio::select! {
        () = stopped => true,
        status = tail.wait() => {
            eprintln!("==> the tail stopped: {status:?}");
            false
        }
    };
    let _ = tail.kill().await;
    let alive = [&site.root, &site.hub, &site.member]
        .iter()
        .all(|agent| agent.is_running());
    if !alive {
        eprintln!("==> an agent died while the demo ran:\n{}", site.logs());
    }
    keep(&dir);
    if healthy && alive {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn parse_args() -> Result<Option<Duration>, String> {
    let mut args = std::env::args().skip(1);
    let mut duration = None;
    while let Some(arg) = args.next() {
        let seconds = match arg.as_str() {
            "--for" => args.next().ok_or("--for needs a number of seconds")?,
            other => match other.strip_prefix("--for=") {
                Some(seconds) => seconds.to_owned(),
                None => return Err(format!("unknown argument '{other}'")),
            },
        };
        let seconds: u64 = seconds
            .parse()
            .map_err(|_| format!("--for wants whole seconds, got '{seconds}'"))?;
        duration = Some(Duration::from_secs(seconds));
    }
    Ok(duration)
}

fn print_banner(site: &ExampleFleet, dir: &Path) {
    let agent = agent_bin();
    let agent = agent.display();
    let conf = |node: &str| dir.join(format!("{node}.toml")).display().to_string();
    let env = |node: &str| dir.join(format!("{node}.env")).display().to_string();
    println!(
        "
  nexus-agent demo — tenant \"{tenant}\", everything on 127.0.0.1
    root    nats-server :{root}  agent {root_id}
    hub     nats-server :{hub}  agent {hub_id}       (uplink → root)
    member  nats-server :{member}  agent {member_id}   (uplink → hub)
    sensors mosquitto   :{mqtt}  zigbee2mqtt/aqara-livingroom, sensors/esp32-kitchen/co2
  configs: config/examples/*.toml as shipped; what a deployer fills in (keys, tokens, URLs,
  data_dir) is in NODE.env beside each copy, in {dir} (copied to .demo/ at the end).
  Below: every envelope on the root's server (nexus.>): heartbeats every 10 s, sensor
  readings every 3 s. Try, in another terminal (signed by the root key, routed by the hub):
    (. {root_env} && {agent} request -c {root_conf} {member_id} agent.health)
    (. {root_env} && {agent} request -c {root_conf} {member_id} booking.cancel --data '{{\"id\": \"b-7\"}}')
    (. {member_env} && {agent} publish -c {member_conf} booking.created --data '{{\"booking_id\": \"b-1\"}}')
  Ctrl-C stops everything.
",
        tenant = fleet::TENANT,
        root = site.fleet.root_nats.port(),
        hub = site.fleet.hub_nats.port(),
        member = site.fleet.member_nats.port(),
        mqtt = site.broker.port(),
        root_id = fleet::ROOT,
        hub_id = fleet::HUB,
        member_id = fleet::MEMBER,
        dir = dir.display(),
        root_env = env(fleet::ROOT),
        root_conf = conf(fleet::ROOT),
        member_env = env(fleet::MEMBER),
        member_conf = conf(fleet::MEMBER),
    );
}

/// The local app: answers `booking.cancel`, delivered by the member on the example's
/// command subject.
async fn answer_cancellations(app: async_nats::Client) {
    let Ok(mut requests) = app.subscribe("app.cmd.booking.cancel").await else {
        eprintln!("==> the demo app cannot subscribe on the member's NATS");
        return;
    };
    while let Some(request) = requests.next().await {
        let asked: Value = serde_json::from_slice(&request.payload).unwrap_or_default();
        let answer = json!({"cancelled": true, "booking": asked["id"]});
        if let Some(reply) = request.reply {
            let _ = app.publish(reply, answer.to_string().into()).await;
        }
    }
}

/// A zigbee2mqtt climate sensor (JSON, several metrics, its own time in ms) and a home-made
/// ESP32 publishing a plain number per topic, every [`SENSOR_PERIOD`].
async fn simulate_sensors(port: u16) {
    let publish = |topic: String, message: String| async move {
        let _ = tokio::process::Command::new(nexus_e2e::mosquitto_client_bin("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &topic, "-m", &message])
            .stdin(Stdio::null())
            .output()
            .await;
    };
    let mut ticker = tokio::time::interval(SENSOR_PERIOD);
    for i in 0u64.. {
        ticker.tick().await;
        let phase = i as f64;
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let climate = json!({
            "temperature": ((21.0 + 1.5 * (phase / 5.0).sin()) * 10.0).round() / 10.0,
            "humidity": ((45.0 + 5.0 * (phase / 7.0).cos()) * 10.0).round() / 10.0,
            "battery": 97,
            "linkquality": 120,
            "last_seen": now_ms,
        });
        publish("zigbee2mqtt/aqara-livingroom".into(), climate.to_string()).await;
        publish(
            "sensors/esp32-kitchen/co2".into(),
            (600 + (i * 37) % 150).to_string(),
        )
        .await;
    }
}

/// One `agent.ping` from the root to the member through the hub, printed.
async fn ping(site: &ExampleFleet) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = site
            .cli(
                fleet::ROOT,
                &["request", fleet::MEMBER, "agent.ping", "--timeout", "2s"],
            )
            .await;
        if out.status.success() {
            println!("==> agent.ping root → hub → member:");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("    {line}");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            println!("==> agent.ping got no answer yet:\n{}", text(&out));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Copies the configs, overrides and logs to `.demo/` in the repository, or to
/// `$DEMO_KEEP_DIR` (the fleet's temp dir goes away with it).
fn keep(dir: &Path) {
    let target = std::env::var_os("DEMO_KEEP_DIR").map_or_else(
        || {
            let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
            tests.parent().unwrap_or(tests).join(".demo")
        },
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&target);
    if std::fs::create_dir_all(&target).is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let keep = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "toml" | "env" | "log"));
        if keep {
            if let Some(name) = path.file_name() {
                let _ = std::fs::copy(&path, target.join(name));
            }
        }
    }
    eprintln!("==> stopped; configs and logs are in {}", target.display());
}
