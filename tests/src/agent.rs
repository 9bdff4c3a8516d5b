//! The `nexus-agent` binary as a child process: `run` with a config file, and `keygen`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::bins::agent_bin;
use crate::process::{append_log, read_lossy, Proc};

/// How long [`AgentProcess`]'s `Drop` waits after SIGTERM before it sends SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(3);

/// A `nexus-agent run -c DIR/NAME.toml` process; output appended to `DIR/NAME.log`.
///
/// The agent runs with `RUST_LOG` unset and with no inherited `NEXUS_*__*` variables (which
/// the agent reads as config overrides), so only the test's config file counts. Dropping it
/// sends SIGTERM, waits up to 3 s, then SIGKILLs: no process is left behind.
#[derive(Debug)]
pub struct AgentProcess {
    name: String,
    program: PathBuf,
    launch: Launch,
    config_path: PathBuf,
    log_path: PathBuf,
    proc: Proc,
}

impl AgentProcess {
    /// Writes `config_toml` to `dir/NAME.toml` and starts the agent on it (see [`agent_bin`]).
    /// Returns as soon as the process is started: wait for what the test needs (a heartbeat,
    /// a log line) with [`crate::wait_until`].
    pub fn spawn(name: &str, config_toml: &str, dir: &Path) -> AgentProcess {
        Self::spawn_program(&agent_bin(), name, config_toml, dir)
    }

    /// [`Self::spawn`] with another program in place of `nexus-agent` (it is run as
    /// `PROGRAM run -c FILE`); used to test this helper with a stand-in.
    pub fn spawn_program(
        program: &Path,
        name: &str,
        config_toml: &str,
        dir: &Path,
    ) -> AgentProcess {
        let launch = Launch {
            program: Some(program.to_path_buf()),
            ..Launch::default()
        };
        Self::spawn_with(&launch, name, config_toml, dir)
    }

    /// [`Self::spawn`] as `launch` says: another binary, a launcher in front of it (an
    /// emulator), extra environment variables.
    pub fn spawn_with(launch: &Launch, name: &str, config_toml: &str, dir: &Path) -> AgentProcess {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let agent = AgentProcess {
            name: name.to_owned(),
            program: launch.program.clone().unwrap_or_else(agent_bin),
            launch: launch.clone(),
            config_path,
            log_path: dir.join(format!("{name}.log")),
            proc: Proc::default(),
        };
        agent.start();
        agent
    }

    fn start(&self) {
        let log = append_log(&self.log_path);
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let mut cmd = match self.launch.launcher.split_first() {
            Some((launcher, args)) => {
                let mut cmd = Command::new(launcher);
                cmd.args(args).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.arg("run").arg("-c").arg(&self.config_path);
        scrub_env(&mut cmd);
        cmd.envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
        self.proc.set(child);
    }

    /// The agent's name (its config and log file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid while the agent runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// The exit status if the agent has exited on its own (or was stopped); `None` while it runs.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }

    /// SIGTERM, then waits up to `timeout` for the exit. `None` if the agent is still running
    /// after `timeout` (it is left running: the test decides) or was not running.
    pub fn terminate(&self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.terminate(timeout)
    }

    /// SIGKILL + wait, like a crash or power loss of the process.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.proc.kill()
    }

    /// Starts the agent again with the same config, appending to the same log. A still
    /// running agent is killed first (SIGKILL): call [`Self::terminate`] before for a
    /// graceful restart.
    pub fn restart(&self) {
        self.proc.kill();
        self.start();
    }

    /// Everything the agent wrote so far (stdout and stderr, all runs).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The config file the agent runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

/// How [`AgentProcess::spawn_with`] starts the agent: `[LAUNCHER…] PROGRAM run -c FILE`.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The agent binary; [`agent_bin`] when `None`.
    pub program: Option<PathBuf>,
    /// A command and its arguments to run the program with, e.g. `["qemu-aarch64-static"]`
    /// for an ARM binary; empty to run it directly.
    pub launcher: Vec<OsString>,
    /// Environment variables set for the agent (after the scrubbing of [`AgentProcess`]).
    pub env: Vec<(OsString, OsString)>,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Graceful first, so a dropped agent flushes like a stopped one; `Proc`'s own Drop
        // then kills whatever is left.
        self.proc.terminate(DROP_GRACE);
    }
}

/// Runs `nexus-agent keygen --out DIR/NAME.key`; returns the secret key's path and the public
/// key text (`ed25519:…`) the command prints. Panics with its stderr if it fails.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let key = dir.join(format!("{name}.key"));
    let mut cmd = Command::new(agent_bin());
    cmd.arg("keygen").arg("--out").arg(&key);
    scrub_env(&mut cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_bin().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nexus-agent keygen --out {} failed ({}):\n{}{}",
        key.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let public = stdout.trim().to_owned();
    assert!(
        public.starts_with("ed25519:"),
        "keygen printed {public:?}, expected `ed25519:…`"
    );
    assert!(
        key.is_file(),
        "keygen succeeded but {} is missing",
        key.display()
    );
    (key, public)
}

/// Removes what would change the agent's behaviour behind the test's back.
fn scrub_env(cmd: &mut Command) {
    cmd.env_remove("RUST_LOG");
    let overrides: Vec<OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str()
                .is_some_and(|k| k.starts_with("NEXUS_") && k.contains("__"))
        })
        .collect();
    for key in overrides {
        cmd.env_remove(key);
    }
}

/// Prints the agents' logs when the test fails (what the members, the hub and the root
/// did is the diagnosis).
#[derive(Debug)]
pub struct LogsOnPanic(pub Vec<PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.contains(" DEBUG "))
                    .take(60)
                    .collect();
                eprintln!("==> {} (last 60 lines above DEBUG)", path.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs `nexus-agent ARGS…` (the CLI, stdin closed) and returns what it did.
pub fn agent_cli(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run nexus-agent {args:?}: {e}"))
}
