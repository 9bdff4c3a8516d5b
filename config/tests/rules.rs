//! One owner per rule: for each rule that `check` (this crate's validation) and the
//! running agent both apply, a table of inputs that both must accept or refuse alike.
//!
//! The runtime side of each rule is the function the federation and the agent call (they
//! re-export or call `nexus_policies`' functions and this crate's types), so a copy that
//! drifts on either side fails here:
//! - node ids and tenants: `nexus_policies::ids` (command subjects, envelopes, tokens);
//! - event and command names: `subjects::is_valid_event_name` (the up bridge's mapping,
//!   command subjects), plus the domains reserved for the agent's own events and commands;
//! - local subjects of bridge rules: `subjects::not_app_subject`, which every subject the
//!   federation uses on a NATS (ingress, commands, request replies, `$JS`) is refused by;
//! - landing domain subjects: what the root's journal (`nexus.>`) captures;
//! - key text forms: `PublicKey::parse` and `SecretKey::parse`;
//! - the token role of a mode: `Mode::role`;
//! - MQTT topic templates: `TopicTemplate::parse` (the IoT bridge compiles with it);
//! - config enum names: one table per enum, read by the validation and printed by
//!   `check` (and the exact messages for a name that is none of them).

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::Path;

use figment::Jail;

mod common;
use common::{MEMBER, ROOT};
use nexus_config::{
    load, BridgeEncoding, Config, ConfigErrors, ErrorKind, LogFormat, Mode, MqttProtocol,
    PayloadFormat, TopicTemplate, WhenFull,
};
use nexus_policies::keys::SECRET_KEY_PREFIX;
use nexus_policies::subjects::{self, AGENT_DOMAIN, EVENT_PREFIX, RESERVED_EVENT_DOMAINS};
use nexus_policies::{ids, PublicKey, Role, SecretKey, SubjectPattern};

/// What `check` says of each config, loaded in one jail holding the node's files: its key
/// and a token for `node_id` in each role (`member.token`, `hub.token`, `root.token`).
/// What `check` prints of an accepted config loads back to the same config.
fn check_all(node_id: &str, configs: &[String]) -> Vec<Result<Config, ConfigErrors>> {
    let mut results = Vec::new();
    Jail::expect_with(|jail| {
        for role in [Role::Member, Role::Hub, Role::Root] {
            let token = format!("{role}.token");
            common::write_node_files(jail, node_id, role, Some(&token), "empty.toml", "")?;
        }
        for (index, config) in configs.iter().enumerate() {
            let file = format!("config-{index}.toml");
            jail.create_file(&file, config)?;
            let result = load(Path::new(&file));
            if let Ok(config) = &result {
                let printed = config.redacted();
                jail.create_file("printed.toml", &printed)?;
                let mut again =
                    load(Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}\n{printed}"));
                again.source.clone_from(&config.source);
                assert_eq!(again, *config, "{printed}");
            }
            results.push(result);
        }
        Ok(())
    });
    results
}

/// Whether `check` accepted the config; a refusal must be on `key` alone (so it is the rule
/// under test that refused, not something else in the config).
fn accepted(result: &Result<Config, ConfigErrors>, key: &str, input: &str) -> bool {
    match result {
        Ok(_) => true,
        Err(errors) => {
            assert!(
                errors.iter().all(|e| e.key.as_deref() == Some(key)),
                "{input:?}: refused for something else than {key}:\n{errors}"
            );
            false
        }
    }
}

/// For each input, loads `config(input)` and asserts that `check` accepts it (or refuses
/// it on `key`) exactly when the runtime's rule `runtime(input)` accepts it.
fn agree(
    node_id: &str,
    inputs: &[String],
    key: &str,
    config: impl Fn(&str) -> String,
    runtime: impl Fn(&str) -> bool,
) {
    let configs: Vec<String> = inputs.iter().map(|input| config(input)).collect();
    for (input, result) in inputs.iter().zip(check_all(node_id, &configs)) {
        assert_eq!(
            accepted(&result, key, input),
            runtime(input),
            "{key} = {input:?}"
        );
    }
}

/// `texts` as owned strings.
fn owned(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `base` with the line `from` replaced by `to` (which must occur).
fn with(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} is not in the config");
    base.replacen(from, to, 1)
}

/// Id-like inputs: valid ones, the reserved `local`, and every way to be invalid.
fn id_inputs() -> Vec<String> {
    let mut inputs: Vec<String> = [
        "edge-msk-01",
        "salon_001",
        "007",
        "a",
        "-",
        "_core",
        "local",
        "",
        "Edge",
        "a.b",
        "a b",
        "a*",
        "a>",
        "é",
        "$sys",
        "a/b",
    ]
    .map(str::to_owned)
    .to_vec();
    inputs.push("x".repeat(ids::MAX_ID_LEN));
    inputs.push("x".repeat(ids::MAX_ID_LEN + 1));
    inputs
}

/// `node.id` is accepted exactly when the runtime routes commands to it: the command
/// subject built for it parses back to it.
#[test]
fn node_ids_agree_with_the_runtimes_command_routing() {
    let routed = |id: &str| {
        let command = subjects::command_subject(id, "agent.ping");
        let routed = subjects::parse_command_subject(&command) == Some((id, "agent.ping"));
        assert_eq!(routed, ids::check_node_id(id).is_ok(), "{id:?}");
        routed
    };
    let config = |id: &str| with(ROOT, "id = \"root\"", &format!("id = {}", toml_string(id)));
    agree("root", &id_inputs(), "node.id", config, routed);
}

/// `node.tenant` is accepted exactly when the runtime accepts it in an envelope (not the
/// reserved `_core`).
#[test]
fn tenants_agree_with_the_runtimes_id_rule() {
    let config = |tenant: &str| {
        let line = format!("mode = \"root\"\ntenant = {}\n", toml_string(tenant));
        with(ROOT, "mode = \"root\"\n", &line)
    };
    let runtime = |tenant: &str| {
        assert_eq!(
            ids::check_id(tenant).is_ok(),
            subjects::is_valid_id(tenant),
            "{tenant:?}"
        );
        ids::check_tenant(tenant).is_ok()
    };
    agree("root", &id_inputs(), "node.tenant", config, runtime);
}

/// Literal event and command names (patterns are judged token by token the same way).
///
/// Up to and just over [`subjects::MAX_EVENT_NAME_LEN`].
fn name_inputs() -> Vec<String> {
    let mut inputs: Vec<String> = [
        "booking.created",
        "booking.created.v2",
        "a.b",
        "shop-1.pos_sale",
        "booking",
        "Booking.created",
        "booking.Created",
        "booking.é",
        "booking.$x",
        "booking.a/b",
        "agent.ping",
        "agent.custom",
        "edge.health",
        "audit.rejected",
        "agents.ping",
        "iot.sensor_data",
    ]
    .map(str::to_owned)
    .to_vec();
    // The longest name the runtime accepts: two tokens, 63 + 1 + 64 bytes.
    let longest = format!("{}.{}", "a".repeat(63), "b".repeat(ids::MAX_ID_LEN));
    assert_eq!(longest.len(), subjects::MAX_EVENT_NAME_LEN);
    inputs.push(format!("{longest}x"));
    inputs.push(longest);
    inputs.push(format!("booking.{}", "x".repeat(ids::MAX_ID_LEN + 1)));
    inputs
}

/// An up rule's `event` is accepted exactly when the runtime's bridge maps a message to
/// it (`is_valid_event_name`) and its domain is not one of the agent's own events.
#[test]
fn event_names_agree_with_the_runtimes_bridge() {
    let config = |event: &str| {
        let event = toml_string(event);
        format!("{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\nevent = {event}\n")
    };
    let runtime = |event: &str| {
        let domain = event.split('.').next().unwrap_or_default();
        subjects::is_valid_event_name(event) && !RESERVED_EVENT_DOMAINS.contains(&domain)
    };
    agree(
        "edge-01",
        &name_inputs(),
        "bridge.up[0].event",
        config,
        runtime,
    );
}

/// A down rule's `command` is accepted exactly when the runtime routes a command of that
/// name (its command subject parses) and it is not in the built-in `agent` domain (which
/// the agent answers itself).
#[test]
fn command_names_agree_with_the_runtimes_command_routing() {
    let config = |command: &str| {
        let command = toml_string(command);
        format!("{MEMBER}\n[[bridge.down]]\ncommand = {command}\nlocal = \"app.x\"\n")
    };
    let runtime = |command: &str| {
        let subject = subjects::command_subject("edge-01", command);
        let routed = subjects::parse_command_subject(&subject) == Some(("edge-01", command));
        assert_eq!(
            routed,
            subjects::is_valid_event_name(command),
            "{command:?}"
        );
        routed && command.split('.').next() != Some(AGENT_DOMAIN)
    };
    agree(
        "edge-01",
        &name_inputs(),
        "bridge.down[0].command",
        config,
        runtime,
    );
}

/// A bridge rule's `local` side is refused exactly when its first token is a wildcard or
/// starts subjects that are no app's; every subject the federation itself uses on a NATS
/// is among those, so no rule can capture or shadow them.
#[test]
fn local_subjects_agree_with_the_subjects_the_runtime_owns() {
    let event = subjects::event_subject(Some("salon-001"), "booking.created", "edge-01");
    let runtime_subjects = [
        subjects::ingress_subject(&event),
        subjects::command_subject("edge-01", "booking.cancel"),
        format!("{}.nexus-cmd.abc.def", subjects::INBOX_PREFIX),
        "$JS.API.STREAM.INFO.NEXUS_INGRESS".to_owned(),
        "$SYS.ACCOUNT.x.CONNECT".to_owned(),
    ];
    let mut inputs: Vec<String> = runtime_subjects.to_vec();
    for subject in &runtime_subjects {
        let first = subject.split('.').next().expect("a token");
        inputs.push(format!("{first}.>"));
    }
    inputs.extend(
        [
            "app.booking.created",
            "app.>",
            "nexus.salon-001.x",
            "_nexusx.a",
            "_inbox.a",
            "inbox.a",
            "a$.b",
            "*.booking",
            ">",
        ]
        .map(str::to_owned),
    );
    // The other side of the rule takes the same wildcards, so only `local` can be refused.
    let other_side = |local: &str| match local.rsplit('.').next() {
        Some(">") if local.split('.').count() == 1 => "booking.>",
        Some(">") => "booking.x.>",
        _ if local.starts_with("*.") => "booking.*",
        _ => "booking.x",
    };
    let apps = |local: &str| {
        let first = local.split('.').next().unwrap_or_default();
        let apps = !matches!(first, "*" | ">") && subjects::not_app_subject(first).is_none();
        let captures_the_runtimes = runtime_subjects
            .iter()
            .any(|s| SubjectPattern::parse(local).is_ok_and(|p| p.matches(s)));
        assert!(
            !(apps && captures_the_runtimes),
            "{local:?} captures a runtime subject"
        );
        apps
    };
    let up = |local: &str| {
        let (local, event) = (toml_string(local), other_side(local));
        format!("{MEMBER}\n[[bridge.up]]\nlocal = {local}\nevent = \"{event}\"\n")
    };
    agree("edge-01", &inputs, "bridge.up[0].local", up, apps);
    let down = |local: &str| {
        let (local, command) = (toml_string(local), other_side(local));
        format!("{MEMBER}\n[[bridge.down]]\ncommand = \"{command}\"\nlocal = {local}\n")
    };
    agree("edge-01", &inputs, "bridge.down[0].local", down, apps);
}

/// A landing domain's subject is accepted exactly when the root's journal, which captures
/// `nexus.>` (and which the domain streams select from), covers it.
#[test]
fn landing_subjects_agree_with_the_journal() {
    let journal = SubjectPattern::parse(&format!("{EVENT_PREFIX}.>")).expect("valid");
    let inputs = [
        "nexus.>",
        "nexus.*.booking.>",
        "nexus._core.edge.health.*",
        "nexus.salon-001.iot.sensor_data",
        "nexus.*",
        "nexus",
        "nexusx.>",
        "*.salon-001.>",
        "*.>",
        ">",
        "_nexus.ingress.>",
        "app.x",
    ];
    let config = |subject: &str| {
        let subject = toml_string(subject);
        format!(
            "{ROOT}\n[[landing.domains]]\nname = \"NEXUS_TEST\"\nsubjects = [{subject}]\n\
             max_age = \"1d\"\n"
        )
    };
    let covered = |subject: &str| {
        let pattern = SubjectPattern::parse(subject).expect("valid");
        let covered = journal.covers(&pattern);
        assert_eq!(
            covered,
            subjects::is_event_subject_pattern(subject),
            "{subject}"
        );
        covered
    };
    agree(
        "root",
        &owned(&inputs),
        "landing.domains[0].subjects[0]",
        config,
        covered,
    );
    // Every event subject the runtime builds lands in the journal.
    for subject in [
        subjects::event_subject(Some("salon-001"), "iot.sensor_data", "edge-01"),
        subjects::event_subject(None, "edge.health", "edge-01"),
        subjects::event_subject(None, "audit.rejected", "hub-1"),
    ] {
        assert!(journal.matches(&subject), "{subject}");
    }
}

/// `trust.root_keys` entries are accepted exactly when `PublicKey::parse` (what the agent's
/// CLI, the token verifier and the provenance headers use) accepts them.
#[test]
fn root_keys_agree_with_the_public_key_text_form() {
    let valid = common::ROOT_KEY;
    let secret = SecretKey::from_seed(&[3; 32]).expect("key");
    let inputs = [
        valid.to_owned(),
        format!(" {valid} "),
        valid.replace("ed25519:", "ED25519:"),
        valid.replace("ed25519:", ""),
        valid[..valid.len() - 1].to_owned(),
        format!("{valid}A"),
        "ed25519:!!!".to_owned(),
        // The identity point: a weak key.
        format!("ed25519:AQ{}", "A".repeat(41)),
        secret.to_file_text().trim().to_owned(),
        secret.public().to_string(),
        String::new(),
    ];
    let config = |key: &str| {
        let line = format!("root_keys = [{}]", toml_string(key));
        with(ROOT, &format!("root_keys = [\"{valid}\"]"), &line)
    };
    agree("root", &inputs, "trust.root_keys[0]", config, |key| {
        PublicKey::parse(key).is_ok()
    });
    // A secret key pasted there is never echoed.
    let pasted = config(secret.to_file_text().trim());
    for result in check_all("root", &[pasted]) {
        let errors = result.expect_err("refused");
        assert!(!errors.to_string().contains(SECRET_KEY_PREFIX), "{errors}");
    }
}

/// `node.key` files are accepted exactly when `SecretKey::parse` (what the agent loads its
/// key with) accepts them.
#[test]
fn key_files_agree_with_the_secret_key_text_form() {
    let secret = SecretKey::from_seed(&[3; 32]).expect("key");
    let text = secret.to_file_text();
    let inputs = [
        text.to_string(),
        text.trim().to_owned(),
        format!("\n{}\n\n", text.trim()),
        text.replace("ed25519-secret:", "ed25519:"),
        text.replace("ed25519-secret:", ""),
        text.trim()[..text.trim().len() - 1].to_owned(),
        secret.public().to_string(),
        String::new(),
    ];
    let mut results = Vec::new();
    Jail::expect_with(|jail| {
        common::write_node_files(jail, "root", Role::Root, None, "root.toml", ROOT)?;
        for input in &inputs {
            jail.create_file("node.key", input)?;
            results.push(load(Path::new("root.toml")));
        }
        Ok(())
    });
    for (input, result) in inputs.iter().zip(&results) {
        let runtime = SecretKey::parse(input).is_ok();
        assert_eq!(accepted(result, "node.key", input), runtime, "{input:?}");
    }
}

/// A token is accepted for a mode exactly when its role is `Mode::role` (what the agent
/// holds its own token to, e.g. on rotation).
#[test]
fn token_roles_agree_with_the_role_of_each_mode() {
    let roles = [Role::Member, Role::Hub, Role::Root];
    let mut cases = Vec::new();
    for mode in Mode::ALL.iter().copied() {
        for role in roles {
            let token = format!("token = \"{role}.token\"");
            let config = match mode {
                Mode::Member => with(MEMBER, "token = \"member.token\"", &token),
                Mode::Hub => with(
                    &with(MEMBER, "mode = \"member\"", "mode = \"hub\""),
                    "token = \"member.token\"",
                    &token,
                ),
                Mode::Root => with(
                    &with(ROOT, "id = \"root\"", "id = \"edge-01\""),
                    "data_dir = \"data\"",
                    &format!("{token}\ndata_dir = \"data\""),
                ),
            };
            cases.push((mode, role, config));
        }
    }
    let configs: Vec<String> = cases.iter().map(|(_, _, c)| c.clone()).collect();
    for ((mode, role, _), result) in cases.iter().zip(check_all("edge-01", &configs)) {
        assert_eq!(
            accepted(&result, "node.token", &format!("{role} token for a {mode}")),
            mode.role() == *role,
            "a {role} token for a {mode}"
        );
    }
}

/// A `[[iot.sensors]]` topic is accepted exactly when `TopicTemplate::parse`, which the IoT
/// bridge compiles its subscriptions with, accepts it.
#[test]
fn topic_templates_agree_with_the_iot_bridges_parser() {
    let inputs = [
        "zigbee2mqtt/{sensor_id}",
        "sensors/{sensor_id}/{metric}",
        "tele/+/{sensor_id}/#",
        "{sensor_id}",
        "a/{sensor_id}/{sensor_id}",
        "a/{metric}/{metric}/{sensor_id}",
        "no/placeholder",
        "a/#/{sensor_id}",
        "a//{sensor_id}",
        "a/{sensor}/b",
        "a/x{sensor_id}",
        "a/+x/{sensor_id}",
        "",
        "/{sensor_id}",
    ];
    let mut long = vec!["a"; nexus_config::MAX_TOPIC_SEGMENTS];
    long.push("{sensor_id}");
    let long = long.join("/");
    let inputs: Vec<&str> = inputs.into_iter().chain([long.as_str()]).collect();
    let config = |topic: &str| {
        let topic = toml_string(topic);
        format!(
            "{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\n\n[[iot.sensors]]\ntopic = {topic}\n\
             payload = \"number\"\nmetrics = {{ temperature = \"°C\" }}\n"
        )
    };
    agree(
        "edge-01",
        &owned(&inputs),
        "iot.sensors[0].topic",
        config,
        |topic| TopicTemplate::parse(topic).is_ok(),
    );
}

/// What a loaded config must hold.
type Expectation = Box<dyn Fn(&Config) -> bool>;

/// Every config enum's names load as their value and are printed back by `check`; a name
/// that is none of them is refused listing the names, in the enum's order.
#[test]
fn config_enum_names_are_read_and_printed_alike() {
    // (key line in MEMBER's sections, the value's name, what it loads as.)
    let iot = |extra: &str| {
        format!(
            "{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\n{extra}\n[[iot.sensors]]\ntopic = \"s/{{sensor_id}}\"\npayload = \"number\"\nmetrics = {{ t = \"C\" }}\n"
        )
    };
    let mut configs = Vec::new();
    let mut expected: Vec<Expectation> = Vec::new();
    for mode in Mode::ALL.iter().copied() {
        let config = match mode {
            Mode::Member => MEMBER.to_owned(),
            Mode::Hub => with(
                &with(MEMBER, "mode = \"member\"", &format!("mode = \"{mode}\"")),
                "member.token",
                "hub.token",
            ),
            Mode::Root => with(ROOT, "id = \"root\"", "id = \"edge-01\""),
        };
        configs.push(config);
        expected.push(Box::new(move |c: &Config| c.node.mode == mode));
    }
    for format in LogFormat::ALL.iter().copied() {
        configs.push(format!(
            "{MEMBER}\n[log]\nformat = \"{}\"\n",
            format.as_str()
        ));
        expected.push(Box::new(move |c: &Config| c.log.format == format));
    }
    for when_full in WhenFull::ALL.iter().copied() {
        configs.push(format!("{MEMBER}\n[outbox]\nwhen_full = \"{when_full}\"\n"));
        expected.push(Box::new(move |c: &Config| c.outbox.when_full == when_full));
    }
    for protocol in MqttProtocol::ALL.iter().copied() {
        configs.push(iot(&format!("protocol = \"{protocol}\"")));
        expected.push(Box::new(move |c: &Config| {
            c.iot.as_ref().is_some_and(|i| i.protocol == protocol)
        }));
    }
    for payload in PayloadFormat::ALL.iter().copied() {
        configs.push(iot("").replace("payload = \"number\"", &format!("payload = \"{payload}\"")));
        expected.push(Box::new(move |c: &Config| {
            c.iot
                .as_ref()
                .is_some_and(|i| i.sensors[0].payload == payload)
        }));
    }
    for encoding in BridgeEncoding::ALL.iter().copied() {
        configs.push(format!(
            "{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\nevent = \"booking.x\"\nencoding = \"{encoding}\"\n"
        ));
        expected.push(Box::new(move |c: &Config| {
            c.bridge.up[0].encoding == encoding
        }));
    }
    // (`check_all` loads what `check` prints of each back to the same config.)
    for (index, result) in check_all("edge-01", &configs).into_iter().enumerate() {
        let config = result.unwrap_or_else(|e| panic!("{e}\n{}", configs[index]));
        assert!(expected[index](&config), "{}", configs[index]);
    }

    // The messages for a name that is none of them, word for word: unlike elsewhere, the
    // messages are compared here, because their lists of names are derived from the enums
    // and must read as the hand-written ones did.
    let refusals = [
        (
            with(MEMBER, "mode = \"member\"", "mode = \"membr\""),
            "node.mode",
            "\"membr\" is not a mode: use member, hub or root; did you mean `member`?",
        ),
        (
            format!("{MEMBER}\n[log]\nformat = \"xml\"\n"),
            "log.format",
            "\"xml\" is not a log format: use human or json",
        ),
        (
            format!("{MEMBER}\n[outbox]\nwhen_full = \"drop_olde\"\n"),
            "outbox.when_full",
            "\"drop_olde\" is not a policy: use reject or drop_oldest; did you mean `drop_oldest`?",
        ),
        (
            iot("protocol = \"3.1\""),
            "iot.protocol",
            "\"3.1\" is not a supported MQTT version: use protocol = \"3.1.1\" (default) or \
             protocol = \"5\": use \"3.1.1\" (MQTT 3.1 is not supported)",
        ),
        (
            iot("").replace("payload = \"number\"", "payload = \"jsn\""),
            "iot.sensors[0].payload",
            "\"jsn\" is not a payload format: use number or json; did you mean `json`?",
        ),
        (
            format!(
                "{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\nevent = \"booking.x\"\nencoding = \"cbr\"\n"
            ),
            "bridge.up[0].encoding",
            "\"cbr\" is not an encoding: use json or cbor; did you mean `cbor`?",
        ),
    ];
    let configs: Vec<String> = refusals.iter().map(|(c, _, _)| c.clone()).collect();
    for ((_, key, message), result) in refusals.iter().zip(check_all("edge-01", &configs)) {
        let errors = result.expect_err("refused");
        let error = errors
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no error on {key}: {errors}"));
        assert_eq!(error.kind, ErrorKind::InvalidValue, "{key}");
        assert_eq!(error.message, *message, "{key}");
    }
}
