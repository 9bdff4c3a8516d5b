//! A real Prometheus on loopback scraping the agents' `/metrics`, queried through its HTTP
//! API; and [`http_get`], a plain HTTP/1.1 GET for the tests' own requests.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::prometheus_bin;
use crate::process::{append_log, tail, Proc};

/// How long Prometheus may take to answer `/-/ready`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A Prometheus server scraping `targets` every second; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts one scraping `targets` (`host:port`, each `/metrics`) every second, labelled
    /// `job="nexus"`; returns once it is ready.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for prometheus: {e}"));
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: nexus\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let port = free_port();
        let log_path = dir.path().join("prometheus.log");
        let log = append_log(&log_path);
        let err = log.try_clone().expect("log handle");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", prometheus_bin().display()));
        let prometheus = Prometheus {
            proc: Proc::default(),
            port,
            dir,
        };
        prometheus.proc.set(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = prometheus.proc.exit_status() {
                panic!(
                    "prometheus exited during startup ({status}):\n{}",
                    tail(&log_path, 30)
                );
            }
            if let Ok((200, _)) = http_get(prometheus.address(), "/-/ready") {
                return prometheus;
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus not ready within {START_DEADLINE:?}:\n{}",
                    tail(&log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// An instant query (`/api/v1/query`): the `data.result` array (empty if nothing matches
    /// yet); panics if Prometheus refuses the query.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(self.address(), &path)
            .unwrap_or_else(|e| panic!("prometheus query {expr:?}: {e}"));
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {status} with non-JSON ({e})"));
        assert_eq!(status, 200, "prometheus refused {expr:?}: {json}");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The scrape targets' health as Prometheus sees it: (scrape URL, "up"/"down", last
    /// error).
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let (_, body) = http_get(self.address(), "/api/v1/targets").expect("prometheus targets");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON targets");
        json["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let text = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                (text("scrapeUrl"), text("health"), text("lastError"))
            })
            .collect()
    }

    /// The server's temp dir (config, data, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved characters pass).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on `address` with `Connection: close`: the status code and the body (the
/// tests' requests are small and answered with a length or by closing).
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_request(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `request` as is and reads the whole response: the status code and the body.
pub fn http_request(address: SocketAddr, request: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let mut body = response[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = body.get(end + 2..).unwrap_or_default();
    }
    out
}
