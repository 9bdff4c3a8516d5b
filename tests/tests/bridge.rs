//! Subject bridging both ways, with the real agents: local apps on the member's own NATS
//! publish events up without knowing tiers, keys or tokens; commands signed at the root
//! reach them through the hub, are verified by the member, and their replies come back
//! (and land) with the command's correlation id. Commands nobody may send are refused at
//! the member and audited; a rotated token keeps traffic flowing after the old one is
//! revoked.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_e2e::landing::{landed_count, wait_landed};
use nexus_e2e::{
    agent_bin, collect_until, contract, fleet, keygen, payload_json, request_answered, wait_until,
    AgentProcess, Fleet,
};
use nexus_federation::command::{self, Issuer, MAX_COMMAND_BYTES};
use nexus_federation::{NatsProvenance as _, SignedEvent};
use nexus_policies::{Chain, SecretKey};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

async fn cli(args: &[&str], config: &Path) -> Output {
    tokio::process::Command::new(agent_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn secret(path: &Path) -> SecretKey {
    SecretKey::parse(&std::fs::read_to_string(path).expect("key file")).expect("secret key")
}

/// Root, hub and member agents, with the member's heartbeat seen at the root (so the hub
/// knows its member and routes commands to it).
struct Federation {
    fleet: Fleet,
    root: AgentProcess,
    hub: AgentProcess,
    member: AgentProcess,
    root_client: async_nats::Client,
    /// A local app's connection: the member's own NATS.
    app: async_nats::Client,
}

impl Federation {
    async fn start(member_extra: &str) -> Self {
        let fleet = Fleet::new();
        let root_client = async_nats::connect(fleet.root_nats.url())
            .await
            .expect("root nats");
        let mut beats = root_client
            .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
            .await
            .expect("subscribe");
        root_client.flush().await.expect("flush");
        let root = fleet.spawn(fleet::ROOT, "");
        let hub = fleet.spawn(fleet::HUB, "");
        let member = fleet.spawn(fleet::MEMBER, member_extra);
        collect_until(
            "the member's heartbeat reaches the root",
            &mut beats,
            DEADLINE,
            |seen| !seen.is_empty(),
        )
        .await;
        let app = async_nats::connect(fleet.member_nats.url())
            .await
            .expect("member nats");
        Self {
            fleet,
            root,
            hub,
            member,
            root_client,
            app,
        }
    }

    /// `nexus-agent request` from the root's config.
    async fn request(&self, node: &str, command: &str, extra: &[&str]) -> Output {
        let mut args = vec!["request", node, command];
        args.extend_from_slice(extra);
        cli(&args, self.root.config_path()).await
    }
}

/// The reply envelope printed by `request --json`.
fn reply_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a JSON reply ({e}): {}", text(out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_from_the_root_reach_local_apps_and_built_ins_through_the_hub() {
    // The up rule also takes the command's local subject (a pair `check` warns about):
    // the agent must leave its own delivery to the app, so the reply is the app's and no
    // `booking.cancel` event goes up.
    let fed = Federation::start(
        "[bridge]\n[[bridge.up]]\nlocal = \"app.booking.*\"\nevent = \"booking.*\"\n\
         [[bridge.down]]\ncommand = \"booking.cancel\"\nlocal = \"app.booking.cancel\"\n",
    )
    .await;
    let mut results = fed
        .root_client
        .subscribe("nexus.salon-001.booking.cancel.result")
        .await
        .expect("subscribe");
    // The commands themselves, as the CLI sends them into the root's NATS.
    let mut commands = fed
        .root_client
        .subscribe("_nexus.cmd.>")
        .await
        .expect("subscribe");
    fed.root_client.flush().await.expect("flush");

    // The local app: answers cancellations and remembers the correlation id it was given.
    let mut requests = fed
        .app
        .subscribe("app.booking.cancel")
        .await
        .expect("subscribe");
    fed.app.flush().await.expect("flush");
    let app = fed.app.clone();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let asked: Value = serde_json::from_slice(&request.payload).expect("JSON data");
            let correlation = request
                .headers
                .as_ref()
                .and_then(|h| h.get("Nexus-Correlation-Id"))
                .map(|v| v.as_str().to_owned());
            let _ = seen_tx.send(correlation);
            // A slow app (scenario, not synchronisation): an echo of the agent's own would
            // answer first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answer = json!({"cancelled": true, "booking": asked["id"]});
            if let Some(reply) = request.reply {
                app.publish(reply, answer.to_string().into())
                    .await
                    .expect("reply");
            }
        }
    });

    // Built-ins answer without any rule.
    let out = fed.request(fleet::MEMBER, "agent.ping", &["--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ping = reply_of(&out);
    let registry = contract::registry();
    contract::check(&registry, &ping).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ping["event_name"], "agent.ping.result");
    assert_eq!(ping["source"], fleet::MEMBER);
    assert_eq!(ping["headers"]["status"], "ok");
    assert_eq!(ping["payload"]["mode"], "member");
    assert_eq!(ping["payload"]["node_id"], fleet::MEMBER);

    let out = fed.request(fleet::MEMBER, "agent.health", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let health: Value = serde_json::from_slice(&out.stdout).expect("a JSON payload");
    assert_eq!(
        registry.validate("agent.health.result", 1, &health),
        nexus_events::Verdict::Valid,
        "{health}"
    );
    assert_eq!(health["node_id"], fleet::MEMBER);
    assert!(health["outbox"]["depth"].is_u64(), "{health}");

    let out = fed.request(fleet::HUB, "agent.ping", &["--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(reply_of(&out)["source"], fleet::HUB);

    // An app command: the reply carries the app's answer and the command's correlation id,
    // and the same reply lands at the root as a tenant event.
    let out = fed
        .request(
            fleet::MEMBER,
            "booking.cancel",
            &["--data", r#"{"id": "b-7"}"#, "--json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reply = reply_of(&out);
    assert_eq!(reply["event_name"], "booking.cancel.result");
    assert_eq!(reply["source"], fleet::MEMBER);
    assert_eq!(reply["tenant"], fleet::TENANT);
    assert_eq!(
        reply["payload"],
        json!({"cancelled": true, "booking": "b-7"})
    );
    let correlation = reply["correlation_id"]
        .as_str()
        .expect("correlation_id")
        .to_owned();
    let app_saw = tokio::time::timeout(DEADLINE, seen_rx.recv())
        .await
        .expect("the app was asked")
        .expect("channel open");
    assert_eq!(app_saw.as_deref(), Some(correlation.as_str()));
    let landed = collect_until(
        "the result event lands at the root",
        &mut results,
        DEADLINE,
        |seen| !seen.is_empty(),
    )
    .await;
    let event = payload_json(&landed[0]);
    assert_eq!(event["correlation_id"], correlation.as_str());
    assert_eq!(event["event_id"], reply["event_id"]);
    assert_eq!(
        event["payload"],
        json!({"cancelled": true, "booking": "b-7"})
    );

    // The command did not go back up as an event: an app event published after it lands,
    // and the journal holds no `booking.cancel` (it would have been queued before it).
    let marker = fed
        .app
        .request(
            "app.booking.created",
            json!({"booking_id": "b-8"}).to_string().into(),
        )
        .await
        .expect("the up-bridge answers");
    let marker: Value = serde_json::from_slice(&marker.payload).expect("JSON answer");
    assert_eq!(marker["ok"], true, "{marker}");
    let root_js = async_nats::jetstream::new(fed.root_client.clone());
    let created = wait_landed(&root_js, "nexus.salon-001.booking.created", 1, DEADLINE).await;
    assert_eq!(
        created, 1,
        "the app event published after the command lands"
    );
    assert_eq!(
        landed_count(&root_js, "nexus.salon-001.booking.cancel").await,
        0,
        "a delivered command came back up as an event"
    );

    // A command no rule takes, and a built-in that does not exist: clear errors, exit 1.
    for command in ["shop.close", "agent.reboot"] {
        let out = fed.request(fleet::MEMBER, command, &[]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("unknown_command"), "{}", text(&out));
    }

    // The member goes away: its hub answers for it, first as unreachable, then (once its
    // heartbeats are overdue) at once as offline.
    fed.member.terminate(Duration::from_secs(5));
    wait_until("the hub reports the member offline", DEADLINE, async || {
        let out = fed
            .request(fleet::MEMBER, "agent.ping", &["--timeout", "3s"])
            .await;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("node_offline") || said.contains("node_unreachable"),
            "the hub names why: {said}"
        );
        said.contains("node_offline")
    })
    .await;
    drop(fed.hub);

    // Every built-in command sent above is what its registered schema says, on a channel
    // of the AsyncAPI document.
    let document = nexus_events::asyncapi::document(&registry);
    let mut checked = std::collections::BTreeSet::new();
    while let Some(Some(message)) = futures::FutureExt::now_or_never(commands.next()) {
        let command = payload_json(&message);
        let name = command["event_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // (The unknown commands this test sends on purpose, agent.reboot…, are not.)
        if registry.find(&name).is_some() {
            contract::check(&registry, &command).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                nexus_events::asyncapi::covers(&document, message.subject.as_str()),
                "{} is not a channel of the AsyncAPI document",
                message.subject
            );
            checked.insert(name);
        }
    }
    assert!(
        checked.contains("agent.ping") && checked.contains("agent.health"),
        "{checked:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_verified_at_the_member_and_rotation_keeps_traffic_flowing() {
    let fed = Federation::start("").await;
    let mut audits = fed
        .root_client
        .subscribe("nexus._core.audit.rejected")
        .await
        .expect("subscribe");
    fed.root_client.flush().await.expect("flush");
    let dir = fed.fleet.path();

    // A hub the root trusts, but whose token grants no commands, asks the member directly
    // on the hub's NATS: refused at the member, answered, dead-lettered and audited.
    let (rogue_key, rogue_public) = keygen(&dir.join("keys"), "rogue");
    let rogue_token = dir.join("tokens/hub-rogue.token");
    fed.fleet.issue(
        &fed.fleet.root_key,
        None,
        "hub-rogue",
        &rogue_public,
        "hub",
        &["nexus._core.>"],
        &rogue_token,
        &[],
    );
    let rogue_config = dir.join("hub-rogue.toml");
    let rogue_toml = variant(
        &fed.fleet,
        fleet::HUB,
        "hub-rogue",
        &fed.fleet.hub_key.secret,
        &rogue_key,
        &rogue_token,
    );
    std::fs::write(&rogue_config, rogue_toml).expect("config");
    let out = cli(&["request", fleet::MEMBER, "agent.ping"], &rogue_config).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("command_not_granted"), "{}", text(&out));
    collect_until(
        "an audit naming command_not_granted",
        &mut audits,
        DEADLINE,
        |seen| {
            seen.iter()
                .any(|m| payload_json(m)["payload"]["reason"] == "command_not_granted")
        },
    )
    .await;
    let out = cli(
        &["dlq", "list", "--json", "--reason", "command_not_granted"],
        fed.member.config_path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let letters: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["stage"], "command");

    // A sibling hub of the same tenant, whose token does grant commands, is still not above
    // the member in the tree: refused.
    let (sibling_key, sibling_public) = keygen(&dir.join("keys"), "sibling");
    let sibling_token = dir.join("tokens/hub-sibling.token");
    fed.fleet.issue(
        &fed.fleet.root_key,
        None,
        "hub-sibling",
        &sibling_public,
        "hub",
        fleet::HUB_PUBLISH,
        &sibling_token,
        &[],
    );
    let sibling_config = dir.join("hub-sibling.toml");
    let sibling_toml = variant(
        &fed.fleet,
        fleet::HUB,
        "hub-sibling",
        &fed.fleet.hub_key.secret,
        &sibling_key,
        &sibling_token,
    );
    std::fs::write(&sibling_config, sibling_toml).expect("config");
    let out = cli(&["request", fleet::MEMBER, "agent.ping"], &sibling_config).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("command_not_allowed"), "{}", text(&out));

    // A member cannot command another member, even with its valid chain.
    let (other_key, other_public) = keygen(&dir.join("keys"), "member2");
    let other_token = dir.join("tokens/edge-msk-02.token");
    fed.fleet.issue(
        &fed.fleet.hub_key,
        Some(&fed.fleet.token_path(fleet::HUB)),
        "edge-msk-02",
        &other_public,
        "member",
        &["nexus.salon-001.>", "nexus._core.>"],
        &other_token,
        &[],
    );
    let other_toml = variant(
        &fed.fleet,
        fleet::MEMBER,
        "edge-msk-02",
        &fed.fleet.member_key.secret,
        &other_key,
        &other_token,
    );
    let other = AgentProcess::spawn("edge-msk-02", &other_toml, dir);
    let hub_client = async_nats::connect(fed.fleet.hub_nats.url())
        .await
        .expect("hub nats");
    let member_key = secret(&fed.fleet.member_key.secret);
    let member_chain = std::fs::read(fed.fleet.token_path(fleet::MEMBER)).expect("member token");
    let issuer = Issuer {
        node_id: fleet::MEMBER,
        key: &member_key,
        chain: Some(&member_chain),
    };
    let reply = wait_until("the other member answers", DEADLINE, async || {
        let sealed = command::seal(
            &issuer,
            "edge-msk-02",
            "agent.ping",
            serde_json::Map::new(),
            Duration::from_secs(2),
            time::OffsetDateTime::now_utc(),
        )
        .expect("seal");
        let request = async_nats::Request::new()
            .payload(sealed.body)
            .headers(sealed.headers)
            .timeout(Some(Duration::from_secs(2)));
        hub_client.send_request(sealed.subject, request).await.ok()
    })
    .await;
    let (_, refused) =
        SignedEvent::open_detached(reply.headers.as_ref(), reply.payload, MAX_COMMAND_BYTES)
            .expect("a signed reply");
    assert_eq!(refused.source, "edge-msk-02");
    assert!(!command::is_ok(&refused));
    assert_eq!(
        refused.payload["code"], "command_not_allowed",
        "{refused:?}"
    );
    drop(other);

    // Rotation by command: a new token for the same key replaces the old one on disk, and
    // after the old one is revoked the member's heartbeats still land.
    let old_chain = Chain::decode(&member_chain).expect("chain");
    let new_token = dir.join("tokens/edge-msk-01-new.token");
    fed.fleet.issue(
        &fed.fleet.hub_key,
        Some(&fed.fleet.token_path(fleet::HUB)),
        fleet::MEMBER,
        &fed.fleet.member_key.public,
        "member",
        fleet::MEMBER_PUBLISH,
        &new_token,
        &["--ttl", "2d"],
    );
    let new_bytes = std::fs::read(&new_token).expect("new token");
    let new_id = Chain::decode(&new_bytes)
        .expect("chain")
        .leaf()
        .id()
        .to_string();
    let data = json!({"token": URL_SAFE_NO_PAD.encode(&new_bytes)}).to_string();
    let out = fed
        .request(fleet::MEMBER, "agent.token.rotate", &["--data", &data])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rotated: Value = serde_json::from_slice(&out.stdout).expect("JSON payload");
    assert_eq!(
        contract::registry().validate("agent.token.rotate.result", 1, &rotated),
        nexus_events::Verdict::Valid,
        "{rotated}"
    );
    assert_eq!(rotated["token_id"], new_id.as_str());
    assert_eq!(
        std::fs::read(fed.fleet.token_path(fleet::MEMBER)).expect("token file"),
        new_bytes
    );
    // A token for another node is refused, and the file stays.
    let data =
        json!({"token": URL_SAFE_NO_PAD.encode(std::fs::read(&other_token).expect("token"))})
            .to_string();
    let out = fed
        .request(fleet::MEMBER, "agent.token.rotate", &["--data", &data])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("token_not_mine"), "{}", text(&out));

    // As docs/bridging.md says: revoke the old token once a heartbeat signed after the
    // rotation has landed at the root (the new chain is then known at every tier).
    let rotated_at = time::OffsetDateTime::now_utc();
    let mut beats = fed
        .root_client
        .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
        .await
        .expect("subscribe");
    let made_after = |m: &async_nats::Message, t: time::OffsetDateTime| {
        let ts = payload_json(m)["ts"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default();
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|ts| ts > t)
    };
    collect_until(
        "a heartbeat made after the rotation lands",
        &mut beats,
        DEADLINE,
        |seen| seen.iter().any(|m| made_after(m, rotated_at)),
    )
    .await;

    let out = tokio::process::Command::new(agent_bin())
        .args(["token", "revoke", "--key"])
        .arg(&fed.fleet.root_key.secret)
        .args([
            "--id",
            &old_chain.leaf().id().to_string(),
            "--server",
            &fed.fleet.root_nats.url(),
        ])
        .output()
        .await
        .expect("token revoke runs");
    assert!(out.status.success(), "{}", text(&out));
    let revoked_at = time::OffsetDateTime::now_utc();
    let revocations = fed.fleet.data_dir(fleet::HUB).join("revocations.cbor");
    wait_until("the hub has the revocation", DEADLINE, async || {
        revocations.exists()
    })
    .await;
    collect_until(
        "three heartbeats made after the revocation land",
        &mut beats,
        DEADLINE,
        |seen| {
            seen.iter()
                .filter(|m| made_after(m, revoked_at + Duration::from_secs(1)))
                .count()
                >= 3
        },
    )
    .await;
    // And nothing of the member's was refused on the way as revoked.
    for node in [&fed.hub, &fed.root] {
        let out = cli(
            &["dlq", "list", "--json", "--reason", "token_revoked"],
            node.config_path(),
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{} refused events as revoked: {}",
            node.name(),
            text(&out)
        );
    }
    drop(fed.hub);
}

/// The config of `base` (a fleet node) as another node: id, key, token and data dir
/// replaced.
fn variant(
    fleet: &Fleet,
    base: &str,
    id: &str,
    base_key: &Path,
    key: &Path,
    token: &Path,
) -> String {
    fleet
        .config(base, "")
        .replace(&format!("id = \"{base}\""), &format!("id = \"{id}\""))
        .replace(&base_key.display().to_string(), &key.display().to_string())
        .replace(
            &fleet.token_path(base).display().to_string(),
            &token.display().to_string(),
        )
        .replace(&format!("{base}-data"), &format!("{id}-data"))
}

#[tokio::test(flavor = "multi_thread")]
async fn local_publishes_go_up_wrapped_and_refusals_are_answered_with_a_reason() {
    let fed = Federation::start(concat!(
        "[[acl]]\nprincipal = \"local\"\nallow_publish = [\"nexus.salon-001.booking.>\"]\n\n",
        "[bridge]\n[[bridge.up]]\nlocal = \"app.booking.*\"\nevent = \"booking.*\"\n\n",
        "[[bridge.up]]\nlocal = \"app.wallet.*\"\nevent = \"wallet.*\"\n",
    ))
    .await;
    let mut landed = fed
        .root_client
        .subscribe("nexus.salon-001.>")
        .await
        .expect("subscribe");
    fed.root_client.flush().await.expect("flush");
    let ask = async |subject: &str, body: Bytes| -> Value {
        let answer = request_answered(&fed.app, subject, body, DEADLINE).await;
        serde_json::from_slice(&answer.payload).expect("a JSON answer")
    };

    // A bare object: wrapped in a new envelope.
    let bare = ask("app.booking.created", r#"{"booking_id": "b-1"}"#.into()).await;
    assert_eq!(bare["ok"], true, "{bare}");
    assert_eq!(bare["subject"], "nexus.salon-001.booking.created");
    // A whole envelope: its ids, time and headers survive; source and tenant are the node's.
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = json!({
        "event_id": id, "event_name": "booking.created", "version": 1,
        "ts": "2026-11-23T10:00:00.000Z", "source": "spoofed", "tenant": "other-tenant",
        "correlation_id": "corr-1", "causation_id": "cause-1",
        "headers": {"idempotency_key": "k-1"}, "payload": {"booking_id": "b-2"},
    });
    let full = ask("app.booking.created", envelope.to_string().into()).await;
    assert_eq!(full["ok"], true, "{full}");
    assert_eq!(full["event_id"], id.as_str());
    // Outside the ACL, malformed, not an object, an incomplete envelope, a complete one with
    // another event name, a subject that maps to no event name: refused with a reason.
    let mut other = envelope.clone();
    other["event_id"] = json!(uuid::Uuid::now_v7().to_string());
    other["event_name"] = json!("booking.other");
    let incomplete = r#"{"event_id": "x", "event_name": "booking.created", "payload": {}}"#;
    for (subject, body, code) in [
        (
            "app.wallet.paid",
            r#"{"amount": 1}"#.to_owned(),
            "acl_denied",
        ),
        ("app.booking.created", "not json".to_owned(), "malformed"),
        ("app.booking.created", "[1, 2]".to_owned(), "malformed"),
        ("app.booking.created", incomplete.to_owned(), "malformed"),
        (
            "app.booking.created",
            other.to_string(),
            "event_name_mismatch",
        ),
        ("app.booking.Created", "{}".to_owned(), "bad_event_name"),
    ] {
        let refused = ask(subject, Bytes::from(body.clone())).await;
        assert_eq!(refused["ok"], false, "{subject} {body}: {refused}");
        assert_eq!(refused["code"], code, "{subject} {body}: {refused}");
        assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A plain publish (no reply expected) goes up too.
    fed.app
        .publish("app.booking.updated", r#"{"booking_id": "b-3"}"#.into())
        .await
        .expect("publish");

    let seen = collect_until(
        "the three bridged events land",
        &mut landed,
        DEADLINE,
        |seen| seen.len() >= 3,
    )
    .await;
    let member_key = secret(&fed.fleet.member_key.secret).public();
    let mut by_payload = std::collections::HashMap::new();
    for message in &seen {
        let (event, envelope) = SignedEvent::open(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            MAX_COMMAND_BYTES,
        )
        .expect("a verifiable envelope");
        assert_eq!(event.signer, member_key);
        assert_eq!(envelope.source, fleet::MEMBER);
        assert_eq!(envelope.tenant.as_deref(), Some(fleet::TENANT));
        by_payload.insert(
            envelope.payload["booking_id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            envelope,
        );
    }
    let b1 = &by_payload["b-1"];
    assert_eq!(b1.event_name, "booking.created");
    assert_eq!(b1.event_id, bare["event_id"].as_str().unwrap_or(""));
    let b2 = &by_payload["b-2"];
    assert_eq!(b2.event_id, id);
    assert_eq!(b2.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(b2.causation_id.as_deref(), Some("cause-1"));
    assert_eq!(b2.ts, "2026-11-23T10:00:00.000Z");
    assert_eq!(
        b2.headers.get("idempotency_key").map(String::as_str),
        Some("k-1")
    );
    assert_eq!(by_payload["b-3"].event_name, "booking.updated");
    assert!(
        seen.iter().all(|m| !m.subject.as_str().contains("wallet")),
        "nothing outside the ACL went up"
    );

    // Every refusal is in the member's dead-letter store, raw, with its reason (written
    // by the refusal handler shortly after the answer).
    let config = fed.member.config_path().to_path_buf();
    let letters = wait_until(
        "the member dead-lettered every refusal",
        DEADLINE,
        async || {
            let out = cli(&["dlq", "list", "--json"], &config).await;
            let letters: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|l: &Value| l["stage"] == "bridge")
                .collect();
            (letters.len() >= 6).then_some(letters)
        },
    )
    .await;
    let mut reasons: Vec<&str> = letters
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "acl_denied",
            "bad_event_name",
            "event_name_mismatch",
            "malformed",
            "malformed",
            "malformed"
        ],
        "{letters:?}"
    );
    drop((fed.root, fed.hub));
}

/// A flood of commands at a member: `IN_FLIGHT` (64) are handled at once, `WAITING`
/// (1,024) wait (agent/src/commands.rs), the rest are dropped unanswered with a warning,
/// and the member keeps answering afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_commands_is_bounded_at_the_member_which_keeps_answering() {
    const HANDLED_AT_ONCE: usize = 64;
    const WAITING: usize = 1024;
    const FLOOD: usize = 1_200;
    let fed = Federation::start(
        "[bridge]\n[[bridge.down]]\ncommand = \"shop.hold\"\nlocal = \"app.shop.hold\"\ntimeout = \"30s\"\n",
    )
    .await;
    // The local app takes every request and never answers: each handler keeps its slot
    // until its command's deadline, and the commands waiting behind have expired by then.
    let mut held = fed.app.subscribe("app.shop.hold").await.expect("subscribe");
    fed.app.flush().await.expect("flush");
    let hub = async_nats::connect(fed.fleet.hub_nats.url())
        .await
        .expect("hub nats");
    let mut replies = hub.subscribe("flood.replies.>").await.expect("subscribe");
    hub.flush().await.expect("flush");

    // Sealed first (one timestamp, a 10 s deadline, well beyond the time the member takes
    // to read them all even on a loaded machine: no handler frees its slot before), then
    // published as fast as the client goes, where the hub would route them: on the hub's
    // NATS.
    let root_key = secret(&fed.fleet.root_key.secret);
    let issuer = Issuer {
        node_id: fleet::ROOT,
        key: &root_key,
        chain: None,
    };
    let now = time::OffsetDateTime::now_utc();
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            command::seal(
                &issuer,
                fleet::MEMBER,
                "shop.hold",
                serde_json::Map::new(),
                Duration::from_secs(10),
                now,
            )
            .expect("seal")
        })
        .collect();
    for (n, sealed) in flood.into_iter().enumerate() {
        hub.publish_with_reply_and_headers(
            sealed.subject,
            format!("flood.replies.{n}"),
            sealed.headers,
            sealed.body,
        )
        .await
        .expect("publish");
    }
    hub.flush().await.expect("flush");

    // The app sees the handled ones at once.
    let asked = collect_until(
        "every handler is waiting on the app",
        &mut held,
        DEADLINE,
        |seen| seen.len() >= HANDLED_AT_ONCE,
    )
    .await;
    assert!(asked.len() >= HANDLED_AT_ONCE);
    wait_until(
        "the member logs the dropped commands",
        DEADLINE,
        async || {
            fed.member
                .log()
                .contains("Too many commands waiting")
                .then_some(())
        },
    )
    .await;

    // At the deadline the handled ones time out, then the waiting ones expire: each of
    // those is answered, with an error that says so; the dropped ones never are.
    let answered = collect_until(
        "every command that was not dropped is answered",
        &mut replies,
        Duration::from_secs(60),
        |seen| seen.len() >= HANDLED_AT_ONCE + WAITING,
    )
    .await;
    for reply in &answered {
        let body: Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
        let code = body["payload"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "timeout" || code == "command_expired",
            "handled commands time out, waiting ones expire: {body}"
        );
    }

    // The member still answers, and nothing more came for the dropped commands.
    let out = fed.request(fleet::MEMBER, "agent.ping", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    hub.flush().await.expect("flush");
    let mut late = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), replies.next()).await {
        late += 1;
    }
    assert_eq!(
        answered.len() + late,
        HANDLED_AT_ONCE + WAITING,
        "{} of {FLOOD} commands were dropped",
        FLOOD - HANDLED_AT_ONCE - WAITING
    );
    drop((fed.root, fed.hub));
}
