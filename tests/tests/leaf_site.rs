//! A leaf-node site (docs/deploy-leaf-site.md): the member's box runs its own nats-server, a
//! leaf node of the hub's (JetStream domains `edge-msk-01` and `hub-msk`), and the member
//! agent's uplink is the box's server with `[uplink] jetstream_domain = "hub-msk"`.
//!
//! Real processes on real servers: root and hub agents (the hub's server durable, in domain
//! `hub-msk`, accepting the box's leaf user with permissions that match what the member may
//! send up), the member agent and a local app on the box. The leaf link runs through a proxy
//! that the first test freezes for 20 s mid-stream; the second checks, with raw clients on
//! both servers, that the leaf user's permissions let through what the member may send and
//! receive and nothing else; the third runs the whole shipped topology (the hub's server a
//! leaf node of the root's as well); the last checks the shipped configs. The direct
//! topology is what every other e2e test runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::{FutureExt as _, StreamExt as _};
use nexus_e2e::fleet;
use nexus_e2e::landing::wait_landed;
use nexus_e2e::leaf::{
    box_leaf_permissions, hub_leaf_permissions, leaf_inbox_prefix, numbered_report, paced_app,
    LeafSite, HUB_DOMAIN,
};
use nexus_e2e::{agent_bin, wait_until};

/// Setup steps (agents up, streams ready, the first heartbeat landed).
const SETUP: Duration = Duration::from_secs(30);
/// How long the leaf link is cut: the scenario, not a synchronisation.
const CUT: Duration = Duration::from_secs(20);
/// How long everything may take to land once the app is done.
const SETTLE: Duration = Duration::from_secs(40);
/// The local app's requests: one per [`PACE`], so that they span the cut.
const EVENTS: usize = 1_000;
const PACE: Duration = Duration::from_millis(25);
/// The member's subject bridge.
const BRIDGE: &str = "[bridge]\n[[bridge.up]]\nlocal = \"app.orders.*\"\nevent = \"orders.*\"\n";
/// Where the app's events land.
const ORDERS: &str = "nexus.salon-001.orders.placed";

/// The last `n` lines of an agent's log, without its heartbeat chatter.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("Heartbeat queued."))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Member agent → the box's leaf server → the hub's server (domain `hub-msk`) → hub agent →
/// root, with the leaf link frozen for 20 s while a local app sends: the app is answered
/// throughout (the outbox takes its events), and every event lands at the root once.
/// Commands come down and their replies go back up through the leaf as well, and the
/// agents' traffic needs nothing beyond the leaf user's permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_link_cut_for_20_s_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let site = LeafSite::start().await;
    let fleet = &site.fleet;
    let root = fleet.spawn(fleet::ROOT, "");
    let hub = site.spawn_hub("");
    let member = site.spawn_member(BRIDGE);
    let root_js = jetstream::new(fleet.root_nats.client().await);
    let health = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    let first = wait_landed(&root_js, &health, 1, SETUP).await;
    assert!(
        first >= 1,
        "no heartbeat of the member landed through the leaf\nmember log tail:\n{}\nhub log \
         tail:\n{}\nhub server log tail:\n{}",
        tail(&member.log(), 30),
        tail(&hub.log(), 20),
        fleet.hub_nats.log_tail(20)
    );
    wait_until("the member's bridge is subscribed", SETUP, async || {
        member.log().contains("Subject bridge (up) subscribed.")
    })
    .await;

    let answered = Arc::new(AtomicUsize::new(0));
    let app = tokio::spawn(paced_app(
        fleet.member_nats.client().await,
        "app.orders.placed",
        EVENTS,
        16,
        PACE,
        Arc::clone(&answered),
    ));
    let count = || answered.load(Ordering::SeqCst);
    wait_until("a sixth of the events is answered", SETUP, async || {
        count() >= EVENTS / 6
    })
    .await;
    let landed_at_cut = numbered_report(&root_js, ORDERS, EVENTS).await.0.landed;
    site.leaf_link.freeze(true);
    let at_cut = count();
    // The cut itself is the scenario (not a synchronisation).
    tokio::time::sleep(CUT).await;
    let during_cut = count() - at_cut;
    site.leaf_link.freeze(false);
    let landed_before_thaw = numbered_report(&root_js, ORDERS, EVENTS).await.0.landed;
    site.wait_leaf_up(SETUP).await;
    let back_after = started.elapsed();

    tokio::time::timeout(SETTLE, app)
        .await
        .expect("the app is done")
        .expect("the app does not panic")
        .unwrap_or_else(|e| {
            panic!(
                "the app: {e}\nmember log tail:\n{}",
                tail(&member.log(), 30)
            )
        });
    let report = wait_until("every app event lands at the root", SETTLE, async || {
        let (report, first_lost) = numbered_report(&root_js, ORDERS, EVENTS).await;
        if report.landed == EVENTS {
            Ok(report)
        } else {
            Err(format!("{report:?}, first lost {first_lost:?}"))
        }
    })
    .await;
    eprintln!(
        "leaf cut: {report:?}; {at_cut} answered at the cut ({landed_at_cut} landed), \
         {during_cut} answered during the {CUT:?} cut ({landed_before_thaw} landed by its \
         end), the leaf back after {back_after:?}, all landed after {:?}",
        started.elapsed()
    );
    assert!(
        report.is_exact() && report.duplicates_in_stream == 0,
        "0 lost, 0 duplicates: {report:?}"
    );
    assert!(
        during_cut > 0,
        "the local app is answered while the leaf link is cut"
    );
    assert!(
        landed_before_thaw < EVENTS,
        "the cut stopped the flow ({landed_before_thaw} landed before the thaw)"
    );

    // A command from the root reaches the member through the leaf, and its reply comes back.
    let out = tokio::process::Command::new(agent_bin())
        .args(["request", fleet::MEMBER, "agent.ping", "--json"])
        .arg("-c")
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent request runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("agent.ping.result"),
        "agent.ping through the leaf: {stdout}{}\nmember log tail:\n{}\nhub server's \
         refusals: {:#?}",
        String::from_utf8_lossy(&out.stderr),
        tail(&member.log(), 20),
        site.hub_violations()
    );
    let violations = site.hub_violations();
    assert!(
        violations.is_empty(),
        "the agents' traffic needs nothing beyond the leaf user's permissions: {violations:#?}"
    );
    assert!(
        root.is_running() && hub.is_running() && member.is_running(),
        "every agent survives"
    );
}

/// A local app on the box reaches the hub only through the leaf user's permissions, which
/// match what the member may send up: an ingress subject its token grants crosses, another
/// tenant's, another node's commands and any other hub subject do not; the hub's JetStream
/// answers the requests the member's uplink makes and refuses the others (a stream delete);
/// the box receives its own commands and inboxes, not another node's nor every inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_apps_on_the_box_reach_the_hub_only_through_the_leaf_permissions() {
    let site = LeafSite::start().await;
    let fleet = &site.fleet;
    let hub = fleet.hub_nats.client().await;
    let on_box = fleet.member_nats.client().await;

    // Up: the subjects the app tries, denied first; the allowed one last marks the round.
    let denied_up = [
        "_nexus.ingress.nexus.salon-002.orders.placed",
        "_nexus.ingress.nexus._core.edge.health.edge-msk-02",
        "_nexus.cmd.edge-msk-02.agent.ping",
        "hub.private.settings",
    ];
    let allowed_up = "_nexus.ingress.nexus.salon-001.orders.placed";
    let mut denied_subs = Vec::new();
    for subject in denied_up {
        denied_subs.push(hub.subscribe(subject).await.expect("subscribe"));
    }
    let mut allowed_sub = hub.subscribe(allowed_up).await.expect("subscribe");
    hub.flush().await.expect("flush");
    wait_until(
        "an allowed subject crosses the leaf up",
        SETUP,
        async || {
            for subject in denied_up {
                on_box
                    .publish(subject, "from a local app".into())
                    .await
                    .expect("publish");
            }
            on_box
                .publish(allowed_up, "from a local app".into())
                .await
                .expect("publish");
            on_box.flush().await.expect("flush");
            tokio::time::timeout(Duration::from_millis(200), allowed_sub.next())
                .await
                .ok()
                .flatten()
                .is_some()
        },
    )
    .await;
    // One connection each way, in order: what was published before the allowed message and
    // let through would be here by now.
    for (subject, sub) in denied_up.iter().zip(&mut denied_subs) {
        assert!(
            sub.next().now_or_never().is_none(),
            "{subject} from the box must not reach the hub"
        );
    }

    // The hub's JetStream, as the member's uplink sees it through the leaf (its domain).
    let hub_js = jetstream::new(hub.clone());
    hub_js
        .create_key_value(jetstream::kv::Config {
            bucket: "NEXUS_CHAINS".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the chain registry on the hub");
    hub_js
        .create_stream(jetstream::stream::Config {
            name: "NEXUS_INGRESS".to_owned(),
            subjects: vec!["_nexus.ingress.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("an ingress stream on the hub");
    let box_hub_js = {
        let client = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(leaf_inbox_prefix(fleet::MEMBER))
            .connect(fleet.member_nats.url())
            .await
            .expect("connect to the box");
        let mut js = jetstream::with_domain(client, HUB_DOMAIN);
        js.set_timeout(Duration::from_secs(2));
        js
    };
    let chains = box_hub_js
        .get_key_value("NEXUS_CHAINS")
        .await
        .expect("the hub's chain registry, through the leaf in domain hub");
    chains
        .put("probe", "chain".into())
        .await
        .expect("a chain presented through the leaf");
    let ack = box_hub_js
        .publish(
            "_nexus.ingress.nexus.salon-001.orders.placed",
            "event".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("a PubAck from the hub's ingress through the leaf");
    assert_eq!(ack.stream, "NEXUS_INGRESS");
    assert!(
        box_hub_js.delete_stream("NEXUS_INGRESS").await.is_err(),
        "a stream delete from the box is refused"
    );
    hub_js
        .get_stream("NEXUS_INGRESS")
        .await
        .expect("the hub's ingress stream is still there");

    // Down: another node's commands and every inbox are not delivered to the box; its own
    // commands are.
    let denied_down = [
        "_nexus.cmd.edge-msk-02.agent.ping",
        "_INBOX.someone-else.reply",
    ];
    let mut wide_inbox = on_box.subscribe("_INBOX.>").await.expect("subscribe");
    let mut other_commands = on_box
        .subscribe("_nexus.cmd.edge-msk-02.>")
        .await
        .expect("subscribe");
    let own = format!("_nexus.cmd.{}.agent.ping", fleet::MEMBER);
    let mut own_commands = on_box.subscribe(own.clone()).await.expect("subscribe");
    on_box.flush().await.expect("flush");
    wait_until(
        "the member's own command crosses the leaf down",
        SETUP,
        async || {
            for subject in denied_down {
                hub.publish(subject, "from the hub".into())
                    .await
                    .expect("publish");
            }
            hub.publish(own.clone(), "from the hub".into())
                .await
                .expect("publish");
            hub.flush().await.expect("flush");
            tokio::time::timeout(Duration::from_millis(200), own_commands.next())
                .await
                .ok()
                .flatten()
                .is_some()
        },
    )
    .await;
    assert!(
        other_commands.next().now_or_never().is_none(),
        "another node's commands must not reach the box"
    );
    // The box's own JetStream traffic above used its own inboxes; nothing of the hub's.
    while let Some(Some(message)) = wide_inbox.next().now_or_never() {
        assert!(
            message
                .subject
                .starts_with(&format!("{}.", leaf_inbox_prefix(fleet::MEMBER))),
            "{} from the hub must not reach the box",
            message.subject
        );
    }
}

/// The shipped leaf-site configs parse (`nats-server -t`), fsync before acking, keep each
/// tier in a JetStream domain of its own, and the hub's leaf user for the example box holds
/// exactly the permissions the tests run with.
#[test]
fn the_shipped_leaf_site_configs_are_valid_and_match_the_tested_permissions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nats/leaf-site");
    let mut domains = std::collections::BTreeSet::new();
    for name in ["box.conf", "hub.conf", "root.conf"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("shipped config");
        assert!(
            text.lines().any(|l| l.trim() == "sync_interval: always"),
            "{name} must set `jetstream {{ sync_interval: always }}`"
        );
        let domain = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("domain:"))
            .unwrap_or_else(|| panic!("{name} has a JetStream domain"));
        domains.insert(domain.trim().trim_matches('"').to_owned());
        let out = std::process::Command::new(nexus_e2e::nats_server_bin())
            .arg("-c")
            .arg(&path)
            .arg("-t")
            .output()
            .expect("nats-server runs");
        assert!(
            out.status.success(),
            "nats-server -t {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(domains.len(), 3, "a domain per tier: {domains:?}");
    for (name, tested) in [
        ("hub.conf", box_leaf_permissions()),
        ("root.conf", hub_leaf_permissions()),
    ] {
        let text = std::fs::read_to_string(dir.join(name)).expect("shipped config");
        for subject in tested.split('"').skip(1).step_by(2) {
            assert!(
                text.contains(&format!("\"{subject}\"")),
                "the shipped {name} lets the leaf user use {subject}, as the tests do"
            );
        }
    }
}

/// The whole shipped topology (`config/nats/leaf-site/`): the box's server a leaf node of
/// the hub's, the hub's a leaf node of the root's (domain `root`), the hub agent's uplink
/// on its own server in account UPLINK, apart from its site. A local app's events land once
/// each, a command from the root reaches the member through both leaf links, and the hub's
/// ingress holds its members' traffic but none of what the hub forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_whose_server_is_a_leaf_node_of_the_roots_forwards_through_its_own_account() {
    const N: usize = 200;
    let started = Instant::now();
    let site = LeafSite::start_with_hub_leaf().await;
    let fleet = &site.fleet;
    let root = fleet.spawn(fleet::ROOT, "");
    let hub = site.spawn_hub("");
    let member = site.spawn_member(BRIDGE);
    let root_js = jetstream::new(fleet.root_nats.client().await);
    for node in [fleet::HUB, fleet::MEMBER] {
        let health = format!("nexus._core.edge.health.{node}");
        let first = wait_landed(&root_js, &health, 1, SETUP).await;
        assert!(
            first >= 1,
            "no heartbeat of {node} landed through the leaf links (hub {:?})\nhub log tail:\n{}\n\
             member log tail:\n{}\nhub server log tail:\n{}\nroot server log tail:\n{}",
            hub.exit_status(),
            tail(&hub.log(), 20),
            tail(&member.log(), 20),
            fleet.hub_nats.log_tail(15),
            fleet.root_nats.log_tail(15)
        );
    }
    wait_until("the member's bridge is subscribed", SETUP, async || {
        member.log().contains("Subject bridge (up) subscribed.")
    })
    .await;
    let answered = Arc::new(AtomicUsize::new(0));
    tokio::time::timeout(
        SETTLE,
        paced_app(
            fleet.member_nats.client().await,
            "app.orders.placed",
            N,
            16,
            Duration::from_millis(5),
            Arc::clone(&answered),
        ),
    )
    .await
    .expect("the app is done")
    .unwrap_or_else(|e| panic!("the app: {e}"));
    let report = wait_until("every app event lands at the root", SETTLE, async || {
        let (report, first_lost) = numbered_report(&root_js, ORDERS, N).await;
        if report.landed == N {
            Ok(report)
        } else {
            Err(format!("{report:?}, first lost {first_lost:?}"))
        }
    })
    .await;
    eprintln!(
        "hub leaf: {report:?}, all landed after {:?}",
        started.elapsed()
    );
    assert!(
        report.is_exact() && report.duplicates_in_stream == 0,
        "0 lost, 0 duplicates: {report:?}"
    );

    let out = tokio::process::Command::new(agent_bin())
        .args(["request", fleet::MEMBER, "agent.ping", "--json"])
        .arg("-c")
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent request runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("agent.ping.result"),
        "agent.ping through both leaf links: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The hub's ingress (account SITE) has its member's heartbeats, and none of the hub's
    // own, which its uplink (account UPLINK) sends to the root only.
    let hub_js = jetstream::new(fleet.hub_nats.client().await);
    let count = async |subject: String| {
        let stream = hub_js
            .get_stream("NEXUS_INGRESS")
            .await
            .expect("hub ingress");
        let subjects = stream.info_with_subjects(subject).await.expect("subjects");
        subjects
            .filter_map(|s| async move { s.ok() })
            .fold(0, |sum, (_, n)| async move { sum + n })
            .await
    };
    let members = count(format!("_nexus.ingress.{}", health_subject(fleet::MEMBER))).await;
    let own = count(format!("_nexus.ingress.{}", health_subject(fleet::HUB))).await;
    assert!(
        members > 0 && own == 0,
        "hub ingress: {members} member heartbeats, {own} of its own"
    );
    let violations: Vec<String> = site
        .hub_violations()
        .into_iter()
        .chain(site.root_violations())
        .collect();
    assert!(
        violations.is_empty(),
        "the agents' traffic needs nothing beyond the leaf users' permissions: {violations:#?}"
    );
    assert!(
        root.is_running() && hub.is_running() && member.is_running(),
        "every agent survives"
    );
}

fn health_subject(node: &str) -> String {
    format!("nexus._core.edge.health.{node}")
}
