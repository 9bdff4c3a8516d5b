//! `nexus-agent fleet -c root.toml [--watch]`: the fleet as a tree, from the last heartbeat
//! of every node in the root's journal; exits 1 if any node is degraded, offline or
//! unknown (for cron and monitoring), 0 when all are healthy.
//!
//! A node silent for the root's `heartbeat.offline_after` is `offline`, or `unknown` when
//! its parent is silent too (the rule of `crate::children`, applied to the heartbeats the
//! journal keeps). The tree comes from each heartbeat's `parent` (the node its token's
//! issuer token is for); hubs, whose tokens the root key issues, hang under the root.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt as _;
use nexus_config::{Config, Mode};
use nexus_federation::envelope::{parse_ts, MAX_ENVELOPE_BYTES};
use nexus_federation::provenance::HDR_CONTENT_TYPE;
use nexus_federation::{Encoding, Envelope};
use serde_json::Value;
use time::OffsetDateTime;

/// The heartbeats' subjects in the journal.
const HEARTBEATS: &str = "nexus._core.edge.health.>";
/// How long the journal may take to deliver the next heartbeat.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One node, from its last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Its id.
    pub node_id: String,
    /// member, hub or root.
    pub mode: String,
    /// Its parent, as its heartbeat names it.
    pub parent: Option<String>,
    /// healthy, degraded (its heartbeat), offline or unknown (its silence).
    pub status: String,
    /// Since its last heartbeat.
    pub age: Duration,
    /// Outbox depth and oldest age (s).
    pub outbox: (u64, u64),
    /// `kind: cause` of each cause of degraded.
    pub causes: Vec<String>,
    /// The agent's version.
    pub version: String,
}

impl NodeRow {
    /// Whether it needs a look: anything but healthy.
    pub fn needs_attention(&self) -> bool {
        self.status != "healthy"
    }
}

/// `fleet`: prints the tree once, or every `interval` with `watch` until Ctrl-C.
pub async fn fleet(config: &Config, watch: bool, json: bool) -> anyhow::Result<bool> {
    if config.node.mode != Mode::Root {
        bail!(
            "`fleet` reads the root's journal: run it with the root's config (this one is a {})",
            config.node.mode
        );
    }
    let link = config
        .local
        .as_ref()
        .context("the root's config has no [local] NATS")?;
    let url = nexus_config::redact_url(&link.url);
    let client = async_nats::ConnectOptions::new()
        .name("nexus-agent fleet")
        .connection_timeout(Duration::from_secs(5))
        .connect(link.url.as_str())
        .await
        .with_context(|| format!("cannot connect to the root's NATS at {url} ([local] url)"))?;
    let js = async_nats::jetstream::new(client);
    let js = &js;
    loop {
        let rows = read(js, config).await?;
        let text = if json {
            serde_json::to_string(&rows_json(&rows)).unwrap_or_default()
        } else {
            render(&rows, OffsetDateTime::now_utc())
        };
        let bad = rows.iter().any(NodeRow::needs_attention);
        if !watch {
            println!("{text}");
            return Ok(!bad);
        }
        // Clear the screen and draw again.
        print!(
            "\x1b[2J\x1b[H{text}\n(every {}; Ctrl-C stops)\n",
            humantime::format_duration(config.heartbeat.interval)
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(true),
            _ = tokio::time::sleep(config.heartbeat.interval) => {}
        }
    }
}

/// The last heartbeat of every node in the journal, as rows.
pub async fn read(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> anyhow::Result<Vec<NodeRow>> {
    let beats = read_envelopes(
        js,
        &config.landing.stream,
        HEARTBEATS,
        DeliverPolicy::LastPerSubject,
    )
    .await?;
    Ok(rows(
        &beats,
        OffsetDateTime::now_utc(),
        config.heartbeat.offline_after,
    ))
}

/// The envelopes on `filter` in `journal` (a stream: the root's journal, a hub's
/// ingress), as `deliver` picks them; what does not decode is skipped.
pub async fn read_envelopes(
    js: &async_nats::jetstream::Context,
    journal: &str,
    filter: &str,
    deliver: DeliverPolicy,
) -> anyhow::Result<Vec<Envelope>> {
    let stream = js
        .get_stream(journal)
        .await
        .with_context(|| format!("cannot open the stream {journal} (is the agent running?)"))?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read the journal {journal}"))?;
    let pending = consumer
        .info()
        .await
        .with_context(|| format!("cannot read the journal {journal}"))?
        .num_pending;
    let mut beats = Vec::new();
    if pending > 0 {
        let mut messages = consumer
            .messages()
            .await
            .with_context(|| format!("cannot read the journal {journal}"))?;
        loop {
            let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
                .await
                .with_context(|| {
                    format!("the journal {journal} did not answer within {READ_TIMEOUT:?}")
                })?
                .context("the journal's consumer ended")?
                .map_err(|e| anyhow::anyhow!("cannot read the journal {journal}: {e}"))?;
            let encoding = Encoding::from_content_type(
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HDR_CONTENT_TYPE))
                    .map(|v| v.as_str()),
            );
            if let Ok(envelope) =
                encoding.and_then(|e| Envelope::decode(&message.payload, e, MAX_ENVELOPE_BYTES))
            {
                beats.push(envelope);
            }
            let left = message.info().map(|info| info.pending).unwrap_or(0);
            if left == 0 {
                break;
            }
        }
    }
    Ok(beats)
}

/// The rows of `beats` (one per node, the newest) at `now`, with the silence rule.
pub fn rows(beats: &[Envelope], now: OffsetDateTime, offline_after: Duration) -> Vec<NodeRow> {
    let mut latest: BTreeMap<&str, (&Envelope, OffsetDateTime)> = BTreeMap::new();
    for beat in beats {
        let at = parse_ts(&beat.ts).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let newer = latest
            .get(beat.source.as_str())
            .is_none_or(|(_, seen)| *seen < at);
        if newer {
            latest.insert(&beat.source, (beat, at));
        }
    }
    let mut rows: Vec<NodeRow> = latest
        .values()
        .map(|&(beat, at)| {
            let p = &beat.payload;
            let text = |k: &str| {
                p.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let outbox = p.get("outbox");
            let number = |k: &str| {
                outbox
                    .and_then(|o| o.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            NodeRow {
                node_id: beat.source.clone(),
                mode: text("mode"),
                parent: p.get("parent").and_then(Value::as_str).map(str::to_owned),
                status: text("status"),
                age: Duration::try_from(now - at).unwrap_or(Duration::ZERO),
                outbox: (number("depth"), number("oldest_age_secs")),
                causes: p
                    .get("causes")
                    .and_then(Value::as_array)
                    .map(|causes| {
                        causes
                            .iter()
                            .map(|c| {
                                let field =
                                    |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?");
                                format!("{}: {}", field("kind"), field("cause"))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                version: text("agent_version"),
            }
        })
        .collect();
    let silent: HashMap<String, bool> = rows
        .iter()
        .map(|r| (r.node_id.clone(), r.age > offline_after))
        .collect();
    for row in &mut rows {
        if row.age > offline_after {
            let parent_silent = row
                .parent
                .as_ref()
                .and_then(|p| silent.get(p))
                .copied()
                .unwrap_or(false);
            row.status = if parent_silent { "unknown" } else { "offline" }.to_owned();
            row.causes.clear();
        }
    }
    rows
}

fn rows_json(rows: &[NodeRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "node_id": r.node_id,
                    "mode": r.mode,
                    "parent": r.parent,
                    "status": r.status,
                    "age_secs": r.age.as_secs(),
                    "outbox_depth": r.outbox.0,
                    "outbox_oldest_age_secs": r.outbox.1,
                    "causes": r.causes,
                    "agent_version": r.version,
                })
            })
            .collect(),
    )
}

/// The tree: roots, then each node's children by id; a node whose parent has no
/// heartbeat in the journal is listed under its parent's id with `(no heartbeat)`.
pub fn render(rows: &[NodeRow], now: OffsetDateTime) -> String {
    let ids: HashMap<&str, &NodeRow> = rows.iter().map(|r| (r.node_id.as_str(), r)).collect();
    let root_id = rows
        .iter()
        .find(|r| r.mode == "root")
        .map(|r| r.node_id.as_str());
    // The parent each node hangs under: its named parent, else the root (hubs and members
    // whose token the root key issued).
    let parent_of = |row: &NodeRow| -> Option<String> {
        match (&row.parent, root_id) {
            (Some(parent), _) => Some(parent.clone()),
            (None, Some(root)) if row.mode != "root" => Some(root.to_owned()),
            _ => None,
        }
    };
    let mut children: BTreeMap<Option<String>, Vec<&NodeRow>> = BTreeMap::new();
    for row in rows {
        children.entry(parent_of(row)).or_default().push(row);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<7} {:<9} {:>6} {:>12}  CAUSE",
        "NODE", "MODE", "STATUS", "HEARD", "OUTBOX"
    );
    let mut tops: Vec<Option<String>> = vec![None];
    // Parents without a heartbeat of their own, listed as such.
    for parent in children.keys().flatten() {
        if !ids.contains_key(parent.as_str()) {
            tops.push(Some(parent.clone()));
        }
    }
    for top in tops {
        if let Some(missing) = &top {
            let _ = writeln!(out, "{missing} (no heartbeat in the journal)");
        }
        draw(&mut out, &children, &top, "");
    }
    let bad = rows.iter().filter(|r| r.needs_attention()).count();
    let _ = write!(
        out,
        "{} nodes, {} need attention (at {})",
        rows.len(),
        bad,
        nexus_federation::envelope::format_ts(now)
    );
    out
}

fn draw(
    out: &mut String,
    children: &BTreeMap<Option<String>, Vec<&NodeRow>>,
    parent: &Option<String>,
    indent: &str,
) {
    let Some(list) = children.get(parent) else {
        return;
    };
    for (i, row) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let (branch, next) = match (parent.is_some(), last) {
            (false, _) => ("", String::new()),
            (true, false) => ("├─ ", format!("{indent}│  ")),
            (true, true) => ("└─ ", format!("{indent}   ")),
        };
        let name = format!("{indent}{branch}{}", row.node_id);
        let outbox = match row.outbox {
            (0, _) => "0".to_owned(),
            (n, age) => format!("{n} ({age}s)"),
        };
        let _ = writeln!(
            out,
            "{name:<32} {:<7} {:<9} {:>6} {outbox:>12}  {}",
            row.mode,
            row.status,
            format!("{}s", row.age.as_secs()),
            row.causes.join("; ")
        );
        draw(out, children, &Some(row.node_id.clone()), &next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn beat(node: &str, mode: &str, parent: Option<&str>, ago: u64, status: &str) -> Envelope {
        let now = OffsetDateTime::now_utc();
        let mut payload = serde_json::Map::new();
        payload.insert("mode".into(), json!(mode));
        payload.insert("status".into(), json!(status));
        if let Some(parent) = parent {
            payload.insert("parent".into(), json!(parent));
        }
        payload.insert("outbox".into(), json!({"depth": 0, "oldest_age_secs": 0}));
        if status == "degraded" {
            payload.insert(
                "causes".into(),
                json!([{"kind": "mqtt_unreachable", "cause": "the MQTT broker of [iot] is unreachable"}]),
            );
        }
        Envelope::new(
            "edge.health",
            node,
            None,
            payload,
            now - Duration::from_secs(ago),
        )
    }

    fn statuses(rows: &[NodeRow]) -> Vec<(&str, &str)> {
        rows.iter()
            .map(|r| (r.node_id.as_str(), r.status.as_str()))
            .collect()
    }

    #[test]
    fn silence_makes_a_node_offline_or_unknown_behind_a_silent_parent() {
        let offline_after = Duration::from_secs(30);
        let now = OffsetDateTime::now_utc();
        let beats = vec![
            beat("root", "root", None, 1, "healthy"),
            beat("hub-a", "hub", None, 2, "healthy"),
            beat("edge-1", "member", Some("hub-a"), 40, "healthy"),
            beat("edge-2", "member", Some("hub-a"), 3, "degraded"),
            beat("hub-b", "hub", None, 50, "healthy"),
            beat("edge-3", "member", Some("hub-b"), 45, "healthy"),
        ];
        let rows = rows(&beats, now, offline_after);
        assert_eq!(
            statuses(&rows),
            vec![
                ("edge-1", "offline"),
                ("edge-2", "degraded"),
                ("edge-3", "unknown"),
                ("hub-a", "healthy"),
                ("hub-b", "offline"),
                ("root", "healthy"),
            ]
        );
        let text = render(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("root "), "{text}");
        assert!(lines[2].starts_with("├─ hub-a "), "{text}");
        assert!(lines[3].starts_with("│  ├─ edge-1 "), "{text}");
        assert!(lines[4].starts_with("│  └─ edge-2 "), "{text}");
        assert!(
            lines[4].contains("mqtt_unreachable: the MQTT broker"),
            "{text}"
        );
        assert!(lines[5].starts_with("└─ hub-b "), "{text}");
        assert!(lines[6].starts_with("   └─ edge-3 "), "{text}");
        assert!(lines[7].starts_with("6 nodes, 4 need attention"), "{text}");
    }

    #[test]
    fn the_newest_heartbeat_of_a_node_counts_and_orphans_are_listed() {
        let now = OffsetDateTime::now_utc();
        let beats = vec![
            beat("edge-1", "member", Some("hub-x"), 100, "healthy"),
            beat("edge-1", "member", Some("hub-x"), 1, "healthy"),
        ];
        let rows = rows(&beats, now, Duration::from_secs(30));
        assert_eq!(statuses(&rows), vec![("edge-1", "healthy")]);
        let text = render(&rows, now);
        assert!(
            text.contains("hub-x (no heartbeat in the journal)"),
            "{text}"
        );
        assert!(text.contains("└─ edge-1"), "{text}");
        assert!(!rows[0].needs_attention());
    }
}
