//! The dated table of a run: the setup, the anchors, the agent beside them as ratios, and
//! the targets as met or missed (reported, never asserted).

use std::fmt::Write as _;
use std::time::Duration;

use nexus_e2e::bench::machine::Setup;
use nexus_e2e::bench::stats::{ms, Latency};

use super::{
    Figures, Sizes, Tiers, ANCHOR_WINDOW, APP_IN_FLIGHT, HOP_BATCH, PACED_RATE, VERIFY_BATCHES,
    WINDOWS,
};

/// 12345.6 → `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A section that failed, or that `--only` left out, has no figure.
fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), thousands)
}

fn ratio(value: Option<f64>, anchor: Option<f64>) -> Option<f64> {
    match (value, anchor) {
        (Some(v), Some(a)) if a > 0.0 => Some(v / a),
        _ => None,
    }
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn settings(durable: bool) -> &'static str {
    super::setting(durable)
}

/// The markdown between the markers.
pub fn render(
    fig: &Figures,
    setup: &Setup,
    idle_load: f64,
    sizes: &Sizes,
    smoke: bool,
    started: time::OffsetDateTime,
    took: Duration,
) -> String {
    let mut out = String::new();
    let date = format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        started.year(),
        u8::from(started.month()),
        started.day(),
        started.hour(),
        started.minute()
    );
    let command = std::env::var("NEXUS_BENCH_COMMAND").unwrap_or_else(|_| {
        format!(
            "cargo bench -p nexus-e2e --bench durable --{}",
            if smoke { " --smoke" } else { "" }
        )
    });
    let _ = writeln!(
        out,
        "_Written by `{command}` on {date} (the run took {:.1} min); do not edit by hand._\n",
        took.as_secs_f64() / 60.0
    );
    if smoke {
        out.push_str(
            "**Smoke run** (`--smoke`): every section with tiny counts, to prove the command \
             works; the figures mean nothing.\n\n",
        );
    }
    let _ = writeln!(
        out,
        "- Machine: {}, {} cores, {} RAM; {}. Before the run, other processes kept {idle_load:.2} \
         cores busy (over 2 s; load average {}).",
        setup.cpu, setup.cores, setup.ram, setup.os, setup.load
    );
    let _ = writeln!(
        out,
        "- Software: {}, {}, {}; agent {}, source at commit {}.",
        setup.nats_server, setup.mosquitto, setup.rustc, setup.agent, setup.commit
    );
    let _ = writeln!(
        out,
        "- Counts: JetStream publish {} (W = 1: {}), hop {}, verification {}, gateway {} \
         (`always`: {}); member → hub → root {} (`always`, and again on a clustered root) and \
         {} (defaults) + {} paced; hub alone {}; MQTT {}; local app {}.\n",
        thousands(sizes.raw as f64),
        thousands(sizes.raw_w1 as f64),
        thousands(sizes.hop as f64),
        thousands(sizes.verify as f64),
        thousands(sizes.gateway_defaults as f64),
        thousands(sizes.gateway_always as f64),
        thousands(sizes.burst_durable as f64),
        thousands(sizes.burst_defaults as f64),
        thousands(sizes.paced as f64),
        thousands(sizes.hub_alone as f64),
        thousands(sizes.mqtt as f64),
        thousands(sizes.app as f64),
    );
    anchors(&mut out, fig);
    agent(&mut out, fig, sizes);
    targets(&mut out, fig);
    if !fig.failed.is_empty() {
        let _ = writeln!(out, "\nFailed sections:\n");
        for failure in &fig.failed {
            let _ = writeln!(out, "- {}", failure.replace('\n', " "));
        }
    }
    out
}

fn anchors(out: &mut String, fig: &Figures) {
    out.push_str("**Anchors** (the harness, same run):\n\n");
    out.push_str("| anchor | servers | figure |\n|---|---|---:|\n");
    for durable in [false, true] {
        for window in WINDOWS {
            let _ = writeln!(
                out,
                "| JetStream publish into one file stream, {window} PubAck{} in flight | {} | {} msg/s |",
                if window == 1 { "" } else { "s" },
                settings(durable),
                figure(fig.get(&format!("raw.{durable}.{window}")))
            );
        }
        if durable {
            let _ = writeln!(
                out,
                "| JetStream publish into a stream of three replicas on a three-server cluster, \
                 {ANCHOR_WINDOW} PubAcks in flight | `always` | {} msg/s |",
                figure(fig.get(&format!("raw3.{ANCHOR_WINDOW}")))
            );
        }
        let _ = writeln!(
            out,
            "| plain async-nats hop: pull consumer on IN (server A) → JetStream publish to OUT \
             (server B) → ack after the PubAck, batches of {HOP_BATCH} | {} | {} msg/s |",
            settings(durable),
            figure(fig.get(&format!("hop.{durable}")))
        );
        let _ = writeln!(
            out,
            "| nats-server's MQTT gateway, QoS 1, one rumqttc publisher | {} | {} PUBACKs/s |",
            settings(durable),
            figure(fig.get(&format!("gateway.{durable}")))
        );
    }
    let _ = writeln!(
        out,
        "| Ed25519 `verify_strict` one by one (`PublicKey::verify`), one core | – | {} events/s |",
        figure(fig.get("verify.single"))
    );
    for batch in VERIFY_BATCHES {
        let _ = writeln!(
            out,
            "| Ed25519 batch verification (`keys::verify_batch`), batches of {batch}, one core | – | {} events/s |",
            figure(fig.get(&format!("verify.batch.{batch}")))
        );
    }
    out.push('\n');
}

/// The batch-verify bound per core: the best batch size's rate.
fn verify_bound(fig: &Figures) -> Option<f64> {
    VERIFY_BATCHES
        .iter()
        .filter_map(|b| fig.get(&format!("verify.batch.{b}")))
        .reduce(f64::max)
}

fn tier_cells(tiers: Option<&Tiers>) -> String {
    match tiers {
        Some(t) => format!("{} | {} | {}", t.hub, t.root, t.created),
        None => "– | – | –".to_owned(),
    }
}

fn agent(out: &mut String, fig: &Figures, sizes: &Sizes) {
    out.push_str(
        "**The agent** (the binary named above, on the example configs; × = the agent's \
         figure over its anchor's; latencies in ms, p50 / p99, from the streams' stored \
         times):\n\n",
    );
    out.push_str(
        "| path | servers | events/s | anchor | × anchor | hub tier | root tier | created → journal |\n\
         |---|---|---:|---|---:|---:|---:|---:|\n",
    );
    // The durable fleet, the same on a clustered root, then the fleet at defaults and its
    // paced run ("the same" is the row above).
    for durable in [true, false] {
        let n = if durable {
            sizes.burst_durable
        } else {
            sizes.burst_defaults
        };
        let key = format!("mhr.{durable}");
        let value = fig.get(&key);
        let anchor = raw_anchor(fig, durable);
        let _ = writeln!(
            out,
            "| member → hub → root: {} events, the member's uplink played (batches of 256 into \
             the hub's ingress){} | {} | {} | JetStream publish, W = {ANCHOR_WINDOW}: {} | {} | {} |",
            thousands(n as f64),
            machine(fig, &key),
            settings(durable),
            figure(value),
            figure(anchor),
            times(ratio(value, anchor)),
            tier_cells(fig.tiers.get(&key))
        );
        if durable {
            clustered_row(out, fig, sizes);
        }
    }
    let _ = writeln!(
        out,
        "| the same, {} events signed and sent at {}/s | defaults | {} offered | – | – | {} |",
        thousands(sizes.paced as f64),
        thousands(f64::from(PACED_RATE)),
        thousands(f64::from(PACED_RATE)),
        tier_cells(fig.tiers.get("paced"))
    );
    let hub = fig.get("hub.rate");
    let hop = fig.get("hop.false");
    let _ = writeln!(
        out,
        "| hub verify + forward alone: {} events pre-loaded, the root side a plain stream | \
         defaults | {} | plain hop: {} | {} | – | – | – |",
        thousands(sizes.hub_alone as f64),
        figure(hub),
        figure(hop),
        times(ratio(hub, hop))
    );
    let per_core = per_core(fig);
    let bound = verify_bound(fig);
    let _ = writeln!(
        out,
        "| the same per core used (hub CPU {} s over {} s; {} one-by-one verification per \
         core) | defaults | {} per core | batch verification per core: {} | {} | – | – | – |",
        fig.get("hub.cpu")
            .map_or_else(|| "–".to_owned(), |c| format!("{c:.2}")),
        fig.get("hub.elapsed")
            .map_or_else(|| "–".to_owned(), |c| format!("{c:.2}")),
        times(ratio(per_core, fig.get("verify.single"))),
        figure(per_core),
        figure(bound),
        times(ratio(per_core, bound))
    );
    let mqtt = fig.get("mqtt.rate");
    let gateway = fig.get("gateway.true");
    let _ = writeln!(
        out,
        "| MQTT QoS 1 → mosquitto → the member's IoT bridge → hub → root's `NEXUS_IOT`: {} \
         readings (all PUBACKed at {}/s) | `always` | {} | gateway QoS 1: {} | {} | – | – | – |",
        thousands(sizes.mqtt as f64),
        figure(fig.get("mqtt.acked")),
        figure(mqtt),
        figure(gateway),
        times(ratio(mqtt, gateway))
    );
    let app = fig.get("app.rate");
    let raw = raw_anchor(fig, true);
    let _ = writeln!(
        out,
        "| local app → member (requests, {APP_IN_FLIGHT} in flight, all answered at {}/s) → \
         hub → root's journal: {} events | `always` | {} | JetStream publish, W = {ANCHOR_WINDOW}: {} | {} | \
         – | – | – |\n",
        figure(fig.get("app.answered")),
        thousands(sizes.app as f64),
        figure(app),
        figure(raw),
        times(ratio(app, raw))
    );
}

/// member → hub → root with the root on a three-server cluster, beside both anchors.
fn clustered_row(out: &mut String, fig: &Figures, sizes: &Sizes) {
    let value = fig.get("mhr.cluster");
    let anchor = raw_anchor(fig, true);
    let replicated = fig.get(&format!("raw3.{ANCHOR_WINDOW}"));
    let _ = writeln!(
        out,
        "| the same, {} events, the root's NATS a three-server cluster, its streams at three \
         replicas (× the three-replica publish anchor, {}: {}){} | `always` | {} | JetStream \
         publish, W = {ANCHOR_WINDOW}: {} | {} | {} |",
        thousands(sizes.burst_durable as f64),
        figure(replicated),
        times(ratio(value, replicated)),
        machine(fig, "mhr.cluster"),
        figure(value),
        figure(anchor),
        times(ratio(value, anchor)),
        tier_cells(fig.tiers.get("mhr.cluster"))
    );
}

/// `; the machine: B of C cores busy, U µs of CPU per event` for a run that measured it.
fn machine(fig: &Figures, key: &str) -> String {
    match (
        fig.get(&format!("{key}.busy")),
        fig.get(&format!("{key}.cpu")),
    ) {
        (Some(busy), Some(cpu)) => format!(
            "; the machine: {busy:.2} of {} cores busy, {cpu:.0} µs of CPU per event",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        _ => String::new(),
    }
}

/// The anchor a path is held against: JetStream publish into one file stream with
/// [`ANCHOR_WINDOW`] PubAcks in flight, at defaults or `always`.
fn raw_anchor(fig: &Figures, durable: bool) -> Option<f64> {
    fig.get(&format!("raw.{durable}.{ANCHOR_WINDOW}"))
}

/// The hub's events per CPU-second.
fn per_core(fig: &Figures) -> Option<f64> {
    let cpu = fig.get("hub.cpu").filter(|c| *c > 0.0)?;
    let elapsed = fig.get("hub.elapsed")?;
    Some(fig.get("hub.rate")? * elapsed / cpu)
}

fn p99_ms(latency: &Latency) -> Option<f64> {
    (latency.count > 0).then(|| ms(latency.p99))
}

fn targets(out: &mut String, fig: &Figures) {
    out.push_str("**Targets** (issue 14; reported, not asserted):\n\n");
    out.push_str("| target | measured | |\n|---|---:|---|\n");
    for (key, target) in [
        (
            "mhr.true",
            "member → hub → root, durable ≥ 1.0× raw single-stream `always` publish (W = 64)",
        ),
        (
            "mhr.cluster",
            "the same with the root on a three-server cluster (three replicas)",
        ),
    ] {
        let durable = ratio(fig.get(key), raw_anchor(fig, true));
        let _ = writeln!(
            out,
            "| {target} | {} | {} |",
            times(durable),
            status(durable.map(|r| r >= 1.0))
        );
    }
    let defaults = fig.get("mhr.false");
    let _ = writeln!(
        out,
        "| member → hub → root at defaults ≥ 10,000 events/s | {} | {} |",
        figure(defaults),
        status(defaults.map(|r| r >= 10_000.0))
    );
    let share = ratio(per_core(fig), verify_bound(fig));
    let _ = writeln!(
        out,
        "| hub verify + forward ≥ 60 % of the batch-verify bound per core used | {} | {} |",
        share.map_or_else(|| "–".to_owned(), |s| format!("{:.0} %", s * 100.0)),
        status(share.map(|s| s >= 0.6))
    );
    let paced = fig.tiers.get("paced");
    let (hub, root) = (
        paced.and_then(|t| p99_ms(&t.hub)),
        paced.and_then(|t| p99_ms(&t.root)),
    );
    let measured = match (hub, root) {
        (Some(h), Some(r)) => format!("hub {h:.2} ms, root {r:.2} ms"),
        _ => "–".to_owned(),
    };
    let met = hub.zip(root).map(|(h, r)| h <= 1.0 && r <= 1.0);
    let _ = writeln!(
        out,
        "| added latency per tier p99 ≤ 1 ms at {}/s, defaults | {measured} | {} |",
        thousands(f64::from(PACED_RATE)),
        status(met)
    );
    let mqtt = fig.get("mqtt.rate");
    let _ = writeln!(
        out,
        "| MQTT QoS 1 → root, durable ≥ 3,000 msg/s | {} | {} |",
        figure(mqtt),
        status(mqtt.map(|r| r >= 3_000.0))
    );
}
