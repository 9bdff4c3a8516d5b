//! Loading and validating configs end to end: TOML file + `NEXUS_` environment, inside a
//! `figment::Jail` (a temp directory as cwd and a scoped environment), with real key files.

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Jail;
use nexus_config::{load, Config, ConfigErrors, ErrorKind, LogFormat, Mode, Origin};
use nexus_policies::SecretKey;

/// A minimal valid member: everything else comes from defaults.
const MEMBER: &str = r#"
[node]
id = "edge-01"
mode = "member"
tenant = "salon-001"
key = "node.key"
data_dir = "data"

[uplink]
url = "nats://hub.example:4222"
"#;

/// A minimal valid hub.
const HUB: &str = r#"
[node]
id = "hub-msk"
mode = "hub"
key = "node.key"
data_dir = "data"

[uplink]
url = "tls://root.example:4222"

[local]
url = "nats://127.0.0.1:4222"
"#;

/// A minimal valid root.
const ROOT: &str = r#"
[node]
id = "root"
mode = "root"
key = "node.key"
data_dir = "data"

[local]
url = "nats://127.0.0.1:4222"
"#;

/// The text of a valid secret key file.
fn key_text() -> String {
    SecretKey::from_seed(&[7; 32])
        .expect("a fixed seed makes a key")
        .to_file_text()
        .to_string()
}

/// Empties the environment, writes a valid `node.key` and `config` as `member.toml`.
fn setup(jail: &mut Jail, config: &str) -> figment::error::Result<()> {
    jail.clear_env();
    jail.create_file("node.key", &key_text())?;
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
        assert_eq!(config.source, Some(jail.directory().join("member.toml")));
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
        jail.set_env("NEXUS_NODE__ID", "edge-02");
        jail.set_env("NEXUS_UPLINK__PING_INTERVAL", "2s");
        jail.set_env("NEXUS_OUTBOX__BATCH", "512");
        let config = load_ok();
        assert_eq!(config.node.id, "edge-02");
        assert_eq!(
            config.uplink.expect("uplink").ping_interval,
            Duration::from_secs(2)
        );
        assert_eq!(config.outbox.batch, 512);
        Ok(())
    });
}

/// Environment values stay strings: an all-digit id is not turned into a number.
#[test]
fn an_all_digit_id_from_the_environment_stays_a_string() {
    Jail::expect_with(|jail| {
        setup(jail, MEMBER)?;
        jail.set_env("NEXUS_NODE__ID", "007");
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
               [ingress]\nstream = \"a.b\"\nmax_age = \"1m\"\n";
        setup(jail, &config)?;
        let errors = load_err();
        for key in [
            "node.mode",
            "log.level",
            "log.format",
            "outbox.batch",
            "ingress.stream",
            "ingress.max_age",
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
        ] {
            assert!(
                kinds.contains(&expected),
                "{expected:?} missing from:\n{errors}"
            );
        }
        assert_eq!(errors.len(), 7, "{errors}");
        assert_eq!(errors.to_string().lines().count(), 7, "{errors}");
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
        Ok(())
    });
}

/// Every example config passes validation once its key path points at a real key.
#[test]
fn every_example_config_passes_validation() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (file, mode) in [
        ("member.toml", Mode::Member),
        ("hub.toml", Mode::Hub),
        ("root.toml", Mode::Root),
    ] {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("node.key", &key_text())?;
            jail.set_env(
                "NEXUS_NODE__KEY",
                jail.directory().join("node.key").display(),
            );
            let config = match load(&examples.join(file)) {
                Ok(config) => config,
                Err(errors) => panic!("{file}:\n{errors}"),
            };
            assert_eq!(config.node.mode, mode, "{file}");
            assert_eq!(config.uplink.is_some(), mode != Mode::Root, "{file}");
            assert!(config.local.is_some(), "{file}");
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
        setup(
            jail,
            &format!("{HUB}\n[log]\nlevel = \"nexus_federation=debug,info\"\nformat = \"json\"\n"),
        )?;
        let config = load_ok();
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
