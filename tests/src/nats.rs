//! A real `nats-server` with JetStream, on a port of its own choosing, in a temp dir.
//!
//! The first start asks the server to pick a free client port (`listen: 127.0.0.1:-1`) and
//! reads it back from the ports file the server writes (`ports_file_dir`), so there is no race
//! between "find a free port" and "bind it". The config is then rewritten with that port, so
//! [`NatsServer::restart`] comes back on the same address with the same JetStream store.
//!
//! Readiness is checked at the protocol level, not just TCP: the probe reads the server's
//! `INFO`, sends `CONNECT` and, with JetStream on, asks `$JS.API.INFO` and waits for the answer.
//! A server configured with a `tls { }` block (through [`NatsServerBuilder::extra`]) says
//! `"tls_required":true` in its `INFO` and expects a TLS handshake next, which the probe does
//! not speak: for such a server, ready means "listening and sending INFO" (JetStream is not
//! probed; connect with TLS to `tls://127.0.0.1:PORT`, see [`NatsServer::tls_url`]).
//!
//! A server of a cluster ([`NatsServerBuilder::cluster`], assembled by
//! [`crate::cluster::NatsCluster`]) picks its route port the same way; its routes are set
//! by the cluster, and both ports are pinned for restarts.
//!
//! Leaf nodes: a server that accepts leaf connections ([`NatsServerBuilder::leafnode_listen`])
//! picks its leafnode port the same way; the ports file does not list it, so it is read from
//! the server's log line `Listening for leafnode connections on …` and pinned as well. A
//! server that connects as a leaf ([`NatsServerBuilder::leaf_remote`]) lists its remotes in the
//! same `leafnodes { }` block.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::nats_server_bin;
use crate::process::{append_log, tail, Proc};

/// How long a start or restart may take before it panics.
pub const NATS_START_DEADLINE: Duration = Duration::from_secs(10);
/// How long [`NatsServer::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to put in a [`NatsServer`]'s config file; made by [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    jetstream: bool,
    jetstream_options: Vec<String>,
    extra: Vec<String>,
    server_name: Option<String>,
    cluster: Option<String>,
    /// `Some(text inside `leafnodes { }` beside `listen`)` when the server accepts leaf
    /// connections.
    leafnode_listen: Option<String>,
    leaf_remotes: Vec<String>,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            jetstream: true,
            jetstream_options: Vec::new(),
            extra: Vec::new(),
            server_name: None,
            cluster: None,
            leafnode_listen: None,
            leaf_remotes: Vec::new(),
        }
    }
}

impl NatsServerBuilder {
    /// Turns JetStream on (the default) or off.
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
        self
    }

    /// Adds a line inside the `jetstream { … }` block, e.g. `"max_file_store: 1GB"`.
    pub fn jetstream_option(mut self, line: &str) -> Self {
        self.jetstream_options.push(line.to_owned());
        self
    }

    /// `jetstream { sync_interval: always }`: fsync before every PubAck, as the configs we ship
    /// for hub/root ingress do; a PubAck otherwise precedes the fsync (see
    /// docs/pitfalls.md, "JetStream and nats-server").
    pub fn sync_always(self) -> Self {
        self.jetstream_option("sync_interval: always")
    }

    /// Sets `server_name` (needed once servers are linked: leaf nodes, clusters).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_owned());
        self
    }

    /// Makes the server a member of the cluster `name`: a `cluster { }` block listening on
    /// a route port of its own choosing, with the routes [`crate::cluster::NatsCluster`]
    /// sets. Needs [`Self::server_name`] (JetStream peers are known by it).
    pub fn cluster(mut self, name: &str) -> Self {
        self.cluster = Some(name.to_owned());
        self
    }

    /// `jetstream { domain: … }`: the JetStream domain of this server (a leaf-node site keeps
    /// each tier's streams in its own domain).
    pub fn jetstream_domain(self, domain: &str) -> Self {
        self.jetstream_option(&format!("domain: {domain}"))
    }

    /// Accepts leaf connections on a port of its own choosing (pinned for restarts, see
    /// [`NatsServer::leafnode_port`]); `options` is the text inside the `leafnodes { }` block
    /// beside `listen` (e.g. `no_advertise: true`), or empty. Leaf users with permissions
    /// are users of the server's accounts ([`Self::extra`]): users of a
    /// `leafnodes { authorization }` cannot have any.
    pub fn leafnode_listen(mut self, options: &str) -> Self {
        self.leafnode_listen = Some(options.to_owned());
        self
    }

    /// Connects as a leaf node: `remote` is one entry of `leafnodes { remotes = [ … ] }`,
    /// e.g. `{ url: "nats-leaf://user:pw@127.0.0.1:7422" }`.
    pub fn leaf_remote(mut self, remote: &str) -> Self {
        self.leaf_remotes.push(remote.to_owned());
        self
    }

    /// Appends top-level config text verbatim (after the generated lines).
    ///
    /// Do not add a second `jetstream { }` block here (it would replace the generated one and
    /// lose `store_dir`): use [`Self::jetstream_option`]. Other listeners added here should
    /// use fixed ports if the test restarts the server.
    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push(text.to_owned());
        self
    }

    /// Starts the server and waits until it serves clients (and JetStream, if on).
    pub fn start(self) -> NatsServer {
        NatsServer::launch(self)
    }
}

/// A running (or stopped, restartable) `nats-server` process on 127.0.0.1.
///
/// Dropping it kills the process (SIGKILL + wait: no zombie) and deletes its temp dir.
/// Methods block the calling thread for at most a few seconds (process start and stop).
#[derive(Debug)]
pub struct NatsServer {
    proc: Proc,
    port: AtomicU16,
    /// The route port of a cluster member (0 until known, or when not clustered).
    cluster_port: AtomicU16,
    /// The route ports of the other members a cluster member connects to.
    routes: Mutex<Vec<u16>>,
    /// The leafnode port of a server accepting leaf connections (0 until known, or none).
    leafnode_port: AtomicU16,
    options: NatsServerBuilder,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    // Last field: dropped after `proc` has killed the server that writes into it.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on a free port; panics (with the log tail) if it is
    /// not serving within [`NATS_START_DEADLINE`].
    pub fn start() -> NatsServer {
        Self::builder().start()
    }

    /// Like [`Self::start`], with `extra` appended to the config file at top level (see
    /// [`NatsServerBuilder::extra`]).
    pub fn start_with_config(extra: &str) -> NatsServer {
        Self::builder().extra(extra).start()
    }

    /// A builder for a server with other config (JetStream options, a name, extra text).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    fn launch(options: NatsServerBuilder) -> NatsServer {
        let server = Self::prepare(options);
        server.spawn_and_wait();
        server
    }

    /// A server with its temp dir, not started yet.
    pub(crate) fn prepare(options: NatsServerBuilder) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for nats-server: {e}"));
        NatsServer {
            proc: Proc::default(),
            port: AtomicU16::new(0),
            cluster_port: AtomicU16::new(0),
            routes: Mutex::new(Vec::new()),
            leafnode_port: AtomicU16::new(0),
            config_path: dir.path().join("nats-server.conf"),
            log_path: dir.path().join("nats-server.log"),
            store_dir: dir.path().join("jetstream"),
            options,
            dir,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// `tls://127.0.0.1:PORT`: the same port, for a server configured with a `tls { }` block.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port())
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// The route port of a cluster member (the same across restarts); 0 when not clustered.
    pub fn cluster_port(&self) -> u16 {
        self.cluster_port.load(Ordering::SeqCst)
    }

    /// The port leaf nodes connect to (the same across restarts); 0 when the server does not
    /// accept leaf connections.
    pub fn leafnode_port(&self) -> u16 {
        self.leafnode_port.load(Ordering::SeqCst)
    }

    /// The `server_name`, if set.
    pub fn server_name(&self) -> Option<&str> {
        self.options.server_name.as_deref()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 5 s) and waits for it to exit.
    /// The port and the JetStream store are kept for [`Self::restart`]. No-op if stopped.
    pub fn stop(&self) {
        self.proc.stop(STOP_GRACE);
    }

    /// Kills the server at once (SIGKILL + wait), like a crash. Data JetStream already wrote
    /// survives in the OS page cache; [`Self::restart`] brings it back.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// Stops the server if it runs, then starts it again on the same port with the same config
    /// and JetStream store; returns once it serves clients again.
    pub fn restart(&self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Connects a client (with a deadline of [`NATS_START_DEADLINE`]).
    pub async fn client(&self) -> async_nats::Client {
        let url = self.url();
        match tokio::time::timeout(NATS_START_DEADLINE, async_nats::connect(&url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("cannot connect to {url}: {e}\n{}", self.log_tail(20)),
            Err(_) => panic!("connecting to {url} timed out\n{}", self.log_tail(20)),
        }
    }

    /// The last `n` lines of the server's log (which is kept across restarts).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The config file the server runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The JetStream `store_dir`.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's own temp dir (config, log, store, ports file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config file with the ports known so far (`-1`, "pick one", for the others).
    pub(crate) fn write_config(&self) {
        // JSON strings are valid quoted strings in nats-server's config syntax.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let listen = |port: u16| match port {
            0 => "127.0.0.1:-1".to_owned(),
            port => format!("127.0.0.1:{port}"),
        };
        let leaf_listen = listen(self.leafnode_port());
        let (cluster_listen, listen) = (listen(self.cluster_port()), listen(self.port()));
        let mut text = String::from("# Written by nexus-e2e for one test.\n");
        text.push_str(&format!("listen: \"{listen}\"\n"));
        text.push_str(&format!(
            "ports_file_dir: {}\n",
            q(&self.dir.path().to_string_lossy())
        ));
        if let Some(name) = &self.options.server_name {
            text.push_str(&format!("server_name: {}\n", q(name)));
        }
        if let Some(cluster) = &self.options.cluster {
            let routes: Vec<String> = self
                .routes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .map(|port| q(&format!("nats-route://127.0.0.1:{port}")))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: {}\n  listen: \"{cluster_listen}\"\n  routes: [{}]\n}}\n",
                q(cluster),
                routes.join(", ")
            ));
        }
        if self.options.jetstream {
            text.push_str(&format!(
                "jetstream {{\n  store_dir: {}\n",
                q(&self.store_dir.to_string_lossy())
            ));
            for line in &self.options.jetstream_options {
                text.push_str(&format!("  {line}\n"));
            }
            text.push_str("}\n");
        }
        if self.options.leafnode_listen.is_some() || !self.options.leaf_remotes.is_empty() {
            text.push_str("leafnodes {\n");
            if let Some(options) = &self.options.leafnode_listen {
                text.push_str(&format!("  listen: \"{leaf_listen}\"\n{options}\n"));
            }
            if !self.options.leaf_remotes.is_empty() {
                text.push_str(&format!(
                    "  remotes = [\n{}\n  ]\n",
                    self.options.leaf_remotes.join("\n")
                ));
            }
            text.push_str("}\n");
        }
        for extra in &self.options.extra {
            text.push_str(extra);
            text.push('\n');
        }
        std::fs::write(&self.config_path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
    }

    fn spawn_and_wait(&self) {
        let pid = self.spawn();
        self.wait_listening(pid);
        self.wait_leafnode_listening();
        self.wait_ready();
    }

    /// Waits (bounded) until a server accepting leaf connections says on which port, the
    /// first time; pins it for restarts.
    fn wait_leafnode_listening(&self) {
        if self.options.leafnode_listen.is_none() || self.leafnode_port() != 0 {
            return;
        }
        const LINE: &str = "Listening for leafnode connections on ";
        let deadline = Instant::now() + NATS_START_DEADLINE;
        loop {
            self.check_alive();
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let port = log.lines().find_map(|line| {
                let (_, address) = line.split_once(LINE)?;
                address.trim().rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = port {
                self.leafnode_port.store(port, Ordering::SeqCst);
                self.write_config();
                return;
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                panic!(
                    "nats-server did not say its leafnode port within {NATS_START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the route ports this cluster member connects to (written by the next
    /// [`Self::write_config`], and so used by every later start).
    pub(crate) fn set_routes(&self, ports: Vec<u16>) {
        *self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = ports;
    }

    /// Writes the config and starts the process; returns its pid.
    pub(crate) fn spawn(&self) -> u32 {
        self.write_config();
        let log = append_log(&self.log_path);
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nats_server_bin().display()));
        let pid = child.id();
        self.proc.set(child);
        pid
    }

    /// Waits (bounded) until the process `pid` listens: its ports are known (pinned in the
    /// config for restarts) or read from the ports file it writes.
    pub(crate) fn wait_listening(&self, pid: u32) {
        let clustered = self.options.cluster.is_some();
        if self.port() != 0 && (!clustered || self.cluster_port() != 0) {
            return;
        }
        let deadline = Instant::now() + NATS_START_DEADLINE;
        let ports_file = self.dir.path().join(format!("nats-server_{pid}.ports"));
        loop {
            self.check_alive();
            if let Some((port, cluster_port)) = read_ports_file(&ports_file) {
                if !clustered || cluster_port.is_some() {
                    self.port.store(port, Ordering::SeqCst);
                    self.cluster_port
                        .store(cluster_port.unwrap_or(0), Ordering::SeqCst);
                    // Pin the chosen ports for restarts.
                    self.write_config();
                    return;
                }
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                panic!(
                    "nats-server wrote no complete ports file within {NATS_START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the listening server serves clients (and JetStream, if on: for
    /// a cluster member, once the cluster has a JetStream leader).
    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + NATS_START_DEADLINE;
        loop {
            self.check_alive();
            let last = match probe(self.port(), self.options.jetstream) {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.proc.kill();
                panic!(
                    "nats-server not ready within {NATS_START_DEADLINE:?} (last probe: {last}); log tail:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log tail if the process exited during startup.
    fn check_alive(&self) {
        if let Some(status) = self.proc.exit_status() {
            self.proc.kill();
            let port = self.port();
            panic!(
                "nats-server exited during startup ({status}){}; log tail:\n{}",
                if port != 0 {
                    format!(" — is port {port} taken by another process?")
                } else {
                    String::new()
                },
                self.log_tail(30)
            );
        }
    }
}

/// The client port and the route port (if any) from
/// `{"nats":["nats://127.0.0.1:PORT"],"cluster":["nats://127.0.0.1:PORT"], ...}`; `None`
/// until the file is there and complete.
fn read_ports_file(path: &Path) -> Option<(u16, Option<u16>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port = |key: &str| -> Option<u16> {
        let url = json.get(key)?.as_array()?.first()?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    };
    Some((port("nats")?, port("cluster")))
}

/// One NATS protocol exchange with the server: INFO, CONNECT, PING/PONG and, with JetStream,
/// a `$JS.API.INFO` request that must be answered. A server that requires TLS is ready once it
/// sends its INFO (the rest would need a TLS handshake).
fn probe(port: u16, jetstream: bool) -> Result<(), String> {
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
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    let read_line = |reader: &mut BufReader<TcpStream>, line: &mut String| -> Result<(), String> {
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err("connection closed".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    read_line(&mut reader, &mut line)?;
    if !line.starts_with("INFO ") {
        return Err(format!("expected INFO, got {line:?}"));
    }
    if line.contains("\"tls_required\":true") {
        return Ok(());
    }
    let mut hello = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"name\":\"nexus-e2e-probe\"}\r\n",
    );
    if jetstream {
        hello.push_str(
            "SUB _INBOX.nexus_e2e_probe 1\r\nPUB $JS.API.INFO _INBOX.nexus_e2e_probe 0\r\n\r\n",
        );
    }
    hello.push_str("PING\r\n");
    stream
        .write_all(hello.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    loop {
        read_line(&mut reader, &mut line)?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("PONG") if !jetstream => return Ok(()),
            Some("PING") => stream
                .write_all(b"PONG\r\n")
                .map_err(|e| format!("write: {e}"))?,
            Some("MSG") => {
                let len: usize = words
                    .nth(2)
                    .and_then(|n| n.parse().ok())
                    .ok_or("bad MSG line")?;
                let mut body = vec![0; len + 2];
                reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("read: {e}"))?;
                let body = String::from_utf8_lossy(&body[..len]);
                if body.contains("\"error\"") {
                    return Err(format!("JetStream not ready: {body}"));
                }
                return Ok(());
            }
            // A status message: 503 no responders while JetStream is not up yet.
            Some("HMSG") => return Err(format!("JetStream not ready: {}", line.trim())),
            Some("-ERR") => return Err(line.trim().to_owned()),
            _ => {}
        }
    }
}
