//! Chaos at the edge of the outbox, with the real member agent: a half-open uplink (a proxy
//! in the test that stops forwarding without closing anything), a file that is not a database
//! at start, and an outbox that fills while the uplink is down. Bounded waits only; every
//! failure message carries the counts seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use nexus_e2e::{fleet, wait_until, Fleet, Proxy};
use nexus_federation::{Outbox, OutboxOptions};

/// Setup steps and deliveries.
const SETUP: Duration = Duration::from_secs(30);

/// The member's heartbeat subject.
fn health() -> String {
    format!("nexus._core.edge.health.{}", fleet::MEMBER)
}

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The files the outbox moved aside in `dir` (not their `-wal`/`-shm` companions).
fn corrupt_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("outbox.db.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
        })
        .collect()
}

/// The member's uplink goes through a proxy that is frozen after heartbeats flow: the member
/// notices within a few ping intervals (1 s here), its outbox grows, and every heartbeat in it
/// when it is SIGKILLed mid-freeze (none was deleted without a PubAck) reaches the root once
/// the proxy forwards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_uplink_is_noticed_and_nothing_leaves_the_outbox_without_a_puback() {
    const PING: Duration = Duration::from_secs(1);
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_millis(300);
    let proxy = Proxy::start(fleet.hub_nats.port()).await;
    let root_client = fleet.root_nats.client().await;
    let mut heartbeats = root_client
        .subscribe(health())
        .await
        .expect("subscribe at the root");
    let landed: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = Arc::clone(&landed);
    let collector = tokio::spawn(async move {
        while let Some(msg) = heartbeats.next().await {
            let body: serde_json::Value = serde_json::from_slice(&msg.payload).expect("JSON");
            let id = body["event_id"].as_str().expect("event_id").to_owned();
            *seen.lock().expect("lock").entry(id).or_insert(0) += 1;
        }
    });
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let config = fleet
        .config(fleet::MEMBER, "")
        .replace(&fleet.hub_nats.url(), &proxy.url());
    assert!(
        config.contains(&proxy.url()),
        "the uplink goes through the proxy"
    );
    let member = nexus_e2e::AgentProcess::spawn(fleet::MEMBER, &config, fleet.path());
    let count = |what: &str| member.log().matches(what).count();
    wait_until(
        "3 heartbeats of the member land at the root",
        SETUP,
        async || landed.lock().expect("lock").len() >= 3,
    )
    .await;

    let disconnects = count("Link disconnected");
    let frozen_at = Instant::now();
    proxy.freeze(true);
    let queued_at_freeze = count("Heartbeat queued.");
    wait_until(
        "the member notices the half-open uplink",
        Duration::from_secs(10),
        async || count("Link disconnected") > disconnects,
    )
    .await;
    let noticed = frozen_at.elapsed();
    eprintln!(
        "half-open uplink noticed after {} ms (ping interval {} ms)",
        noticed.as_millis(),
        PING.as_millis()
    );
    assert!(
        noticed <= 3 * PING + Duration::from_secs(2),
        "noticed after {noticed:?}, more than 3 ping intervals ({PING:?}) + 2 s"
    );
    wait_until(
        "the member queues 5 more heartbeats while frozen",
        SETUP,
        async || count("Heartbeat queued.") >= queued_at_freeze + 5,
    )
    .await;
    member.kill();
    let queued_while_frozen = count("Heartbeat queued.") - queued_at_freeze;
    let backlog: Vec<String> = {
        let outbox = Outbox::open(
            &fleet.data_dir(fleet::MEMBER).join("outbox.db"),
            OutboxOptions::new(u64::MAX),
        )
        .expect("the member's outbox opens after SIGKILL");
        let batch = outbox.next_batch(100_000).await;
        batch.iter().map(|(_, e)| e.event_id.to_string()).collect()
    };
    eprintln!(
        "heartbeats queued while frozen: {queued_while_frozen}; in the outbox at the kill: {}",
        backlog.len()
    );
    assert!(
        backlog.len() >= queued_while_frozen,
        "the outbox holds {} events but {queued_while_frozen} heartbeats were queued while no \
         byte reached the hub: some left without a PubAck",
        backlog.len()
    );

    proxy.freeze(false);
    member.restart();
    let missing = |landed: &HashMap<String, u32>| {
        backlog
            .iter()
            .filter(|id| !landed.contains_key(*id))
            .count()
    };
    wait_until(
        "every heartbeat of the backlog lands at the root",
        SETUP,
        async || {
            let landed = landed.lock().expect("lock");
            let lost = missing(&landed);
            if lost == 0 {
                Ok(())
            } else {
                Err(format!("{lost} of {} not landed yet", backlog.len()))
            }
        },
    )
    .await;
    let landed = landed.lock().expect("lock").clone();
    let copies: usize = backlog.iter().map(|id| landed[id] as usize - 1).sum();
    eprintln!(
        "backlog {}: lost {}, copies delivered beyond one {copies}",
        backlog.len(),
        missing(&landed)
    );
    collector.abort();
}

/// A member whose `outbox.db` is garbage at start says so, moves the file aside with its
/// bytes intact, starts a fresh outbox, and its heartbeats reach the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_outbox_at_start_is_moved_aside_and_the_agent_runs() {
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_millis(300);
    let data = fleet.data_dir(fleet::MEMBER);
    std::fs::create_dir_all(&data).expect("data dir");
    let garbage: Vec<u8> = b"this is not an SQLite database\n"
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    std::fs::write(data.join("outbox.db"), &garbage).expect("write garbage");

    let root_client = fleet.root_nats.client().await;
    let mut heartbeats = root_client
        .subscribe(health())
        .await
        .expect("subscribe at the root");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(fleet::MEMBER, "");

    wait_until(
        "the member says it moved its outbox aside",
        SETUP,
        async || member.log().contains("The outbox database was damaged"),
    )
    .await;
    let aside = corrupt_files(&data);
    assert_eq!(aside.len(), 1, "one file moved aside: {aside:?}");
    let kept = std::fs::read(&aside[0]).expect("read the moved file");
    assert!(
        kept == garbage,
        "the moved file keeps the original {} bytes (it has {})",
        garbage.len(),
        kept.len()
    );
    let log = member.log();
    let line = log
        .lines()
        .find(|l| l.contains("The outbox database was damaged"))
        .expect("the line");
    assert!(
        line.contains("outbox.db.corrupt-"),
        "the log says where the file went: {line}"
    );

    let first = tokio::time::timeout(SETUP, heartbeats.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no heartbeat of the member reached the root within {SETUP:?}; member log:\n{}",
                member.log()
            )
        })
        .expect("subscription open");
    let body: serde_json::Value = serde_json::from_slice(&first.payload).expect("JSON");
    assert_eq!(body["source"], fleet::MEMBER, "{body}");
    assert!(member.is_running(), "the member keeps running");
}

/// With its uplink on a dead port and a tiny `max_bytes`, the member's outbox fills; under
/// the default policy (`reject`) further heartbeats are refused with a warning, the file
/// holds no more than `max_bytes`, and the agent stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_rejects_by_default_and_the_agent_stays_healthy() {
    const MAX_BYTES: u64 = 2000;
    let mut fleet = Fleet::new();
    fleet.interval = Duration::from_millis(200);
    let config = fleet
        .config(
            fleet::MEMBER,
            &format!("[outbox]\nmax_bytes = {MAX_BYTES}\n"),
        )
        .replace(
            &fleet.hub_nats.url(),
            &format!("nats://127.0.0.1:{}", dead_port()),
        );
    let member = nexus_e2e::AgentProcess::spawn(fleet::MEMBER, &config, fleet.path());
    wait_until("the member refuses heartbeats", SETUP, async || {
        member.log().contains("Cannot queue heartbeats")
    })
    .await;
    assert!(member.is_running(), "the member survives a full outbox");
    member.terminate(Duration::from_secs(10));
    let queued = member.log().matches("Heartbeat queued.").count();
    let outbox = Outbox::open(
        &fleet.data_dir(fleet::MEMBER).join("outbox.db"),
        OutboxOptions::new(u64::MAX),
    )
    .expect("the member's outbox opens after it stopped");
    let stats = outbox.stats();
    eprintln!(
        "full outbox: depth {} bytes {} (max {MAX_BYTES}); heartbeats queued {queued}",
        stats.depth, stats.bytes
    );
    assert!(
        stats.bytes <= MAX_BYTES,
        "the outbox holds {} bytes > max_bytes {MAX_BYTES} (depth {})",
        stats.bytes,
        stats.depth
    );
    assert!(
        stats.depth as usize == queued && stats.depth > 0,
        "every queued heartbeat is in the outbox: depth {} queued {queued}",
        stats.depth
    );
}

/// Under `when_full = "drop_oldest"` a member whose uplink is down makes room for new sensor
/// readings (Bulk) by dropping the oldest ones: once the uplink is back, a heartbeat counts
/// them in `outbox.dropped`, every reading newer than the dropped ones lands, nothing beyond
/// the dropped count is lost, and no heartbeat reports more than `max_bytes`.
///
/// Finding: the uplink reads its next batch before it waits for the link, so the events
/// evicted while that batch is held are still delivered after the outage, yet counted as
/// dropped (typically 40 readings published, 16 counted as dropped, all 40 landed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_under_drop_oldest_drops_the_oldest_readings_and_counts_them() {
    const MAX_BYTES: u64 = 8000;
    const READINGS: usize = 40;
    const SENSORS: &str = "nexus.salon-001.iot.sensor_data";
    let fleet = Fleet::new();
    let broker = nexus_e2e::Mosquitto::start();
    let root_client = fleet.root_nats.client().await;
    let mut landed_readings = root_client.subscribe(SENSORS).await.expect("subscribe");
    let mut heartbeats = root_client.subscribe(health()).await.expect("subscribe");
    let mut losses = root_client
        .subscribe("nexus._core.audit.outbox_loss")
        .await
        .expect("subscribe");
    root_client.flush().await.expect("flush");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let hub_js = async_nats::jetstream::new(fleet.hub_nats.client().await);
    wait_until("the hub's chain registry exists", SETUP, async || {
        hub_js
            .get_key_value(nexus_federation::trust::CHAINS_BUCKET)
            .await
    })
    .await;
    // The outage starts before the member does: nothing leaves its outbox meanwhile.
    fleet.hub_nats.stop();
    let member = fleet.spawn(
        fleet::MEMBER,
        &format!(
            "[outbox]\nmax_bytes = {MAX_BYTES}\nwhen_full = \"drop_oldest\"\n\n[iot]\nurl = \"{}\"\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n",
            broker.url()
        ),
    );
    wait_until(
        "the member's MQTT bridge is subscribed",
        SETUP,
        async || member.log().contains("MQTT subscriptions confirmed"),
    )
    .await;
    let lines: Vec<String> = (0..READINGS).map(|i| i.to_string()).collect();
    let mut publisher =
        std::process::Command::new(nexus_e2e::mosquitto_client_bin("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-q",
                "1",
            ])
            .args(["-t", "sensors/s1/count", "-l"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub -l");
    {
        use std::io::Write as _;
        let mut stdin = publisher.stdin.take().expect("stdin");
        for line in &lines {
            writeln!(stdin, "{line}").expect("write a line");
        }
    }
    let out = publisher.wait_with_output().expect("mosquitto_pub exits");
    assert!(
        out.status.success(),
        "mosquitto_pub -l: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The broker acked every reading; give the bridge two heartbeat intervals to store them
    // (the outbox cannot be read while the agent holds it).
    let queued = member.log().matches("Heartbeat queued.").count();
    wait_until("two more heartbeats are queued", SETUP, async || {
        member.log().matches("Heartbeat queued.").count() >= queued + 2
    })
    .await;
    fleet.hub_nats.restart();

    let mut values = std::collections::BTreeSet::new();
    let mut last = serde_json::Value::Null;
    let mut most_bytes = 0;
    let end = Instant::now() + SETUP;
    let newest_landed = |last: &serde_json::Value, values: &std::collections::BTreeSet<usize>| {
        last["dropped"]
            .as_u64()
            .is_some_and(|d| d > 0 && (d as usize..READINGS).all(|v| values.contains(&v)))
    };
    while !(last["depth"] == 0 && newest_landed(&last, &values)) {
        assert!(
            Instant::now() < end,
            "not settled within {SETUP:?}: {} readings landed ({values:?}), last heartbeat outbox {last}",
            values.len()
        );
        tokio::select! {
            Some(m) = landed_readings.next() => {
                let body = nexus_e2e::payload_json(&m);
                let value = body["payload"]["value"].as_f64().expect("a value");
                values.insert(value as usize);
            }
            Some(m) = heartbeats.next() => {
                last = nexus_e2e::payload_json(&m)["payload"]["outbox"].clone();
                most_bytes = most_bytes.max(last["bytes"].as_u64().expect("bytes"));
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let dropped = last["dropped"].as_u64().expect("dropped") as usize;
    eprintln!(
        "drop_oldest: published {READINGS}, landed {}, dropped {dropped}, most bytes reported \
         {most_bytes} (max {MAX_BYTES}); last heartbeat outbox {last}",
        values.len()
    );
    // Events already read by the uplink's pending batch when they were dropped are still
    // delivered (and counted as dropped): landed + dropped may exceed what was published.
    assert!(
        values.len() + dropped >= READINGS,
        "lost beyond the dropped: landed {} + dropped {dropped} < {READINGS}",
        values.len()
    );
    assert!(
        most_bytes <= MAX_BYTES,
        "a heartbeat reported {most_bytes} bytes > max_bytes {MAX_BYTES}"
    );
    assert!(member.is_running(), "the member survives a full outbox");

    // The drop was said: a WARN at the member and an audit event at the root whose count
    // is within what the heartbeat reports as dropped.
    wait_until("the member logs the drop", SETUP, async || {
        member
            .log()
            .contains("The outbox gave up events")
            .then_some(())
    })
    .await;
    let audit = tokio::time::timeout(SETUP, losses.next())
        .await
        .expect("an outbox loss audit reaches the root")
        .expect("subscription open");
    let audit = nexus_e2e::payload_json(&audit);
    nexus_e2e::contract::check(&nexus_e2e::contract::registry(), &audit)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audit["source"], fleet::MEMBER, "{audit}");
    assert_eq!(audit["payload"]["kind"], "dropped", "{audit}");
    let count = audit["payload"]["count"].as_u64().expect("count");
    assert!(
        count >= 1 && count as usize <= dropped,
        "{audit}, dropped {dropped}"
    );
}
