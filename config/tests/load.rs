//! Loading and validating configs end to end: TOML file + `NEXUS_` environment, inside a
//! `figment::Jail` (a temp directory as cwd and a scoped environment), with real key and
//! token files.

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Jail;
use nexus_config::{
    load, AclPolicy, Config, ConfigErrors, DeadLetterConfig, ErrorKind, LogFormat, Mode, Origin,
    TlsConfig, WhenFull,
};
use nexus_policies::{
    Acl, Action, Chain, Claims, Role, SecretKey, SubjectPattern, Token, TokenId, UnixTime,
    BUILD_FLOOR,
};

/// A minimal valid member: everything else comes from defaults.
const MEMBER: &str = r#"
[node]
id = "edge-01"
mode = "member"
tenant = "salon-001"
key = "node.key"
token = "member.token"
data_dir = "data"

[trust]
root_keys = ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"]

[uplink]
url = "nats://hub.example:4222"
"#;

/// A minimal valid hub.
const HUB: &str = r#"
[node]
id = "hub-msk"
mode = "hub"
key = "node.key"
token = "hub.token"
data_dir = "data"

[trust]
root_keys = ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"]

[uplink]
url = "tls://root.example:4222"

[local]
url = "nats://127.0.0.1:4222"
"#;

/// A minimal valid root: without a token, it is the anchor.
const ROOT: &str = r#"
[node]
id = "root"
mode = "root"
key = "node.key"
data_dir = "data"

[trust]
root_keys = ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"]

[local]
url = "nats://127.0.0.1:4222"
"#;

/// The public key of [`root_key`], as written in the configs above.
const ROOT_PUBLIC: &str = "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";

/// The node's key (`node.key` in every test).
fn node_key() -> SecretKey {
    SecretKey::from_seed(&[7; 32]).expect("a fixed seed makes a key")
}

/// The trust anchor of the configs above.
fn root_key() -> SecretKey {
    SecretKey::from_seed(&[1; 32]).expect("a fixed seed makes a key")
}

/// The text of a valid secret key file.
fn key_text() -> String {
    node_key().to_file_text().to_string()
}

/// A one-token chain for `node_id` with `role`, for `node`'s key, signed by `issuer`. Its
/// window is one hour in early 2026: long expired, which config validation must not mind.
fn chain(node_id: &str, role: Role, node: &SecretKey, issuer: &SecretKey) -> Vec<u8> {
    let claims = Claims {
        id: TokenId([role as u8 + 1; 16]),
        parent: None,
        issuer_key: issuer.public(),
        node_id: node_id.to_owned(),
        node_key: node.public(),
        tenant: Some("salon-001".to_owned()),
        role,
        publish: vec![SubjectPattern::parse("nexus.salon-001.>").expect("pattern")],
        receive: vec![],
        not_before: BUILD_FLOOR,
        expires: UnixTime(BUILD_FLOOR.0 + 3600),
    };
    let token = Token::issue(claims, issuer, None).expect("a valid top token");
    Chain::new(vec![token]).expect("one token").encode()
}

/// Writes the token of `node_id` (role `role`, this node's key, signed by the root) to
/// `path` in the jail.
fn write_token(path: &str, node_id: &str, role: Role) {
    std::fs::write(path, chain(node_id, role, &node_key(), &root_key())).expect("write token");
}

/// Empties the environment, writes a valid `node.key`, the tokens the configs above name,
/// and `config` as `member.toml`.
fn setup(jail: &mut Jail, config: &str) -> figment::error::Result<()> {
    jail.clear_env();
    jail.create_file("node.key", &key_text())?;
    write_token("member.token", "edge-01", Role::Member);
    write_token("hub.token", "hub-msk", Role::Hub);
    write_token("root.token", "root", Role::Root);
    jail.create_file("member.toml", config)?;
    Ok(())
}

fn load_ok() -> Config {
    match load(Path::new("member.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn load_err() -> ConfigErrors {
    load(Path::new("member.toml")).expect_err("expected the config to be refused")
}

/// `MEMBER` with `from` replaced by `to` (which must occur).
fn member_with(from: &str, to: &str) -> String {
    assert!(MEMBER.contains(from), "{from:?} is not in MEMBER");
    MEMBER.replace(from, to)
}

/// A minimal member config loads, with every default filled in.
#[test]
fn a_minimal_member_config_loads_with_defaults() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let config = load_ok();
        assert_eq!(config.node.id, "edge-01");
        assert_eq!(config.node.mode, Mode::Member);
        assert_eq!(config.node.tenant.as_deref(), Some("salon-001"));
        let uplink = config.uplink.expect("uplink");
        assert_eq!(uplink.url, "nats://hub.example:4222");
        assert_eq!(uplink.ping_interval, Duration::from_secs(5));
        assert_eq!(uplink.connect_timeout, Duration::from_secs(5));
        assert_eq!(uplink.request_timeout, Duration::from_secs(5));
        assert_eq!(uplink.reconnect_max_delay, Duration::from_secs(10));
        assert_eq!(config.local, None);
        assert_eq!(config.heartbeat.interval, Duration::from_secs(10));
        assert_eq!(config.heartbeat.offline_after, Duration::from_secs(30));
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Human);
        assert_eq!(config.outbox.max_bytes, 64 * 1024 * 1024);
        assert_eq!(config.outbox.batch, 256);
        assert_eq!(config.ingress.stream, "NEXUS_INGRESS");
        assert_eq!(config.ingress.consumer, "nexus-agent");
        assert_eq!(config.ingress.max_bytes, 1024 * 1024 * 1024);
        assert_eq!(config.ingress.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.ingress.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.ingress.batch, 256);
        assert_eq!(config.ingress.max_deliver, 20);
        assert_eq!(
            config.ingress.landed_ttl,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(config.source, Some(jail.directory().join("member.toml")));
        assert_eq!(
            config.node.token,
            Some(jail.directory().join("member.token"))
        );
        assert_eq!(config.trust.root_keys.len(), 1);
        assert_eq!(config.trust.root_keys[0].to_string(), ROOT_PUBLIC);
        assert_eq!(config.trust.clock_skew, Duration::from_secs(60));
        assert_eq!(
            config.trust.revocations_file,
            jail.directory().join("data/revocations.cbor")
        );
        assert_eq!(config.acl, AclPolicy::TokenGrants);
        assert_eq!(uplink.tls, None, "nats:// without [uplink.tls] is plain");
        assert_eq!(config.outbox.when_full, WhenFull::Reject);
        assert_eq!(config.outbox.max_age, None);
        assert_eq!(config.outbox.drain_rate, None);
        assert_eq!(
            config.dead_letter,
            DeadLetterConfig {
                max_bytes: 64 * 1024 * 1024,
                max_entries: 100_000
            }
        );
        Ok(())
    });
}

/// `offline_after` defaults to three of the configured heartbeat intervals.
#[test]
fn offline_after_defaults_to_three_intervals() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!("{MEMBER}\n[heartbeat]\ninterval = \"20s\"\n"),
        )?;
        let config = load_ok();
        assert_eq!(config.heartbeat.interval, Duration::from_secs(20));
        assert_eq!(config.heartbeat.offline_after, Duration::from_secs(60));
        Ok(())
    });
}

/// `[health]` thresholds default, load, and are refused out of range; `[metrics] listen`
/// is a socket address, refused naming the key otherwise.
#[test]
fn health_thresholds_and_the_metrics_listener_load_and_are_checked() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let config = load_ok();
        assert_eq!(config.health.outbox_full_pct, 80);
        assert_eq!(config.health.outbox_max_age, Duration::from_secs(600));
        assert_eq!(config.health.disk_full_pct, 90);
        assert_eq!(config.health.mem_full_pct, 90);
        assert_eq!(config.health.token_expiry, Duration::from_secs(86_400));
        assert_eq!(config.metrics.listen, None);

        setup(
            jail,
            &format!(
                "{MEMBER}\n[health]\nmem_full_pct = 75\ntoken_expiry = \"7d\"\n\
                 [metrics]\nlisten = \"127.0.0.1:9464\"\n"
            ),
        )?;
        let config = load_ok();
        assert_eq!(config.health.mem_full_pct, 75);
        assert_eq!(config.health.token_expiry, Duration::from_secs(7 * 86_400));
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().expect("address"))
        );

        setup(
            jail,
            &format!(
                "{MEMBER}\n[health]\ndisk_full_pct = 101\n[metrics]\nlisten = \"localhost\"\n"
            ),
        )?;
        let errors = load_err().to_string();
        assert!(
            errors.contains("health.disk_full_pct")
                && errors.contains("101 is out of range: use 1 to 100"),
            "{errors}"
        );
        assert!(
            errors.contains("metrics.listen")
                && errors.contains("\"localhost\" is not a socket address"),
            "{errors}"
        );
        Ok(())
    });
}

/// `[page]`: loads at a hub with its token file and certificate; refused on a member, with
/// a token too short, or a certificate without its key; warned about beyond loopback.
/// `[events]`: the registry is an existing directory (relative to the file), the landing
/// policies default to `land` (unknown) and `audit` (invalid), and a bad value is refused
/// on its key.
#[test]
fn the_events_section_loads_and_is_checked() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let defaults = load_ok().events;
        assert_eq!(defaults, nexus_config::EventsConfig::default());
        assert_eq!(defaults.unknown, nexus_config::LandingPolicy::Land);
        assert_eq!(defaults.invalid, nexus_config::LandingPolicy::Audit);
        assert_eq!(defaults.registry, None);

        std::fs::create_dir_all(jail.directory().join("events")).map_err(|e| e.to_string())?;
        setup(
            jail,
            &format!("{MEMBER}\n[events]\nregistry = \"events\"\nunknown = \"refuse\"\ninvalid = \"land\"\n"),
        )?;
        let events = load_ok().events;
        assert!(events
            .registry
            .as_ref()
            .is_some_and(|p| p.is_absolute() && p.ends_with("events")));
        assert_eq!(events.unknown, nexus_config::LandingPolicy::Refuse);
        assert_eq!(events.invalid, nexus_config::LandingPolicy::Land);

        for (extra, key) in [
            ("registry = \"no-such-dir\"", "events.registry"),
            ("registry = \"member.toml\"", "events.registry"),
            ("unknown = \"drop\"", "events.unknown"),
            ("invalid = 3", "events.invalid"),
        ] {
            setup(jail, &format!("{MEMBER}\n[events]\n{extra}\n"))?;
            let errors = load_err();
            let error = errors
                .find(key)
                .unwrap_or_else(|| panic!("{extra}: no error on {key}: {errors}"));
            assert!(
                matches!(error.kind, ErrorKind::InvalidValue | ErrorKind::InvalidType),
                "{extra}: {error}"
            );
        }
        Ok(())
    });
}

#[test]
fn the_fleet_page_section_loads_and_is_checked() {
    Jail::expect_with(|jail| {
        setup(jail, HUB)?;
        assert_eq!(load_ok().page, nexus_config::PageConfig::default());
        jail.create_file("page.token", "0123456789abcdef-token\n")?;
        jail.create_file("short.token", "short\n")?;
        jail.create_file("odd.token", "0123456789abcdef;token\n")?;
        jail.create_file(
            "page.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )?;
        jail.create_file(
            "page.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )?;

        setup(
            jail,
            &format!(
                "{HUB}\n[page]\nlisten = \"127.0.0.1:9470\"\ntoken_file = \"page.token\"\n\
                 cert_file = \"page.crt\"\nkey_file = \"page.key\"\n"
            ),
        )?;
        let config = load_ok();
        assert_eq!(
            config.page.listen,
            Some("127.0.0.1:9470".parse().expect("address"))
        );
        assert!(config
            .page
            .token_file
            .as_ref()
            .is_some_and(|p| p.ends_with("page.token")));
        assert!(config.page.tls.is_some());
        assert!(config.warnings().iter().all(|w| w.key != "page.listen"));

        setup(jail, &format!("{HUB}\n[page]\nlisten = \"0.0.0.0:9470\"\n"))?;
        let warnings = load_ok().warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.key == "page.listen" && w.message.contains("without a token")),
            "{warnings:?}"
        );

        setup(
            jail,
            &format!("{MEMBER}\n[page]\nlisten = \"127.0.0.1:9470\"\n"),
        )?;
        let errors = load_err().to_string();
        assert!(errors.contains("a member has no fleet to show"), "{errors}");

        setup(
            jail,
            &format!(
                "{HUB}\n[page]\nlisten = \"127.0.0.1:9470\"\ntoken_file = \"short.token\"\n\
                 cert_file = \"page.crt\"\n"
            ),
        )?;
        let errors = load_err().to_string();
        assert!(
            errors.contains("page.token_file") && errors.contains("at least 16"),
            "{errors}"
        );
        assert!(
            errors.contains("page.key_file") && errors.contains("HTTPS needs both"),
            "{errors}"
        );

        setup(
            jail,
            &format!("{HUB}\n[page]\nlisten = \"127.0.0.1:9470\"\ntoken_file = \"odd.token\"\n"),
        )?;
        let errors = load_err().to_string();
        assert!(
            errors.contains("letters, digits and -._~+/= only"),
            "{errors}"
        );
        Ok(())
    });
}

/// A mistyped key is refused and the close known key is suggested.
#[test]
fn an_unknown_key_is_refused_with_a_suggestion() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &member_with("id = \"edge-01\"", "id = \"edge-01\"\nidd = \"x\""),
        )?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::UnknownKey {
                suggestion: Some("id".to_owned())
            }]
        );
        let error = errors.find("node.idd").expect("an error about node.idd");
        assert!(error.to_string().contains("did you mean `id`?"), "{error}");
        Ok(())
    });
}

/// A key written in the wrong section points to the section it belongs to.
#[test]
fn a_key_in_the_wrong_section_points_to_its_section() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &member_with("tenant = ", "interval = \"5s\"\ntenant = "),
        )?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::UnknownKey {
                suggestion: Some("heartbeat.interval".to_owned())
            }]
        );
        Ok(())
    });
}

/// An unknown section is refused, with the close known section suggested.
#[test]
fn an_unknown_section_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!("{MEMBER}\n[uplinks]\nurl = \"nats://x:4222\"\n"),
        )?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::UnknownKey {
                suggestion: Some("uplink".to_owned())
            }]
        );
        assert!(errors.find("uplinks").is_some(), "{errors}");
        Ok(())
    });
}

/// A config without `node.id` is refused with the key named.
#[test]
fn a_missing_node_id_is_reported() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("id = \"edge-01\"\n", ""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingKey]);
        let error = errors.find("node.id").expect("an error about node.id");
        assert_eq!(error.origin, Origin::File(PathBuf::from("member.toml")));
        Ok(())
    });
}

/// A config without `[node]` at all is refused.
#[test]
fn a_config_without_node_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, "[log]\nlevel = \"info\"\n")?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingSection]);
        assert!(errors.find("node").is_some(), "{errors}");
        Ok(())
    });
}

/// A member must have an `[uplink]`: it has nowhere to send its events otherwise.
#[test]
fn a_member_without_uplink_is_refused() {
    Jail::expect_with(|jail| {
        let config = MEMBER.split("[uplink]").next().expect("a node section");
        setup(jail, config)?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingSection]);
        assert!(errors.find("uplink").is_some(), "{errors}");
        Ok(())
    });
}

/// A hub must have an `[uplink]` to the root.
#[test]
fn a_hub_without_uplink_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &HUB.replace("[uplink]\nurl = \"tls://root.example:4222\"\n", ""),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingSection]);
        assert!(errors.find("uplink").is_some(), "{errors}");
        Ok(())
    });
}

/// Hubs and roots must have a `[local]` NATS.
#[test]
fn a_hub_or_root_without_local_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &HUB.replace("[local]\nurl = \"nats://127.0.0.1:4222\"\n", ""),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingSection]);
        assert!(errors.find("local").is_some(), "{errors}");

        jail.create_file(
            "member.toml",
            &ROOT.replace("[local]\nurl = \"nats://127.0.0.1:4222\"\n", ""),
        )?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::MissingSection]);
        Ok(())
    });
}

/// Valid hub and root configs load.
#[test]
fn minimal_hub_and_root_configs_load() {
    Jail::expect_with(|jail| {
        setup(jail, HUB)?;
        let hub = load_ok();
        assert_eq!(hub.node.mode, Mode::Hub);
        assert!(hub.uplink.is_some() && hub.local.is_some());

        jail.create_file("member.toml", ROOT)?;
        let root = load_ok();
        assert_eq!(root.node.mode, Mode::Root);
        assert_eq!(root.uplink, None);
        Ok(())
    });
}

/// A root is the top tier: an `[uplink]`, from the file or the environment, is refused.
#[test]
fn a_root_with_uplink_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!("{ROOT}\n[uplink]\nurl = \"nats://x:4222\"\n"),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::ForbiddenSection]);
        let error = errors.find("uplink").expect("an error about uplink");
        assert!(error.message.contains("top tier"), "{error}");

        jail.create_file("member.toml", ROOT)?;
        jail.set_env("NEXUS_UPLINK__URL", "nats://x:4222");
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::ForbiddenSection]);
        let error = errors.find("uplink").expect("an error about uplink");
        assert_eq!(error.origin, Origin::Env("NEXUS_UPLINK__URL".to_owned()));
        Ok(())
    });
}

/// A node id that is not a subject token is refused, and the message says what is allowed.
#[test]
fn a_bad_node_id_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("\"edge-01\"", "\"Edge 01\""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadId]);
        assert_eq!(
            errors.to_string(),
            r#"member.toml: node.id: "Edge 01" is not a valid id: use 1-64 chars of [a-z0-9_-]"#
        );
        Ok(())
    });
}

/// `local` names the apps on the node itself (the ACL principal; policies never let a
/// token be issued to it): as `node.id` it is refused on its key, with the fix, from the
/// file and from the environment alike.
#[test]
fn the_reserved_node_id_local_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("\"edge-01\"", "\"local\""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadId]);
        assert_eq!(
            errors.to_string(),
            "member.toml: node.id: \"local\" cannot be a node id: `local` is reserved: it is the \
             ACL principal of the apps on the node itself. Choose another id, e.g. \
             id = \"edge-msk-01\""
        );

        jail.create_file("member.toml", MEMBER)?;
        jail.set_env("NEXUS_NODE__ID", "local");
        let errors = load_err();
        let error = errors.find("node.id").expect("an error about node.id");
        assert_eq!(error.kind, ErrorKind::BadId);
        assert_eq!(error.origin, Origin::Env("NEXUS_NODE__ID".to_owned()));
        assert!(error.message.contains("Choose another id"), "{error}");
        Ok(())
    });
}

/// A tenant follows the same rules as a node id.
#[test]
fn a_bad_tenant_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("\"salon-001\"", "\"salon.001\""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadId]);
        assert!(errors.find("node.tenant").is_some(), "{errors}");

        jail.create_file(
            "member.toml",
            &member_with("\"salon-001\"", &format!("\"{}\"", "s".repeat(65))),
        )?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::BadId]);
        Ok(())
    });
}

/// Durations that do not parse, or are zero, are refused; a number is a type error.
#[test]
fn a_bad_duration_is_refused() {
    Jail::expect_with(|jail| {
        let config = format!(
            "{MEMBER}\n[heartbeat]\ninterval = \"10 parsecs\"\noffline_after = \"0s\"\n\
             [ingress]\nmax_age = 7\n"
        );
        setup(jail, &config)?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![
                ErrorKind::BadDuration,
                ErrorKind::BadDuration,
                ErrorKind::InvalidType
            ]
        );
        assert!(errors.find("heartbeat.interval").is_some(), "{errors}");
        assert!(errors.find("heartbeat.offline_after").is_some(), "{errors}");
        assert!(errors.find("ingress.max_age").is_some(), "{errors}");
        Ok(())
    });
}

/// A missing key file is reported with the OS error and how to create one.
#[test]
fn an_unreadable_key_file_is_reported_with_the_keygen_fix() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("\"node.key\"", "\"missing.key\""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::UnreadableKeyFile]);
        let error = errors.find("node.key").expect("an error about node.key");
        let expected_path = jail.directory().join("missing.key");
        assert!(
            error.message.contains(&format!(
                "create it with `nexus-agent keygen --out {}`",
                expected_path.display()
            )),
            "{error}"
        );
        assert!(error.message.contains("os error"), "{error}");
        Ok(())
    });
}

/// A key file that is not a secret key is refused, without printing its contents.
#[test]
fn a_bad_key_file_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        jail.create_file("node.key", "not-a-key-but-a-secret-looking-string\n")?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadKeyFile]);
        assert!(!errors.to_string().contains("secret-looking"), "{errors}");

        // A public key where the secret one belongs is just as wrong.
        let public = SecretKey::from_seed(&[7; 32]).expect("key").public();
        jail.create_file("node.key", &public.to_string())?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::BadKeyFile]);
        Ok(())
    });
}

/// An environment override wins over the file.
#[test]
fn an_environment_override_wins_over_the_file() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        write_token("edge-02.token", "edge-02", Role::Member);
        jail.set_env("NEXUS_NODE__ID", "edge-02");
        jail.set_env("NEXUS_NODE__TOKEN", "edge-02.token");
        jail.set_env("NEXUS_UPLINK__PING_INTERVAL", "2s");
        jail.set_env("NEXUS_OUTBOX__BATCH", "512");
        let config = load_ok();
        assert_eq!(config.node.id, "edge-02");
        assert_eq!(
            config.uplink.expect("uplink").ping_interval,
            Duration::from_secs(2)
        );
        assert_eq!(config.outbox.batch, 512);
        assert_eq!(
            config.node.token,
            Some(jail.directory().join("edge-02.token"))
        );
        Ok(())
    });
}

/// Environment values stay strings: an all-digit id is not turned into a number.
#[test]
fn an_all_digit_id_from_the_environment_stays_a_string() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        write_token("007.token", "007", Role::Member);
        jail.set_env("NEXUS_NODE__ID", "007");
        jail.set_env("NEXUS_NODE__TOKEN", "007.token");
        assert_eq!(load_ok().node.id, "007");
        Ok(())
    });
}

/// A bad value from the environment names the variable it came from.
#[test]
fn an_error_from_the_environment_names_the_variable() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        jail.set_env("NEXUS_NODE__ID", "Edge 02");
        jail.set_env("NEXUS_NODE__IDD", "x");
        let errors = load_err();
        let bad = errors.find("node.id").expect("an error about node.id");
        assert_eq!(bad.kind, ErrorKind::BadId);
        assert!(
            bad.to_string()
                .starts_with("environment variable NEXUS_NODE__ID: node.id: "),
            "{bad}"
        );
        let unknown = errors.find("node.idd").expect("an error about node.idd");
        assert_eq!(unknown.origin, Origin::Env("NEXUS_NODE__IDD".to_owned()));
        Ok(())
    });
}

/// `NEXUS_` variables without `__` are not config overrides and are left alone.
#[test]
fn an_unrelated_nexus_env_var_is_ignored() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        jail.set_env("NEXUS_HOME", "/opt/nexus");
        jail.set_env("NEXUS_NODE", "whatever");
        jail.set_env("NEXUSNODE__ID", "not-our-prefix");
        assert_eq!(load_ok().node.id, "edge-01");
        Ok(())
    });
}

/// A value of the wrong type is reported once: not also as missing.
#[test]
fn a_wrong_type_is_reported_once() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("id = \"edge-01\"", "id = 5"))?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::InvalidType]);

        jail.create_file(
            "member.toml",
            &format!("{MEMBER}\n[outbox]\nbatch = \"many\"\n"),
        )?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::InvalidType]);
        Ok(())
    });
}

/// Out-of-range integers, unknown modes and formats, bad log filters, URLs and stream
/// names are invalid values.
#[test]
fn invalid_values_are_refused() {
    Jail::expect_with(|jail| {
        let config = member_with("\"member\"", "\"memeber\"")
            .replace("nats://hub.example:4222", "http://hub.example:4222")
            + "\n[log]\nlevel = \"loud\"\nformat = \"xml\"\n\
               [outbox]\nbatch = 0\n\
               [ingress]\nstream = \"a.b\"\nmax_age = \"1m\"\nmax_deliver = 1\n";
        setup(jail, &config)?;
        let errors = load_err();
        for key in [
            "node.mode",
            "log.level",
            "log.format",
            "outbox.batch",
            "ingress.stream",
            "ingress.max_age",
            "ingress.max_deliver",
        ] {
            let error = errors
                .find(key)
                .unwrap_or_else(|| panic!("no {key}: {errors}"));
            assert_eq!(error.kind, ErrorKind::InvalidValue, "{error}");
        }
        assert!(
            errors.to_string().contains("did you mean `member`?"),
            "{errors}"
        );
        // The URL is not checked further: with the mode unknown, [uplink] is still read.
        let url = errors
            .find("uplink.url")
            .expect("an error about uplink.url");
        assert_eq!(url.kind, ErrorKind::InvalidValue);
        Ok(())
    });
}

/// A broken file gets every one of its problems listed at once, one per line.
#[test]
fn a_broken_file_lists_all_its_problems_at_once() {
    Jail::expect_with(|jail| {
        let config = r#"
[node]
id = "Edge 01"
mode = "member"
tennant = "salon-001"
key = "missing.key"
data_dir = "data"

[heartbeat]
interval = "soon"

[log]
level = 3

[colour]
red = 1
"#;
        setup(jail, config)?;
        let errors = load_err();
        let kinds = errors.kinds();
        for expected in [
            ErrorKind::UnknownKey { suggestion: None },
            ErrorKind::UnknownKey {
                suggestion: Some("tenant".to_owned()),
            },
            ErrorKind::BadId,
            ErrorKind::UnreadableKeyFile,
            ErrorKind::MissingSection,
            ErrorKind::BadDuration,
            ErrorKind::InvalidType,
            ErrorKind::MissingKey,
        ] {
            assert!(
                kinds.contains(&expected),
                "{expected:?} missing from:\n{errors}"
            );
        }
        // [uplink] and [trust] are missing, and so is node.token.
        assert!(errors.find("trust").is_some(), "{errors}");
        assert!(errors.find("node.token").is_some(), "{errors}");
        assert_eq!(errors.len(), 9, "{errors}");
        assert_eq!(errors.to_string().lines().count(), 9, "{errors}");
        for line in errors.to_string().lines() {
            assert!(line.starts_with("member.toml: "), "{line}");
        }
        Ok(())
    });
}

/// A TOML syntax error is reported with its line.
#[test]
fn a_toml_syntax_error_is_reported_with_its_line() {
    Jail::expect_with(|jail| {
        setup(jail, "[node]\nid = \"edge-01\"\nmode = member\n")?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::ParseError { line: Some(3) }]
        );
        let text = errors.to_string();
        assert!(
            text.starts_with("member.toml: line 3: invalid TOML"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        Ok(())
    });
}

/// A config file that does not exist is reported as such.
#[test]
fn a_missing_config_file_is_reported() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let errors = load(Path::new("nowhere.toml")).expect_err("no such file");
        assert_eq!(errors.kinds(), vec![ErrorKind::FileNotFound]);
        assert!(errors.to_string().starts_with("nowhere.toml: "), "{errors}");
        Ok(())
    });
}

/// A config path that cannot be read as a file is reported as unreadable.
#[test]
fn an_unreadable_config_file_is_reported() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_dir("dir.toml")?;
        let errors = load(Path::new("dir.toml")).expect_err("a directory is not a config");
        assert_eq!(errors.kinds(), vec![ErrorKind::FileUnreadable]);
        assert!(errors.to_string().starts_with("dir.toml: "), "{errors}");
        Ok(())
    });
}

/// Relative `node.key` and `node.data_dir` are resolved against the config file's
/// directory, not the current directory.
#[test]
fn relative_paths_resolve_against_the_config_directory() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_dir("etc/keys")?;
        jail.create_file("etc/keys/node.key", &key_text())?;
        write_token("etc/member.token", "edge-01", Role::Member);
        jail.create_file(
            "etc/agent.toml",
            &MEMBER
                .replace("\"node.key\"", "\"keys/node.key\"")
                .replace("\"data\"", "\"../var/nexus\""),
        )?;
        let config = match load(Path::new("etc/agent.toml")) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        let etc = jail.directory().join("etc");
        assert_eq!(config.node.key, etc.join("keys/node.key"));
        assert_eq!(config.node.data_dir, etc.join("../var/nexus"));
        assert!(config.node.key.is_absolute());
        assert_eq!(config.node.token, Some(etc.join("member.token")));
        assert_eq!(
            config.trust.revocations_file,
            etc.join("../var/nexus/revocations.cbor")
        );
        Ok(())
    });
}

/// Every example config passes validation once its key path points at a real key.
#[test]
fn every_example_config_passes_validation() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (file, mode, node_id, role) in [
        ("member.toml", Mode::Member, "edge-msk-01", Role::Member),
        ("hub.toml", Mode::Hub, "hub-msk", Role::Hub),
        ("root.toml", Mode::Root, "root", Role::Root),
    ] {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("node.key", &key_text())?;
            write_token("node.token", node_id, role);
            jail.set_env(
                "NEXUS_NODE__KEY",
                jail.directory().join("node.key").display(),
            );
            jail.set_env(
                "NEXUS_NODE__TOKEN",
                jail.directory().join("node.token").display(),
            );
            jail.set_env("NEXUS_TRUST__ROOT_KEYS", ROOT_PUBLIC);
            let config = match load(&examples.join(file)) {
                Ok(config) => config,
                Err(errors) => panic!("{file}:\n{errors}"),
            };
            assert_eq!(config.node.mode, mode, "{file}");
            assert_eq!(config.uplink.is_some(), mode != Mode::Root, "{file}");
            assert!(config.local.is_some(), "{file}");
            assert!(
                matches!(&config.acl, AclPolicy::Rules(acl) if !acl.rules().is_empty()),
                "{file}: the examples show [[acl]] rules"
            );
            if mode == Mode::Member {
                let bridge = &config.bridge;
                assert_eq!((bridge.up.len(), bridge.down.len()), (1, 1), "{file}");
                assert_eq!(
                    bridge.up[0].rewrite.apply("app.booking.created").as_deref(),
                    Some("booking.created")
                );
                assert_eq!(
                    bridge.down[0].rewrite.apply("booking.cancel").as_deref(),
                    Some("app.cmd.booking.cancel")
                );
            }
            // The examples are what `check` takes without a warning.
            assert_eq!(config.warnings(), Vec::new(), "{file}");
            if mode == Mode::Root {
                let names: Vec<&str> = config
                    .landing
                    .domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect();
                assert_eq!(names, ["NEXUS_CORE", "NEXUS_IOT", "NEXUS_BOOKING"]);
            }
            // What `check` prints for it loads back to the same configuration.
            jail.create_file("printed.toml", &config.redacted())?;
            let again = match load(Path::new("printed.toml")) {
                Ok(again) => again,
                Err(errors) => panic!("{file}, printed:\n{errors}\n{}", config.redacted()),
            };
            assert_eq!(
                Config {
                    source: config.source.clone(),
                    ..again
                },
                config,
                "{file}"
            );
            Ok(())
        });
    }
}

/// Passwords and tokens in URLs never appear in the printed config nor in `Debug`, and
/// the key is printed as its path only.
#[test]
fn redaction_hides_url_passwords() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{}\n[local]\nurl = \"nats://s3cr3t-token@127.0.0.1:4222\"\n",
                MEMBER.replace("nats://hub.example", "nats://edge-01:hunter2@hub.example")
            ),
        )?;
        let config = load_ok();
        let text = config.redacted();
        assert!(
            text.contains("url = \"nats://edge-01:***@hub.example:4222\""),
            "{text}"
        );
        assert!(
            text.contains("url = \"nats://***@127.0.0.1:4222\""),
            "{text}"
        );
        let debug = format!("{config:?}");
        for printed in [&text, &debug] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(!printed.contains("s3cr3t"), "{printed}");
        }
        let key = key_text();
        let key_body = key.trim().rsplit(':').next().expect("key text");
        assert!(!text.contains(key_body), "{text}");
        assert!(text.contains(&format!("key = \"{}\"", config.node.key.display())));
        Ok(())
    });
}

/// What `check` prints is valid TOML that loads back to the same configuration.
#[test]
fn the_redacted_config_loads_back_to_the_same_config() {
    Jail::expect_with(|jail| {
        let extra = r#"
[log]
level = "nexus_federation=debug,info"
format = "json"

[local.tls]
ca_file = "ca.pem"
cert_file = "client.pem"
key_file = "client.key"
server_name = "nats.internal"

[outbox]
when_full = "drop_oldest"
max_age = "2h"
drain_rate = 50

[dead_letter]
max_entries = 10

[[acl]]
principal = "edge-*"
allow_publish = ["nexus.salon-001.>"]
deny_publish = ["nexus.salon-001.wallet.>"]

[[acl]]
principal = "local"
allow_receive = ["_nexus.cmd.hub-msk.>"]
"#;
        setup(jail, &format!("{HUB}{extra}"))?;
        write_pem_files(jail)?;
        let config = load_ok();
        assert!(config.uplink.as_ref().expect("uplink").tls.is_some());
        assert!(config.local.as_ref().expect("local").tls.is_some());
        jail.create_file("printed.toml", &config.redacted())?;
        let again = match load(Path::new("printed.toml")) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}\n{}", config.redacted()),
        };
        assert_eq!(
            Config {
                source: config.source.clone(),
                ..again
            },
            config
        );
        Ok(())
    });
}

// ---- [trust] and node.token -------------------------------------------------------------

/// Every mode needs `[trust]`: a node that cannot check tokens cannot take part.
#[test]
fn a_config_without_trust_is_refused_in_every_mode() {
    Jail::expect_with(|jail| {
        for config in [MEMBER, HUB, ROOT] {
            let without =
                config.replace(&format!("[trust]\nroot_keys = [\"{ROOT_PUBLIC}\"]\n"), "");
            assert_ne!(without, config);
            setup(jail, &without)?;
            let errors = load_err();
            // Without anchors, the token is not checked against them: one error.
            assert_eq!(errors.kinds(), vec![ErrorKind::MissingSection], "{errors}");
            let error = errors.find("trust").expect("an error about trust");
            assert!(error.message.contains("root_keys"), "{error}");
        }
        Ok(())
    });
}

/// A root key that does not parse is named by its index; a weak key is refused; a secret
/// key pasted by mistake is not echoed.
#[test]
fn a_bad_root_key_is_named_by_its_index() {
    Jail::expect_with(|jail| {
        let secret = SecretKey::from_seed(&[9; 32]).expect("key").to_file_text();
        let secret = secret.trim();
        let weak = "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        setup(
            jail,
            &MEMBER.replace(
                &format!("root_keys = [\"{ROOT_PUBLIC}\"]"),
                &format!(
                    "root_keys = [\"{ROOT_PUBLIC}\", \"ed25519:nope\", \"{weak}\", \"{secret}\"]"
                ),
            ),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadPublicKey; 3], "{errors}");
        for index in 1..=3 {
            let key = format!("trust.root_keys[{index}]");
            assert!(errors.find(&key).is_some(), "no {key}: {errors}");
        }
        assert!(
            errors
                .find("trust.root_keys[2]")
                .is_some_and(|e| e.message.contains("weak")),
            "{errors}"
        );
        let body = secret.rsplit(':').next().expect("secret body");
        assert!(!errors.to_string().contains(body), "{errors}");
        Ok(())
    });
}

/// `root_keys` must hold at least one key; its absence is a missing key.
#[test]
fn an_empty_or_missing_root_key_list_is_refused() {
    Jail::expect_with(|jail| {
        let list = format!("root_keys = [\"{ROOT_PUBLIC}\"]");
        setup(jail, &MEMBER.replace(&list, "root_keys = []"))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::InvalidValue], "{errors}");
        assert!(errors.find("trust.root_keys").is_some(), "{errors}");

        jail.create_file(
            "member.toml",
            &MEMBER.replace(&list, "clock_skew = \"30s\""),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingKey], "{errors}");
        assert!(errors.find("trust.root_keys").is_some(), "{errors}");
        Ok(())
    });
}

/// From the environment, `root_keys` is a comma-separated list (a rotation: old and new
/// root key); `clock_skew` and `revocations_file` are read too.
#[test]
fn root_keys_from_the_environment_are_a_comma_list() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let other = SecretKey::from_seed(&[2; 32]).expect("key").public();
        jail.set_env("NEXUS_TRUST__ROOT_KEYS", format!("{other}, {ROOT_PUBLIC}"));
        jail.set_env("NEXUS_TRUST__CLOCK_SKEW", "5m");
        jail.set_env(
            "NEXUS_TRUST__REVOCATIONS_FILE",
            "/var/lib/nexus/revoked.cbor",
        );
        let config = load_ok();
        assert_eq!(config.trust.root_keys, vec![other, root_key().public()]);
        assert_eq!(config.trust.clock_skew, Duration::from_secs(300));
        assert_eq!(
            config.trust.revocations_file,
            PathBuf::from("/var/lib/nexus/revoked.cbor")
        );
        Ok(())
    });
}

/// Members and hubs need a token; a root may run without one (it is the anchor), or with
/// one of role root.
#[test]
fn members_and_hubs_need_a_token_and_a_root_may_go_without() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("token = \"member.token\"\n", ""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::MissingKey], "{errors}");
        let error = errors
            .find("node.token")
            .expect("an error about node.token");
        assert!(error.message.contains("token issue"), "{error}");

        jail.create_file("member.toml", &HUB.replace("token = \"hub.token\"\n", ""))?;
        assert_eq!(load_err().kinds(), vec![ErrorKind::MissingKey]);

        jail.create_file("member.toml", ROOT)?;
        assert_eq!(load_ok().node.token, None);

        jail.create_file(
            "member.toml",
            &ROOT.replace(
                "key = \"node.key\"\n",
                "key = \"node.key\"\ntoken = \"root.token\"\n",
            ),
        )?;
        assert_eq!(
            load_ok().node.token,
            Some(jail.directory().join("root.token"))
        );
        Ok(())
    });
}

/// A token file that cannot be read is reported with the path and how to get one.
#[test]
fn an_unreadable_token_file_is_reported() {
    Jail::expect_with(|jail| {
        setup(jail, &member_with("\"member.token\"", "\"missing.token\""))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::UnreadableTokenFile]);
        let error = errors
            .find("node.token")
            .expect("an error about node.token");
        assert!(error.message.contains("missing.token"), "{error}");
        assert!(error.message.contains("os error"), "{error}");
        Ok(())
    });
}

/// Garbage is not a token, and a secret key file given as the token is recognised without
/// printing it.
#[test]
fn a_bad_token_file_is_refused_without_printing_secrets() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        jail.create_file("member.token", "not a token at all")?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadTokenFile]);
        assert!(
            errors.to_string().contains("not a capability token chain"),
            "{errors}"
        );

        jail.create_file("member.token", &key_text())?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadTokenFile]);
        assert!(errors.to_string().contains("secret key file"), "{errors}");
        let key = key_text();
        let body = key.trim().rsplit(':').next().expect("key body");
        assert!(!errors.to_string().contains(body), "{errors}");
        Ok(())
    });
}

/// The token must be this node's: its id, its key, its role and its tenant, and the errors
/// name both sides.
#[test]
fn a_token_of_another_node_key_or_role_is_refused_naming_both() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let other = SecretKey::from_seed(&[9; 32]).expect("key");
        std::fs::write(
            "member.token",
            chain("edge-99", Role::Hub, &other, &root_key()),
        )
        .expect("write");
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::TokenMismatch; 3],
            "{errors}"
        );
        let text = errors.to_string();
        assert!(
            text.contains("`edge-99`") && text.contains("`edge-01`"),
            "{text}"
        );
        assert!(
            text.contains(&other.public().to_string())
                && text.contains(&node_key().public().to_string()),
            "{text}"
        );
        assert!(
            text.contains("hub token") && text.contains("mode is member"),
            "{text}"
        );

        // The right token, but node.tenant names another tenant than the token binds.
        write_token("member.token", "edge-01", Role::Member);
        jail.create_file(
            "member.toml",
            &member_with("\"salon-001\"", "\"salon-002\""),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::TokenMismatch], "{errors}");
        assert!(errors.to_string().contains("`salon-002`"), "{errors}");
        Ok(())
    });
}

/// A token that does not lead to a trusted root is refused, naming the key that signed it.
#[test]
fn a_token_under_an_untrusted_root_is_refused() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let stranger = SecretKey::from_seed(&[2; 32]).expect("key");
        std::fs::write(
            "member.token",
            chain("edge-01", Role::Member, &node_key(), &stranger),
        )
        .expect("write");
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::UntrustedToken]);
        let error = errors
            .find("node.token")
            .expect("an error about node.token");
        assert!(
            error.message.contains(&stranger.public().to_string()),
            "{error}"
        );
        Ok(())
    });
}

/// Expiry is the agent's business at run time: config accepts an expired token (the test
/// tokens expired in early 2026).
#[test]
fn an_expired_token_is_not_refused_by_config() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        let config = load_ok();
        assert!(config.node.token.is_some());
        Ok(())
    });
}

// ---- [[acl]] ----------------------------------------------------------------------------

/// `[[acl]]` entries become the same `Acl` serde would make of them, and decide as such.
#[test]
fn acl_entries_load_as_the_policies_acl() {
    Jail::expect_with(|jail| {
        let rules = r#"
[[acl]]
principal = "edge-*"
allow_publish = ["nexus.salon-001.>"]
deny_publish = ["nexus.salon-001.wallet.>"]

[[acl]]
principal = "local"
allow_publish = ["embassy.*"]
allow_receive = ["_nexus.cmd.edge-01.>"]
deny_receive = ["_nexus.cmd.edge-01.reboot"]
"#;
        setup(jail, &format!("{MEMBER}{rules}"))?;
        let config = load_ok();
        let serde: Acl = figment::Figment::from(<Toml as Format>::string(rules))
            .extract_inner("acl")
            .expect("serde reads the same rules");
        assert_eq!(config.acl, AclPolicy::Rules(serde));
        assert!(config
            .acl
            .allows("edge-07", Action::Publish, "nexus.salon-001.iot.x"));
        assert!(!config
            .acl
            .allows("edge-07", Action::Publish, "nexus.salon-001.wallet.x"));
        assert!(!config
            .acl
            .allows("hub-1", Action::Publish, "nexus.salon-001.iot.x"));
        assert!(AclPolicy::TokenGrants.allows("anyone", Action::Receive, "a.b"));
        Ok(())
    });
}

/// `acl = []` is an explicit empty ACL: default deny, nothing allowed.
#[test]
fn an_explicitly_empty_acl_denies_everything() {
    Jail::expect_with(|jail| {
        setup(jail, &format!("acl = []\n{MEMBER}"))?;
        let config = load_ok();
        assert_eq!(config.acl, AclPolicy::Rules(Acl::default()));
        assert!(!config.acl.allows("local", Action::Publish, "a.b"));
        Ok(())
    });
}

/// A bad pattern is named by its entry and position.
#[test]
fn a_bad_acl_pattern_is_named_by_its_index() {
    Jail::expect_with(|jail| {
        let rules = "\n[[acl]]\nprincipal = \"local\"\nallow_publish = [\"a.>\"]\n\
                     \n[[acl]]\nprincipal = \"edge-*\"\nallow_publish = [\"a.b\"]\n\
                     \n[[acl]]\nprincipal = \"edge-*\"\nallow_publish = [\"nexus..x\", \"ok.*\", \"a.>.b\"]\n";
        setup(jail, &format!("{MEMBER}{rules}"))?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadPattern; 2], "{errors}");
        let error = errors
            .find("acl[2].allow_publish[0]")
            .expect("an error about acl[2].allow_publish[0]");
        assert!(error.message.contains("nexus..x"), "{error}");
        assert!(errors.find("acl[2].allow_publish[2]").is_some(), "{errors}");
        Ok(())
    });
}

/// A principal that is not `local`, a node id or a glob is refused.
#[test]
fn a_bad_acl_principal_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!("{MEMBER}\n[[acl]]\nprincipal = \"Edge.*\"\nallow_publish = [\"a\"]\n"),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadPrincipal], "{errors}");
        assert!(errors.find("acl[0].principal").is_some(), "{errors}");
        Ok(())
    });
}

/// Unknown keys in an entry, a missing principal, a table instead of an array of tables:
/// all reported at once.
#[test]
fn malformed_acl_entries_are_reported() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{MEMBER}\n[[acl]]\nprincipal = \"local\"\nallow_pub = [\"a\"]\n\
                 \n[[acl]]\nallow_publish = [\"a\"]\n\
                 \n[[acl]]\nprincipal = \"local\"\ndeny_receive = \"a.b\"\n"
            ),
        )?;
        let errors = load_err();
        assert_eq!(
            errors.find("acl[0].allow_pub").map(|e| e.kind.clone()),
            Some(ErrorKind::UnknownKey {
                suggestion: Some("allow_publish".to_owned())
            }),
            "{errors}"
        );
        assert_eq!(
            errors.find("acl[1].principal").map(|e| e.kind.clone()),
            Some(ErrorKind::MissingKey),
            "{errors}"
        );
        assert_eq!(
            errors.find("acl[2].deny_receive").map(|e| e.kind.clone()),
            Some(ErrorKind::InvalidType),
            "{errors}"
        );
        assert_eq!(errors.len(), 3, "{errors}");

        jail.create_file(
            "member.toml",
            &format!("{MEMBER}\n[acl]\nprincipal = \"local\"\n"),
        )?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::InvalidType], "{errors}");
        assert!(errors.to_string().contains("[[acl]]"), "{errors}");
        Ok(())
    });
}

// ---- TLS --------------------------------------------------------------------------------

/// Writes PEM-looking `ca.pem`, `client.pem` and `client.key` into the jail.
fn write_pem_files(jail: &mut Jail) -> figment::error::Result<()> {
    for (name, label) in [
        ("ca.pem", "CERTIFICATE"),
        ("client.pem", "CERTIFICATE"),
        ("client.key", "PRIVATE KEY"),
    ] {
        jail.create_file(
            name,
            &format!("-----BEGIN {label}-----\nMIIB\n-----END {label}-----\n"),
        )?;
    }
    Ok(())
}

/// `[uplink.tls]` with every key loads, paths resolved; `tls://` alone means TLS with the
/// defaults; plain `nats://` means none.
#[test]
fn tls_sections_load_and_tls_urls_imply_tls() {
    Jail::expect_with(|jail| {
        let tls = "\n[uplink.tls]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\n\
                   key_file = \"client.key\"\nserver_name = \"hub.internal\"\n";
        setup(jail, &format!("{MEMBER}{tls}"))?;
        write_pem_files(jail)?;
        let config = load_ok();
        let tls = config.uplink.expect("uplink").tls.expect("tls");
        let dir = jail.directory();
        assert_eq!(tls.ca_file, Some(dir.join("ca.pem")));
        let client = tls.client_cert.expect("client cert");
        assert_eq!(client.cert_file, dir.join("client.pem"));
        assert_eq!(client.key_file, dir.join("client.key"));
        assert_eq!(tls.server_name.as_deref(), Some("hub.internal"));

        jail.create_file(
            "member.toml",
            &MEMBER.replace("nats://hub.example", "tls://hub.example"),
        )?;
        let uplink = load_ok().uplink.expect("uplink");
        assert_eq!(uplink.tls, Some(TlsConfig::default()));

        // An empty [uplink.tls] requires TLS on a nats:// URL too.
        jail.create_file("member.toml", &format!("{MEMBER}\n[uplink.tls]\n"))?;
        assert_eq!(
            load_ok().uplink.expect("uplink").tls,
            Some(TlsConfig::default())
        );
        Ok(())
    });
}

/// TLS files that cannot be read are reported, each with its key path.
#[test]
fn unreadable_tls_files_are_reported() {
    Jail::expect_with(|jail| {
        let tls = "\n[local]\nurl = \"nats://127.0.0.1:4222\"\n\n[local.tls]\n\
                   ca_file = \"nowhere/ca.pem\"\ncert_file = \"nowhere/c.pem\"\n\
                   key_file = \"nowhere/c.key\"\n";
        setup(jail, &format!("{MEMBER}{tls}"))?;
        let errors = load_err();
        assert_eq!(
            errors.kinds(),
            vec![ErrorKind::UnreadableTlsFile; 3],
            "{errors}"
        );
        for key in [
            "local.tls.ca_file",
            "local.tls.cert_file",
            "local.tls.key_file",
        ] {
            assert!(errors.find(key).is_some(), "no {key}: {errors}");
        }
        Ok(())
    });
}

/// A TLS file that is not PEM is refused without printing its contents.
#[test]
fn a_tls_file_that_is_not_pem_is_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{MEMBER}\n[uplink.tls]\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n"
            ),
        )?;
        write_pem_files(jail)?;
        jail.create_file("client.key", "s3cr3t-der-bytes")?;
        let errors = load_err();
        assert_eq!(errors.kinds(), vec![ErrorKind::BadTlsFile], "{errors}");
        assert!(errors.find("uplink.tls.key_file").is_some(), "{errors}");
        assert!(!errors.to_string().contains("s3cr3t"), "{errors}");
        Ok(())
    });
}

/// A client certificate needs its key and the reverse; a bad server name and a TLS key
/// written straight under [uplink] are caught.
#[test]
fn tls_keys_are_checked_together() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{MEMBER}ca_file = \"ca.pem\"\n\n[uplink.tls]\ncert_file = \"client.pem\"\n\
                 server_name = \"tls://hub\"\n"
            ),
        )?;
        write_pem_files(jail)?;
        let errors = load_err();
        assert_eq!(
            errors.find("uplink.ca_file").map(|e| e.kind.clone()),
            Some(ErrorKind::UnknownKey {
                suggestion: Some("uplink.tls.ca_file".to_owned())
            }),
            "{errors}"
        );
        assert_eq!(
            errors.find("uplink.tls.key_file").map(|e| e.kind.clone()),
            Some(ErrorKind::MissingKey),
            "{errors}"
        );
        assert_eq!(
            errors
                .find("uplink.tls.server_name")
                .map(|e| e.kind.clone()),
            Some(ErrorKind::InvalidValue),
            "{errors}"
        );
        assert_eq!(errors.len(), 3, "{errors}");
        Ok(())
    });
}

// ---- [outbox] and [dead_letter] ---------------------------------------------------------

/// The outbox policy keys and the dead-letter bounds load.
#[test]
fn outbox_policy_and_dead_letter_bounds_load() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{MEMBER}\n[outbox]\nwhen_full = \"drop_oldest\"\nmax_age = \"1d\"\n\
                 drain_rate = 20\n\n[dead_letter]\nmax_bytes = 1048576\nmax_entries = 500\n"
            ),
        )?;
        let config = load_ok();
        assert_eq!(config.outbox.when_full, WhenFull::DropOldest);
        assert_eq!(config.outbox.max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(config.outbox.drain_rate.map(|r| r.get()), Some(20));
        assert_eq!(
            config.dead_letter,
            DeadLetterConfig {
                max_bytes: 1_048_576,
                max_entries: 500
            }
        );
        Ok(())
    });
}

/// Bad outbox policies and bounds are refused, all at once.
#[test]
fn bad_outbox_policies_and_bounds_are_refused() {
    Jail::expect_with(|jail| {
        setup(
            jail,
            &format!(
                "{MEMBER}\n[outbox]\nwhen_full = \"drop_oldset\"\nmax_age = \"0s\"\n\
                 drain_rate = 0\n\n[dead_letter]\nmax_entries = 0\nmax_bytes = \"big\"\n"
            ),
        )?;
        let errors = load_err();
        for (key, kind) in [
            ("outbox.when_full", ErrorKind::InvalidValue),
            ("outbox.max_age", ErrorKind::BadDuration),
            ("outbox.drain_rate", ErrorKind::InvalidValue),
            ("dead_letter.max_entries", ErrorKind::InvalidValue),
            ("dead_letter.max_bytes", ErrorKind::InvalidType),
        ] {
            let error = errors
                .find(key)
                .unwrap_or_else(|| panic!("no {key}: {errors}"));
            assert_eq!(error.kind, kind, "{error}");
        }
        assert!(
            errors.to_string().contains("did you mean `drop_oldest`?"),
            "{errors}"
        );
        assert_eq!(errors.len(), 5, "{errors}");
        Ok(())
    });
}

/// `[uplink] jetstream_domain` (a leaf-node site): loads, gives the uplink this node's own
/// inbox prefix, is printed and loads back; absent, neither is set.
#[test]
fn an_uplink_jetstream_domain_loads_with_the_nodes_inbox_prefix() {
    Jail::expect_with(|jail| {
        let leaf = MEMBER.replace(
            "url = \"nats://hub.example:4222\"\n",
            "url = \"nats://127.0.0.1:4222\"\njetstream_domain = \"hub\"\n",
        );
        setup(jail, &leaf)?;
        let config = load_ok();
        let uplink = config.uplink.as_ref().expect("uplink");
        assert_eq!(uplink.jetstream_domain.as_deref(), Some("hub"));
        assert_eq!(uplink.inbox_prefix.as_deref(), Some("_INBOX.edge-01"));
        let printed = config.redacted();
        assert!(printed.contains("jetstream_domain = \"hub\""), "{printed}");
        assert!(printed.contains("_INBOX.edge-01.>"), "{printed}");
        jail.create_file("printed.toml", &printed)?;
        let again = match load(Path::new("printed.toml")) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}\n{printed}"),
        };
        assert_eq!(again.uplink, config.uplink);

        jail.create_file("member.toml", MEMBER)?;
        let uplink = load_ok().uplink.expect("uplink");
        assert_eq!((uplink.jetstream_domain, uplink.inbox_prefix), (None, None));

        // From the environment as well.
        jail.set_env("NEXUS_UPLINK__JETSTREAM_DOMAIN", "hub-msk");
        let uplink = load_ok().uplink.expect("uplink");
        assert_eq!(uplink.jetstream_domain.as_deref(), Some("hub-msk"));
        Ok(())
    });
}

/// A domain that is not a JetStream name is refused naming the key; in `[local]` the key
/// is refused with where it belongs.
#[test]
fn a_bad_or_misplaced_jetstream_domain_is_refused_naming_the_key() {
    Jail::expect_with(|jail| {
        for bad in ["", "hub.msk", "hub msk", "hub*", "hub>"] {
            let config = format!("{MEMBER}jetstream_domain = \"{bad}\"\n");
            setup(jail, &config)?;
            let errors = load_err();
            assert_eq!(errors.kinds(), vec![ErrorKind::InvalidValue], "{errors}");
            let error = errors
                .find("uplink.jetstream_domain")
                .expect("the key is named");
            assert!(error.message.contains("not a JetStream name"), "{errors}");
            assert!(errors.to_string().contains("member.toml"), "{errors}");
        }
        setup(
            jail,
            &format!(
                "{MEMBER}\n[local]\nurl = \"nats://127.0.0.1:4222\"\njetstream_domain = \"box\"\n"
            ),
        )?;
        let errors = load_err();
        let error = errors
            .find("local.jetstream_domain")
            .expect("the key is named");
        assert!(
            error.message.contains("applies to [uplink] only"),
            "{errors}"
        );
        Ok(())
    });
}
