//! The command line as an operator meets it: `check`, `keygen`, `run` with a bad config,
//! `tail` against nothing.

use std::path::Path;
use std::process::{Command, Output};

use nexus_e2e::{agent_bin, keygen};

fn agent(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(agent_bin());
    command.args(args).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("nexus-agent runs")
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples")
}

/// Every shipped example passes `check` (with the node key pointed at a real key file, and
/// a token for it issued by a root key the config trusts), printing the effective config.
#[test]
fn check_accepts_every_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path(), "node");
    let (root_key, root_public) = keygen(dir.path(), "root");
    let root_public = Path::new(&root_public);
    for (mode, node_id) in [
        ("member", "edge-msk-01"),
        ("hub", "hub-msk"),
        ("root", "root"),
    ] {
        let token = dir.path().join(format!("{mode}.token"));
        let issued = agent(
            &[
                "token",
                "issue",
                "--key",
                root_key.to_str().expect("utf-8 path"),
                "--node",
                node_id,
                "--node-key",
                &public,
                "--role",
                mode,
                "--publish",
                "nexus.>",
                "--out",
                token.to_str().expect("utf-8 path"),
            ],
            &[],
        );
        assert_eq!(
            issued.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&issued.stderr)
        );
        let file = examples().join(format!("{mode}.toml"));
        let out = agent(
            &["check", "-c", file.to_str().expect("utf-8 path")],
            &[
                ("NEXUS_NODE__KEY", &key),
                ("NEXUS_NODE__TOKEN", &token),
                ("NEXUS_TRUST__ROOT_KEYS", root_public),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}.toml: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("mode = \"{mode}\"")), "{stdout}");
    }
}

/// A broken file gets every problem listed at once, each naming the file and the key, and
/// exit code 2; `run` refuses it the same way.
#[test]
fn check_and_run_list_every_error_of_a_broken_file_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[node]\nid = \"Edge 01\"\nmode = \"member\"\nkey = \"missing.key\"\ndata_dir = \"data\"\nidd = 1\n\n\
         [heartbeat]\ninterval = \"soon\"\n",
    )
    .expect("write");
    for command in ["check", "run"] {
        let out = agent(&[command, "-c", file.to_str().expect("utf-8")], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for expected in [
            "node.id",
            "node.idd",
            "did you mean",
            "heartbeat.interval",
            "node.key",
            "keygen",
            "uplink",
        ] {
            assert!(
                stderr.contains(expected),
                "{command}: `{expected}` missing from:\n{stderr}"
            );
        }
        assert!(
            stderr.lines().filter(|l| l.contains("broken.toml")).count() >= 4,
            "{stderr}"
        );
    }
}

/// A missing config file is a clear error, not a panic.
#[test]
fn a_missing_config_file_is_named() {
    let out = agent(&["check", "-c", "/nonexistent/nexus.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/nexus.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `keygen` prints the public key, writes a 0600 secret, and refuses to overwrite.
#[test]
fn keygen_refuses_to_overwrite_without_force() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path(), "node");
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    let again = agent(&["keygen", "--out", key.to_str().expect("utf-8")], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let pub_file = std::fs::read_to_string(dir.path().join("node.key.pub")).expect("pub file");
    assert_eq!(pub_file.trim(), public, "the key was not replaced");
}

/// `tail` against a server that is not there fails fast with the URL, exit 1.
#[test]
fn tail_against_no_server_fails_with_the_url() {
    let out = agent(&["tail", "nexus.>", "--server", "nats://127.0.0.1:1"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats://127.0.0.1:1"));
}

/// Bad command lines are refused with usage and exit 2.
#[test]
fn unknown_subcommands_are_usage_errors() {
    let out = agent(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// A root config that `check` accepts (a real key, a NATS that is not there), so that a
/// command reaches what it does with its values instead of stopping at the config.
fn root_config(dir: &Path) -> std::path::PathBuf {
    let (key, public) = keygen(dir, "root");
    let file = dir.join("root.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nid = \"root\"\nmode = \"root\"\nkey = \"{}\"\ndata_dir = \"{}\"\n\n\
             [trust]\nroot_keys = [\"{public}\"]\n\n[local]\nurl = \"nats://127.0.0.1:1\"\n",
            key.display(),
            dir.join("data").display()
        ),
    )
    .expect("write config");
    file
}

/// The verbs `nexus-agent help` and `nexus-agent help VERB` list, e.g. `token issue`.
fn verbs() -> Vec<String> {
    fn listed(args: &[&str]) -> Vec<String> {
        let out = agent(args, &[]);
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        help.lines()
            .skip_while(|line| !line.starts_with("Commands:"))
            .skip(1)
            .take_while(|line| !line.trim().is_empty())
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect()
    }
    let mut verbs = Vec::new();
    for verb in listed(&["help"]) {
        match listed(&["help", &verb]).as_slice() {
            [] => verbs.push(verb),
            subverbs => verbs.extend(subverbs.iter().map(|sub| format!("{verb} {sub}"))),
        }
    }
    verbs
}

/// `token issue` with a valid command line, except `flag` set to `value`.
fn issue(key: &str, public: &str, out: &str, flag: &str, value: &str) -> Vec<String> {
    let mut pairs = vec![
        ("--key", key),
        ("--node", "edge-01"),
        ("--node-key", public),
        ("--role", "member"),
        ("--publish", "nexus.>"),
        ("--out", out),
    ];
    match pairs.iter_mut().find(|(name, _)| *name == flag) {
        Some(pair) => pair.1 = value,
        None => pairs.push((flag, value)),
    }
    let mut args = vec!["token".to_owned(), "issue".to_owned(), "--force".to_owned()];
    for (name, value) in pairs {
        args.push(name.to_owned());
        args.push(value.to_owned());
    }
    args
}

/// Every verb refuses a bad value — a duration, time, id, pattern, URL, JSON, path — as a
/// usage error: exit 2, before anything runs, with clap's message naming the flag or
/// argument. (Until these were clap value parsers, most of them exited 1.)
#[test]
fn every_verb_refuses_a_bad_value_with_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = root_config(dir.path());
    let config = config.to_str().expect("utf-8 path");
    let (key, public) = keygen(dir.path(), "node");
    let key = key.to_str().expect("utf-8 path");
    let token = dir.path().join("node.token");
    let token = token.to_str().expect("utf-8 path");
    let id = "0123456789abcdef0123456789abcdef";
    let unreachable = "nats://127.0.0.1:1";
    let issue = |flag: &str, value: &str| issue(key, &public, token, flag, value);
    let line = |args: &[&str]| -> Vec<String> { args.iter().map(|a| (*a).to_owned()).collect() };
    // A bad value is "invalid value '{value}' for '{flag} <VALUE_NAME>"; a missing one is
    // named too.
    let invalid = |value: &str, flag: &str| format!("invalid value '{value}' for '{flag}");

    // (verb, command line, what stderr must say)
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "check",
            line(&["check", "-c", ""]),
            "a value is required for '--config <FILE>'".to_owned(),
        ),
        (
            "run",
            line(&["run", "--config"]),
            "a value is required for '--config <FILE>'".to_owned(),
        ),
        (
            "keygen",
            line(&["keygen", "--out", "keys/"]),
            invalid("keys/", "--out"),
        ),
        (
            "tail",
            line(&["tail", "a..b", "--server", unreachable]),
            invalid("a..b", "<PATTERN>"),
        ),
        (
            "tail",
            line(&["tail", "nexus.>", "--server", "nats://127.0.0.1:99999"]),
            invalid("nats://127.0.0.1:99999", "--server"),
        ),
        (
            "tail",
            line(&["tail", "nexus.>", "--server", unreachable, "--count", "0"]),
            invalid("0", "--count"),
        ),
        (
            "fleet",
            line(&["fleet", "-c", config, "--watch", "--json"]),
            "the argument '--watch' cannot be used with '--json'".to_owned(),
        ),
        (
            "trace",
            line(&["trace", "-c", config, "not-an-id"]),
            invalid("not-an-id", "<EVENT_ID>"),
        ),
        (
            "trace",
            line(&[
                "trace",
                "-c",
                config,
                "0192f3a1-7c2e-7d40-8f00-0123456789ab",
                "--timeout",
                "soon",
            ]),
            invalid("soon", "--timeout"),
        ),
        (
            "request",
            line(&["request", "-c", config, "Edge.01", "agent.ping"]),
            invalid("Edge.01", "<NODE>"),
        ),
        (
            "request",
            line(&["request", "-c", config, "edge-01", "ping"]),
            invalid("ping", "<COMMAND>"),
        ),
        (
            "request",
            line(&[
                "request",
                "-c",
                config,
                "edge-01",
                "agent.ping",
                "--timeout",
                "soon",
            ]),
            invalid("soon", "--timeout"),
        ),
        (
            "request",
            line(&[
                "request",
                "-c",
                config,
                "edge-01",
                "agent.ping",
                "--data",
                "[1]",
            ]),
            invalid("[1]", "--data"),
        ),
        (
            "publish",
            line(&["publish", "-c", config, "Booking.Created"]),
            invalid("Booking.Created", "<EVENT>"),
        ),
        (
            "publish",
            line(&["publish", "-c", config, "booking.created", "--data", "{"]),
            invalid("{", "--data"),
        ),
        (
            "config push",
            line(&["config", "push", "-c", config, "edge-*,", "file.toml"]),
            invalid("edge-*,", "<TARGET>"),
        ),
        (
            "config push",
            line(&[
                "config",
                "push",
                "-c",
                config,
                "edge-01",
                "f.toml",
                "--keys",
                "iot.sensors",
            ]),
            invalid("iot.sensors", "--keys"),
        ),
        (
            "config status",
            line(&["config", "status", "-c", config, "Edge*"]),
            invalid("Edge*", "[PATTERN]"),
        ),
        (
            "config diff",
            line(&["config", "diff", "-c", config, "edge.01"]),
            invalid("edge.01", "<NODE>"),
        ),
        (
            "config history",
            line(&["config", "history", "-c", config, "local"]),
            invalid("local", "<NODE>"),
        ),
        (
            "release publish",
            line(&[
                "release",
                "publish",
                "-c",
                config,
                "--key",
                key,
                "bin",
                "--target",
                "x86",
                "--version",
                "0.2.0",
            ]),
            invalid("x86", "--target"),
        ),
        (
            "release publish",
            line(&[
                "release",
                "publish",
                "-c",
                config,
                "--key",
                key,
                "bin",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--version",
                "0.2",
            ]),
            invalid("0.2", "--version"),
        ),
        (
            "release list",
            line(&["release", "list", "-c", config, "extra"]),
            "unexpected argument 'extra'".to_owned(),
        ),
        (
            "release show",
            line(&["release", "show", "-c", config, "latest"]),
            invalid("latest", "<VERSION>"),
        ),
        (
            "rollout start",
            line(&[
                "rollout",
                "start",
                "-c",
                config,
                "--version",
                "0.2.0",
                "--to",
                "edge-*",
                "--percent",
                "0",
            ]),
            invalid("0", "--percent"),
        ),
        (
            "rollout start",
            line(&[
                "rollout",
                "start",
                "-c",
                config,
                "--version",
                "0.2.0",
                "--to",
                "Edge*",
            ]),
            invalid("Edge*", "--to"),
        ),
        (
            "rollout status",
            line(&["rollout", "status", "-c", config, "--yaml"]),
            "unexpected argument '--yaml'".to_owned(),
        ),
        (
            "rollout pause",
            line(&["rollout", "pause"]),
            "--config <FILE>".to_owned(),
        ),
        (
            "rollout resume",
            line(&["rollout", "resume", "-c"]),
            "a value is required for '--config <FILE>'".to_owned(),
        ),
        (
            "rollout abort",
            line(&["rollout", "abort", "-c", config, "now"]),
            "unexpected argument 'now'".to_owned(),
        ),
        (
            "events list",
            line(&["events", "list", "--json", "--markdown"]),
            "the argument '--json' cannot be used with '--markdown'".to_owned(),
        ),
        (
            "events show",
            line(&["events", "show", "booking.created@0"]),
            invalid("booking.created@0", "<EVENT>"),
        ),
        (
            "events validate",
            line(&["events", "validate", "Booking", "payload.json"]),
            invalid("Booking", "<EVENT>"),
        ),
        (
            "events scaffold",
            line(&["events", "scaffold", "booking.created", "--version", "0"]),
            invalid("0", "--version <N>"),
        ),
        (
            "events lint",
            line(&["events", "lint", "a", "b"]),
            "unexpected argument 'b'".to_owned(),
        ),
        (
            "events asyncapi",
            line(&["events", "asyncapi", "--registry", "a", "-c", "b"]),
            "cannot be used with".to_owned(),
        ),
        (
            "dlq list",
            line(&["dlq", "list", "-c", config, "--since", "yesterday"]),
            invalid("yesterday", "--since"),
        ),
        (
            "dlq show",
            line(&["dlq", "show", "-c", config, "first"]),
            invalid("first", "<ID>"),
        ),
        (
            "dlq replay",
            line(&["dlq", "replay", "-c", config, "first"]),
            invalid("first", "[ID]"),
        ),
        (
            "dlq purge",
            line(&["dlq", "purge", "-c", config, "--before", "last-week"]),
            invalid("last-week", "--before"),
        ),
        (
            // Further back than a time can hold: this used to panic.
            "dlq purge",
            line(&["dlq", "purge", "-c", config, "--before", "20000y"]),
            invalid("20000y", "--before"),
        ),
        (
            "token issue",
            issue("--ttl", "forever"),
            invalid("forever", "--ttl"),
        ),
        ("token issue", issue("--ttl", "0s"), invalid("0s", "--ttl")),
        (
            "token issue",
            issue("--not-before", "tomorrow"),
            invalid("tomorrow", "--not-before"),
        ),
        (
            "token issue",
            issue("--node", "a.b"),
            invalid("a.b", "--node"),
        ),
        (
            "token issue",
            issue("--node", "local"),
            invalid("local", "--node"),
        ),
        (
            "token issue",
            issue("--tenant", "Salon 1"),
            invalid("Salon 1", "--tenant"),
        ),
        (
            "token issue",
            issue("--role", "king"),
            invalid("king", "--role"),
        ),
        (
            "token issue",
            issue("--publish", "a..b"),
            invalid("a..b", "--publish"),
        ),
        (
            "token issue",
            issue("--receive", "a.>.b"),
            invalid("a.>.b", "--receive"),
        ),
        (
            "token issue",
            issue("--node-key", "ed25519:short"),
            "invalid value for '--node-key".to_owned(),
        ),
        (
            "token issue",
            issue("--out", "tokens/"),
            invalid("tokens/", "--out"),
        ),
        (
            "token issue",
            issue("--server", "http://example.com"),
            invalid("http://example.com", "--server"),
        ),
        (
            "token issue",
            issue("--issuer-id", "Hub 1"),
            invalid("Hub 1", "--issuer-id"),
        ),
        (
            "token inspect",
            line(&["token", "inspect"]),
            "required arguments were not provided:\n  <FILE>".to_owned(),
        ),
        (
            "token verify",
            line(&["token", "verify", token, "--trust", &public, "--at", "now"]),
            invalid("now", "--at"),
        ),
        (
            "token verify",
            line(&["token", "verify", token, "--trust", "ed25519:short"]),
            "invalid value for '--trust".to_owned(),
        ),
        (
            "token revoke",
            line(&["token", "revoke", "--key", key, "--id", "x", "--out", token]),
            invalid("x", "--id"),
        ),
        (
            "token revoke",
            line(&["token", "revoke", "--key", key, "--id", id]),
            "required arguments were not provided:\n  <--server <URL>|--out <FILE>>".to_owned(),
        ),
        (
            "token revoke",
            line(&[
                "token",
                "revoke",
                "--key",
                key,
                "--id",
                id,
                "--server",
                "nats://:1:2",
            ]),
            invalid("nats://:1:2", "--server"),
        ),
    ];

    let mut failures = Vec::new();
    for (verb, args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !stderr.contains(expected.as_str()) {
            failures.push(format!(
                "{verb}: {args:?} exited {:?}, want 2 and `{expected}`:\n{stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A secret key given where a public one belongs is refused without being repeated.
    let secret = std::fs::read_to_string(key).expect("key file");
    let secret = secret.trim();
    let args = issue("--node-key", secret);
    let out = agent(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let body = secret.rsplit(':').next().expect("key body");
    assert!(
        stderr.contains("SECRET") && !stderr.contains(body),
        "{stderr}"
    );

    let covered: std::collections::BTreeSet<&str> = cases.iter().map(|(verb, ..)| *verb).collect();
    let verbs = verbs();
    assert!(verbs.len() >= 14, "the help lists the verbs: {verbs:?}");
    for verb in &verbs {
        assert!(
            covered.contains(verb.as_str()),
            "no usage-error case for `{verb}`"
        );
    }
}

/// What fails while running — an unreachable server, a missing file, an empty store — is
/// a runtime failure: exit 1, not 2.
#[test]
fn runtime_failures_still_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = root_config(dir.path());
    let config = config.to_str().expect("utf-8 path");
    let (key, public) = keygen(dir.path(), "node");
    let key = key.to_str().expect("utf-8 path");
    let id = "0123456789abcdef0123456789abcdef";
    for args in [
        &["dlq", "list", "-c", config, "--since", "1h"][..],
        &[
            "request",
            "-c",
            config,
            "edge-01",
            "agent.ping",
            "--timeout",
            "1s",
        ],
        &["token", "verify", "/nonexistent.token", "--trust", &public],
        &[
            "token",
            "revoke",
            "--key",
            key,
            "--id",
            id,
            "--server",
            "nats://127.0.0.1:1",
        ],
    ] {
        let out = agent(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
