//! A leaf-node site (docs/deploy-leaf-site.md): the member's box runs its own nats-server
//! (JetStream domain [`BOX_DOMAIN`]), a leaf node of the hub's (domain [`HUB_DOMAIN`], the
//! hub's node id, as in `config/nats/leaf-site/`), connected through a [`Proxy`] so that a
//! test can cut the leaf link; the member agent's uplink is the box's server with
//! `jetstream_domain = "hub-msk"`. Optionally the hub's server is a leaf node of the root's
//! as well ([`LeafSite::start_with_hub_leaf`]).
//!
//! The hub accepts the box's leaf connection as a user of its account SITE whose
//! permissions match what the member may send up ([`leaf_permissions`], the recipe of the
//! deploy doc): its ingress subjects, the JetStream API it uses in the hub's domain, replies,
//! its own inboxes and commands.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use tokio::time::Instant;

use crate::fleet::{self, Fleet};
use crate::landing::{landed_count, Report, LANDING};
use crate::{AgentProcess, NatsServer, Proxy};

/// The hub's JetStream domain.
pub const HUB_DOMAIN: &str = "hub-msk";
/// The box's own JetStream domain (its local apps' streams stay there).
pub const BOX_DOMAIN: &str = "edge-msk-01";
/// The leaf user the box's server logs in as at the hub (one per box).
pub const LEAF_USER: &str = "leaf-edge-msk-01";
/// Its password (a test secret).
pub const LEAF_PASSWORD: &str = "leaf-test-password";
/// The prefix of the member's uplink inboxes through the leaf (the agent's
/// `LinkConfig::leaf_inbox_prefix`): what its leaf user may receive beside its commands.
pub fn leaf_inbox_prefix(node: &str) -> String {
    format!("_INBOX.{node}")
}

/// Servers notice a dead leaf link after about three of these (the shipped configs use 20 s).
const PING: &str = "ping_interval: \"1s\"\nping_max: 2";

/// The nats-server `permissions { }` block of a node's leaf user at its parent's server
/// (a box's at the hub, a hub's at the root): what `node` may send up (the event patterns of
/// `grants`, its token's publish patterns, each under `_nexus.ingress.`), the JetStream API
/// of the parent's domain `domain` it uses (the chain registry `NEXUS_CHAINS`, the
/// revocation bucket `NEXUS_TRUST`), and replies to the commands it receives (`_INBOX.>`: a
/// server announces interest in its inboxes only to a leaf that may publish there, so
/// `allow_responses` cannot do it); it receives its own inboxes and the commands on
/// `commands` (a member: `_nexus.cmd.{node}.>`; a hub, which routes its members': theirs too).
pub fn leaf_permissions(node: &str, grants: &[&str], domain: &str, commands: &str) -> String {
    let api = format!("$JS.{domain}.API");
    let mut publish: Vec<String> = grants
        .iter()
        .filter(|g| g.starts_with("nexus."))
        .map(|g| format!("_nexus.ingress.{g}"))
        .collect();
    publish.extend([
        format!("{api}.STREAM.INFO.KV_NEXUS_CHAINS"),
        format!("{api}.STREAM.INFO.KV_NEXUS_TRUST"),
        format!("{api}.$KV.NEXUS_CHAINS.>"),
        format!("{api}.DIRECT.GET.KV_NEXUS_TRUST.>"),
        format!("{api}.CONSUMER.CREATE.KV_NEXUS_TRUST.>"),
        format!("{api}.CONSUMER.DELETE.KV_NEXUS_TRUST.>"),
        format!("{api}.CONSUMER.INFO.KV_NEXUS_TRUST.>"),
        "$JS.FC.KV_NEXUS_TRUST.>".to_owned(),
        "_INBOX.>".to_owned(),
    ]);
    let subscribe = [
        format!("{}.>", leaf_inbox_prefix(node)),
        commands.to_owned(),
    ];
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "permissions: {{\n  publish: {{ allow: [{}] }}\n  subscribe: {{ allow: [{}] }}\n}}",
        list(&publish),
        list(&subscribe)
    )
}

/// The box's leaf permissions at the hub: the member's grants, its own commands.
pub fn box_leaf_permissions() -> String {
    leaf_permissions(
        fleet::MEMBER,
        fleet::MEMBER_PUBLISH,
        HUB_DOMAIN,
        &format!("_nexus.cmd.{}.>", fleet::MEMBER),
    )
}

/// The hub's leaf permissions at the root: the hub's grants, every command (it routes its
/// members' as well; its token grants `_nexus.cmd.>`).
pub fn hub_leaf_permissions() -> String {
    leaf_permissions(fleet::HUB, fleet::HUB_PUBLISH, ROOT_DOMAIN, "_nexus.cmd.>")
}

/// The root's JetStream domain (when hubs' servers are leaf nodes of it).
pub const ROOT_DOMAIN: &str = "root";
/// The hub server's user (account UPLINK) for the hub agent's uplink through its leaf.
const HUB_UPLINK_USER: &str = "hub-uplink";

/// A fleet whose member's box server is a leaf node of the hub's, through a proxy.
#[derive(Debug)]
pub struct LeafSite {
    /// Root, hub and the box's servers (`member_nats` is the box's), keys and tokens.
    pub fleet: Fleet,
    /// Between the box's leaf remote and the hub's leafnode port.
    pub leaf_link: Proxy,
    /// Whether the hub's server is a leaf node of the root's as well.
    hub_is_leaf: bool,
}

impl LeafSite {
    /// The servers: the root's and the hub's durable (`sync_interval: always`), the hub's in
    /// domain `hub-msk` accepting the box's leaf user, the box's in its own domain with a leaf
    /// remote to the hub through the proxy. Returns once the leaf link is up.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// [`Self::start`] with the hub's server a leaf node of the root's as well (as
    /// `config/nats/leaf-site/`): the root's server in domain `root` accepts the hub's leaf
    /// user, the hub's server binds that leaf connection to an account of its own (UPLINK,
    /// where the hub agent's uplink logs in), apart from its site (SITE: the boxes, the hub
    /// agent's `[local]`, its ingress).
    pub async fn start_with_hub_leaf() -> Self {
        Self::launch(true).await
    }

    async fn launch(hub_is_leaf: bool) -> Self {
        let root_nats = if hub_is_leaf {
            // Clients without credentials (the root agent, the test) are `root-local`.
            NatsServer::builder()
                .sync_always()
                .server_name("root")
                .jetstream_domain(ROOT_DOMAIN)
                .leafnode_listen("  no_advertise: true")
                .extra(&format!(
                    "authorization {{\n  users = [\n    \
                     {{ user: root-local, password: root-local-password }}\n    \
                     {{ user: {}, password: hub-leaf-password, {} }}\n  ]\n}}\n\
                     no_auth_user: root-local",
                    fleet::HUB,
                    hub_leaf_permissions()
                ))
                .start()
        } else {
            NatsServer::builder().sync_always().start()
        };
        // Leaf users have no permissions of their own in `leafnodes { authorization }`: the
        // box logs in as a user of the hub's account, whose permissions apply to its leaf
        // connection. Clients without credentials (the hub agent, the test) are `hub-local`.
        let uplink_account = if hub_is_leaf {
            format!(
                "  UPLINK: {{\n    users: [\n      \
                 {{ user: {HUB_UPLINK_USER}, password: hub-uplink-password }}\n    ]\n  }}\n"
            )
        } else {
            String::new()
        };
        let accounts = format!(
            "accounts {{\n  SITE: {{\n    jetstream: enabled\n    users: [\n      \
             {{ user: hub-local, password: hub-local-password }}\n      \
             {{ user: {LEAF_USER}, password: {LEAF_PASSWORD}, {} }}\n    ]\n  }}\n\
             {uplink_account}}}\nno_auth_user: hub-local",
            box_leaf_permissions()
        );
        let mut hub_nats = NatsServer::builder();
        if hub_is_leaf {
            hub_nats = hub_nats.leaf_remote(&format!(
                "    {{ url: \"nats-leaf://{}:hub-leaf-password@127.0.0.1:{}\", account: UPLINK }}",
                fleet::HUB,
                root_nats.leafnode_port()
            ));
        }
        let hub_nats = hub_nats
            .sync_always()
            .server_name("hub")
            .jetstream_domain(HUB_DOMAIN)
            // Boxes reconnect to the leafnode URLs the hub advertises, not only to their
            // remote's: without this the box would go round the proxy after the first cut.
            .leafnode_listen("  no_advertise: true")
            .extra(&accounts)
            .extra(PING)
            .start();
        let leaf_link = Proxy::start(hub_nats.leafnode_port()).await;
        let box_nats = NatsServer::builder()
            .server_name("box")
            .jetstream_domain(BOX_DOMAIN)
            .leaf_remote(&format!(
                "    {{ url: \"nats-leaf://{LEAF_USER}:{LEAF_PASSWORD}@127.0.0.1:{}\" }}",
                leaf_link.port()
            ))
            .extra(PING)
            .start();
        let site = Self {
            fleet: Fleet::with_servers(root_nats, hub_nats, box_nats),
            leaf_link,
            hub_is_leaf,
        };
        site.wait_leaf_up(Duration::from_secs(20)).await;
        site
    }

    /// The hub's config: the fleet's; with the hub's server a leaf node of the root's, the
    /// uplink on the hub's own server (account UPLINK) with the root's JetStream domain.
    pub fn hub_config(&self, extra: &str) -> String {
        let config = self.fleet.config(fleet::HUB, extra);
        if !self.hub_is_leaf {
            return config;
        }
        let direct = format!("[uplink]\nurl = \"{}\"\n", self.fleet.root_nats.url());
        assert!(config.contains(&direct), "the fleet's hub config changed");
        config.replace(
            &direct,
            &format!(
                "[uplink]\nurl = \"nats://{HUB_UPLINK_USER}:hub-uplink-password@127.0.0.1:{}\"\n\
                 jetstream_domain = \"{ROOT_DOMAIN}\"\n",
                self.fleet.hub_nats.port()
            ),
        )
    }

    /// Starts the hub agent.
    pub fn spawn_hub(&self, extra: &str) -> AgentProcess {
        AgentProcess::spawn(fleet::HUB, &self.hub_config(extra), self.fleet.path())
    }

    /// The root's server log lines reporting a permissions violation.
    pub fn root_violations(&self) -> Vec<String> {
        violations(self.fleet.root_nats.log_path())
    }

    /// The member's config: the fleet's, with the uplink on the box's own server and the
    /// hub's JetStream domain; `extra` appended.
    pub fn member_config(&self, extra: &str) -> String {
        let direct = format!("[uplink]\nurl = \"{}\"\n", self.fleet.hub_nats.url());
        let config = self.fleet.config(fleet::MEMBER, extra);
        assert!(
            config.contains(&direct),
            "the fleet's member config changed"
        );
        config.replace(
            &direct,
            &format!(
                "[uplink]\nurl = \"{}\"\njetstream_domain = \"{HUB_DOMAIN}\"\n",
                self.fleet.member_nats.url()
            ),
        )
    }

    /// Starts the member agent on the leaf site.
    pub fn spawn_member(&self, extra: &str) -> AgentProcess {
        AgentProcess::spawn(fleet::MEMBER, &self.member_config(extra), self.fleet.path())
    }

    /// Waits (bounded) until a message from the hub reaches a subscriber on the box through
    /// the leaf link (on the member's own inbox prefix, which the leaf user may receive).
    pub async fn wait_leaf_up(&self, deadline: Duration) {
        let hub = self.fleet.hub_nats.client().await;
        let on_box = self.fleet.member_nats.client().await;
        let subject = format!("{}.leaf-probe", leaf_inbox_prefix(fleet::MEMBER));
        let mut probe = on_box.subscribe(subject.clone()).await.expect("subscribe");
        on_box.flush().await.expect("flush");
        let end = Instant::now() + deadline;
        loop {
            hub.publish(subject.clone(), "probe".into())
                .await
                .expect("publish");
            hub.flush().await.expect("flush");
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), probe.next()).await
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "the box's leaf link to the hub is not up within {deadline:?}\nbox log tail:\n{}\nhub log tail:\n{}",
                self.fleet.member_nats.log_tail(20),
                self.fleet.hub_nats.log_tail(20)
            );
        }
    }

    /// The hub's server log lines reporting a permissions violation.
    pub fn hub_violations(&self) -> Vec<String> {
        violations(self.fleet.hub_nats.log_path())
    }
}

/// The lines of a server log reporting a permissions violation.
fn violations(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Permissions Violation"))
        .map(str::to_owned)
        .collect()
}

/// A local app on the box: requests `{subject}` with `{"n": i}` for i in 0..`n`, in order
/// on one connection, at most `window` in flight and one per `pace`; every request must be
/// answered `ok` (the member stores it in its outbox first). `answered` counts them.
pub async fn paced_app(
    client: async_nats::Client,
    subject: &str,
    n: usize,
    window: usize,
    pace: Duration,
    answered: Arc<AtomicUsize>,
) -> Result<(), String> {
    const STALL: Duration = Duration::from_secs(30);
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let mut ticks = tokio::time::interval(pace);
    let (mut next, mut in_flight) = (0usize, 0usize);
    let mut progress = Instant::now();
    while answered.load(Ordering::SeqCst) < n {
        tokio::select! {
            _ = ticks.tick(), if next < n && in_flight < window => {
                client
                    .publish_with_reply(
                        subject.to_owned(),
                        format!("{inbox}.{next}"),
                        format!(r#"{{"n": {next}}}"#).into(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                next += 1;
                in_flight += 1;
            }
            reply = tokio::time::timeout_at(progress + STALL, replies.next()) => {
                let reply = reply
                    .map_err(|_| format!("no answer for {STALL:?} with {in_flight} in flight"))?
                    .ok_or("the reply subscription ended")?;
                let body: serde_json::Value = serde_json::from_slice(&reply.payload)
                    .map_err(|e| format!("an answer that is not JSON: {e}"))?;
                if body["ok"] != true {
                    return Err(format!("request {} refused: {body}", reply.subject));
                }
                in_flight -= 1;
                progress = Instant::now();
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

/// What landed of an app's `n` numbered requests on `subject` in the root's journal: each
/// counter `0..n` should be there as one event, each event once.
pub async fn numbered_report(
    root_js: &jetstream::Context,
    subject: &str,
    n: usize,
) -> (Report, Vec<u64>) {
    let mut copies: HashMap<String, u32> = HashMap::new();
    let mut counters: HashMap<u64, BTreeSet<String>> = HashMap::new();
    if landed_count(root_js, subject).await > 0 {
        let stream = root_js.get_stream(LANDING).await.expect("landing");
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("the journal answers within 10 s")
                .expect("the consumer does not end")
                .expect("a message");
            let body: serde_json::Value =
                serde_json::from_slice(&next.payload).expect("a JSON envelope");
            let id = body["event_id"].as_str().expect("event_id").to_owned();
            let counter = body["payload"]["n"].as_u64().expect("a numbered payload");
            *copies.entry(id.clone()).or_insert(0) += 1;
            counters.entry(counter).or_default().insert(id);
            if next.info().expect("JetStream info").pending == 0 {
                break;
            }
        }
    }
    let lost: Vec<u64> = (0..n as u64)
        .filter(|c| !counters.contains_key(c))
        .collect();
    let events = copies.len();
    let report = Report {
        sent: n,
        landed: n - lost.len(),
        lost: lost.len(),
        duplicates_in_stream: copies.values().map(|c| *c as usize).sum::<usize>() - events,
        // One request stored twice would be two events for one counter: a copy that no
        // dedup by event_id removes.
        duplicates_after_dedup: counters.values().map(|ids| ids.len() - 1).sum(),
    };
    (report, lost.into_iter().take(10).collect())
}
