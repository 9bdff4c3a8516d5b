//! End to end, the live fleet page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, over WebDriver), on one fleet of real processes (root, hub, member
//! with an MQTT bridge; real nats-servers and mosquitto):
//!
//! - the root's page asks for its token (401 without it), takes it once from `/?token=…`
//!   and shows the tree root → hub → member, live, with the member's readings;
//! - the hub's page is served over HTTPS and shows its site;
//! - the member SIGKILLed turns offline on the open page, without a reload, within
//!   `offline_after` plus the page's second and slack for a loaded CI box;
//! - a screenshot of the page is written to `target/artifacts/fleet-page.png` and checked
//!   to be a non-empty PNG.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_e2e::prometheus::http_get;
use nexus_e2e::{fleet, mosquitto_client_bin, wait_until, Browser, Fleet, Mosquitto};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_secs(1);
/// Process start-up, connects and stream creation on a loaded 2-core CI box.
const STARTUP: Duration = Duration::from_secs(45);
/// `offline_after` (three intervals), one interval for the hub's look, the page's second,
/// and slack for a loaded box.
const OFFLINE_DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "fleet-page-token-0123456789";
/// The PNG signature.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

fn free_address() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `[page]` on `address`, with `extra` keys.
fn page_config(address: SocketAddr, extra: &str) -> String {
    format!("[page]\nlisten = \"{address}\"\n{extra}")
}

/// The status the open page shows for `node` (`null` while it has no row).
async fn shown_status(browser: &Browser, node: &str) -> Value {
    browser
        .eval(&format!(
            "const row = document.querySelector('tr[data-id=\"{node}\"]'); \
             return row ? row.dataset.status : null;"
        ))
        .await
}

fn publish(broker: &Mosquitto, value: f64) {
    let out = std::process::Command::new(mosquitto_client_bin("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
        ])
        .args(["-t", "sensors/t1/temperature", "-m", &value.to_string()])
        .output()
        .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_fleet_live_and_a_killed_member_offline() {
    let mut fleet = Fleet::new();
    fleet.interval = INTERVAL;
    let broker = Mosquitto::start();
    let token_file = fleet.path().join("page.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    let (cert_file, key_file) = (fleet.path().join("page.crt"), fleet.path().join("page.key"));
    std::fs::write(&cert_file, certified.cert.pem()).expect("cert file");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("key file");

    let (root_page, hub_page) = (free_address(), free_address());
    let _root = fleet.spawn(
        fleet::ROOT,
        &page_config(
            root_page,
            &format!("token_file = \"{}\"\n", token_file.display()),
        ),
    );
    let _hub = fleet.spawn(
        fleet::HUB,
        &page_config(
            hub_page,
            &format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert_file.display(),
                key_file.display()
            ),
        ),
    );
    let iot = format!(
        "[iot]\nurl = \"{}\"\nreconnect_max_delay = \"500ms\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
        broker.url(),
    );
    // The member validates with the example's registry: its hash is not the root's.
    let iot = format!(
        "{iot}\n[events]\nregistry = \"{}\"\n",
        nexus_e2e::examples::example_registry().display()
    );
    let member = fleet.spawn(fleet::MEMBER, &iot);

    // Without the token: refused, and told how to give it.
    wait_until("the root's page listens", STARTUP, async || {
        http_get(root_page, "/api/fleet").is_ok()
    })
    .await;
    let (status, body) = http_get(root_page, "/api/fleet").expect("GET /api/fleet");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("/?token="));

    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{root_page}/?token={TOKEN}"))
        .await;
    let url = browser.eval("return location.href;").await;
    assert_eq!(
        url.as_str(),
        Some(format!("http://{root_page}/").as_str()),
        "the token is taken out of the address bar"
    );

    // The tree, live: the member under the hub, healthy, with its readings drawn.
    wait_until("the page shows the member healthy", STARTUP, async || {
        shown_status(&browser, fleet::MEMBER).await == "healthy"
    })
    .await;
    let mut value = 20.0;
    wait_until(
        "the page draws the member's readings",
        STARTUP,
        async || {
            value += 0.5;
            publish(&broker, value);
            let points = browser
                .eval(&format!(
                    "const row = document.querySelector('tr[data-id=\"{}\"]'); \
                 const line = row && row.querySelector('.reading polyline'); \
                 return line ? line.getAttribute('points').split(' ').length : 0;",
                    fleet::MEMBER
                ))
                .await;
            points.as_u64().unwrap_or(0) >= 3
        },
    )
    .await;
    let tree = browser
        .eval(
            "return [...document.querySelectorAll('#rows tr')]\
             .map(r => [r.dataset.id, r.dataset.depth, r.dataset.status]);",
        )
        .await;
    assert_eq!(
        tree,
        serde_json::json!([
            [fleet::ROOT, "0", "healthy"],
            [fleet::HUB, "1", "healthy"],
            [fleet::MEMBER, "2", "healthy"],
        ]),
        "root, then its hub, then the hub's member"
    );
    // Each node's event registry beside its version: the member's, not the root's, marked.
    let registries = browser
        .eval(
            "return [...document.querySelectorAll('#rows tr')]\
             .map(r => { const s = r.querySelector('small.registry'); \
                         return s ? [r.dataset.id, s.classList.contains('down'), s.textContent] : [r.dataset.id]; });",
        )
        .await;
    let registries = registries.as_array().expect("an array");
    for row in registries {
        let drifted = row[0] == fleet::MEMBER;
        assert_eq!(row[1], drifted, "{row}: only the member's registry differs");
        let text = row[2].as_str().unwrap_or_default();
        assert_eq!(text.starts_with("registry "), drifted, "{row}");
        assert_eq!(text.trim_start_matches("registry ").len(), 8, "{row}");
    }
    // Each node's config sync state: every node runs its own file (no document pushed).
    let configs = browser
        .eval(
            "return [...document.querySelectorAll('#rows tr')]\
             .map(r => { const s = r.querySelector('small.config'); return s ? s.textContent : null; });",
        )
        .await;
    assert_eq!(
        configs,
        serde_json::json!(["config local", "config local", "config local"]),
        "the config state of each row"
    );
    let render_ms = browser.eval("return document.body.dataset.renderMs;").await;
    eprintln!("3 nodes drawn in {render_ms} ms");

    // The hub's page, over HTTPS: its site.
    browser.goto(&format!("https://{hub_page}/")).await;
    wait_until(
        "the hub's HTTPS page shows its member",
        STARTUP,
        async || shown_status(&browser, fleet::MEMBER).await == "healthy",
    )
    .await;
    assert_eq!(shown_status(&browser, fleet::HUB).await, "healthy");

    // Back to the root's page (the cookie holds the token); SIGKILL the member.
    browser.goto(&format!("http://{root_page}/")).await;
    wait_until("the root's page is live again", STARTUP, async || {
        shown_status(&browser, fleet::MEMBER).await == "healthy"
    })
    .await;
    let loaded_at = browser.eval("return performance.timeOrigin;").await;
    let killed = Instant::now();
    member.kill();
    wait_until(
        "the open page shows the killed member offline",
        OFFLINE_DEADLINE,
        async || shown_status(&browser, fleet::MEMBER).await == "offline",
    )
    .await;
    eprintln!(
        "member SIGKILLed: offline on the open page after {:.1} s (offline_after 3 s, interval 1 s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        browser.eval("return performance.timeOrigin;").await,
        loaded_at,
        "the page was not reloaded"
    );
    assert_eq!(shown_status(&browser, fleet::HUB).await, "healthy");

    let png = browser.screenshot().await;
    let path = artifacts().join("fleet-page.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    assert!(
        png.starts_with(PNG) && png.len() > 5_000,
        "a PNG with something drawn: {} bytes",
        png.len()
    );
}
