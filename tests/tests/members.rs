//! End to end: fifty simulated members (`nexus_e2e::bench::members`), each with its own key
//! and a chain issued by the hub, against a real hub and root: all counted online at the
//! root, a stopped one reported offline within `offline_after` (plus the interval its
//! census waits for), and one back with a rotated key admitted as the same child.

use std::time::Duration;

use futures::StreamExt as _;
use nexus_e2e::bench::events::read_key;
use nexus_e2e::bench::members::{Censuses, Swarm};
use nexus_e2e::{fleet, wait_until, Fleet};
use tokio::time::Instant;

const MEMBERS: usize = 50;
const INTERVAL: Duration = Duration::from_secs(1);
/// The default: three intervals.
const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn fifty_members_are_tracked_a_stopped_one_goes_offline_and_a_rotated_key_is_admitted() {
    let mut fleet = Fleet::new();
    fleet.interval = INTERVAL;
    let root_client = fleet.root_nats.client().await;
    let censuses = Censuses::watch(&root_client, &[fleet::ROOT, fleet::HUB]).await;
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let mut swarm = Swarm::connect(
        &fleet.hub_nats.url(),
        read_key(&fleet.hub_key.secret),
        &fleet.token_path(fleet::HUB),
        INTERVAL,
        2,
        STARTUP,
    )
    .await;
    let members = (0..MEMBERS)
        .map(|i| swarm.issue(&format!("m{i:02}")))
        .collect();
    swarm.start(members).await;

    let n = MEMBERS as u64;
    wait_until(
        "the root counts the hub and every member online",
        STARTUP,
        async || censuses.counts(fleet::ROOT, n + 1, 0) && censuses.counts(fleet::HUB, n, 0),
    )
    .await;

    // One member stops: both tiers report it offline once it has been silent for
    // `offline_after`, in their next heartbeat.
    let last = swarm.stop(0).expect("member 0 heartbeated");
    let seen = wait_until(
        "the root and the hub count the stopped member offline",
        Duration::from_secs(20),
        async || {
            let root = censuses.latest(fleet::ROOT).filter(|c| c.offline == 1)?;
            let hub = censuses.latest(fleet::HUB).filter(|c| c.offline == 1)?;
            Some(root.at.max(hub.at))
        },
    )
    .await;
    let after = seen.duration_since(last);
    // The census goes out with the next heartbeat (one interval), and a heartbeat takes a
    // moment from the hub to the root; a debug agent on a loaded box gets a second more.
    let bound = OFFLINE_AFTER + INTERVAL + Duration::from_secs(2);
    assert!(
        after >= OFFLINE_AFTER && after <= bound,
        "reported offline {after:?} after its last heartbeat; expected {OFFLINE_AFTER:?}..={bound:?}"
    );
    assert!(censuses.counts(fleet::ROOT, n, 1), "the others stay online");

    // Member 1 comes back with a rotated key: its new chain is presented, its heartbeats
    // (signed with the new key) reach the root, and it is the same child.
    let mut heartbeats = root_client
        .subscribe("nexus._core.edge.health.m01")
        .await
        .expect("subscribe");
    root_client.flush().await.expect("flush");
    let rotated = swarm.issue("m01"); // the same node id, a new key and chain
    let new_key = read_signer(rotated.chain()).to_string();
    let since = Instant::now();
    swarm.restart(1, rotated).await;
    let deadline = Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout(deadline.saturating_sub(since.elapsed()), heartbeats.next())
            .await
            .expect("a heartbeat of the rotated member reaches the root")
            .expect("the subscription is open");
        let signer = msg.headers.as_ref().and_then(|h| h.get("Nexus-Signer"));
        if signer.map(|s| s.as_str()) == Some(new_key.as_str()) {
            break;
        }
    }
    wait_until(
        "the rotated member counts as the same child",
        Duration::from_secs(10),
        async || censuses.counts(fleet::ROOT, n, 1) && censuses.counts(fleet::HUB, n - 1, 1),
    )
    .await;
}

/// The key a chain was issued to (its leaf's `node_key`).
fn read_signer(chain: &bytes::Bytes) -> nexus_policies::PublicKey {
    nexus_policies::token::Chain::decode(chain)
        .expect("a chain")
        .leaf()
        .claims()
        .node_key
}

/// The hub's chain registry (its `NEXUS_CHAINS` bucket) keeps one entry per key ever
/// presented; one whose token expired more than a day ago (a member gone, or the old key of
/// one that rotated its key) is removed when the hub reviews the registry, a valid one kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_expired_long_ago_leaves_the_hub_registry_and_a_valid_one_stays() {
    use async_nats::jetstream::{self, kv};
    use nexus_e2e::bench::members::{fresh_key, issue_chain, issue_chain_valid};
    use nexus_federation::trust::{key_id, CHAINS_BUCKET};

    let fleet = Fleet::new();
    // The registry holds both before the hub starts, as after a restart: the hub's review
    // runs as its watch begins.
    let hub_js = jetstream::new(fleet.hub_nats.client().await);
    let registry = hub_js
        .create_key_value(kv::Config {
            bucket: CHAINS_BUCKET.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("the registry");
    let hub_key = read_key(&fleet.hub_key.secret);
    let hub_chain = nexus_policies::token::Chain::decode(
        &std::fs::read(fleet.token_path(fleet::HUB)).expect("the hub's chain"),
    )
    .expect("the hub's chain decodes");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (gone, live) = (fresh_key(), fresh_key());
    let day = 86_400;
    let expired = issue_chain_valid(
        "m-gone",
        &gone,
        &hub_key,
        &hub_chain,
        now - 3 * day,
        now - 2 * day,
    );
    let valid = issue_chain("m-live", &live, &hub_key, &hub_chain);
    registry
        .put(key_id(&gone.public()), expired)
        .await
        .expect("put");
    registry
        .put(key_id(&live.public()), valid)
        .await
        .expect("put");

    let _hub = fleet.spawn(fleet::HUB, "");
    wait_until(
        "the hub removes the chain expired long ago",
        STARTUP,
        async || matches!(registry.get(key_id(&gone.public())).await, Ok(None)),
    )
    .await;
    assert!(
        registry
            .get(key_id(&live.public()))
            .await
            .expect("get")
            .is_some(),
        "the valid chain stays"
    );
}
