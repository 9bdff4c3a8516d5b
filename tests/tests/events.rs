//! `nexus-agent events` as an app developer meets it: list, show, validate a payload with
//! the pointer of the failing field, scaffold, lint (a breaking change caught against a
//! directory and against a git ref), and the AsyncAPI document through the AsyncAPI
//! project's own parser — which refuses a broken one, so its verdict means something.
//! The member's refusal of an invalid app event and the contract on a live fleet's traffic
//! are in tests/tests/examples.rs.

use std::path::Path;
use std::process::{Command, Output};

use nexus_e2e::examples::text;
use nexus_e2e::{agent_bin, contract};
use serde_json::{json, Value};

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("nexus-agent runs")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
}

#[test]
fn list_show_and_validate_name_the_failing_field() {
    let out = agent(&["events", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for event in ["edge.health@1", "iot.sensor_data@1", "agent.ping.result@1"] {
        assert!(listed.contains(event), "{event} in:\n{listed}");
    }
    let out = agent(&["events", "show", "iot.sensor_data"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NEXUS_IOT"));

    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        json!({"sensor_id": "s-1", "metric": "co2", "value": 650,
        "unit": "ppm", "timestamp_unix": 1_750_000_000})
        .to_string(),
    )
    .expect("write");
    let out = agent(&[
        "events",
        "validate",
        "iot.sensor_data@1",
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A whole envelope is read for its payload; a wrong field is named by its pointer.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"event_id": "x", "event_name": "iot.sensor_data", "version": 1,
        "payload": {"sensor_id": "s-1", "metric": "co2", "value": "high", "unit": "ppm",
                    "timestamp_unix": 1_750_000_000}})
        .to_string(),
    )
    .expect("write");
    let out = agent(&[
        "events",
        "validate",
        "iot.sensor_data",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("at /value"),
        "{}",
        text(&out)
    );
    let out = agent(&[
        "events",
        "validate",
        "no.such",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.such is not registered"));
}

#[test]
fn a_scaffold_lints_clean_and_a_breaking_change_is_caught_against_a_dir_and_a_git_ref() {
    let repo = tempfile::tempdir().expect("tempdir");
    let registry = repo.path().join("events");
    let dir = registry.to_str().expect("utf-8");
    let out = agent(&[
        "events",
        "scaffold",
        "booking.created",
        "--version",
        "1",
        "--dir",
        dir,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = agent(&["events", "lint", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = tempfile::tempdir().expect("tempdir");
    let copy = before.path().join("booking.created/1");
    std::fs::create_dir_all(copy.join("examples")).expect("mkdir");
    for file in ["schema.json", "event.toml", "examples/1.json"] {
        std::fs::copy(
            registry.join("booking.created/1").join(file),
            copy.join(file),
        )
        .expect("copy");
    }
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "booking.created@1"]);

    // Within version 1: the required field renamed (removed, and a new one required).
    let schema_path = registry.join("booking.created/1/schema.json");
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).expect("read")).expect("JSON");
    schema["required"] = json!(["id"]);
    schema["properties"] = json!({"id": {"type": "string"}});
    std::fs::write(&schema_path, schema.to_string()).expect("write");
    std::fs::write(
        registry.join("booking.created/1/examples/1.json"),
        r#"{"id": "b-1"}"#,
    )
    .expect("write");
    let against_dir = before.path().to_str().expect("utf-8");
    for against in [against_dir, "HEAD"] {
        let out = agent(&["events", "lint", dir, "--against", against]);
        assert_eq!(out.status.code(), Some(1), "{against}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("breaking change within version 1: required field `/booking_id` removed"),
            "{against}: {}",
            text(&out)
        );
        assert!(said.contains("publish it as version 2"), "{}", text(&out));
    }
    // Without the previous registry the change is just an event.
    let out = agent(&["events", "lint", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // An operator's registry may not redefine the agent's own events.
    let out = agent(&["events", "scaffold", "edge.health", "--dir", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = agent(&["events", "lint", dir]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("redefines a built-in event"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace `edge` is the agent's own"));
}

/// The repository's own registry lints clean as a directory too (CONTRIBUTING.md's
/// command): its entries are the built-ins, so the agent's rules apply to them.
#[test]
fn the_repositorys_own_registry_lints_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/registry");
    let out = agent(&["events", "lint", dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 error(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_official_parser_takes_the_document_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = agent(&["events", "asyncapi"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let document: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let path = dir.path().join("asyncapi.json");
    std::fs::write(&path, &out.stdout).expect("write");
    let parsed = contract::parse_asyncapi(&path);
    assert_eq!(parsed.status.code(), Some(0), "{}", text(&parsed));
    assert!(String::from_utf8_lossy(&parsed.stdout).contains("valid: AsyncAPI 3.0.0"));

    let mut broken = document.clone();
    broken["operations"]["publish_edge_health_v1"]["channel"] =
        json!({"$ref": "#/channels/no_such_channel"});
    broken.as_object_mut().expect("an object").remove("info");
    std::fs::write(&path, broken.to_string()).expect("write");
    let parsed = contract::parse_asyncapi(&path);
    assert_eq!(parsed.status.code(), Some(1), "{}", text(&parsed));
}

#[test]
fn a_broken_registry_file_is_named_with_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("events");
    let entry = registry.join("booking.created/1");
    std::fs::create_dir_all(&entry).expect("mkdir");
    std::fs::write(entry.join("schema.json"), "{\"$schema\": 5").expect("write");
    std::fs::write(
        entry.join("event.toml"),
        "description = \"x\"\nowner = \"y\"\n",
    )
    .expect("write");
    let out = agent(&[
        "events",
        "list",
        "--registry",
        registry.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("booking.created/1/schema.json") && said.contains("not JSON"),
        "{said}"
    );
}

/// Every schema's list of refusal codes (audit.rejected's `reason`, the commands' error
/// replies) is the agent's whole list, in its order: a new reason cannot be forgotten in
/// the contract.
#[test]
fn the_schemas_list_every_refusal_code() {
    let codes: Vec<Value> = nexus_federation::refusal::Reason::ALL
        .iter()
        .map(|r| Value::String(r.as_str().to_owned()))
        .collect();
    fn enums<'a>(value: &'a Value, out: &mut Vec<&'a Vec<Value>>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match inner {
                        Value::Array(list)
                            if key == "enum" && list.contains(&json!("bad_signature")) =>
                        {
                            out.push(list)
                        }
                        _ => enums(inner, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| enums(v, out)),
            _ => {}
        }
    }
    let registry = contract::registry();
    let mut checked = 0;
    for entry in registry.entries() {
        let mut found = Vec::new();
        enums(&entry.schema, &mut found);
        for list in found {
            assert_eq!(list, &codes, "{}: the refusal codes", entry.id());
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} lists of refusal codes checked");
}

/// The root's landing under `[events] unknown = "audit"` and `invalid = "refuse"`, with a
/// member that has no registry (so it checks nothing itself): a valid registered event
/// lands; an unregistered one lands and is audited; an invalid one does not land, is
/// kept in the root's dead letters with the pointer, and is audited.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_lands_audits_or_refuses_by_its_policies() {
    use futures::StreamExt as _;
    use nexus_e2e::examples::example_registry;
    use nexus_e2e::{fleet, request_answered, wait_until, Fleet};
    use std::time::Duration;
    const DEADLINE: Duration = Duration::from_secs(30);

    let fleet = Fleet::new();
    let root_client = fleet.root_nats.client().await;
    let mut landed = root_client
        .subscribe(format!("nexus.{}.booking.>", fleet::TENANT))
        .await
        .expect("subscribe");
    let mut audits = root_client
        .subscribe("nexus._core.audit.rejected")
        .await
        .expect("subscribe");
    root_client.flush().await.expect("flush");
    let root = fleet.spawn(
        fleet::ROOT,
        &format!(
            "[events]\nregistry = \"{}\"\nunknown = \"audit\"\ninvalid = \"refuse\"\n",
            example_registry().display()
        ),
    );
    let _hub = fleet.spawn(fleet::HUB, "");
    let _member = fleet.spawn(
        fleet::MEMBER,
        "[bridge]\n[[bridge.up]]\nlocal = \"app.booking.*\"\nevent = \"booking.*\"\n",
    );
    let app = fleet.member_nats.client().await;
    for (subject, body) in [
        ("app.booking.created", r#"{"booking_id": "b-1"}"#),
        ("app.booking.created", r#"{"booking_id": 7}"#),
        ("app.booking.noted", r#"{"note": "window seat"}"#),
    ] {
        let answer = request_answered(&app, subject, body.into(), DEADLINE).await;
        let answer: Value = serde_json::from_slice(&answer.payload).expect("JSON");
        assert_eq!(answer["ok"], true, "the member has no registry: {answer}");
    }

    // Both audits come from the root, at its ingress.
    let mut reasons = Vec::new();
    let mut details = Vec::new();
    wait_until("the root audits both", DEADLINE, async || {
        while let Some(Some(message)) = futures::FutureExt::now_or_never(audits.next()) {
            let audit: Value = serde_json::from_slice(&message.payload).expect("JSON");
            if audit["source"] == fleet::ROOT && audit["payload"]["stage"] == "ingress" {
                reasons.push(audit["payload"]["reason"].as_str().unwrap_or("").to_owned());
                details.push(audit["payload"]["detail"].as_str().unwrap_or("").to_owned());
            }
        }
        reasons.sort();
        (reasons == ["schema_invalid", "unregistered_event"]).then_some(())
    })
    .await;
    assert!(
        details.iter().any(|d| d.contains("/booking_id")),
        "{details:?}"
    );

    // The root's dead letters keep the refused one only (the unregistered one landed).
    let out = Command::new(agent_bin())
        .args(["dlq", "list", "--json", "-c"])
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .expect("nexus-agent runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let letters: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(letters.len(), 1, "{}", text(&out));
    assert_eq!(letters[0]["reason"], "schema_invalid", "{}", text(&out));

    // What landed: the valid event and the unregistered one, never the invalid one (its
    // refusal was audited above, after its turn in the ingress).
    let mut payloads = Vec::new();
    wait_until("two events land", DEADLINE, async || {
        while let Some(Some(message)) = futures::FutureExt::now_or_never(landed.next()) {
            let envelope: Value = serde_json::from_slice(&message.payload).expect("JSON");
            payloads.push(envelope["payload"].clone());
        }
        (payloads.len() >= 2).then_some(())
    })
    .await;
    payloads.sort_by_key(|p| p.to_string());
    assert_eq!(
        payloads,
        [json!({"booking_id": "b-1"}), json!({"note": "window seat"})],
        "{}",
        root.log()
    );
}
