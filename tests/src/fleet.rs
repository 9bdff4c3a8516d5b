//! A whole federation on loopback: root, hub and member nats-servers, keys, tokens issued
//! with the real CLI, configs, and the agents as processes.
//!
//! Tokens: the root runs without one (its key is the trust anchor); the hub's is issued by
//! the root key; the member's by the hub key with the hub's chain as parent, narrower.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::NatsCluster;
use crate::{agent_bin, keygen, AgentProcess, Launch, NatsServer};

/// The tenant of the fleet.
pub const TENANT: &str = "salon-001";
/// Node ids.
pub const ROOT: &str = "root";
/// The hub's node id.
pub const HUB: &str = "hub-msk";
/// The member's node id.
pub const MEMBER: &str = "edge-msk-01";

/// The `[health]` of every agent a [`Fleet`] configures: the disk and memory thresholds at
/// 100 %, so the machine running the tests (a CI disk was seen 91 % full) never makes a
/// heartbeat `degraded`; the thresholds themselves are tested in agent/src/health.rs.
pub const HOST_LIMITS: &str = "\n[health]\ndisk_full_pct = 100\nmem_full_pct = 100\n";

/// What the hub's token grants (and so the most a member's token may grant): events, and
/// commands to any node (`_nexus.cmd.{node}.{command}`).
pub const HUB_PUBLISH: &[&str] = &["nexus._core.>", "nexus.salon-001.>", "_nexus.cmd.>"];
/// What the member's token grants.
pub const MEMBER_PUBLISH: &[&str] = &[
    "nexus._core.edge.health.edge-msk-01",
    "nexus._core.audit.>",
    "nexus.salon-001.>",
];

/// A key pair made with `nexus-agent keygen`.
#[derive(Debug, Clone)]
pub struct NodeKey {
    /// The secret key file.
    pub secret: PathBuf,
    /// The public key text (`ed25519:…`).
    pub public: String,
}

/// Three servers, keys and tokens; agents are spawned on demand.
#[derive(Debug)]
pub struct Fleet {
    /// The root's NATS (landing streams live here); with a clustered root
    /// ([`Self::with_root_cluster`]), the cluster's first server.
    pub root_nats: Arc<NatsServer>,
    /// The hub's NATS (members' uplink, the hub's ingress).
    pub hub_nats: NatsServer,
    /// The member's own NATS.
    pub member_nats: NatsServer,
    /// Keys by node.
    pub root_key: NodeKey,
    /// The hub's key.
    pub hub_key: NodeKey,
    /// The member's key.
    pub member_key: NodeKey,
    /// Heartbeat interval of every agent.
    pub interval: Duration,
    /// The URL(s) of the root's NATS in the root's `[local]` and the hub's `[uplink]`:
    /// every server of a clustered root, else `root_nats`'.
    root_url: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Servers started, keys made, hub and member tokens issued (valid for a week: outside `health.token_expiry`).
    pub fn new() -> Self {
        Self::with_servers(
            NatsServer::start(),
            NatsServer::start(),
            NatsServer::start(),
        )
    }

    /// [`Self::new`] with servers the test configured.
    pub fn with_servers(
        root_nats: NatsServer,
        hub_nats: NatsServer,
        member_nats: NatsServer,
    ) -> Self {
        let root_url = root_nats.url();
        Self::assemble(Arc::new(root_nats), root_url, hub_nats, member_nats)
    }

    /// [`Self::with_servers`] with a clustered root: the root's `[local]` and the hub's
    /// `[uplink]` list every server of `cluster`; `root_nats` is its first server.
    pub fn with_root_cluster(
        cluster: &NatsCluster,
        hub_nats: NatsServer,
        member_nats: NatsServer,
    ) -> Self {
        Self::assemble(
            Arc::clone(cluster.node(0)),
            cluster.url(),
            hub_nats,
            member_nats,
        )
    }

    fn assemble(
        root_nats: Arc<NatsServer>,
        root_url: String,
        hub_nats: NatsServer,
        member_nats: NatsServer,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let make = |name: &str| {
            let (secret, public) = keygen(&keys, name);
            NodeKey { secret, public }
        };
        let fleet = Self {
            root_key: make("root"),
            hub_key: make("hub"),
            member_key: make("member"),
            root_nats,
            hub_nats,
            member_nats,
            interval: Duration::from_secs(1),
            root_url,
            dir,
        };
        // The hub's window reaches a week back and a month ahead, so that tests can make
        // member tokens that are already expired or not yet valid under it.
        let week_ago = (time::OffsetDateTime::now_utc() - Duration::from_secs(7 * 86_400))
            .replace_nanosecond(0)
            .expect("whole seconds")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        fleet.issue(
            &fleet.root_key,
            None,
            HUB,
            &fleet.hub_key.public,
            "hub",
            HUB_PUBLISH,
            &fleet.token_path(HUB),
            &["--not-before", &week_ago, "--ttl", "37d"],
        );
        fleet.issue(
            &fleet.hub_key,
            Some(&fleet.token_path(HUB)),
            MEMBER,
            &fleet.member_key.public,
            "member",
            MEMBER_PUBLISH,
            &fleet.token_path(MEMBER),
            &[],
        );
        fleet
    }

    /// The URL(s) of the root's NATS as the root's `[local]` and the hub's `[uplink]` name
    /// them: every server of a clustered root, comma-separated.
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    /// The fleet's temp dir (configs, logs, keys, tokens, data dirs).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where a node's token chain is written.
    pub fn token_path(&self, node: &str) -> PathBuf {
        self.path().join("tokens").join(format!("{node}.token"))
    }

    /// A node's data dir.
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.path().join(format!("{node}-data"))
    }

    /// Runs `nexus-agent token issue`; panics with its stderr on failure. `extra` adds
    /// arguments (e.g. `--ttl`, `--not-before`).
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        issuer: &NodeKey,
        parent: Option<&Path>,
        node: &str,
        node_key: &str,
        role: &str,
        publish: &[&str],
        out: &Path,
        extra: &[&str],
    ) {
        let output = self.token_command(issuer, parent, node, node_key, role, publish, out, extra);
        assert!(
            output.status.success(),
            "token issue for {node} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `nexus-agent token issue` and returns its output, successful or not.
    #[allow(clippy::too_many_arguments)]
    pub fn token_command(
        &self,
        issuer: &NodeKey,
        parent: Option<&Path>,
        node: &str,
        node_key: &str,
        role: &str,
        publish: &[&str],
        out: &Path,
        extra: &[&str],
    ) -> std::process::Output {
        std::fs::create_dir_all(out.parent().expect("token dir")).expect("token dir");
        let mut command = Command::new(agent_bin());
        command
            .args(["token", "issue", "--key"])
            .arg(&issuer.secret)
            .args([
                "--node",
                node,
                "--node-key",
                node_key,
                "--tenant",
                TENANT,
                "--role",
                role,
                "--force",
            ])
            .arg("--out")
            .arg(out);
        if let Some(parent) = parent {
            command.arg("--parent").arg(parent);
        }
        for pattern in publish {
            command.args(["--publish", pattern]);
        }
        if !extra.contains(&"--ttl") {
            command.args(["--ttl", "7d"]);
        }
        command.args(extra);
        command
            .stdin(Stdio::null())
            .output()
            .expect("nexus-agent token issue runs")
    }

    /// The TOML of one agent; `extra` is appended (e.g. `[[acl]]` rules). The test machine's
    /// own disk and memory are not what a test is about: [`HOST_LIMITS`] keeps a nearly full
    /// CI disk from turning every heartbeat `degraded`.
    pub fn config(&self, node: &str, extra: &str) -> String {
        let dir = self.path().display();
        let (mode, key, uplink, local, token) = match node {
            ROOT => (
                "root",
                &self.root_key,
                None,
                Some(self.root_url.clone()),
                None,
            ),
            HUB => (
                "hub",
                &self.hub_key,
                Some(self.root_url.clone()),
                Some(self.hub_nats.url()),
                Some(self.token_path(HUB)),
            ),
            _ => (
                "member",
                &self.member_key,
                Some(self.hub_nats.url()),
                Some(self.member_nats.url()),
                Some(self.token_path(MEMBER)),
            ),
        };
        let mut toml = format!(
            "[node]\nid = \"{node}\"\nmode = \"{mode}\"\ntenant = \"{TENANT}\"\nkey = \"{}\"\ndata_dir = \"{dir}/{node}-data\"\n",
            key.secret.display()
        );
        if let Some(token) = token {
            toml.push_str(&format!("token = \"{}\"\n", token.display()));
        }
        toml.push_str(&format!(
            "\n[trust]\nroot_keys = [\"{}\"]\n\n[heartbeat]\ninterval = \"{}ms\"\n\n[log]\nlevel = \"debug\"\n{HOST_LIMITS}",
            self.root_key.public,
            self.interval.as_millis()
        ));
        for (section, url) in [("uplink", uplink), ("local", local)] {
            if let Some(url) = url {
                toml.push_str(&format!(
                    "\n[{section}]\nurl = \"{url}\"\nping_interval = \"1s\"\nreconnect_max_delay = \"1s\"\n"
                ));
            }
        }
        toml.push('\n');
        toml.push_str(extra);
        toml
    }

    /// Starts one agent (`ROOT`, `HUB` or `MEMBER`) with `extra` config appended.
    pub fn spawn(&self, node: &str, extra: &str) -> AgentProcess {
        AgentProcess::spawn(node, &self.config(node, extra), self.path())
    }

    /// [`Self::spawn`] as `launch` says (another binary, an emulator, extra environment).
    pub fn spawn_with(&self, node: &str, extra: &str, launch: &Launch) -> AgentProcess {
        AgentProcess::spawn_with(launch, node, &self.config(node, extra), self.path())
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}
