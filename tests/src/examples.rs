//! The shipped example configs, as shipped: root, hub and member run from
//! `config/examples/{root,hub,member}.toml` copied byte for byte, with only what a deployer
//! must fill in given as `NEXUS_…` environment overrides (keys, tokens, trust anchor, URLs,
//! data_dir), a mosquitto for the member's sensors, and the CLI on the same files.
//!
//! `tests/tests/examples.rs` proves a whole fleet works on them; the demo
//! (`src/bin/demo.rs`, `./dev demo`) runs the same fleet for a person to watch. So the
//! examples, the demo and the test cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use serde_json::Value;

use crate::{
    agent_bin, fleet, mosquitto_client_bin, wait_until, AgentProcess, Fleet, Launch, Mosquitto,
    NatsCluster, NatsServer,
};

/// How long a step may take on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The repository's example of `mode`.
pub fn example(mode: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(format!("{mode}.toml"))
}

/// A root, a hub and a member on the example files, and the parts around them.
#[derive(Debug)]
pub struct ExampleFleet {
    /// The servers, keys and tokens (the agents' configs and logs are in its dir).
    pub fleet: Fleet,
    /// The member's MQTT broker, where sensors publish.
    pub broker: Mosquitto,
    /// The root agent.
    pub root: AgentProcess,
    /// The hub agent.
    pub hub: AgentProcess,
    /// The member agent.
    pub member: AgentProcess,
    /// JetStream on the root's NATS, where events land.
    pub root_js: jetstream::Context,
    /// A local app's connection to the member's NATS.
    pub app: async_nats::Client,
    /// What the root runs with beyond the deployer's overrides (a clustered root's
    /// replicas), for its agent and the CLI alike.
    root_env: Vec<(String, String)>,
}

impl ExampleFleet {
    /// Servers (hub and root with `sync_interval: always`, as shipped), mosquitto, keys and
    /// tokens; the three agents started on the examples; returns once the member reads its
    /// sensors. Each node's overrides are also written as `NAME.env` (`export` lines) beside
    /// its config, for a person to run the CLI on it.
    pub async fn start() -> Self {
        Self::start_with_servers(true).await
    }

    /// [`Self::start`] with the hub's and the root's nats-servers `durable`
    /// (`sync_interval: always`, as shipped in config/nats/) or at nats-server's defaults
    /// (PubAck before fsync; the benchmarks measure both).
    pub async fn start_with_servers(durable: bool) -> Self {
        let server = || {
            if durable {
                NatsServer::builder().sync_always().start()
            } else {
                NatsServer::start()
            }
        };
        Self::start_on(
            Fleet::with_servers(server(), server(), NatsServer::start()),
            &[],
        )
        .await
    }

    /// [`Self::start`] with the root's NATS a JetStream cluster (its servers as `cluster`
    /// started them; `sync_interval: always` is theirs to set) and every stream and bucket
    /// of the root at three replicas (`[ingress] replicas` and `[landing] replicas`, as
    /// docs/deploy-root-cluster.md sets them); the hub's server durable.
    pub async fn start_with_root_cluster(cluster: &NatsCluster) -> Self {
        let fleet = Fleet::with_root_cluster(
            cluster,
            NatsServer::builder().sync_always().start(),
            NatsServer::start(),
        );
        Self::start_on(
            fleet,
            &[
                ("NEXUS_INGRESS__REPLICAS", "3"),
                ("NEXUS_LANDING__REPLICAS", "3"),
            ],
        )
        .await
    }

    /// The three agents on `fleet`'s servers, the root with `root_env` beyond the
    /// deployer's overrides.
    async fn start_on(fleet: Fleet, root_env: &[(&str, &str)]) -> Self {
        let broker = Mosquitto::start();
        let root_env: Vec<(String, String)> = root_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let spawn = |node: &str, mode: &str| {
            let text = std::fs::read_to_string(example(mode)).expect("the example config");
            let env = node_env(&fleet, &broker, &root_env, node);
            let launch = Launch {
                env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                ..Launch::default()
            };
            let exports: String = env
                .iter()
                .map(|(k, v)| format!("export {k}='{v}'\n"))
                .collect();
            std::fs::write(fleet.path().join(format!("{node}.env")), exports)
                .expect("write the node's overrides");
            AgentProcess::spawn_with(&launch, node, &text, fleet.path())
        };
        let root = spawn(fleet::ROOT, "root");
        let hub = spawn(fleet::HUB, "hub");
        let member = spawn(fleet::MEMBER, "member");
        let root_js = jetstream::new(fleet.root_nats.client().await);
        let app = fleet.member_nats.client().await;
        let subscribed = tokio::time::timeout(
            DEADLINE,
            wait_until(
                "the member's MQTT bridge is subscribed",
                DEADLINE + Duration::from_secs(1),
                async || member.log().contains("MQTT subscriptions confirmed"),
            ),
        )
        .await;
        assert!(
            subscribed.is_ok(),
            "the member's MQTT bridge is not subscribed:\n{}",
            tail(&member.log())
        );
        Self {
            fleet,
            broker,
            root,
            hub,
            member,
            root_js,
            app,
            root_env,
        }
    }

    /// The CLI on a node's example config (its copy in the fleet's dir), with the node's
    /// overrides.
    pub async fn cli(&self, node: &str, args: &[&str]) -> Output {
        let config = self.fleet.path().join(format!("{node}.toml"));
        let (verb, rest) = args.split_first().expect("a verb");
        let mut command = tokio::process::Command::new(agent_bin());
        command.arg(verb);
        if *verb == "dlq" || *verb == "events" {
            command
                .args(&rest[..1])
                .arg("-c")
                .arg(&config)
                .args(&rest[1..]);
        } else {
            command.arg("-c").arg(&config).args(rest);
        }
        command
            .envs(node_env(&self.fleet, &self.broker, &self.root_env, node))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("nexus-agent runs")
    }

    /// A sensor's message, as the sensor sends it (`mosquitto_pub -q 1`).
    pub fn sensor(&self, topic: &str, message: &str) {
        let out = Command::new(mosquitto_client_bin("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-m", message])
            .output()
            .expect("mosquitto_pub runs");
        assert!(out.status.success(), "mosquitto_pub: {}", text(&out));
    }

    /// Every message of `stream` on `filter`, decoded, once at least `n` are there.
    pub async fn landed(&self, stream: &str, filter: &str, n: usize) -> Vec<Value> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let found = read_stream(&self.root_js, stream, filter).await;
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{n} message(s) on {filter} in {stream} within {DEADLINE:?}; found {}: \
                 {found:?}\n{}",
                found.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of each agent's log.
    pub fn logs(&self) -> String {
        format!(
            "root:\n{}\nhub:\n{}\nmember:\n{}",
            tail(&self.root.log()),
            tail(&self.hub.log()),
            tail(&self.member.log())
        )
    }
}

/// A node's environment in an [`ExampleFleet`]: its [`overrides`], and `root_env` for the
/// root.
fn node_env(
    fleet: &Fleet,
    broker: &Mosquitto,
    root_env: &[(String, String)],
    node: &str,
) -> Vec<(String, String)> {
    let mut env = overrides(fleet, broker, node);
    if node == fleet::ROOT {
        env.extend_from_slice(root_env);
    }
    env
}

/// What a deployer fills in for `node`: its key, token, data_dir, the trust anchor and the
/// URLs of this machine's servers. Nothing else of the example is changed.
pub fn overrides(fleet: &Fleet, broker: &Mosquitto, node: &str) -> Vec<(String, String)> {
    let key = match node {
        fleet::ROOT => &fleet.root_key,
        fleet::HUB => &fleet.hub_key,
        _ => &fleet.member_key,
    };
    let mut env = vec![
        ("NEXUS_NODE__KEY", key.secret.display().to_string()),
        (
            "NEXUS_NODE__DATA_DIR",
            fleet.data_dir(node).display().to_string(),
        ),
        ("NEXUS_TRUST__ROOT_KEYS", fleet.root_key.public.clone()),
    ];
    match node {
        fleet::ROOT => env.push(("NEXUS_LOCAL__URL", fleet.root_url().to_owned())),
        fleet::HUB => env.extend([
            ("NEXUS_NODE__TOKEN", token(fleet, node)),
            ("NEXUS_UPLINK__URL", fleet.root_url().to_owned()),
            ("NEXUS_LOCAL__URL", fleet.hub_nats.url()),
        ]),
        _ => env.extend([
            ("NEXUS_NODE__TOKEN", token(fleet, node)),
            ("NEXUS_UPLINK__URL", fleet.hub_nats.url()),
            ("NEXUS_LOCAL__URL", fleet.member_nats.url()),
            ("NEXUS_IOT__URL", broker.url()),
            // The example's registry (config/examples/events), as member.toml describes.
            (
                "NEXUS_EVENTS__REGISTRY",
                example_registry().display().to_string(),
            ),
        ]),
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The example's event registry: `config/examples/events` (booking.created and
/// booking.cancel.result).
pub fn example_registry() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/events")
}

fn token(fleet: &Fleet, node: &str) -> String {
    fleet.token_path(node).display().to_string()
}

/// Every message of `stream` on `filter`, as JSON (none if the stream is not there yet).
pub async fn read_stream(js: &jetstream::Context, stream: &str, filter: &str) -> Vec<Value> {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    if info.state.messages == 0 {
        return Vec::new();
    }
    let Ok(consumer) = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    let Ok(messages) = consumer.messages().await else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut messages =
        std::pin::pin!(messages.take_until(tokio::time::sleep(Duration::from_millis(500))));
    while let Some(Ok(message)) = messages.next().await {
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(value) = serde_json::from_slice::<Value>(&message.payload) {
            found.push(value);
        }
        if pending == 0 {
            break;
        }
    }
    found
}

/// A process' exit code, stdout and stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
