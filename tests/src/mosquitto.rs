//! A real `mosquitto` broker on a free loopback port, with persistence, in a temp dir.
//!
//! mosquitto cannot pick its own port and report it, so the first start binds 127.0.0.1:0,
//! releases the port and starts the broker on it; if another process took the port in
//! between (the broker exits at startup), it tries again with a new port, up to 5 times.
//! Readiness is an MQTT CONNECT answered by a CONNACK.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::mosquitto_bin;
use crate::process::{append_log, tail, Proc};

/// How long one start attempt may take before it counts as failed.
pub const MOSQUITTO_START_DEADLINE: Duration = Duration::from_secs(10);
/// How many ports the first start tries.
const START_ATTEMPTS: usize = 5;
/// How long [`Mosquitto::stop`] waits after SIGTERM (mosquitto writes its database on exit).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running (or stopped, restartable) mosquitto broker on 127.0.0.1.
///
/// Anonymous access, persistence on (`mosquitto.db` in its temp dir, written on a graceful
/// stop), and a large per-client queue. Dropping it kills the broker (SIGKILL + wait) and
/// deletes its temp dir. Methods block the calling thread for at most a few seconds.
#[derive(Debug)]
pub struct Mosquitto {
    proc: Proc,
    port: AtomicU16,
    extra: String,
    config_path: PathBuf,
    log_path: PathBuf,
    // Last field: dropped after `proc` has killed the broker that writes into it.
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free port; panics (with the log tail) if none of 5 attempts is
    /// ready within [`MOSQUITTO_START_DEADLINE`].
    pub fn start() -> Mosquitto {
        Self::start_with_config("")
    }

    /// Like [`Self::start`], with `extra` appended to the generated config file.
    pub fn start_with_config(extra: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-mosquitto-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for mosquitto: {e}"));
        let broker = Mosquitto {
            proc: Proc::default(),
            port: AtomicU16::new(0),
            extra: extra.to_owned(),
            config_path: dir.path().join("mosquitto.conf"),
            log_path: dir.path().join("mosquitto.log"),
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match broker.spawn_and_wait(port) {
                Ok(()) => {
                    broker.port.store(port, Ordering::SeqCst);
                    return broker;
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!(
            "mosquitto did not start after {START_ATTEMPTS} attempts:\n  {}\nlog tail:\n{}",
            failures.join("\n  "),
            broker.log_tail(30)
        );
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }

    /// The listener port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Stops the broker gracefully (SIGTERM, so it saves its database; SIGKILL after 5 s).
    /// No-op if stopped.
    pub fn stop(&self) {
        self.proc.stop(STOP_GRACE);
    }

    /// `mosquitto_pub -q 1 -l`: one message per line of `lines` on `topic`, on one
    /// connection; `args` adds options (e.g. `-V mqttv5`). Panics with its stderr if it fails.
    pub fn publish_lines(&self, args: &[&str], topic: &str, lines: &[String]) {
        let mut child = Command::new(crate::bins::mosquitto_client_bin("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string(), "-q", "1"])
            .args(args)
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub -l");
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write a line");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("mosquitto_pub exits");
        assert!(
            out.status.success(),
            "mosquitto_pub -l: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker at once (SIGKILL + wait), like a crash: state since its last save
    /// is lost, as it would be on a real crash.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// Stops the broker if it runs, then starts it on the same port with the same config and
    /// persistence directory; returns once it answers MQTT CONNECT.
    pub fn restart(&self) {
        self.stop();
        let port = self.port();
        if let Err(e) = self.spawn_and_wait(port) {
            panic!(
                "mosquitto did not restart on port {port} (is it taken by another process?): {e}\nlog tail:\n{}",
                self.log_tail(30)
            );
        }
    }

    /// The last `n` lines of the broker's log (kept across restarts).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The config file the broker runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The broker's temp dir (config, log, persistence database).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self, port: u16) {
        let mut persistence_dir = self.dir.path().to_string_lossy().into_owned();
        persistence_dir.push('/'); // mosquitto wants the trailing slash
        let mut text = format!(
            "# Written by nexus-e2e for one test.\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             # Keep QoS 1 state and retained messages across restart() (saved on a graceful stop).\n\
             persistence true\n\
             persistence_location {persistence_dir}\n\
             # mosquitto 2.0 queues at most 1000 QoS>0 messages per client by default and DROPS the\n\
             # rest: a subscriber (our agent) slower than a burst of sensors would silently lose\n\
             # QoS 1 messages (see docs/pitfalls.md, \"mosquitto\"). Size the queue on purpose.\n\
             max_queued_messages 100000\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        );
        if nix::unistd::geteuid().is_root() {
            // Started as root, mosquitto drops to user `mosquitto`, which cannot write into
            // our (root-owned, 0700) temp dir. Tests only: stay as the invoking user.
            text.push_str("user root\n");
        }
        if !self.extra.is_empty() {
            text.push_str(&self.extra);
            text.push('\n');
        }
        std::fs::write(&self.config_path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
    }

    /// One start attempt on `port`: Ok once CONNACK arrives; Err (process reaped) otherwise.
    fn spawn_and_wait(&self, port: u16) -> Result<(), String> {
        self.write_config(port);
        let log = append_log(&self.log_path);
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot clone log handle: {e}"))?;
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", mosquitto_bin().display()));
        self.proc.set(child);

        let deadline = Instant::now() + MOSQUITTO_START_DEADLINE;
        loop {
            if let Some(status) = self.proc.exit_status() {
                self.proc.kill();
                return Err(format!("exited during startup ({status})"));
            }
            let last = match probe(port) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.proc.kill();
                return Err(format!(
                    "not ready within {MOSQUITTO_START_DEADLINE:?} (last probe: {last})"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A port that was free a moment ago (the kernel's pick for 127.0.0.1:0).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
}

/// MQTT 3.1.1 CONNECT (clean session, anonymous) → expects CONNACK "accepted".
fn probe(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_secs(1);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let client_id = b"nexus-e2e-probe";
    let mut variable = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    variable.extend_from_slice(&[0x00, client_id.len() as u8]);
    variable.extend_from_slice(client_id);
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend_from_slice(&variable);
    stream
        .write_all(&packet)
        .map_err(|e| format!("write: {e}"))?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(|e| format!("read CONNACK: {e}"))?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(format!("unexpected CONNACK {connack:02x?}"));
    }
    let _ = stream.write_all(&[0xe0, 0x00]); // DISCONNECT
    Ok(())
}
