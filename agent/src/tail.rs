//! `nexus-agent tail`: decoded envelopes on a subject pattern, one line each.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::provenance::{HDR_CONTENT_TYPE, HDR_SIGNATURE, HDR_SIGNER};
use nexus_federation::{Encoding, Envelope};
use nexus_policies::{PublicKey, Signature, SubjectPattern};

/// Subscribes to `pattern` on `server` and prints until Ctrl-C (or `count` envelopes).
pub async fn tail(
    pattern: &SubjectPattern,
    server: &str,
    json: bool,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("nexus-agent tail")
        .connection_timeout(Duration::from_secs(5))
        .connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let mut subscription = client
        .subscribe(pattern.as_str().to_owned())
        .await
        .with_context(|| format!("cannot subscribe to `{pattern}`"))?;
    client
        .flush()
        .await
        .with_context(|| format!("cannot subscribe to `{pattern}`"))?;
    eprintln!("Tailing `{pattern}` on {server} (Ctrl-C stops).");
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        // Cancel safety: a message not yet returned by `next` stays in the subscription.
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            message = subscription.next() => message,
        };
        let Some(message) = message else { break };
        let line = render(&message, json);
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break; // stdout closed (e.g. piped into `head`)
        }
        seen += 1;
        if count.is_some_and(|count| seen >= count) {
            break;
        }
    }
    Ok(())
}

fn render(message: &async_nats::Message, json: bool) -> String {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let decoded = Encoding::from_content_type(header(HDR_CONTENT_TYPE).as_deref())
        .and_then(|encoding| Envelope::decode(&message.payload, encoding, MAX_ENVELOPE_BYTES));
    let envelope = match decoded {
        Ok(envelope) => envelope,
        Err(error) => {
            return format!(
                "{}  <not an envelope: {error}; {} bytes>",
                message.subject,
                message.payload.len()
            );
        }
    };
    if json {
        return serde_json::to_string(&envelope)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let signature = match (header(HDR_SIGNER), header(HDR_SIGNATURE)) {
        (Some(signer), Some(sig)) => match (PublicKey::parse(&signer), Signature::parse(&sig)) {
            (Ok(key), Ok(sig)) if key.verify(&message.payload, &sig).is_ok() => "sig:ok",
            _ => "sig:BAD",
        },
        _ => "sig:none",
    };
    let summary = match envelope.event_name.as_str() {
        "edge.health" => health_summary(&envelope.payload),
        _ => serde_json::to_string(&envelope.payload).unwrap_or_default(),
    };
    format!(
        "{}  {}  {}  {}  {}  {}",
        envelope.ts,
        message.subject,
        envelope.source,
        envelope.event_name,
        signature,
        shorten(&summary, 160)
    )
}

/// `member healthy up=12s cpu=5.0% mem=41.2% uplink=up outbox=0 children=3/0`, for a
/// member with `[iot]`: `mqtt=up in=120 fwd=130 dlq=2`, and when subsystems stopped on
/// their own: `STOPPED=iot`.
fn health_summary(payload: &serde_json::Map<String, serde_json::Value>) -> String {
    let text = |key: &str| {
        payload
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let mut parts = Vec::new();
    parts.extend(text("mode"));
    parts.extend(text("status"));
    if let Some(up) = text("uptime_secs") {
        parts.push(format!("up={up}s"));
    }
    for (key, label) in [("cpu_pct", "cpu"), ("mem_pct", "mem")] {
        if let Some(value) = payload.get(key).and_then(serde_json::Value::as_f64) {
            parts.push(format!("{label}={value:.1}%"));
        }
    }
    for link in ["uplink", "local"] {
        if let Some(connected) = payload
            .get(link)
            .and_then(|l| l.get("connected"))
            .and_then(serde_json::Value::as_bool)
        {
            parts.push(format!("{link}={}", if connected { "up" } else { "DOWN" }));
        }
    }
    if let Some(depth) = payload.get("outbox").and_then(|o| o.get("depth")) {
        parts.push(format!("outbox={depth}"));
    }
    if let Some(iot) = payload.get("iot") {
        let n = |k: &str| iot.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let dead: u64 = iot
            .get("dead_lettered")
            .and_then(serde_json::Value::as_object)
            .map_or(0, |d| {
                d.values().filter_map(serde_json::Value::as_u64).sum()
            });
        let up = iot.get("connected").and_then(serde_json::Value::as_bool) == Some(true);
        parts.push(format!(
            "mqtt={} in={} fwd={} dlq={dead}",
            if up { "up" } else { "DOWN" },
            n("received"),
            n("forwarded")
        ));
    }
    if let Some(children) = payload.get("children") {
        let count = |k: &str| children.get(k).map(ToString::to_string).unwrap_or_default();
        parts.push(format!(
            "children={} online/{} offline",
            count("online"),
            count("offline")
        ));
    }
    // Subsystems that stopped on their own (the heartbeat's `causes`).
    let stopped: Vec<&str> = payload
        .get("causes")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|cause| cause.get("subsystem")?.as_str())
        .collect();
    if !stopped.is_empty() {
        parts.push(format!("STOPPED={}", stopped.join(",")));
    }
    parts.join(" ")
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_heartbeat_summary_shows_the_mqtt_bridge() {
        let payload = serde_json::json!({
            "mode": "member", "status": "healthy", "uptime_secs": 12,
            "outbox": {"depth": 0},
            "iot": {"protocol": "5", "connected": false, "received": 7, "forwarded": 9,
                    "dead_lettered": {"not_a_number": 2, "oversized": 1}, "dropped_qos0": 0}
        });
        let summary = health_summary(payload.as_object().expect("object"));
        assert_eq!(
            summary,
            "member healthy up=12s outbox=0 mqtt=DOWN in=7 fwd=9 dlq=3"
        );
    }

    #[test]
    fn a_degraded_heartbeat_summary_names_the_stopped_subsystems() {
        let payload = serde_json::json!({
            "mode": "member", "status": "degraded", "causes": [
                {"subsystem": "iot", "kind": "set_up", "cause": "set-up failed: …"}
            ]
        });
        let summary = health_summary(payload.as_object().expect("object"));
        assert_eq!(summary, "member degraded STOPPED=iot");
    }
}
