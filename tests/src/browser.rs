//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `./dev setup` installs): chromedriver runs as a child process on
//! a loopback port, and [`fantoccini`] speaks WebDriver to it.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bins::{chromedriver_bin, chromium_bin};
use crate::process::{append_log, tail, Proc};

/// How long chromedriver may take to listen, and Chromium to start a session.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A chromedriver process and one headless Chromium session; both end when dropped.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
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
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
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

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session until drop")
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`) in the page; its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"))
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
                        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
                    });
                });
            }
        }
        self.proc.stop(Duration::from_secs(2));
    }
}
