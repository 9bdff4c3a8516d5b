//! `[bridge]` with its `[[bridge.up]]` and `[[bridge.down]]` rules: what they load into,
//! and every problem reported on its key, all at once.

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;

mod common;
use common::MEMBER;
use nexus_config::{load, BridgeConfig, BridgeEncoding, ConfigErrors, ErrorKind};
use nexus_policies::Role;

/// The node's files (key, a member token for `edge-01`), and `config` as `member.toml`.
fn setup(jail: &mut Jail, config: &str) -> figment::error::Result<()> {
    common::write_node_files(
        jail,
        "edge-01",
        Role::Member,
        Some("member.token"),
        "member.toml",
        config,
    )
}

/// `MEMBER` with `from` replaced by `to` (which must occur).
fn member_with(from: &str, to: &str) -> String {
    assert!(MEMBER.contains(from), "{from:?} is not in MEMBER");
    MEMBER.replace(from, to)
}

/// The errors of loading `config`, which must be refused.
fn refused(config: &str) -> ConfigErrors {
    let mut errors = None;
    Jail::expect_with(|jail| {
        setup(jail, config)?;
        errors = Some(load(Path::new("member.toml")).expect_err("the config is refused"));
        Ok(())
    });
    errors.expect("the jail ran")
}

/// Whether `errors` has one of `kind` on `key`.
fn has(errors: &ConfigErrors, key: &str, kind: &ErrorKind) -> bool {
    errors
        .iter()
        .any(|e| e.key.as_deref() == Some(key) && e.kind == *kind)
}

/// Rules load in order, with their defaults, and rewrite subjects both ways; what `check`
/// prints loads back to the same rules.
#[test]
fn bridge_rules_load_in_order_and_rewrite_subjects() {
    Jail::expect_with(|jail| {
        let config = format!(
            "{MEMBER}
[bridge]
max_payload = 4096

[[bridge.up]]
local = \"app.booking.*\"
event = \"booking.*\"

[[bridge.up]]
local = \"app.pos.>\"
event = \"shop.pos.>\"
encoding = \"cbor\"

[[bridge.down]]
command = \"booking.cancel\"
local = \"app.booking.cancel\"

[[bridge.down]]
command = \"door.*.open\"
local = \"site.doors.*.open\"
timeout = \"2s\"
"
        );
        setup(jail, &config)?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        let bridge = &config.bridge;
        assert_eq!(bridge.max_payload, 4096);
        assert_eq!(bridge.up.len(), 2);
        assert_eq!(bridge.up[0].encoding, BridgeEncoding::Json);
        assert_eq!(bridge.up[1].encoding, BridgeEncoding::Cbor);
        assert_eq!(
            bridge.up[0].rewrite.apply("app.booking.created").as_deref(),
            Some("booking.created")
        );
        assert_eq!(bridge.up[0].rewrite.apply("app.wallet.created"), None);
        assert_eq!(
            bridge.up[1].rewrite.apply("app.pos.sale.done").as_deref(),
            Some("shop.pos.sale.done")
        );
        assert_eq!(bridge.down.len(), 2);
        assert_eq!(bridge.down[0].timeout, Duration::from_secs(5));
        assert_eq!(bridge.down[1].timeout, Duration::from_secs(2));
        assert_eq!(
            bridge.down[0].rewrite.apply("booking.cancel").as_deref(),
            Some("app.booking.cancel")
        );
        assert_eq!(
            bridge.down[1].rewrite.apply("door.a1.open").as_deref(),
            Some("site.doors.a1.open")
        );

        let printed = config.redacted();
        assert!(printed.contains("[[bridge.up]]"), "{printed}");
        assert!(printed.contains("event = \"booking.*\""), "{printed}");
        jail.create_file("printed.toml", &printed)?;
        let again = load(Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.bridge, config.bridge);
        Ok(())
    });
}

/// Without `[bridge]`, nothing is bridged and the payload limit is 256 KiB; down rules
/// alone need no tenant.
#[test]
fn without_bridge_rules_nothing_is_bridged() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bridge, BridgeConfig::default());
        assert!(config.bridge.up.is_empty() && config.bridge.down.is_empty());
        assert_eq!(config.bridge.max_payload, 256 * 1024);

        let without_tenant = member_with("tenant = \"salon-001\"\n", "");
        let config = format!(
            "{without_tenant}\n[[bridge.down]]\ncommand = \"booking.cancel\"\nlocal = \"app.booking.cancel\"\n"
        );
        jail.create_file("member.toml", &config)?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bridge.down.len(), 1);
        Ok(())
    });
}

/// Each bad rule is refused on its own key, with the right kind.
#[test]
fn each_bridge_problem_is_reported_on_its_key() {
    let up = |local: &str, event: &str| {
        format!("{MEMBER}\n[[bridge.up]]\nlocal = \"{local}\"\nevent = \"{event}\"\n")
    };
    let down = |command: &str, local: &str| {
        format!("{MEMBER}\n[[bridge.down]]\ncommand = \"{command}\"\nlocal = \"{local}\"\n")
    };
    let invalid = ErrorKind::InvalidValue;
    let cases: Vec<(String, &str, ErrorKind)> = vec![
        // `local` of an up rule: never the federation's, NATS's or replies' subjects.
        (up("_nexus", "booking.x"), "bridge.up[0].local", invalid.clone()),
        (up("_nexus.>", "booking.>"), "bridge.up[0].local", invalid.clone()),
        (up("_nexus.cmd.*", "booking.*"), "bridge.up[0].local", invalid.clone()),
        (up(">", "booking.>"), "bridge.up[0].local", invalid.clone()),
        (up("*.>", "booking.*.>"), "bridge.up[0].local", invalid.clone()),
        (up("$JS.API.>", "booking.>"), "bridge.up[0].local", invalid.clone()),
        (up("_INBOX.>", "booking.>"), "bridge.up[0].local", invalid.clone()),
        (up("app..x", "booking.x"), "bridge.up[0].local", ErrorKind::BadPattern),
        // `event`: two tokens or more, [a-z0-9_-], a domain written out and not reserved.
        (up("app.booking", "booking"), "bridge.up[0].event", invalid.clone()),
        (up("app.>", ">"), "bridge.up[0].event", invalid.clone()),
        (up("app.health", "edge.health"), "bridge.up[0].event", invalid.clone()),
        (up("app.a.x", "agent.x"), "bridge.up[0].event", invalid.clone()),
        (up("app.a.x", "audit.x"), "bridge.up[0].event", invalid.clone()),
        (up("app.*.created", "*.created"), "bridge.up[0].event", invalid.clone()),
        (up("app.b.c", "Booking.created"), "bridge.up[0].event", invalid.clone()),
        (up("app.b.c", "booking.x>"), "bridge.up[0].event", ErrorKind::BadPattern),
        // The two sides must have the same wildcards in the same order.
        (up("app.booking.>", "booking.*"), "bridge.up[0].event", invalid.clone()),
        (up("app.*.>", "booking.>"), "bridge.up[0].event", invalid.clone()),
        // `command`: the same shape as an event name, never the agent's own commands.
        (down("booking", "app.booking"), "bridge.down[0].command", invalid.clone()),
        (down("agent.restart", "app.restart"), "bridge.down[0].command", invalid.clone()),
        (down("*.cancel", "app.*.cancel"), "bridge.down[0].command", invalid.clone()),
        (down("booking.Cancel", "app.x"), "bridge.down[0].command", invalid.clone()),
        // `local` of a down rule.
        (down("booking.cancel", "_nexus.cancel"), "bridge.down[0].local", invalid.clone()),
        (down("booking.*", "*.cancel"), "bridge.down[0].local", invalid.clone()),
        (down("booking.*", "$SYS.x.*"), "bridge.down[0].local", invalid.clone()),
        (down("booking.*", "app.booking.cancel"), "bridge.down[0].local", invalid.clone()),
        // Other keys.
        (
            format!("{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\nevent = \"shop.x\"\nencoding = \"xml\"\n"),
            "bridge.up[0].encoding",
            invalid.clone(),
        ),
        (
            format!("{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\n"),
            "bridge.up[0].event",
            ErrorKind::MissingKey,
        ),
        (
            format!("{MEMBER}\n[[bridge.down]]\ncommand = \"shop.x\"\n"),
            "bridge.down[0].local",
            ErrorKind::MissingKey,
        ),
        (
            format!("{MEMBER}\n[[bridge.down]]\ncommand = \"shop.x\"\nlocal = \"app.x\"\ntimeout = \"soon\"\n"),
            "bridge.down[0].timeout",
            ErrorKind::BadDuration,
        ),
        (
            format!("{MEMBER}\n[[bridge.up]]\nlocal = \"app.x\"\nevnet = \"shop.x\"\n"),
            "bridge.up[0].evnet",
            ErrorKind::UnknownKey {
                suggestion: Some("event".to_owned()),
            },
        ),
        (
            format!("{MEMBER}\n[bridge]\nupp = []\n"),
            "bridge.upp",
            ErrorKind::UnknownKey {
                suggestion: Some("up".to_owned()),
            },
        ),
        (
            format!("{MEMBER}\n[bridge]\nmax_payload = 0\n"),
            "bridge.max_payload",
            invalid.clone(),
        ),
        (
            format!("{MEMBER}\n[bridge]\nmax_payload = 1048577\n"),
            "bridge.max_payload",
            invalid.clone(),
        ),
        (
            format!("{MEMBER}\n[bridge.up]\nlocal = \"app.x\"\nevent = \"shop.x\"\n"),
            "bridge.up",
            ErrorKind::InvalidType,
        ),
        (
            format!("{MEMBER}\n[bridge]\nup = \"app.>\"\n"),
            "bridge.up",
            ErrorKind::InvalidType,
        ),
        (
            format!(
                "{MEMBER}{}",
                "\n[[bridge.down]]\ncommand = \"shop.x\"\nlocal = \"app.x\"\n".repeat(257)
            ),
            "bridge.down",
            invalid.clone(),
        ),
        // Cross-section rules.
        (
            format!(
                "{}\n[[bridge.down]]\ncommand = \"shop.x\"\nlocal = \"app.x\"\n",
                member_with("[local]\nurl = \"nats://127.0.0.1:4222\"\n", "")
            ),
            "local",
            ErrorKind::MissingSection,
        ),
        (
            format!(
                "{}\n[[bridge.up]]\nlocal = \"app.x\"\nevent = \"shop.x\"\n",
                member_with("tenant = \"salon-001\"\n", "")
            ),
            "node.tenant",
            ErrorKind::MissingKey,
        ),
    ];
    for (config, key, kind) in cases {
        let errors = refused(&config);
        assert!(
            has(&errors, key, &kind),
            "expected {kind:?} on {key}, got:\n{errors}\nfor:\n{config}"
        );
    }
}

/// The lists are capped, but 256 rules are fine.
#[test]
fn up_to_256_rules_per_list_load() {
    Jail::expect_with(|jail| {
        let rules: String = (0..256)
            .map(|i| format!("\n[[bridge.up]]\nlocal = \"app.r{i}.*\"\nevent = \"shop.r{i}.*\"\n"))
            .collect();
        setup(jail, &format!("{MEMBER}{rules}"))?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bridge.up.len(), 256);
        Ok(())
    });
}

/// A config with several broken rules gets every problem in one report, by index.
#[test]
fn every_bridge_problem_is_reported_at_once() {
    let config = format!(
        "{}
[bridge]
max_payload = 0
colour = \"red\"

[[bridge.up]]
local = \"_nexus.>\"
event = \"booking.>\"

[[bridge.up]]
local = \"app.booking.*\"
event = \"edge.*\"
encoding = \"yaml\"

[[bridge.up]]
local = \"app.ok.*\"
event = \"ok.*\"

[[bridge.down]]
command = \"agent.restart\"
local = \"app.restart\"
timeout = \"0s\"

[[bridge.down]]
command = \"booking.*\"
local = \"app.booking\"
",
        member_with("tenant = \"salon-001\"\n", "")
            .replace("[local]\nurl = \"nats://127.0.0.1:4222\"\n", "")
    );
    let errors = refused(&config);
    for (key, kind) in [
        ("bridge.colour", ErrorKind::UnknownKey { suggestion: None }),
        ("bridge.max_payload", ErrorKind::InvalidValue),
        ("bridge.up[0].local", ErrorKind::InvalidValue),
        ("bridge.up[1].event", ErrorKind::InvalidValue),
        ("bridge.up[1].encoding", ErrorKind::InvalidValue),
        ("bridge.down[0].command", ErrorKind::InvalidValue),
        ("bridge.down[0].timeout", ErrorKind::BadDuration),
        ("bridge.down[1].local", ErrorKind::InvalidValue),
        ("local", ErrorKind::MissingSection),
        ("node.tenant", ErrorKind::MissingKey),
    ] {
        assert!(has(&errors, key, &kind), "no {kind:?} on {key}:\n{errors}");
    }
    assert_eq!(errors.len(), 10, "{errors}");
    // Every line names the file and the key.
    for error in &errors {
        let line = error.to_string();
        assert!(line.contains("member.toml"), "{line}");
        assert!(line.contains(error.key.as_deref().unwrap_or("?")), "{line}");
    }
}

/// The config warns (it does not refuse) when a down rule delivers commands where an up
/// rule takes messages, and says how to separate them; disjoint subjects give no warning.
#[test]
fn a_down_target_that_an_up_rule_takes_is_warned_about() {
    let overlapping = format!(
        "{MEMBER}
[[bridge.up]]
local = \"app.booking.*\"
event = \"booking.*\"

[[bridge.down]]
command = \"shop.close\"
local = \"app.shop.close\"

[[bridge.down]]
command = \"booking.*\"
local = \"app.booking.*\"
"
    );
    Jail::expect_with(|jail| {
        setup(jail, &overlapping)?;
        let config = load(Path::new("member.toml")).expect("valid: only warned about");
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "bridge.down[1].local");
        assert!(
            warnings[0].message.contains("bridge.up[0]"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].message.contains("app.cmd.booking.*"),
            "{}",
            warnings[0]
        );

        let separate = overlapping.replace(
            "command = \"booking.*\"\nlocal = \"app.booking.*\"",
            "command = \"booking.*\"\nlocal = \"app.cmd.booking.*\"",
        );
        assert_ne!(separate, overlapping);
        setup(jail, &separate)?;
        let config = load(Path::new("member.toml")).expect("valid");
        assert_eq!(config.warnings(), Vec::new());
        Ok(())
    });
}

/// An empty `[uplink.tls]` requires TLS of a nats:// server: valid, but warned about; with
/// a tls:// URL or a setting in it, it is what was meant.
#[test]
fn an_empty_tls_table_on_clear_text_urls_is_warned_about() {
    Jail::expect_with(|jail| {
        let empty = MEMBER.replace(
            "url = \"nats://hub.example:4222\"\n",
            "url = \"nats://hub.example:4222\"\n\n[uplink.tls]\n",
        );
        setup(jail, &empty)?;
        let config = load(Path::new("member.toml")).expect("valid");
        let keys: Vec<String> = config.warnings().into_iter().map(|w| w.key).collect();
        assert_eq!(keys, ["uplink.tls"]);

        let tls_url = empty.replace("nats://hub.example", "tls://hub.example");
        setup(jail, &tls_url)?;
        let config = load(Path::new("member.toml")).expect("valid");
        assert_eq!(config.warnings(), Vec::new());
        Ok(())
    });
}
