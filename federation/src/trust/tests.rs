//! Tests of admission (who may command whom, payloads that name their origin), the own
//! chain, and the registry's fetches racing its watcher.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nexus_policies::token::{Chain, RevocationSet};
use nexus_policies::{Claims, Role, SecretKey, SubjectPattern, Token, TokenId, UnixTime};
use time::OffsetDateTime;

use super::*;
use crate::clock::TrustClock;
use crate::command::{self, Issuer};
use crate::envelope::Envelope;
use crate::provenance::SignedEvent;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("strong key")
}

#[allow(clippy::too_many_arguments)]
fn token(
    id: u8,
    issuer: &SecretKey,
    parent: Option<&Token>,
    node: &str,
    node_key: &SecretKey,
    tenant: Option<&str>,
    role: Role,
    publish: &[&str],
) -> Token {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        id: TokenId([id; 16]),
        parent: parent.map(Token::id),
        issuer_key: issuer.public(),
        node_id: node.into(),
        node_key: node_key.public(),
        tenant: tenant.map(Into::into),
        role,
        publish: publish
            .iter()
            .map(|p| SubjectPattern::parse(p).expect("pattern"))
            .collect(),
        receive: Vec::new(),
        not_before: UnixTime(now - 60),
        expires: UnixTime(now + 3600),
    };
    Token::issue(claims, issuer, parent).expect("issue")
}

/// A gatekeeper trusting `root`, with no ACL and no revocations.
fn gatekeeper(root: &SecretKey) -> Gatekeeper {
    Gatekeeper::new(
        vec![root.public()],
        Duration::from_secs(60),
        None,
        RevocationSet::default(),
        Arc::new(TrustClock::new(None)),
    )
}

/// `admit_command` for a command to `edge-01` signed by `signer` as `source`.
fn admit(
    gatekeeper: &Gatekeeper,
    signer: &SecretKey,
    source: &str,
    chain: Option<&Chain>,
    target_tenant: Option<Option<&str>>,
) -> Result<Admitted, &'static str> {
    let bytes = chain.map(Chain::encode);
    let issuer = Issuer {
        node_id: source,
        key: signer,
        chain: bytes.as_deref(),
    };
    let sealed = command::seal(
        &issuer,
        "edge-01",
        "agent.ping",
        serde_json::Map::new(),
        Duration::from_secs(5),
        OffsetDateTime::now_utc(),
    )
    .expect("seal");
    let opened = command::open(&sealed.subject, Some(&sealed.headers), sealed.body).expect("opens");
    gatekeeper
        .admit_command(
            &opened.event,
            &opened.envelope,
            opened.chain.as_ref(),
            &opened.subject,
            target_tenant,
        )
        .map_err(|r| r.reason.as_str())
}

#[test]
fn who_may_command_whom() {
    let (root, hub, member, plain_hub) = (key(1), key(2), key(3), key(4));
    let gatekeeper = gatekeeper(&root);
    let hub_token = token(
        1,
        &root,
        None,
        "hub-1",
        &hub,
        Some("t1"),
        Role::Hub,
        &["nexus.t1.>", "_nexus.cmd.>"],
    );
    let hub_chain = Chain::new(vec![hub_token.clone()]).expect("chain");
    let member_token = token(
        2,
        &hub,
        Some(&hub_token),
        "edge-01",
        &member,
        Some("t1"),
        Role::Member,
        &["_nexus.cmd.>"],
    );
    let member_chain = Chain::new(vec![member_token, hub_token]).expect("chain");
    let plain = token(
        3,
        &root,
        None,
        "hub-2",
        &plain_hub,
        Some("t1"),
        Role::Hub,
        &["nexus.t1.>"],
    );
    let plain_chain = Chain::new(vec![plain]).expect("chain");
    let t1 = Some(Some("t1"));

    assert!(matches!(
        admit(&gatekeeper, &root, "root", None, t1),
        Ok(Admitted::Anchor)
    ));
    assert!(matches!(
        admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), t1),
        Ok(Admitted::Node(_))
    ));
    // The routing hub does not know the target's tenant: not checked there.
    assert!(admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), None).is_ok());
    assert_eq!(
        admit(
            &gatekeeper,
            &hub,
            "hub-1",
            Some(&hub_chain),
            Some(Some("t2"))
        )
        .err(),
        Some("tenant_crossover")
    );
    assert_eq!(
        admit(&gatekeeper, &hub, "hub-1", Some(&hub_chain), Some(None)).err(),
        Some("tenant_crossover")
    );
    assert_eq!(
        admit(&gatekeeper, &plain_hub, "hub-2", Some(&plain_chain), t1).err(),
        Some("command_not_granted")
    );
    assert_eq!(
        admit(&gatekeeper, &member, "edge-01", Some(&member_chain), t1).err(),
        Some("command_not_allowed")
    );
    assert_eq!(
        admit(&gatekeeper, &hub, "root", Some(&hub_chain), t1).err(),
        Some("source_spoofing")
    );
    assert_eq!(
        admit(&gatekeeper, &key(9), "hub-9", None, t1).err(),
        Some("token_unknown")
    );
}

#[test]
fn the_agents_own_events_speak_only_for_their_signer() {
    let (root, hub, member) = (key(1), key(2), key(3));
    let gatekeeper = gatekeeper(&root);
    let hub_token = token(1, &root, None, "hub-1", &hub, None, Role::Hub, &["nexus.>"]);
    let chain = Chain::new(vec![
        token(
            2,
            &hub,
            Some(&hub_token),
            "edge-01",
            &member,
            None,
            Role::Member,
            &["nexus._core.>"],
        ),
        hub_token,
    ])
    .expect("chain");
    let check = |name: &str, payload: serde_json::Value| {
        let serde_json::Value::Object(payload) = payload else {
            panic!("an object")
        };
        let envelope = Envelope::new(name, "edge-01", None, payload, OffsetDateTime::now_utc());
        let event =
            SignedEvent::seal(&envelope, crate::envelope::Encoding::Json, &member).expect("seal");
        gatekeeper
            .check(&event, &envelope, Some(&chain))
            .map(|_| ())
            .map_err(|r| r.reason.as_str())
    };
    let me = serde_json::json!({"node_id": "edge-01", "mode": "member"});
    assert_eq!(check("edge.health", me.clone()), Ok(()));
    assert_eq!(check("agent.ping.result", me), Ok(()));
    // A field that is absent names no one.
    assert_eq!(
        check("edge.health", serde_json::json!({"status": "healthy"})),
        Ok(())
    );
    for (name, payload) in [
        (
            "edge.health",
            serde_json::json!({"node_id": "edge-02", "mode": "member"}),
        ),
        (
            "edge.health",
            serde_json::json!({"node_id": "edge-01", "mode": "hub"}),
        ),
        ("edge.health", serde_json::json!({"node_id": 7})),
        (
            "agent.health.result",
            serde_json::json!({"node_id": "hub-1"}),
        ),
        ("audit.rejected", serde_json::json!({"node_id": "root"})),
        (
            "audit.outbox_loss",
            serde_json::json!({"node_id": "edge-02"}),
        ),
        (
            "audit.cap_token_issued",
            serde_json::json!({"node_id": "edge-01", "issuer_key": hub.public().to_string()}),
        ),
    ] {
        assert_eq!(
            check(name, payload.clone()),
            Err("source_spoofing"),
            "{name} {payload}"
        );
    }
    // Fields about someone else on purpose: the refused message's signer, the holder of
    // a token this node issued.
    assert_eq!(
        check(
            "audit.rejected",
            serde_json::json!({"node_id": "edge-01", "signer": hub.public().to_string()})
        ),
        Ok(())
    );
    assert_eq!(
        check(
            "audit.cap_token_issued",
            serde_json::json!({"node_id": "edge-09", "issuer_key": member.public().to_string()})
        ),
        Ok(())
    );
}

#[test]
fn own_chain_knows_its_ancestors_and_fails_closed() {
    let (root, hub, member) = (key(1), key(2), key(3));
    let hub_token = token(1, &root, None, "hub-1", &hub, None, Role::Hub, &["nexus.>"]);
    let member_token = token(
        2,
        &hub,
        Some(&hub_token),
        "edge-01",
        &member,
        None,
        Role::Member,
        &["nexus.t1.>"],
    );
    let own = OwnChain::new(Some(
        Chain::new(vec![member_token, hub_token]).expect("chain"),
    ));
    assert!(own.has_ancestor(&hub.public()));
    assert!(own.has_ancestor(&root.public()));
    assert!(!own.has_ancestor(&key(4).public()));
    assert_eq!(own.parent_key(), Some(hub.public()));
    assert!(own.allows("nexus.t1.booking.created"));
    assert!(!own.allows("nexus.t2.booking.created"));
    assert_eq!(own.token_ids().len(), 2);
    let unreadable = OwnChain::new(None);
    assert!(!unreadable.allows("nexus.t1.x"));
    assert!(OwnChain::anchor().allows("nexus.t1.x"));
}

#[test]
fn a_fetch_overlapping_a_registry_change_never_leaves_an_old_chain_cached() {
    let (root, member) = (key(1), key(3));
    let gatekeeper = gatekeeper(&root);
    let chain = |id| {
        let token = token(
            id,
            &root,
            None,
            "edge-01",
            &member,
            None,
            Role::Member,
            &[">"],
        );
        Chain::new(vec![token]).expect("chain")
    };
    let (old, new) = (chain(1), chain(2));
    let signer = member.public();
    let bytes = |c: &Chain| Bytes::from(c.encode());

    // A fetch reads the registry (the old chain), then the watcher installs the new one.
    let began = gatekeeper.changes.load(Ordering::Acquire);
    gatekeeper.install(&signer, new.clone(), bytes(&new));
    let used = gatekeeper.remember(signer.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
    assert_eq!(used.leaf().id(), new.leaf().id());
    assert_eq!(gatekeeper.chain_bytes(&signer), Some(bytes(&new)));

    // A fetch that began after the install is the registry's newest word.
    let began = gatekeeper.changes.load(Ordering::Acquire);
    let used = gatekeeper.remember(signer.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
    assert_eq!(used.leaf().id(), old.leaf().id());
    assert_eq!(gatekeeper.chain_bytes(&signer), Some(bytes(&old)));

    // A fetch overlapping a change the watcher passed over (a replayed entry of a
    // signer with nothing cached, a watch begun) serves its message and is presented
    // upward with it, but is not relied on for the next one.
    let other = key(4).public();
    let began = gatekeeper.changes.load(Ordering::Acquire);
    gatekeeper.registry_changed();
    let used = gatekeeper.remember(other.to_bytes(), Arc::new(old.clone()), bytes(&old), began);
    assert_eq!(used.leaf().id(), old.leaf().id());
    assert!(
        gatekeeper.known_chain(&other.to_bytes()).is_none(),
        "fetched again next time"
    );
    assert_eq!(
        gatekeeper.chain_bytes(&other),
        Some(bytes(&old)),
        "still presented upward with the message it admitted"
    );
}

/// A member chain issued by `root` for `member` (token id `id`), and its bytes.
fn member_chain(root: &SecretKey, member: &SecretKey, id: u8) -> (Arc<Chain>, Bytes) {
    let leaf = token(
        id,
        root,
        None,
        "edge-01",
        member,
        None,
        Role::Member,
        &[">"],
    );
    let chain = Chain::new(vec![leaf]).expect("chain");
    let bytes = Bytes::from(chain.encode());
    (Arc::new(chain), bytes)
}

#[test]
fn known_chains_forget_the_least_recently_used_at_the_cap() {
    let root = key(1);
    let t0 = std::time::Instant::now();
    let mut known = registry::KnownChains::new(2, Duration::from_secs(3600), t0);
    let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
    let chain = |n| member_chain(&root, &key(n), n);
    let at = |s| t0 + Duration::from_secs(s);
    let (chain_a, bytes_a) = chain(10);
    assert!(known
        .insert(a, chain_a, bytes_a, None, true, at(1))
        .is_empty());
    let (chain_b, bytes_b) = chain(11);
    assert!(known
        .insert(b, chain_b, bytes_b, None, true, at(2))
        .is_empty());
    // `a` is used again: `b` is now the least recently used.
    assert!(known.used(&a, at(3)).is_some());
    let (chain_c, bytes_c) = chain(12);
    let forgotten = known.insert(c, chain_c, bytes_c, None, true, at(4));
    assert_eq!(forgotten.len(), 1, "one chain makes room");
    assert_eq!(forgotten[0].leaf().id(), TokenId([11; 16]));
    assert_eq!(known.len(), 2);
    assert!(known.peek(&a).is_some() && known.peek(&c).is_some());
    assert!(known.peek(&b).is_none());
    assert!(known.bytes() > 0);
}

#[test]
fn a_chain_unused_for_the_idle_time_is_forgotten_and_a_used_one_kept() {
    let root = key(1);
    let idle = Duration::from_secs(3600);
    let t0 = std::time::Instant::now();
    let mut known = registry::KnownChains::new(16, idle, t0);
    let (gone, live) = ([1; 32], [2; 32]);
    let (chain, bytes) = member_chain(&root, &key(10), 10);
    known.insert(gone, chain, bytes, None, true, t0);
    let (chain, bytes) = member_chain(&root, &key(11), 11);
    known.insert(live, chain, bytes, None, true, t0);
    // The live node uses its chain at every heartbeat; the other is silent.
    let mut now = t0;
    let mut forgotten_at = None;
    while now < t0 + idle + Duration::from_secs(120) {
        now += Duration::from_secs(10);
        known.used(&live, now);
        let forgotten = known.expire(now);
        if !forgotten.is_empty() {
            assert_eq!(forgotten.len(), 1);
            assert_eq!(forgotten[0].leaf().id(), TokenId([10; 16]));
            assert!(forgotten_at.is_none(), "forgotten once");
            forgotten_at = Some(now);
        }
    }
    let at = forgotten_at.expect("the silent one is forgotten");
    assert!(at >= t0 + idle && at <= t0 + idle + Duration::from_secs(70));
    assert!(known.peek(&gone).is_none());
    assert!(known.peek(&live).is_some());
    assert!(
        known.expire(now + Duration::from_secs(1)).is_empty(),
        "looked through at most once per sweep period"
    );
}

/// A member that comes back with a rotated key presents a new chain under its new key: it
/// is admitted with it, and the chain of the old key is forgotten once idle, its verified
/// grant with it.
#[tokio::test]
async fn a_member_back_with_a_rotated_key_is_admitted_and_its_old_chain_expires() {
    let (root, old_key, new_key) = (key(1), key(3), key(4));
    let gatekeeper = gatekeeper(&root);
    let event = |signer: &SecretKey| {
        let envelope = Envelope::new(
            "iot.reading",
            "edge-01",
            None,
            serde_json::Map::new(),
            OffsetDateTime::now_utc(),
        );
        let sealed = SignedEvent::seal(&envelope, crate::Encoding::Json, signer).expect("seal");
        (sealed, envelope)
    };
    for (signer, id) in [(&old_key, 10), (&new_key, 11)] {
        let (chain, bytes) = member_chain(&root, signer, id);
        let began = gatekeeper.changes.load(Ordering::Acquire);
        gatekeeper.remember(signer.public().to_bytes(), chain, bytes, began);
        let (sealed, envelope) = event(signer);
        assert!(
            gatekeeper.admit(&sealed, &envelope, None).await.is_ok(),
            "admitted with the chain of its key"
        );
    }
    assert_eq!(gatekeeper.known_chains().0, 2);
    let (old_chain, _) = member_chain(&root, &old_key, 10);
    assert!(gatekeeper.cache.lock().expect("cache").contains(&old_chain));
    // Much later, only the new key is in use.
    let later = std::time::Instant::now() + registry::CHAIN_IDLE + Duration::from_secs(60);
    let forgotten = {
        let mut chains = gatekeeper.chains.lock().expect("chains");
        chains.used(&new_key.public().to_bytes(), later);
        chains.expire(later)
    };
    gatekeeper.forget_verified(&forgotten);
    assert_eq!(gatekeeper.known_chains().0, 1);
    assert!(gatekeeper.chain_bytes(&old_key.public()).is_none());
    assert!(gatekeeper.chain_bytes(&new_key.public()).is_some());
    assert!(!gatekeeper.cache.lock().expect("cache").contains(&old_chain));
}

/// A chain in the registry is removed once a token of it expired a day ago, not before.
#[test]
fn only_a_chain_expired_long_ago_is_removed_from_the_registry() {
    let (root, member) = (key(1), key(3));
    let (chain, _) = member_chain(&root, &member, 10);
    let expires = chain.leaf().claims().expires.0;
    let day = i64::try_from(registry::PURGE_EXPIRED_AFTER.as_secs()).expect("secs");
    assert!(!registry::long_expired(&chain, expires - 1), "still valid");
    assert!(
        !registry::long_expired(&chain, expires + 3600),
        "expired an hour ago"
    );
    assert!(
        !registry::long_expired(&chain, expires + day),
        "expired a day ago exactly"
    );
    assert!(registry::long_expired(&chain, expires + day + 1));
}
