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
