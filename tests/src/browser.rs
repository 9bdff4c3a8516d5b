//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `./dev setup` installs): chromedriver runs as a child process on
//! a loopback port, and [`Session`] speaks the few W3C WebDriver commands the tests need
//! (new session, navigate, execute script, screenshot, delete session) as JSON over HTTP.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bins::{chromedriver_bin, chromium_bin};
use crate::process::{append_log, tail, Proc};

/// How long chromedriver may take to listen, and Chromium to start a session.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A chromedriver process and one headless Chromium session; both end when dropped.
#[derive(Debug)]
pub struct Browser {
    client: Option<Session>,
    proc: Proc,
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver, then a headless Chromium session with a 1400×900 window.
    pub async fn start() -> Browser {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-chromium-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for chromium: {e}"));
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log_path = dir.path().join("chromedriver.log");
        let log = append_log(&log_path);
        let err = log.try_clone().expect("log handle");
        let child = Command::new(chromedriver_bin())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver_bin().display()));
        let proc = Proc::default();
        proc.set(child);
        let mut capabilities = serde_json::Map::new();
        // The tests' HTTPS listeners use certificates made on the spot.
        capabilities.insert("acceptInsecureCerts".into(), json!(true));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium_bin(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,900",
                    format!("--user-data-dir={}", dir.path().join("profile").display()),
                ],
            }),
        );
        let deadline = Instant::now() + START_DEADLINE;
        let client = loop {
            let attempt = Session::new(port, &capabilities).await;
            match attempt {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    if let Some(status) = proc.exit_status() {
                        panic!(
                            "chromedriver exited ({status}): {error}\n{}",
                            tail(&log_path, 30)
                        );
                    }
                    // Polling for the driver to listen, with a deadline.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!(
                    "no Chromium session within {START_DEADLINE:?}: {error}\n{}",
                    tail(&log_path, 30)
                ),
            }
        };
        Browser {
            client: Some(client),
            proc,
            dir,
        }
    }

    fn client(&self) -> &Session {
        self.client.as_ref().expect("a session until drop")
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client()
            .command(Method::POST, "url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`) in the page; its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .command(
                Method::POST,
                "execute/sync",
                json!({ "script": script, "args": [] }),
            )
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .client()
            .command(Method::GET, "screenshot", Value::Null)
            .await
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"));
        let encoded = encoded
            .as_str()
            .unwrap_or_else(|| panic!("a screenshot is a string, not {encoded}"));
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("the screenshot is not base64: {e}"))
    }

    /// Where chromedriver logs.
    pub fn log_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (Chromium exits) before the driver is killed.
        if let Some(client) = self.client.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                tokio::task::block_in_place(|| {
                    handle.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_secs(5), client.delete()).await;
                    });
                });
            }
        }
        self.proc.stop(Duration::from_secs(2));
    }
}

/// One WebDriver session at a loopback chromedriver.
#[derive(Debug)]
struct Session {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    id: String,
}

impl Session {
    /// `POST /session` with `capabilities` as the `alwaysMatch` set.
    async fn new(
        port: u16,
        capabilities: &serde_json::Map<String, Value>,
    ) -> Result<Session, String> {
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let base = format!("http://127.0.0.1:{port}/session");
        let body = json!({ "capabilities": { "alwaysMatch": capabilities } });
        let value = request(&http, Method::POST, &base, body).await?;
        let id = value
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no sessionId in {value}"))?
            .to_owned();
        Ok(Session { http, base, id })
    }

    /// A command of this session (`path` after `/session/{id}/`); the reply's `value`.
    async fn command(&self, method: Method, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}/{}/{path}", self.base, self.id);
        request(&self.http, method, &url, body).await
    }

    /// `DELETE /session/{id}`: Chromium exits.
    async fn delete(self) {
        let url = format!("{}/{}", self.base, self.id);
        let _ = request(&self.http, Method::DELETE, &url, Value::Null).await;
    }
}

/// One WebDriver request: JSON in (none when `body` is null), the reply's `value` out, or the
/// driver's `error: message` when it refused.
async fn request(
    http: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    body: Value,
) -> Result<Value, String> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(body))
        .map_err(|e| format!("{url}: {e}"))?;
    let response = http
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the reply: {e}"))?
        .to_bytes();
    let reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{url}: {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        let error = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let message = value.get("message").and_then(Value::as_str).unwrap_or("");
        Err(format!("{url}: {status} {error}: {message}"))
    }
}
