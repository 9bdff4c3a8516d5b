//! `nexus-agent token …` as an operator meets it: root → hub → member chains issued with the
//! real binary, attenuation refused by name, `inspect` without secrets, `verify` against
//! trust anchors, the audit event `issue --server` records on a real nats-server, and
//! concurrent `revoke`s that lose no id.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use async_nats::jetstream;
use nexus_e2e::{agent_bin, keygen, NatsServer};
use nexus_policies::token::{RevocationList, TokenId};

const TENANT: &str = "salon-001";

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("nexus-agent runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the command and returns its stdout; panics with stderr unless it exits 0.
fn ok(args: &[&str]) -> String {
    let out = agent(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nexus-agent {args:?} failed:\n{}",
        stderr(&out)
    );
    stdout(&out)
}

/// Runs the command, expects exit 1, returns stdout + stderr; never a panic.
fn fails(args: &[&str]) -> String {
    exits(1, args)
}

/// Runs the command, expects exit `code`, returns stdout + stderr; never a panic.
fn exits(code: i32, args: &[&str]) -> String {
    let out = agent(args);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(code),
        "nexus-agent {args:?}:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    text
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Keys for root, hub, member and a stranger, and the root-issued hub token.
struct Setup {
    dir: tempfile::TempDir,
    root: (PathBuf, String),
    hub: (PathBuf, String),
    member: (PathBuf, String),
    stranger: (PathBuf, String),
    hub_token: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let setup = Setup {
            root: keygen(&keys, "root"),
            hub: keygen(&keys, "hub"),
            member: keygen(&keys, "member"),
            stranger: keygen(&keys, "stranger"),
            hub_token: dir.path().join("tokens/hub.token"),
            dir,
        };
        let id = ok(&[
            "token",
            "issue",
            "--key",
            s(&setup.root.0),
            "--node",
            "hub-msk",
            "--node-key",
            setup.hub.1.as_str(),
            "--tenant",
            TENANT,
            "--role",
            "hub",
            "--publish",
            "nexus.salon-001.>",
            "nexus._core.>",
            "--receive",
            "_nexus.cmd.>",
            "--out",
            s(&setup.hub_token),
        ]);
        assert_eq!(id.trim().len(), 36, "a token id in UUID layout: {id}");
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `token issue` of a member token by the hub, with `publish` and extra arguments.
    fn member_args<'a>(
        &'a self,
        out: &'a Path,
        publish: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec![
            "token",
            "issue",
            "--key",
            s(&self.hub.0),
            "--parent",
            s(&self.hub_token),
            "--node",
            "edge-01",
            "--node-key",
            self.member.1.as_str(),
            "--tenant",
            TENANT,
            "--role",
            "member",
            "--publish",
            publish,
            "--receive",
            "_nexus.cmd.edge-01.>",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        args
    }
}

/// The root issues a hub token, the hub a narrower member token under it; the chain
/// verifies with the root key and fails, naming why, with another key.
#[test]
fn a_root_issued_hub_token_lets_the_hub_issue_a_narrower_member_token() {
    let setup = Setup::new();
    let member_token = setup.path("member.token");
    let pub_file = format!("{}.pub", s(&setup.member.0));
    let mut args = setup.member_args(&member_token, "nexus.salon-001.iot.>", &["--ttl", "7d"]);
    // --node-key also takes the path of the .pub file.
    let at = args.iter().position(|a| *a == "--node-key").expect("flag") + 1;
    args[at] = pub_file.as_str();
    let out = agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let summary = stderr(&out);
    for expected in [
        &id,
        "edge-01",
        "member",
        TENANT,
        "nexus.salon-001.iot.>",
        "--ttl 7d",
    ] {
        assert!(
            summary.contains(expected),
            "`{expected}` missing:\n{summary}"
        );
    }

    let valid = ok(&[
        "token",
        "verify",
        s(&member_token),
        "--trust",
        &setup.root.1,
    ]);
    assert!(
        valid.starts_with("valid: node edge-01, member, tenant salon-001, expires "),
        "{valid}"
    );
    // Several anchors (a rotation): one of them is enough.
    let root_pub = format!("{}.pub", s(&setup.root.0));
    ok(&[
        "token",
        "verify",
        s(&member_token),
        "--trust",
        &setup.stranger.1,
        "--trust",
        &root_pub,
    ]);

    let refused = fails(&[
        "token",
        "verify",
        s(&member_token),
        "--trust",
        &setup.stranger.1,
    ]);
    assert!(refused.contains("not a trust anchor"), "{refused}");
    assert!(
        refused.contains(&setup.root.1),
        "names the untrusted issuer: {refused}"
    );
}

/// A member token wider than its hub's is refused, naming the pattern, and nothing is
/// written.
#[test]
fn a_member_token_wider_than_its_hubs_is_refused_naming_the_pattern() {
    let setup = Setup::new();
    let out = setup.path("member.token");
    let text = fails(&setup.member_args(&out, "nexus.>", &[]));
    assert!(text.contains("does not grant publish `nexus.>`"), "{text}");
    assert!(!out.exists(), "nothing is written for a refused token");

    // Another tenant under a tenant-bound hub is refused too, saying which tenant.
    let mut args = setup.member_args(&out, "nexus.salon-001.iot.>", &[]);
    let at = args.iter().position(|a| *a == "--tenant").expect("flag") + 1;
    args[at] = "salon-002";
    let text = fails(&args);
    assert!(text.contains("--tenant salon-001"), "{text}");

    // A member cannot issue, whatever it asks for.
    ok(&setup.member_args(&out, "nexus.salon-001.iot.>", &[]));
    let text = fails(&[
        "token",
        "issue",
        "--key",
        s(&setup.member.0),
        "--parent",
        s(&out),
        "--node",
        "edge-02",
        "--node-key",
        &setup.stranger.1,
        "--tenant",
        TENANT,
        "--role",
        "member",
        "--publish",
        "nexus.salon-001.iot.x",
        "--out",
        s(&setup.path("edge-02.token")),
    ]);
    assert!(text.contains("a member token cannot issue"), "{text}");
}

/// A child's --ttl reaching past its parent's expiry is capped at it, and the summary says
/// so (the default 30d under a parent issued earlier for 30d, or as here, shorter).
#[test]
fn a_child_ttl_past_the_parents_expiry_is_capped() {
    let setup = Setup::new();
    let out = setup.path("member.token");
    let args = setup.member_args(&out, "nexus.salon-001.iot.>", &["--ttl", "365d"]);
    let issued = agent(&args);
    assert_eq!(issued.status.code(), Some(0), "{}", stderr(&issued));
    assert!(
        stderr(&issued).contains("expires with its parent"),
        "{}",
        stderr(&issued)
    );
    let text = ok(&["token", "inspect", s(&out)]);
    let expiries: Vec<&str> = text.lines().filter(|l| l.contains("expires:")).collect();
    assert_eq!(expiries.len(), 2, "{text}");
    assert_eq!(expiries[0], expiries[1], "{text}");
    ok(&["token", "verify", s(&out), "--trust", &setup.root.1]);
}

/// `inspect` shows every token of the chain, leaf first, and never prints a secret key
/// file it is given by mistake.
#[test]
fn inspect_shows_every_token_and_never_a_secret() {
    let setup = Setup::new();
    let member_token = setup.path("member.token");
    ok(&setup.member_args(&member_token, "nexus.salon-001.iot.>", &["--ttl", "7d"]));
    let text = ok(&["token", "inspect", s(&member_token)]);
    for expected in [
        "token 1 of 2 (leaf",
        "token 2 of 2 (top",
        "edge-01",
        "hub-msk",
        &setup.member.1,
        &setup.hub.1,
        &setup.root.1,
        TENANT,
        "role:        member",
        "role:        hub",
        "nexus.salon-001.iot.>",
        "_nexus.cmd.edge-01.>",
        "parent:      none",
    ] {
        assert!(text.contains(expected), "`{expected}` missing:\n{text}");
    }
    // Issued a moment ago with --ttl 7d (the second may have turned since).
    assert!(
        text.contains("(expires in 7d 0h)") || text.contains("(expires in 6d 23h)"),
        "{text}"
    );
    let leaf = text.split("token 2 of 2").next().expect("leaf part");
    assert!(leaf.find("edge-01") < leaf.find("parent:"), "{text}");

    let secret = std::fs::read_to_string(&setup.root.0).expect("key file");
    let body = secret.trim().rsplit(':').next().expect("key body");
    let text = fails(&["token", "inspect", s(&setup.root.0)]);
    assert!(
        text.contains("this is a secret key file, not a token"),
        "{text}"
    );
    assert!(!text.contains(body), "the secret was printed:\n{text}");
}

/// An expired chain fails `verify` with "expired"; at a time inside its window it passes.
#[test]
fn an_expired_token_fails_verification() {
    let setup = Setup::new();
    let old = setup.path("old.token");
    ok(&[
        "token",
        "issue",
        "--key",
        s(&setup.root.0),
        "--node",
        "hub-old",
        "--node-key",
        &setup.hub.1,
        "--role",
        "hub",
        "--publish",
        "nexus.>",
        "--not-before",
        "2026-01-01T00:00:00Z",
        "--ttl",
        "1h",
        "--out",
        s(&old),
    ]);
    let text = fails(&["token", "verify", s(&old), "--trust", &setup.root.1]);
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("2026-01-01T01:00:00Z"), "{text}");
    assert!(ok(&["token", "inspect", s(&old)]).contains("EXPIRED"));

    let valid = ok(&[
        "token",
        "verify",
        s(&old),
        "--trust",
        &setup.root.1,
        "--at",
        "2026-01-01T00:30:00Z",
    ]);
    assert!(
        valid.starts_with("valid: node hub-old, hub, no tenant"),
        "{valid}"
    );
}

/// Missing files, garbage files, bad patterns and ttls, overwriting: a clear error each,
/// exit 2 for a bad value on the command line, 1 for what fails when running, never a panic.
#[test]
fn bad_inputs_get_clear_errors() {
    let setup = Setup::new();
    let out = setup.path("m.token");
    let garbage = setup.path("garbage.token");
    std::fs::write(&garbage, b"\x00\x01 definitely not cbor").expect("write");

    for (extra, expected) in [
        (
            vec!["--ttl", "forever"],
            "invalid value 'forever' for '--ttl <DURATION>': not a duration",
        ),
        (
            vec!["--receive", "a..b"],
            "invalid value 'a..b' for '--receive <PATTERN>...': not a subject pattern",
        ),
        (vec!["--not-before", "yesterday"], "not an RFC 3339 time"),
    ] {
        let text = exits(2, &setup.member_args(&out, "nexus.salon-001.iot.>", &extra));
        assert!(text.contains(expected), "{extra:?}: {text}");
    }

    let mut args = setup.member_args(&out, "nexus.salon-001.iot.>", &[]);
    let at = args.iter().position(|a| *a == "--parent").expect("flag") + 1;
    args[at] = s(&garbage);
    let text = fails(&args);
    assert!(text.contains("is not a token chain"), "{text}");

    args[at] = "/nonexistent/hub.token";
    assert!(fails(&args).contains("/nonexistent/hub.token"));

    // The hub's chain, but signed with the wrong key.
    let mut args = setup.member_args(&out, "nexus.salon-001.iot.>", &[]);
    let at = args.iter().position(|a| *a == "--key").expect("flag") + 1;
    args[at] = s(&setup.stranger.0);
    let text = fails(&args);
    assert!(text.contains("is not the key"), "{text}");

    let mut args = setup.member_args(&out, "nexus.salon-001.iot.>", &[]);
    let at = args.iter().position(|a| *a == "--node-key").expect("flag") + 1;
    args[at] = "ed25519:short";
    assert!(exits(2, &args).contains("--node-key"));

    // Refuses to overwrite without --force; --force replaces.
    ok(&setup.member_args(&out, "nexus.salon-001.iot.>", &[]));
    let text = fails(&setup.member_args(&out, "nexus.salon-001.iot.>", &[]));
    assert!(text.contains("--force"), "{text}");
    ok(&setup.member_args(&out, "nexus.salon-001.iot.>", &["--force"]));

    assert!(fails(&["token", "inspect", s(&garbage)]).contains("is not a token chain"));
    assert!(fails(&["token", "inspect", "/nonexistent.token"]).contains("cannot read"));
    assert!(fails(&["token", "verify", s(&out), "--trust", "nope"]).contains("--trust"));
    assert!(exits(2, &["token", "verify", s(&out), "--trust", "ed25519:x"]).contains("--trust"));

    let out = agent(&["token", "issue", "--role", "king"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses: {}", stderr(&out));
}

/// `--server` records `nexus._core.audit.cap_token_issued` on the ingress stream, signed
/// by the issuer, with the token's id and grants in the payload.
#[tokio::test]
async fn issue_with_server_records_the_audit_event() {
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "INGRESS".to_owned(),
            subjects: vec!["_nexus.ingress.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create stream");

    let setup = Setup::new();
    let out = setup.path("audited.token");
    let url = server.url();
    let args: Vec<String> = [
        "token",
        "issue",
        "--key",
        s(&setup.hub.0),
        "--parent",
        s(&setup.hub_token),
        "--node",
        "edge-01",
        "--node-key",
        setup.member.1.as_str(),
        "--tenant",
        TENANT,
        "--role",
        "member",
        "--publish",
        "nexus.salon-001.iot.>",
        "--out",
        s(&out),
        "--server",
        url.as_str(),
        "--issuer-id",
        "hub-msk",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&args)
    })
    .await
    .expect("the command ran");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let token_id = stdout(&output).trim().to_owned();
    assert!(stderr(&output).contains("Recorded"), "{}", stderr(&output));

    assert_eq!(stream.info().await.expect("info").state.messages, 1);
    let message = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(
        message.subject.as_str(),
        "_nexus.ingress.nexus._core.audit.cap_token_issued"
    );
    let signer = message
        .headers
        .get("Nexus-Signer")
        .expect("a signer header")
        .as_str();
    assert_eq!(signer, setup.hub.1, "signed by the issuer");
    let envelope: serde_json::Value =
        serde_json::from_slice(&message.payload).expect("a JSON envelope");
    assert_eq!(envelope["event_name"], "audit.cap_token_issued");
    nexus_e2e::contract::check(&nexus_e2e::contract::registry(), &envelope)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(envelope["source"], "hub-msk");
    let payload = &envelope["payload"];
    assert_eq!(payload["token_id"], token_id.as_str());
    assert_eq!(payload["node_id"], "edge-01");
    assert_eq!(payload["node_key"], setup.member.1.as_str());
    assert_eq!(payload["role"], "member");
    assert_eq!(payload["tenant"], TENANT);
    assert_eq!(
        payload["publish"],
        serde_json::json!(["nexus.salon-001.iot.>"])
    );
    assert!(payload["parent"].is_string(), "{payload}");
    let text = String::from_utf8_lossy(&message.payload);
    let secret = std::fs::read_to_string(&setup.hub.0).expect("key file");
    assert!(!text.contains(secret.trim().rsplit(':').next().expect("body")));
}

/// Without a stream to ack the audit event, `--server` fails with a clear error (the token
/// itself was written).
#[test]
fn issue_with_server_fails_when_nothing_acks() {
    let server = NatsServer::start();
    let setup = Setup::new();
    let out = setup.path("unaudited.token");
    let url = server.url();
    let text = fails(&setup.member_args(
        &out,
        "nexus.salon-001.iot.>",
        &["--server", url.as_str(), "--issuer-id", "hub-msk"],
    ));
    assert!(text.contains("audit event was not recorded"), "{text}");
    assert!(out.exists(), "the token is written before the audit event");

    let text = fails(&setup.member_args(
        &setup.path("other.token"),
        "nexus.salon-001.iot.>",
        &["--server", "nats://127.0.0.1:1"],
    ));
    assert!(text.contains("nats://127.0.0.1:1"), "{text}");
}

/// Several `token revoke` processes at once against the root's NATS, each adding its own
/// ids: every id ends up in the signed list. (Each writes with the KV store's revision
/// check and merges again when another got in between; a plain read-then-put kept only
/// some of them.)
#[tokio::test]
async fn concurrent_revocations_keep_every_id() {
    const WRITERS: usize = 8;
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    // As the root agent creates it at start.
    let store = js
        .create_key_value(jetstream::kv::Config {
            bucket: "NEXUS_TRUST".to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create the trust bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let (root_key, root_public) = keygen(dir.path(), "root");
    let url = server.url();

    // Two ids per writer, all distinct.
    let ids: Vec<[String; 2]> = (0..WRITERS)
        .map(|n| [format!("{:032x}", 2 * n + 1), format!("{:032x}", 2 * n + 2)])
        .collect();
    // All started before any is waited for, so that they overlap.
    let children: Vec<_> = ids
        .iter()
        .map(|[a, b]| {
            Command::new(agent_bin())
                .args(["token", "revoke", "--key", s(&root_key), "--server", &url])
                .args(["--id", a, "--id", b])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("token revoke starts")
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| child.wait_with_output().expect("token revoke ends"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("waited");
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    }

    let bytes = store
        .get("revocations")
        .await
        .expect("read the list")
        .expect("a list was written");
    let list = RevocationList::decode(&bytes).expect("a revocation list");
    let anchor = nexus_policies::PublicKey::parse(&root_public).expect("root key");
    list.verify(&[anchor]).expect("signed by the root key");
    let missing: Vec<&String> = ids
        .iter()
        .flatten()
        .filter(|id| {
            let id: TokenId = id.parse().expect("a token id");
            !list.ids().contains(&id)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} revoked ids were lost: {missing:?}",
        missing.len(),
        2 * WRITERS
    );
    assert_eq!(list.ids().len(), 2 * WRITERS);
}
