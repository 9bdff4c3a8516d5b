//! Trust at the hub, end to end: every kind of bad message an attacker with network access
//! to the hub's NATS can send is refused — never forwarded, dead-lettered with its reason,
//! announced as `nexus._core.audit.rejected` — while good traffic next to it flows on.
//!
//! The test plays the member (it holds the member's key and token chain) and the attacker;
//! the root and the hub are real agents.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_e2e::{collect_until, fleet, payload_json, wait_until, AgentProcess, Fleet, NatsServer};
use nexus_federation::provenance::{HDR_CONTENT_TYPE, HDR_MSG_ID, HDR_SIGNATURE, HDR_SIGNER};
use nexus_federation::trust::{key_id, CHAINS_BUCKET};
use nexus_federation::{subject, Encoding, Envelope, NatsProvenance as _, SignedEvent};
use nexus_policies::token::{Chain, Claims, Role, Token, TokenId};
use nexus_policies::{PublicKey, SecretKey, SubjectPattern, UnixTime};

const DEADLINE: Duration = Duration::from_secs(30);

struct Hub {
    fleet: Fleet,
    _root: AgentProcess,
    hub: AgentProcess,
    landed: async_nats::Subscriber,
    audits: async_nats::Subscriber,
    js: jetstream::Context,
    member: SecretKey,
    member_chain: Bytes,
    sent: u32,
}

fn secret(path: &std::path::Path) -> SecretKey {
    SecretKey::parse(&std::fs::read_to_string(path).expect("key file")).expect("secret key")
}

impl Hub {
    async fn start(hub_extra: &str) -> Self {
        Self::start_with(Fleet::new(), hub_extra).await
    }

    async fn start_with(fleet: Fleet, hub_extra: &str) -> Self {
        let root_client = async_nats::connect(fleet.root_nats.url())
            .await
            .expect("root nats");
        let landed = root_client
            .subscribe("nexus.salon-001.>")
            .await
            .expect("subscribe");
        let audits = root_client
            .subscribe("nexus._core.audit.rejected")
            .await
            .expect("subscribe");
        root_client.flush().await.expect("flush");
        let root = fleet.spawn(fleet::ROOT, "");
        let hub = fleet.spawn(fleet::HUB, hub_extra);
        let js = jetstream::new(
            async_nats::connect(fleet.hub_nats.url())
                .await
                .expect("hub nats"),
        );
        // The hub creates its registry when its ingress is ready.
        let registry = wait_until("the hub's chain registry exists", DEADLINE, async || {
            js.get_key_value(CHAINS_BUCKET).await
        })
        .await;
        let member = secret(&fleet.member_key.secret);
        let member_chain =
            Bytes::from(std::fs::read(fleet.token_path(fleet::MEMBER)).expect("member token"));
        registry
            .put(key_id(&member.public()), member_chain.clone())
            .await
            .expect("present the member's chain");
        Self {
            fleet,
            _root: root,
            hub,
            landed,
            audits,
            js,
            member,
            member_chain,
            sent: 0,
        }
    }

    fn event(&mut self, source: &str, tenant: Option<&str>, name: &str) -> Envelope {
        self.sent += 1;
        let mut payload = serde_json::Map::new();
        payload.insert("n".into(), self.sent.into());
        Envelope::new(
            name,
            source,
            tenant,
            payload,
            time::OffsetDateTime::now_utc(),
        )
    }

    /// A reading from the member, signed by its key: must be forwarded.
    fn good(&mut self) -> SignedEvent {
        let envelope = self.event(fleet::MEMBER, Some(fleet::TENANT), "iot.sensor_data");
        SignedEvent::seal(&envelope, Encoding::Json, &self.member).expect("seal")
    }

    async fn send_raw(&self, subject: &str, headers: HeaderMap, body: Bytes) {
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body)
            .await
            .expect("publish");
        ack.await.expect("the hub's ingress stores it");
    }

    async fn send(&self, event: &SignedEvent) {
        self.send_raw(
            &subject::ingress_subject(&event.subject),
            event.headers(),
            event.body.clone(),
        )
        .await;
    }

    /// Sends `bad`, then a good event; when the good one has landed at the root, the bad one
    /// was processed (one stream, in order) and must not have landed. Then the audit and the
    /// dead letter must name `reason`.
    async fn assert_refused(
        &mut self,
        send_bad: impl AsyncFnOnce(&Self),
        bad_id: &str,
        reason: &str,
    ) {
        send_bad(self).await;
        let good = self.good();
        self.send(&good).await;
        let landed = collect_until(
            "the good event after the bad one lands at the root",
            &mut self.landed,
            DEADLINE,
            |seen| {
                seen.iter()
                    .any(|m| payload_json(m)["event_id"] == good.event_id.as_str())
            },
        )
        .await;
        assert!(
            !landed.iter().any(|m| payload_json(m)["event_id"] == bad_id),
            "the refused event reached the root"
        );
        let audits = collect_until(
            &format!("an audit naming `{reason}`"),
            &mut self.audits,
            DEADLINE,
            |seen| {
                seen.iter()
                    .any(|m| payload_json(m)["payload"]["reason"] == reason)
            },
        )
        .await;
        let audit = audits
            .iter()
            .find(|m| payload_json(m)["payload"]["reason"] == reason)
            .expect("found above");
        assert_eq!(
            payload_json(audit)["source"],
            fleet::HUB,
            "the hub reports its refusal"
        );
        let letters = dead_letters(&self.hub).await;
        assert!(
            letters.iter().any(|l| l["reason"] == reason),
            "the hub's dead-letter store holds a `{reason}` entry: {letters:?}"
        );
        assert!(self.hub.is_running(), "the hub survives");
    }
}

/// The hub's dead letters, read with the CLI as an operator would.
async fn dead_letters(hub: &AgentProcess) -> Vec<serde_json::Value> {
    wait_until(
        "the hub's dead-letter store answers",
        DEADLINE,
        async || {
            let out = std::process::Command::new(nexus_e2e::agent_bin())
                .args(["dlq", "list", "--json", "-c"])
                .arg(hub.config_path())
                .output()
                .expect("nexus-agent dlq runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let letters: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if out.status.success() && !letters.is_empty() {
                Ok(letters)
            } else {
                Err(format!("{}{}", text, String::from_utf8_lossy(&out.stderr)))
            }
        },
    )
    .await
}

fn headers_with(event: &SignedEvent, name: &str, value: &str) -> HeaderMap {
    let mut headers = event.headers();
    headers.insert(name, value);
    headers
}

fn token(claims: Claims, issuer: &SecretKey) -> Token {
    Token::sign_unchecked(claims, issuer).expect("sign")
}

fn claims(
    node: &str,
    key: &PublicKey,
    issuer: &PublicKey,
    parent: Option<TokenId>,
    publish: &[&str],
    window: (i64, i64),
) -> Claims {
    Claims {
        id: TokenId(rand_id()),
        parent,
        issuer_key: *issuer,
        node_id: node.to_owned(),
        node_key: *key,
        tenant: Some(fleet::TENANT.to_owned()),
        role: Role::Member,
        publish: publish
            .iter()
            .map(|p| SubjectPattern::parse(p).expect("pattern"))
            .collect(),
        receive: Vec::new(),
        not_before: UnixTime(window.0),
        expires: UnixTime(window.1),
    }
}

fn rand_id() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A stranger's key presenting a chain the hub issued for it, outside the member's grants.
async fn present(hub: &Hub, key: &PublicKey, chain: &Chain) {
    let registry = hub.js.get_key_value(CHAINS_BUCKET).await.expect("registry");
    registry
        .put(key_id(key), Bytes::from(chain.encode()))
        .await
        .expect("put");
}

fn hub_chain(fleet: &Fleet) -> Chain {
    Chain::decode(&std::fs::read(fleet.token_path(fleet::HUB)).expect("hub token"))
        .expect("hub chain")
}

/// A child chain under the hub's, signed by the hub key, with the given claims.
fn child_chain(fleet: &Fleet, key: &PublicKey, publish: &[&str], window: (i64, i64)) -> Chain {
    let hub_secret = secret(&fleet.hub_key.secret);
    let parent = hub_chain(fleet);
    let claims = claims(
        "edge-msk-09",
        key,
        &hub_secret.public(),
        Some(parent.leaf().id()),
        publish,
        window,
    );
    let mut tokens = vec![token(claims, &hub_secret)];
    tokens.extend(parent.tokens().iter().cloned());
    Chain::new(tokens).expect("chain")
}

/// A body whose signature was made by someone else: the signature does not verify.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_signature_is_refused() {
    let mut hub = Hub::start("").await;
    let bad = hub.good();
    let forged = SecretKey::from_seed(&[9; 32])
        .expect("key")
        .sign(&bad.body)
        .to_string();
    let id = bad.event_id.clone();
    hub.assert_refused(
        async |h| {
            h.send_raw(
                &subject::ingress_subject(&bad.subject),
                headers_with(&bad, HDR_SIGNATURE, &forged),
                bad.body.clone(),
            )
            .await
        },
        &id,
        "bad_signature",
    )
    .await;
}

/// A valid signature by a key with no token, claiming to be the member.
#[tokio::test(flavor = "multi_thread")]
async fn a_valid_signature_by_a_key_without_a_token_is_refused() {
    let mut hub = Hub::start("").await;
    let stranger = SecretKey::from_seed(&[7; 32]).expect("key");
    let envelope = hub.event(fleet::MEMBER, Some(fleet::TENANT), "iot.sensor_data");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &stranger).expect("seal");
    hub.assert_refused(async |h| h.send(&bad).await, &bad.event_id, "token_unknown")
        .await;
}

/// A stranger presents the member's (valid) chain as its own: the chain is for another key.
#[tokio::test(flavor = "multi_thread")]
async fn another_nodes_valid_token_replayed_is_refused() {
    let mut hub = Hub::start("").await;
    let stranger = SecretKey::from_seed(&[8; 32]).expect("key");
    let registry = hub.js.get_key_value(CHAINS_BUCKET).await.expect("registry");
    registry
        .put(key_id(&stranger.public()), hub.member_chain.clone())
        .await
        .expect("put");
    let envelope = hub.event(fleet::MEMBER, Some(fleet::TENANT), "iot.sensor_data");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &stranger).expect("seal");
    hub.assert_refused(
        async |h| h.send(&bad).await,
        &bad.event_id,
        "token_key_mismatch",
    )
    .await;
}

/// A node `edge-msk-09` with a chain under the hub's granting `publish` during `window`
/// sends one reading, which must be refused for `reason`.
async fn a_child_token_is_refused(publish: &[&str], window: (i64, i64), reason: &str) {
    let mut hub = Hub::start("").await;
    let key = SecretKey::from_seed(&[10; 32]).expect("key");
    let chain = child_chain(&hub.fleet, &key.public(), publish, window);
    present(&hub, &key.public(), &chain).await;
    let envelope = hub.event("edge-msk-09", Some(fleet::TENANT), "iot.sensor_data");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &key).expect("seal");
    hub.assert_refused(async |h| h.send(&bad).await, &bad.event_id, reason)
        .await;
}

/// A token whose window ended a day ago.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused() {
    a_child_token_is_refused(
        &["nexus.salon-001.>"],
        (now() - 3 * 86_400, now() - 86_400),
        "token_expired",
    )
    .await;
}

/// A token valid only from tomorrow.
#[tokio::test(flavor = "multi_thread")]
async fn a_not_yet_valid_token_is_refused() {
    a_child_token_is_refused(
        &["nexus.salon-001.>"],
        (now() + 86_400, now() + 2 * 86_400),
        "token_not_yet_valid",
    )
    .await;
}

/// A member token wider than its hub's (signed by the hub key, so only attenuation fails).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_token_wider_than_its_hubs_is_refused() {
    a_child_token_is_refused(
        &["nexus.>"],
        (now() - 60, now() + 86_400),
        "token_over_reaching",
    )
    .await;
}

/// The member's token grants `nexus.salon-001.>`; a core event it is not granted is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_subject_outside_the_grants_is_refused() {
    let mut hub = Hub::start("").await;
    let envelope = hub.event(fleet::MEMBER, None, "billing.charged");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(
        async |h| h.send(&bad).await,
        &bad.event_id,
        "subject_not_granted",
    )
    .await;
}

/// The member's token is for tenant salon-001; an event for another tenant is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_crossover_is_refused() {
    let mut hub = Hub::start("").await;
    let envelope = hub.event(fleet::MEMBER, Some("salon-002"), "iot.sensor_data");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(
        async |h| h.send(&bad).await,
        &bad.event_id,
        "tenant_crossover",
    )
    .await;
}

/// The member signs an event claiming another node as its source.
#[tokio::test(flavor = "multi_thread")]
async fn source_spoofing_is_refused() {
    let mut hub = Hub::start("").await;
    let envelope = hub.event("edge-msk-02", Some(fleet::TENANT), "iot.sensor_data");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(
        async |h| h.send(&bad).await,
        &bad.event_id,
        "source_spoofing",
    )
    .await;
}

/// The member's own heartbeat (its source, its subject, its token) whose payload speaks
/// for another node: a consumer reading `payload.node_id` would be fooled.
#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_speaking_for_another_node_is_refused() {
    let mut hub = Hub::start("").await;
    let mut envelope = hub.event(fleet::MEMBER, None, "edge.health");
    envelope
        .payload
        .insert("node_id".into(), "edge-msk-02".into());
    envelope.payload.insert("mode".into(), "member".into());
    envelope.payload.insert("status".into(), "healthy".into());
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(
        async |h| h.send(&bad).await,
        &bad.event_id,
        "source_spoofing",
    )
    .await;
}

/// Garbage bytes, signed with a valid member signature so that only decoding fails.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_bytes_are_refused() {
    let mut hub = Hub::start("").await;
    let body = Bytes::from_static(b"\xff\x00garbage{{{");
    let mut headers = HeaderMap::new();
    headers.insert(HDR_MSG_ID, "garbage-1");
    headers.insert(HDR_CONTENT_TYPE, "application/json");
    headers.insert(HDR_SIGNER, hub.member.public().to_string().as_str());
    headers.insert(HDR_SIGNATURE, hub.member.sign(&body).to_string().as_str());
    hub.assert_refused(
        async |h| {
            h.send_raw(
                "_nexus.ingress.nexus.salon-001.iot.sensor_data",
                headers,
                body,
            )
            .await
        },
        "garbage-1",
        "malformed",
    )
    .await;
}

/// A body over the 1 MiB envelope cap (the hub's server accepts 2 MiB messages).
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_refused() {
    let hub_nats = NatsServer::builder().extra("max_payload: 2MB").start();
    let fleet = Fleet::with_servers(NatsServer::start(), hub_nats, NatsServer::start());
    let mut hub = Hub::start_with(fleet, "").await;
    let mut envelope = hub.event(fleet::MEMBER, Some(fleet::TENANT), "iot.sensor_data");
    envelope
        .payload
        .insert("blob".into(), "x".repeat(1_200_000).into());
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(async |h| h.send(&bad).await, &bad.event_id, "oversized")
        .await;
}

/// A local ACL on the hub narrows what the member's token grants.
#[tokio::test(flavor = "multi_thread")]
async fn the_hubs_acl_narrows_the_token_grants() {
    let acl = "[[acl]]\nprincipal = \"edge-*\"\nallow_publish = [\"nexus._core.>\", \"nexus.salon-001.iot.>\"]\ndeny_publish = [\"nexus.salon-001.iot.secret\"]\n";
    let mut hub = Hub::start(acl).await;
    let envelope = hub.event(fleet::MEMBER, Some(fleet::TENANT), "iot.secret");
    let bad = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.assert_refused(async |h| h.send(&bad).await, &bad.event_id, "acl_denied")
        .await;
}

/// Revoking the member's token at the root reaches the hub within seconds: the member's
/// next events are refused as revoked, and the hub persisted the list.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_working_at_the_hub_within_seconds() {
    let mut hub = Hub::start("").await;
    let good = hub.good();
    hub.send(&good).await;
    collect_until(
        "the member's event lands before the revocation",
        &mut hub.landed,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| payload_json(m)["event_id"] == good.event_id.as_str())
        },
    )
    .await;
    let member_token = Chain::decode(&hub.member_chain)
        .expect("chain")
        .leaf()
        .id()
        .to_string();
    let out = std::process::Command::new(nexus_e2e::agent_bin())
        .args(["token", "revoke", "--key"])
        .arg(&hub.fleet.root_key.secret)
        .args([
            "--id",
            &member_token,
            "--server",
            &hub.fleet.root_nats.url(),
        ])
        .output()
        .expect("token revoke runs");
    assert!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revocations = hub.fleet.data_dir(fleet::HUB).join("revocations.cbor");
    wait_until(
        "the hub persisted the revocation list",
        Duration::from_secs(10),
        async || revocations.exists(),
    )
    .await;

    let envelope = hub.event(fleet::MEMBER, Some(fleet::TENANT), "iot.sensor_data");
    let revoked = SignedEvent::seal(&envelope, Encoding::Json, &hub.member.clone()).expect("seal");
    hub.send(&revoked).await;
    collect_until(
        "an audit naming `token_revoked`",
        &mut hub.audits,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| payload_json(m)["payload"]["reason"] == "token_revoked")
        },
    )
    .await;
    let mut landed = hub.landed.next();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut landed)
            .await
            .map_or(true, |m| m.is_none_or(
                |m| payload_json(&m)["event_id"] != revoked.event_id.as_str()
            )),
        "a revoked member's event reached the root"
    );
}

/// A compromised hub cannot forge a member's event: the root verifies the origin itself.
/// The hub's key signs an event claiming the member as its source and sends it straight
/// into the root's ingress (as a hub would); the root refuses it, while the hub's own
/// traffic (its heartbeats) keeps landing.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_refuses_a_members_event_forged_by_its_hub() {
    let fleet = Fleet::new();
    let root_client = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("root nats");
    let mut audits = root_client
        .subscribe("nexus._core.audit.rejected")
        .await
        .expect("subscribe");
    let mut landed = root_client.subscribe("nexus.>").await.expect("subscribe");
    root_client.flush().await.expect("flush");
    let root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    // The hub's heartbeats landing means its chain is presented at the root.
    collect_until(
        "the hub's heartbeat at the root",
        &mut landed,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| m.subject.as_str() == "nexus._core.edge.health.hub-msk")
        },
    )
    .await;

    let hub_key = secret(&fleet.hub_key.secret);
    let mut payload = serde_json::Map::new();
    payload.insert("value".into(), 42.into());
    let forged = Envelope::new(
        "iot.sensor_data",
        fleet::MEMBER,
        Some(fleet::TENANT),
        payload,
        time::OffsetDateTime::now_utc(),
    );
    let forged = SignedEvent::seal(&forged, Encoding::Json, &hub_key).expect("seal");
    let js = jetstream::new(root_client.clone());
    js.publish_with_headers(
        subject::ingress_subject(&forged.subject),
        forged.headers(),
        forged.body.clone(),
    )
    .await
    .expect("publish")
    .await
    .expect("the root's ingress stores it");

    let audit = collect_until(
        "the root's audit of the forgery",
        &mut audits,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| payload_json(m)["payload"]["reason"] == "source_spoofing")
        },
    )
    .await;
    let audit = audit
        .iter()
        .find(|m| payload_json(m)["payload"]["reason"] == "source_spoofing")
        .expect("found");
    assert_eq!(
        payload_json(audit)["source"],
        fleet::ROOT,
        "the root itself refused it"
    );
    let after = collect_until(
        "the hub's next heartbeat at the root",
        &mut landed,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| m.subject.as_str() == "nexus._core.edge.health.hub-msk")
        },
    )
    .await;
    assert!(
        !after
            .iter()
            .any(|m| payload_json(m)["event_id"] == forged.event_id.as_str()),
        "the forged event landed"
    );
    let letters = dead_letters(&root).await;
    assert!(
        letters.iter().any(|l| l["reason"] == "source_spoofing"),
        "{letters:?}"
    );
}

/// The chain cache of a verifying tier follows its registry: a chain rotated before the
/// registry watch starts (the agent starting, the server coming back) is installed by the
/// watch's replay, one rotated while it runs is installed at once, and an entry that does not
/// verify for its key is ignored. Before the replay, a hub that started its watch late kept a
/// member's old chain and refused its events as revoked once the old token was revoked.
#[tokio::test(flavor = "multi_thread")]
async fn the_registry_watch_installs_chains_rotated_before_and_while_it_runs() {
    use nexus_federation::clock::TrustClock;
    use nexus_federation::trust::{self, Gatekeeper};
    use nexus_policies::token::RevocationSet;
    use std::sync::Arc;

    let nats = NatsServer::start();
    nexus_federation::tls::install_crypto_provider();
    let config = nexus_config::LinkConfig {
        url: nats.url(),
        ping_interval: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        reconnect_max_delay: Duration::from_millis(250),
        jetstream_domain: None,
        inbox_prefix: None,
        tls: None,
    };
    let link = nexus_federation::Link::connect("local", &config, "e2e-registry")
        .await
        .expect("link");
    let registry = wait_until("the registry is created", DEADLINE, async || {
        trust::bucket(&link, CHAINS_BUCKET, true).await.ok()
    })
    .await;

    let root = SecretKey::from_seed(&[11; 32]).expect("key");
    let member = SecretKey::from_seed(&[12; 32]).expect("key");
    let chain = || {
        let claims = claims(
            fleet::MEMBER,
            &member.public(),
            &root.public(),
            None,
            &["nexus.>"],
            (now() - 60, now() + 3600),
        );
        Bytes::from(
            Chain::new(vec![token(claims, &root)])
                .expect("chain")
                .encode(),
        )
    };
    let key = key_id(&member.public());
    let cached = |gatekeeper: &Gatekeeper| gatekeeper.chain_bytes(&member.public());
    let gatekeeper = Arc::new(Gatekeeper::new(
        vec![root.public()],
        Duration::from_secs(60),
        None,
        RevocationSet::default(),
        Arc::new(TrustClock::new(None)),
    ));

    // The member's first event: its chain is fetched from the registry and cached.
    let first = chain();
    registry.put(&key, first.clone()).await.expect("put");
    let envelope = Envelope::new(
        "iot.sensor_data",
        fleet::MEMBER,
        Some(fleet::TENANT),
        serde_json::Map::new(),
        time::OffsetDateTime::now_utc(),
    );
    let event = SignedEvent::seal(&envelope, Encoding::Json, &member).expect("seal");
    gatekeeper
        .admit(&event, &envelope, Some(&registry))
        .await
        .expect("admitted");
    assert_eq!(cached(&gatekeeper), Some(first.clone()));

    // Rotated before the watch runs: the cache still holds the first chain...
    let second = chain();
    registry.put(&key, second.clone()).await.expect("put");
    gatekeeper
        .admit(&event, &envelope, Some(&registry))
        .await
        .expect("admitted");
    assert_eq!(cached(&gatekeeper), Some(first));
    // ...until the watch starts and replays what the registry holds.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(trust::watch_registry(
        link.clone(),
        Arc::clone(&gatekeeper),
        None,
        shutdown.clone(),
    ));
    wait_until(
        "the replay installs the rotated chain",
        DEADLINE,
        async || (cached(&gatekeeper) == Some(second.clone())).then_some(()),
    )
    .await;

    // Garbage presented for the key does not stop the watch; a rotation while it runs is
    // installed at once.
    registry
        .put(&key, Bytes::from_static(b"not a chain"))
        .await
        .expect("put");
    let third = chain();
    registry.put(&key, third.clone()).await.expect("put");
    wait_until("the live rotation is installed", DEADLINE, async || {
        (cached(&gatekeeper) == Some(third.clone())).then_some(())
    })
    .await;
    gatekeeper
        .admit(&event, &envelope, Some(&registry))
        .await
        .expect("admitted with the installed chain");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("the watch stops on shutdown")
        .expect("joined")
        .expect("the watch ends cleanly");
}
