//! `[landing]` and its `[[landing.domains]]` (root only): the defaults, explicit domains,
//! `domains = []`, and every problem reported on its key, all at once.

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;

mod common;
use common::ROOT;
use nexus_config::{load, ConfigErrors, ErrorKind, LandingConfig};
use nexus_policies::{Role, SubjectPattern};

/// A valid hub.
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
url = "nats://root.example:4222"

[local]
url = "nats://127.0.0.1:4222"
"#;

const DAY: u64 = 24 * 60 * 60;

/// The node's files (key, a hub token for `hub-msk`), and `config` as `agent.toml`.
fn setup(jail: &mut Jail, config: &str) -> figment::error::Result<()> {
    common::write_node_files(
        jail,
        "hub-msk",
        Role::Hub,
        Some("hub.token"),
        "agent.toml",
        config,
    )
}

/// The landing of `config`, which must load.
fn landing_of(config: &str) -> LandingConfig {
    let mut landing = None;
    Jail::expect_with(|jail| {
        setup(jail, config)?;
        let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}\n{config}"));
        // What `check` prints loads back to the same landing.
        let printed = config.redacted();
        jail.create_file("printed.toml", &printed)?;
        let again = load(Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.landing, config.landing, "{printed}");
        landing = Some(config.landing);
        Ok(())
    });
    landing.expect("the jail ran")
}

/// The errors of loading `config`, which must be refused.
fn refused(config: &str) -> ConfigErrors {
    let mut errors = None;
    Jail::expect_with(|jail| {
        setup(jail, config)?;
        errors = Some(load(Path::new("agent.toml")).expect_err("the config is refused"));
        Ok(())
    });
    errors.expect("the jail ran")
}

fn has(errors: &ConfigErrors, key: &str, kind: &ErrorKind) -> bool {
    errors
        .iter()
        .any(|e| e.key.as_deref() == Some(key) && e.kind == *kind)
}

fn pattern(text: &str) -> SubjectPattern {
    SubjectPattern::parse(text).expect("a valid pattern")
}

/// A root without `[landing]` lands in the journal and the two default domains.
#[test]
fn a_root_without_landing_gets_the_default_streams() {
    let landing = landing_of(ROOT);
    assert_eq!(landing, LandingConfig::defaults());
    assert_eq!(landing.stream, "NEXUS_EVENTS");
    assert_eq!(landing.max_age, Duration::from_secs(30 * DAY));
    assert_eq!(landing.max_bytes, None);
    let domains: Vec<(&str, Vec<&str>, Duration)> = landing
        .domains
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.subjects.iter().map(SubjectPattern::as_str).collect(),
                d.max_age,
            )
        })
        .collect();
    assert_eq!(
        domains,
        vec![
            (
                "NEXUS_CORE",
                vec!["nexus._core.>"],
                Duration::from_secs(90 * DAY)
            ),
            (
                "NEXUS_IOT",
                vec!["nexus.*.iot.>"],
                Duration::from_secs(30 * DAY)
            ),
        ]
    );
    // A [landing] that sets only the journal keeps the default domains.
    let landing = landing_of(&format!("{ROOT}\n[landing]\nmax_age = \"60d\"\n"));
    assert_eq!(landing.max_age, Duration::from_secs(60 * DAY));
    assert_eq!(landing.domains, LandingConfig::defaults().domains);
}

/// Listed domains replace the defaults, with their own retention.
#[test]
fn explicit_domains_replace_the_defaults() {
    let landing = landing_of(&format!(
        "{ROOT}
[landing]
stream = \"EVENTS\"
max_age = \"14d\"
max_bytes = 1000000000

[[landing.domains]]
name = \"NEXUS_BOOKING\"
subjects = [\"nexus.*.booking.>\", \"nexus.*.calendar.>\"]
max_age = \"365d\"

[[landing.domains]]
name = \"NEXUS_CORE\"
subjects = [\"nexus._core.>\"]
max_age = \"90d\"
max_bytes = 500000000
"
    ));
    assert_eq!(landing.stream, "EVENTS");
    assert_eq!(landing.max_age, Duration::from_secs(14 * DAY));
    assert_eq!(landing.max_bytes, Some(1_000_000_000));
    assert_eq!(landing.domains.len(), 2);
    let booking = &landing.domains[0];
    assert_eq!(booking.name, "NEXUS_BOOKING");
    assert_eq!(
        booking.subjects,
        vec![pattern("nexus.*.booking.>"), pattern("nexus.*.calendar.>")]
    );
    assert_eq!(booking.max_age, Duration::from_secs(365 * DAY));
    assert_eq!(booking.max_bytes, None);
    assert_eq!(landing.domains[1].name, "NEXUS_CORE");
    assert_eq!(landing.domains[1].max_bytes, Some(500_000_000));
}

/// `domains = []` keeps the journal only.
#[test]
fn an_empty_domain_list_keeps_the_journal_only() {
    let landing = landing_of(&format!("{ROOT}\n[landing]\ndomains = []\n"));
    assert!(landing.domains.is_empty());
    assert_eq!(landing.stream, "NEXUS_EVENTS");
}

/// Only the root lands events.
#[test]
fn landing_is_refused_outside_the_root() {
    let errors = refused(&format!("{HUB}\n[landing]\nstream = \"EVENTS\"\n"));
    assert!(
        has(&errors, "landing", &ErrorKind::ForbiddenSection),
        "{errors}"
    );
    assert_eq!(errors.len(), 1, "{errors}");
    let member = HUB.replace("mode = \"hub\"", "mode = \"member\"").replace(
        "id = \"hub-msk\"",
        "id = \"hub-msk\"\ntenant = \"salon-001\"",
    );
    let errors = refused(&format!("{member}\n[[landing.domains]]\nname = \"X\"\n"));
    assert!(
        has(&errors, "landing", &ErrorKind::ForbiddenSection),
        "{errors}"
    );
}

/// Each problem is refused on its own key, with the right kind.
#[test]
fn each_landing_problem_is_reported_on_its_key() {
    let domain = |name: &str, subjects: &str, max_age: &str| {
        format!(
            "{ROOT}\n[[landing.domains]]\nname = \"{name}\"\nsubjects = {subjects}\nmax_age = \"{max_age}\"\n"
        )
    };
    let ok = "[\"nexus.*.booking.>\"]";
    let invalid = ErrorKind::InvalidValue;
    let cases: Vec<(String, &str, ErrorKind)> = vec![
        (
            domain("NEXUS.BOOKING", ok, "1d"),
            "landing.domains[0].name",
            invalid.clone(),
        ),
        (
            domain("NEXUS_EVENTS", ok, "1d"),
            "landing.domains[0].name",
            invalid.clone(),
        ),
        (
            domain("KV_NEXUS_CHAINS", ok, "1d"),
            "landing.domains[0].name",
            invalid.clone(),
        ),
        (
            domain("NEXUS_INGRESS", ok, "1d"),
            "landing.domains[0].name",
            invalid.clone(),
        ),
        (
            format!(
                "{}\n[[landing.domains]]\nname = \"NEXUS_BOOKING\"\nsubjects = [\"nexus.>\"]\nmax_age = \"2d\"\n",
                domain("NEXUS_BOOKING", ok, "1d")
            ),
            "landing.domains[1].name",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "[\"booking.>\"]", "1d"),
            "landing.domains[0].subjects[0]",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "[\"nexus.*.booking.>\", \"*.x\"]", "1d"),
            "landing.domains[0].subjects[1]",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "[\"nexus.*.booking.>\", \"nexus.salon.>\"]", "1d"),
            "landing.domains[0].subjects[1]",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "[\"nexus\"]", "1d"),
            "landing.domains[0].subjects[0]",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "[\"nexus..x\"]", "1d"),
            "landing.domains[0].subjects[0]",
            ErrorKind::BadPattern,
        ),
        (
            domain("NEXUS_BOOKING", "[]", "1d"),
            "landing.domains[0].subjects",
            invalid.clone(),
        ),
        (
            domain("NEXUS_BOOKING", "\"nexus.>\"", "1d"),
            "landing.domains[0].subjects",
            ErrorKind::InvalidType,
        ),
        (
            domain("NEXUS_BOOKING", ok, "forever"),
            "landing.domains[0].max_age",
            ErrorKind::BadDuration,
        ),
        (
            format!("{ROOT}\n[[landing.domains]]\nname = \"NEXUS_BOOKING\"\nsubjects = {ok}\n"),
            "landing.domains[0].max_age",
            ErrorKind::MissingKey,
        ),
        (
            format!("{ROOT}\n[[landing.domains]]\nname = \"NEXUS_BOOKING\"\nmax_age = \"1d\"\n"),
            "landing.domains[0].subjects",
            ErrorKind::MissingKey,
        ),
        (
            format!("{ROOT}\n[[landing.domains]]\nsubjects = {ok}\nmax_age = \"1d\"\n"),
            "landing.domains[0].name",
            ErrorKind::MissingKey,
        ),
        (
            format!("{ROOT}\n[[landing.domains]]\nname = \"B\"\nsubjects = {ok}\nmax_age = \"1d\"\nmax_bytes = 0\n"),
            "landing.domains[0].max_bytes",
            invalid.clone(),
        ),
        (
            format!("{ROOT}\n[[landing.domains]]\nname = \"B\"\nsubject = {ok}\nmax_age = \"1d\"\n"),
            "landing.domains[0].subject",
            ErrorKind::UnknownKey {
                suggestion: Some("subjects".to_owned()),
            },
        ),
        (
            format!("{ROOT}\n[landing.domains]\nname = \"B\"\nsubjects = {ok}\nmax_age = \"1d\"\n"),
            "landing.domains",
            ErrorKind::InvalidType,
        ),
        (
            format!("{ROOT}\n[landing]\nstream = \"NEXUS_INGRESS\"\n"),
            "landing.stream",
            invalid.clone(),
        ),
        (
            format!("{ROOT}\n[landing]\nstream = \"nexus events\"\n"),
            "landing.stream",
            invalid.clone(),
        ),
        (
            format!("{ROOT}\n[landing]\nmax_bytes = 0\n"),
            "landing.max_bytes",
            invalid.clone(),
        ),
        (
            format!("{ROOT}\n[landing]\nmax_agee = \"1d\"\n"),
            "landing.max_agee",
            ErrorKind::UnknownKey {
                suggestion: Some("max_age".to_owned()),
            },
        ),
        // The journal dedups within ingress.duplicate_window: it must keep events as long.
        (
            format!("{ROOT}\n[landing]\nmax_age = \"1m\"\n"),
            "landing.max_age",
            invalid.clone(),
        ),
        (
            format!("{ROOT}\n[ingress]\nmax_age = \"90d\"\nduplicate_window = \"31d\"\n"),
            "landing.max_age",
            invalid.clone(),
        ),
        // The default domains may not collide with a renamed stream either.
        (
            format!("{ROOT}\n[ingress]\nstream = \"NEXUS_CORE\"\n"),
            "landing.domains",
            invalid.clone(),
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

/// A config with several broken domains gets every problem in one report, by index.
#[test]
fn every_landing_problem_is_reported_at_once() {
    let errors = refused(&format!(
        "{ROOT}
[landing]
max_age = \"30s\"
retention = \"limits\"

[[landing.domains]]
name = \"NEXUS_BOOKING\"
subjects = [\"booking.>\"]

[[landing.domains]]
name = \"NEXUS_BOOKING\"
subjects = []
max_age = \"1d\"
"
    ));
    for (key, kind) in [
        ("landing.max_age", ErrorKind::InvalidValue),
        (
            "landing.retention",
            ErrorKind::UnknownKey { suggestion: None },
        ),
        ("landing.domains[0].subjects[0]", ErrorKind::InvalidValue),
        ("landing.domains[0].max_age", ErrorKind::MissingKey),
        ("landing.domains[1].name", ErrorKind::InvalidValue),
        ("landing.domains[1].subjects", ErrorKind::InvalidValue),
    ] {
        assert!(has(&errors, key, &kind), "no {kind:?} on {key}:\n{errors}");
    }
    assert_eq!(errors.len(), 6, "{errors}");
    for error in &errors {
        let line = error.to_string();
        assert!(line.contains("agent.toml"), "{line}");
    }
}

/// A copy forwarded but not recorded comes back after the consumer's ack wait (a quarter of
/// the window) plus up to the onward link's request_timeout, and must still be inside
/// duplicate_window: shorter windows are refused at a root (onward: [local]) and a hub
/// (onward: [uplink]), naming the key and the least that works; the ack wait follows the
/// window.
#[test]
fn a_duplicate_window_shorter_than_a_redelivery_is_refused() {
    for (config, link) in [(ROOT, "local"), (HUB, "uplink")] {
        let errors = refused(&format!("{config}\n[ingress]\nduplicate_window = \"2s\"\n"));
        assert!(
            has(
                &errors,
                "ingress.duplicate_window",
                &ErrorKind::InvalidValue
            ),
            "{errors}"
        );
        let message = &errors
            .find("ingress.duplicate_window")
            .expect("on its key")
            .message;
        assert!(message.contains("at least 20s"), "{message}");
        assert!(
            message.contains(&format!("{link}.request_timeout")),
            "{message}"
        );

        // A faster onward link allows a shorter window: 4 x 250ms.
        let fast = config.replace(
            &format!("[{link}]\n"),
            &format!("[{link}]\nrequest_timeout = \"250ms\"\n"),
        );
        let short = format!("{fast}\n[ingress]\nduplicate_window = \"1s\"\n");
        Jail::expect_with(|jail| {
            setup(jail, &short)?;
            let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.ingress.ack_wait(), Duration::from_millis(250));
            assert_eq!(config.ingress.max_retry_delay(), Duration::from_millis(250));
            Ok(())
        });
    }
    // The default window (2 min) with the default request_timeout (5s): 30s ack wait.
    Jail::expect_with(|jail| {
        setup(jail, ROOT)?;
        let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.ingress.ack_wait(), Duration::from_secs(30));
        Ok(())
    });
}

/// `landing.replicas` and `ingress.replicas` default to 1, take 1 to 5 (a hub may set
/// `ingress.replicas` too), and anything else is refused on its key, saying what it is for.
#[test]
fn replicas_are_one_by_default_and_one_to_five() {
    let landing = landing_of(ROOT);
    assert_eq!(landing.replicas, 1);
    let landing = landing_of(&format!(
        "{ROOT}\n[ingress]\nreplicas = 3\n\n[landing]\nreplicas = 5\n"
    ));
    assert_eq!(landing.replicas, 5);
    Jail::expect_with(|jail| {
        setup(jail, &format!("{ROOT}\n[ingress]\nreplicas = 3\n"))?;
        let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.ingress.replicas, 3);
        assert_eq!(config.landing.replicas, 1);
        assert!(config.redacted().contains("replicas = 3"));
        setup(jail, &format!("{HUB}\n[ingress]\nreplicas = 3\n"))?;
        let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.ingress.replicas, 3);
        setup(jail, HUB)?;
        let config = load(Path::new("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.ingress.replicas, 1);
        Ok(())
    });
    let errors = refused(&format!(
        "{ROOT}\n[ingress]\nreplicas = 0\n\n[landing]\nreplicas = 6\n"
    ));
    for key in ["ingress.replicas", "landing.replicas"] {
        assert!(has(&errors, key, &ErrorKind::InvalidValue), "{errors}");
    }
    let text = errors.to_string();
    assert!(
        text.contains("use 1 to 5") && text.contains("JetStream cluster"),
        "{text}"
    );
    let errors = refused(&format!("{ROOT}\n[landing]\nreplicas = \"three\"\n"));
    assert!(
        has(&errors, "landing.replicas", &ErrorKind::InvalidType),
        "{errors}"
    );
}
