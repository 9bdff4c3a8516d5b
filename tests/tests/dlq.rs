//! `nexus-agent dlq list | show | replay | purge` as an operator meets it: entries recorded
//! through `nexus_federation::deadletter` in a node's data dir (as the agent records them),
//! the commands run as processes on that node's config, and `replay` against a real
//! nats-server whose stream captures `_nexus.ingress.>`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use async_nats::jetstream;
use nexus_e2e::{agent_bin, keygen, NatsServer};
use nexus_federation::deadletter::{DeadLetter, DeadLetters, MAX_BODY, STAGE_INGRESS};
use time::OffsetDateTime;

const SUBJECT: &str = "_nexus.ingress.nexus.salon-001.iot.sensor_data";

/// A member node on disk: key, token (issued by a root key), config pointing at `uplink`.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    fn new(uplink: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root_key, root_public) = keygen(dir.path(), "root");
        let (key, public) = keygen(dir.path(), "node");
        let token = dir.path().join("node.token");
        let issued = Command::new(agent_bin())
            .args(["token", "issue", "--key"])
            .arg(&root_key)
            .args([
                "--node",
                "edge-01",
                "--node-key",
                &public,
                "--tenant",
                "salon-001",
            ])
            .args([
                "--role",
                "member",
                "--publish",
                "nexus.salon-001.>",
                "--out",
            ])
            .arg(&token)
            .stdin(Stdio::null())
            .output()
            .expect("token issue runs");
        assert!(
            issued.status.success(),
            "{}",
            String::from_utf8_lossy(&issued.stderr)
        );
        let config = dir.path().join("member.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"edge-01\"\nmode = \"member\"\ntenant = \"salon-001\"\n\
                 key = \"{}\"\ntoken = \"{}\"\ndata_dir = \"data\"\n\n\
                 [trust]\nroot_keys = [\"{root_public}\"]\n\n[uplink]\nurl = \"{uplink}\"\n",
                key.display(),
                token.display()
            ),
        )
        .expect("write config");
        Self { dir, config }
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("data").join("deadletter.db")
    }

    /// The store as the agent opens it (created on first use).
    fn store(&self) -> DeadLetters {
        DeadLetters::open(&self.store_path(), 64 << 20, 10_000).expect("open store")
    }

    fn dlq(&self, args: &[&str]) -> Output {
        let mut command = Command::new(agent_bin());
        command
            .arg("dlq")
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("NEXUS_") && key.contains("__") {
                command.env_remove(key);
            }
        }
        command.output().expect("nexus-agent dlq runs")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn headers(msg_id: &str) -> Vec<(String, String)> {
    vec![
        ("Nats-Msg-Id".to_owned(), msg_id.to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Nexus-Signer".to_owned(), "ed25519:abc".to_owned()),
    ]
}

fn entry(reason: &str, msg_id: &str, body: &[u8], at: OffsetDateTime) -> DeadLetter {
    DeadLetter::new(
        STAGE_INGRESS,
        reason,
        format!("{reason}: test detail"),
        SUBJECT,
        headers(msg_id),
        body.to_vec(),
        at,
    )
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Before the agent recorded anything, every command says the store does not exist yet
/// (exit 1), and none creates it.
#[test]
fn commands_on_a_node_without_a_store_say_so_and_create_nothing() {
    let node = Node::new("nats://127.0.0.1:4222");
    for args in [
        &["list"][..],
        &["show", "1"],
        &["purge"],
        &["replay", "--all"],
    ] {
        let out = node.dlq(args);
        assert_exit(&out, 1, &format!("{args:?}"));
        assert!(
            text(&out.stderr).contains("does not exist yet"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!node.store_path().exists());
}

/// `list` prints one line per entry (filters by reason and time, or JSON), `show` prints an
/// entry whole, `purge --before` and `purge` delete and print how many.
#[tokio::test]
async fn list_show_and_purge_work_on_what_the_agent_recorded() {
    let node = Node::new("nats://127.0.0.1:4222");
    let store = node.store();
    let now = OffsetDateTime::now_utc();
    let old = store
        .record(entry(
            "malformed",
            "m-1",
            b"{\"not\":\"an envelope\"}",
            now - time::Duration::days(10),
        ))
        .await
        .expect("record");
    let sig = store
        .record(entry("bad_signature", "m-2", b"{\"x\":1}", now))
        .await
        .expect("record");
    let binary = store
        .record(entry(
            "malformed",
            "m-3",
            &[0xde, 0xad, 0xbe, 0xef, 0xff],
            now,
        ))
        .await
        .expect("record");

    let out = node.dlq(&["list"]);
    assert_exit(&out, 0, "list");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with(&format!("{old}  ")), "{stdout}");
    for expected in [
        "malformed",
        "ingress",
        SUBJECT,
        "21 B",
        "malformed: test detail",
    ] {
        assert!(lines[0].contains(expected), "`{expected}` in {}", lines[0]);
    }
    assert!(lines[1].contains("bad_signature"), "{stdout}");

    let out = node.dlq(&["list", "--reason", "malformed", "--since", "1h"]);
    assert_exit(&out, 0, "list --reason --since");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&format!("{binary}  ")), "{stdout}");

    let out = node.dlq(&["list", "--json"]);
    assert_exit(&out, 0, "list --json");
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["id"], old);
    assert_eq!(first["reason"], "malformed");
    assert_eq!(first["body_size"], 21);

    let out = node.dlq(&["show", &sig.to_string()]);
    assert_exit(&out, 0, "show");
    let stdout = text(&out.stdout);
    for expected in [
        "bad_signature",
        "Nats-Msg-Id: m-2",
        "UTF-8",
        "{\"x\":1}",
        SUBJECT,
    ] {
        assert!(stdout.contains(expected), "`{expected}` in:\n{stdout}");
    }
    let out = node.dlq(&["show", &binary.to_string()]);
    assert!(
        text(&out.stdout).contains("de ad be ef ff"),
        "{}",
        text(&out.stdout)
    );
    let out = node.dlq(&["show", "999"]);
    assert_exit(&out, 1, "show of a missing id");
    assert!(text(&out.stderr).contains("no dead letter with id 999"));

    let out = node.dlq(&["purge", "--before", "7d"]);
    assert_exit(&out, 0, "purge --before");
    assert_eq!(text(&out.stdout).trim(), "1");
    assert!(store.get(old).expect("get").is_none());
    let out = node.dlq(&["purge"]);
    assert_exit(&out, 0, "purge");
    assert_eq!(text(&out.stdout).trim(), "2");
    assert_eq!(store.stats().expect("stats").entries, 0);
}

/// `replay` publishes the stored subject, headers and body to the node's ingress with a
/// JetStream publish and removes the entry only after the PubAck; an entry that cannot be
/// replayed (body cut at 1 MiB, or a Nats-Msg-Id the stream still dedups) stays, is named,
/// and makes the command exit 1.
#[tokio::test]
async fn replay_lands_the_message_in_the_ingress_stream_and_removes_the_entry() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "INGRESS".into(),
            subjects: vec!["_nexus.ingress.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let node = Node::new(&nats.url());
    let store = node.store();
    let now = OffsetDateTime::now_utc();
    let body = br#"{"event_id":"e-1","payload":{}}"#;
    let good = store
        .record(entry("not_granted", "e-1", body, now))
        .await
        .expect("record");
    let cut = store
        .record(entry("oversized", "e-2", &vec![b'x'; MAX_BODY + 1], now))
        .await
        .expect("record");

    let out = node.dlq(&["replay", &good.to_string(), &cut.to_string()]);
    assert_exit(&out, 1, "replay with one unreplayable entry");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{good}: replayed to `{SUBJECT}`")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{cut}: FAILED")), "{stdout}");
    assert!(stdout.contains("cannot be replayed"), "{stdout}");

    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 1);
    let landed = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(landed.subject.as_str(), SUBJECT);
    assert_eq!(&landed.payload[..], &body[..]);
    assert_eq!(
        landed.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("e-1")
    );
    assert_eq!(
        landed.headers.get("Nexus-Signer").map(|v| v.as_str()),
        Some("ed25519:abc")
    );
    assert!(
        store.get(good).expect("get").is_none(),
        "removed after its PubAck"
    );
    assert!(store.get(cut).expect("get").is_some(), "kept: not replayed");

    // The same Nats-Msg-Id again, inside the stream's duplicate window: JetStream acks it
    // as a duplicate without storing it, so the entry must stay.
    let again = store
        .record(entry(
            "not_granted",
            "e-1",
            b"{\"event_id\":\"e-1\",\"v\":2}",
            now,
        ))
        .await
        .expect("record");
    let out = node.dlq(&["replay", &again.to_string()]);
    assert_exit(&out, 1, "replay of a duplicate");
    assert!(
        text(&out.stdout).contains("duplicate window"),
        "{}",
        text(&out.stdout)
    );
    assert!(store.get(again).expect("get").is_some());
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

/// `replay` against a NATS that is not there fails clearly and removes nothing.
#[tokio::test]
async fn replay_without_a_reachable_ingress_fails_and_keeps_everything() {
    let node = Node::new("nats://127.0.0.1:1");
    let store = node.store();
    let id = store
        .record(entry(
            "not_granted",
            "e-9",
            b"{}",
            OffsetDateTime::now_utc(),
        ))
        .await
        .expect("record");
    let out = node.dlq(&["replay", "--all"]);
    assert_exit(&out, 1, "replay to nowhere");
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
    assert!(store.get(id).expect("get").is_some());
}

/// An IoT dead letter is a raw MQTT payload, not an envelope: replaying it into the
/// federation would be wrong, so `replay` refuses it, says what to do, and keeps it.
#[tokio::test]
async fn replay_refuses_an_iot_dead_letter_and_keeps_it() {
    let server = NatsServer::start();
    let node = Node::new(&server.url());
    let store = node.store();
    let raw = DeadLetter::new(
        nexus_federation::deadletter::STAGE_IOT,
        "not_a_number",
        "`warm` is not a number",
        "sensors/t-1/temperature",
        Vec::new(),
        b"warm".to_vec(),
        OffsetDateTime::now_utc(),
    );
    let id = store.record(raw).await.expect("record");
    let out = node.dlq(&["replay", &id.to_string()]);
    assert_exit(&out, 1, "replay of an IoT entry");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("iot.sensors"), "{said}");
    assert!(store.get(id).expect("get").is_some(), "the entry is kept");
}
