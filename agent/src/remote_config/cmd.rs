//! `nexus-agent config push | status | diff | history`, at the root or a hub.
//!
//! The root reads nodes' heartbeats and outcomes from its journal; a hub from its ingress
//! stream (its own members only). Documents are in the tier's `NEXUS_CONFIG` bucket; at
//! the root, a hub's documents also come from the `audit.config_issued` events in the
//! journal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use nexus_config::{desired, Config, Mode};
use nexus_federation::subject::INGRESS_PREFIX;
use nexus_federation::{Envelope, Link};
use nexus_policies::{DesiredConfig, DesiredSpec, Principal, UnixTime};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{bucket, key, node_of, ISSUED_EVENT, OUTCOME_EVENT};
use crate::fleet_cmd::read_envelopes;
use crate::keygen::load_secret;

/// `config …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Sign a desired config for nodes and store it in this tier's NEXUS_CONFIG bucket;
    /// each node applies it when it sees it (now, or when it is back online).
    Push {
        /// This root's or hub's config (its key, its [local] NATS).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The node(s): ids separated by commas, or globs such as `edge-*` matched
        /// against the nodes this tier has heard of.
        #[arg(value_parser = crate::cli::parse::node_targets)]
        target: String,
        /// The TOML file: the whole config, or (with --keys) the sections to replace.
        file: PathBuf,
        /// Replace only these top-level sections of each node's file (comma-separated,
        /// e.g. `iot,heartbeat`); a named section absent from FILE is removed.
        #[arg(long, value_delimiter = ',', value_name = "SECTIONS", value_parser = crate::cli::parse::section_name)]
        keys: Vec<String>,
    },
    /// Desired vs reported config per node: in_sync, pending, refused (with errors),
    /// rolled_back (with the cause), drifted (edited on the box), local (no document).
    /// Exit 0 when every listed node runs its desired config, 1 otherwise.
    Status {
        /// This root's or hub's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only nodes matching this id or glob.
        #[arg(value_parser = crate::cli::parse::node_pattern)]
        pattern: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// The lines that differ between the node's desired document and the one it runs.
    Diff {
        /// This root's or hub's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The node.
        #[arg(value_parser = crate::cli::parse::node_id)]
        node: String,
    },
    /// Every document issued for the node (by this tier, and at the root by its hubs)
    /// and what became of it.
    History {
        /// This root's or hub's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The node.
        #[arg(value_parser = crate::cli::parse::node_id)]
        node: String,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one command; `Ok(false)` for exit 1 (`status` with a node not in sync).
pub async fn main(command: ConfigCommand) -> anyhow::Result<bool> {
    let load =
        |path: &PathBuf| nexus_config::load(path).map_err(|errors| anyhow::anyhow!("{errors}"));
    match command {
        ConfigCommand::Push {
            config,
            target,
            file,
            keys,
        } => {
            let config = load(&config)?;
            let tier = Tier::open(&config).await?;
            push(&config, &tier, &target, &file, keys).await?;
            Ok(true)
        }
        ConfigCommand::Status {
            config,
            pattern,
            json,
        } => {
            let config = load(&config)?;
            let tier = Tier::open(&config).await?;
            status(&config, &tier, pattern.as_deref(), json).await
        }
        ConfigCommand::Diff { config, node } => {
            let config = load(&config)?;
            let tier = Tier::open(&config).await?;
            diff(&tier, &node).await?;
            Ok(true)
        }
        ConfigCommand::History { config, node, json } => {
            let config = load(&config)?;
            let tier = Tier::open(&config).await?;
            history(&tier, &node, json).await?;
            Ok(true)
        }
    }
}

/// This tier's NATS, bucket and where its nodes' events are.
struct Tier {
    link: Link,
    store: kv::Store,
    /// The stream of nodes' events: the root's journal, a hub's ingress.
    stream: String,
    /// What precedes an event subject in it.
    prefix: String,
    /// This node.
    node_id: String,
}

impl Tier {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        let (stream, prefix) = match config.node.mode {
            Mode::Root => (config.landing.stream.clone(), String::new()),
            Mode::Hub => (config.ingress.stream.clone(), format!("{INGRESS_PREFIX}.")),
            Mode::Member => bail!(
                "desired config is pushed from the root or a hub; {} is a member",
                config.node.id
            ),
        };
        let local = config
            .local
            .as_ref()
            .context("the config has no [local] NATS")?;
        let link = crate::request_cmd::connect("local", local, "nexus-agent config").await?;
        let store = bucket(&link, true)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the {} bucket: {e}", super::BUCKET))?;
        Ok(Self {
            link,
            store,
            stream,
            prefix,
            node_id: config.node.id.clone(),
        })
    }

    /// The newest heartbeat of every node (`nexus._core.edge.health.{node}`).
    async fn heartbeats(&self) -> anyhow::Result<Vec<Envelope>> {
        let filter = format!("{}nexus._core.edge.health.>", self.prefix);
        read_envelopes(
            self.link.jetstream(),
            &self.stream,
            &filter,
            DeliverPolicy::LastPerSubject,
        )
        .await
    }

    /// Every `audit.{…}` event `event` kept (one subject for the fleet), oldest first.
    async fn audits(&self, event: &str) -> anyhow::Result<Vec<Envelope>> {
        let filter = format!("{}nexus._core.{event}", self.prefix);
        read_envelopes(
            self.link.jetstream(),
            &self.stream,
            &filter,
            DeliverPolicy::All,
        )
        .await
    }

    /// The document in the bucket for `node`.
    async fn desired(&self, node: &str) -> anyhow::Result<Option<DesiredConfig>> {
        let bytes = self
            .store
            .get(key(node))
            .await
            .with_context(|| format!("cannot read {}", key(node)))?;
        Ok(bytes.and_then(|b| DesiredConfig::decode(&b).ok()))
    }

    /// Every version of `node`'s document the bucket keeps, oldest first.
    async fn versions(&self, node: &str) -> anyhow::Result<Vec<DesiredConfig>> {
        let mut out = Vec::new();
        let Ok(mut entries) = self.store.history(key(node)).await else {
            return Ok(out); // no history: nothing was pushed
        };
        while let Some(entry) = entries.next().await {
            let entry = entry.context("cannot read the bucket's history")?;
            if let Ok(doc) = DesiredConfig::decode(&entry.value) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Node ids with a document in the bucket.
    async fn with_documents(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        if let Ok(mut keys) = self.store.keys().await {
            while let Some(k) = keys.next().await {
                if let Some(node) = k.ok().as_deref().and_then(node_of) {
                    out.insert(node.to_owned());
                }
            }
        }
        Ok(out)
    }
}

/// Node ids this tier has heard of (heartbeats) or holds documents for.
async fn known_nodes(tier: &Tier) -> anyhow::Result<BTreeMap<String, Option<Value>>> {
    let mut nodes: BTreeMap<String, Option<Value>> = BTreeMap::new();
    let mut beats = tier.heartbeats().await.unwrap_or_default();
    beats.sort_by(|a, b| a.ts.cmp(&b.ts));
    for beat in beats {
        let config = beat.payload.get("config").cloned();
        nodes.insert(beat.source.clone(), config);
    }
    for node in tier.with_documents().await? {
        nodes.entry(node).or_insert(None);
    }
    nodes.remove(&tier.node_id);
    Ok(nodes)
}

/// The node ids `target` names: literal ids, and globs matched against known nodes.
fn targets(target: &str, known: &BTreeMap<String, Option<Value>>) -> anyhow::Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for part in target.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let principal = Principal::parse(part)
            .map_err(|e| anyhow::anyhow!("`{part}` is not a node id or glob: {e}"))?;
        match principal {
            Principal::Glob(_) => {
                let matched: Vec<&String> = known.keys().filter(|n| principal.matches(n)).collect();
                if matched.is_empty() {
                    bail!("`{part}` matches no node this tier has heard of");
                }
                out.extend(matched.into_iter().cloned());
            }
            _ => {
                out.insert(part.to_owned());
            }
        }
    }
    if out.is_empty() {
        bail!("no target node given");
    }
    Ok(out.into_iter().collect())
}

async fn push(
    config: &Config,
    tier: &Tier,
    target: &str,
    file: &std::path::Path,
    keys: Vec<String>,
) -> anyhow::Result<()> {
    let toml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // What can be judged here is judged here; the node checks everything again.
    let patch = (!keys.is_empty()).then_some(keys);
    desired::render("", patch.as_deref(), &toml)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let secrets = desired::find_secrets(&toml);
    if !secrets.is_empty() {
        bail!(
            "{} carries secrets, which never travel in a desired config:\n  {}",
            file.display(),
            secrets.join("\n  ")
        );
    }
    let key_secret = load_secret(&config.node.key)?;
    let known = known_nodes(tier).await?;
    let nodes = targets(target, &known)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for node in nodes {
        if node == config.node.id {
            bail!("{node} is this node: push its config from the tier above");
        }
        let held = tier.desired(&node).await?.map_or(0, |d| d.spec().version);
        // Versions grow across tiers without coordination: at least the issue time, so a
        // root's document issued after a hub's (cut off, unseen) one still replaces it.
        let version = (held + 1).max(u64::try_from(now).unwrap_or(0));
        let doc = DesiredConfig::issue(
            DesiredSpec {
                node: node.clone(),
                version,
                issued_at: UnixTime(now),
                issuer_id: config.node.id.clone(),
                patch: patch.clone(),
                toml: toml.clone(),
            },
            &key_secret,
        )
        .map_err(|e| anyhow::anyhow!("cannot sign the document for {node}: {e}"))?;
        tier.store
            .put(key(&node), doc.encode().into())
            .await
            .with_context(|| format!("cannot store the document for {node}"))?;
        let what = match &patch {
            Some(sections) => format!("sections {}", sections.join(", ")),
            None => "whole file".to_owned(),
        };
        println!(
            "{node}: desired config v{version} ({what}) stored in {}",
            super::BUCKET
        );
    }
    Ok(())
}

/// One node's desired vs reported config.
#[derive(Debug, Clone, PartialEq)]
struct StatusRow {
    node: String,
    desired: Option<u64>,
    running: Option<u64>,
    state: String,
    detail: String,
}

fn judge(
    node: &str,
    desired: Option<u64>,
    reported: Option<&Value>,
    outcome: Option<&Envelope>,
) -> StatusRow {
    let running = reported.and_then(|r| r["version"].as_u64());
    let said = reported
        .and_then(|r| r["state"].as_str())
        .unwrap_or("unknown");
    let detail_of = |v: &Value| {
        v["cause"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                v["errors"].as_array().map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .unwrap_or_default()
    };
    let (state, detail) = match (desired, reported) {
        (_, None) => (
            "unknown".to_owned(),
            "no heartbeat with a config report".to_owned(),
        ),
        (None, Some(r)) => match said {
            "desired" => ("in_sync".to_owned(), String::new()),
            other => (other.to_owned(), detail_of(r)),
        },
        (Some(d), Some(r)) if running.unwrap_or(0) >= d => match said {
            "desired" => ("in_sync".to_owned(), String::new()),
            other => (other.to_owned(), detail_of(r)),
        },
        (Some(d), Some(r)) => {
            if r["desired_version"].as_u64() == Some(d) && matches!(said, "refused" | "rolled_back")
            {
                (said.to_owned(), detail_of(r))
            } else if let Some(o) = outcome.filter(|o| {
                o.payload.get("version").and_then(Value::as_u64) == Some(d)
                    && o.payload.get("result").and_then(Value::as_str) != Some("applied")
            }) {
                let payload = Value::Object(o.payload.clone());
                (
                    payload["result"].as_str().unwrap_or("refused").to_owned(),
                    detail_of(&payload),
                )
            } else {
                ("pending".to_owned(), String::new())
            }
        }
    };
    StatusRow {
        node: node.to_owned(),
        desired,
        running,
        state,
        detail,
    }
}

async fn status(
    _config: &Config,
    tier: &Tier,
    pattern: Option<&str>,
    json: bool,
) -> anyhow::Result<bool> {
    let filter = match pattern {
        Some(p) => Some(
            Principal::parse(p)
                .map_err(|e| anyhow::anyhow!("`{p}` is not a node id or glob: {e}"))?,
        ),
        None => None,
    };
    let known = known_nodes(tier).await?;
    // Oldest first: the newest of each node stays.
    let outcomes: BTreeMap<String, Envelope> = tier
        .audits(OUTCOME_EVENT)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.source.clone(), e))
        .collect();
    let mut rows = Vec::new();
    for (node, reported) in &known {
        if filter.as_ref().is_some_and(|f| !f.matches(node)) {
            continue;
        }
        let desired = tier.desired(node).await?.map(|d| d.spec().version);
        rows.push(judge(node, desired, reported.as_ref(), outcomes.get(node)));
    }
    let all_good = rows
        .iter()
        .all(|r| r.state == "in_sync" || (r.state == "local" && r.desired.is_none()));
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"node": r.node, "desired_version": r.desired, "running_version": r.running,
                       "state": r.state, "detail": r.detail})
            })
            .collect();
        println!("{}", Value::from(list));
    } else {
        let mut out = format!(
            "{:<24} {:>12} {:>12}  {:<12} DETAIL\n",
            "NODE", "DESIRED", "RUNNING", "STATE"
        );
        let v = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("v{v}"));
        for r in &rows {
            let _ = writeln!(
                out,
                "{:<24} {:>12} {:>12}  {:<12} {}",
                r.node,
                v(r.desired),
                v(r.running),
                r.state,
                r.detail
            );
        }
        print!("{out}");
    }
    Ok(all_good)
}

/// Documents of `node` known to this tier by version: the bucket's history, and at the
/// root the `audit.config_issued` events of hubs.
async fn documents(
    tier: &Tier,
    node: &str,
) -> anyhow::Result<BTreeMap<u64, (String, String, Option<Vec<String>>, i64)>> {
    let mut docs = BTreeMap::new();
    for doc in tier.versions(node).await? {
        let s = doc.spec();
        docs.insert(
            s.version,
            (
                s.issuer_id.clone(),
                s.toml.clone(),
                s.patch.clone(),
                s.issued_at.0,
            ),
        );
    }
    for event in tier.audits(ISSUED_EVENT).await.unwrap_or_default() {
        let p = &event.payload;
        if p.get("node_id").and_then(Value::as_str) != Some(node) {
            continue;
        }
        let Some(version) = p.get("version").and_then(Value::as_u64) else {
            continue;
        };
        let sections = p.get("sections").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
        docs.entry(version).or_insert((
            p.get("issuer")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            p.get("toml")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            sections,
            p.get("issued_at").and_then(Value::as_i64).unwrap_or(0),
        ));
    }
    Ok(docs)
}

async fn diff(tier: &Tier, node: &str) -> anyhow::Result<()> {
    let known = known_nodes(tier).await?;
    let running = known
        .get(node)
        .and_then(|r| r.as_ref())
        .and_then(|r| r["version"].as_u64())
        .unwrap_or(0);
    let docs = documents(tier, node).await?;
    let Some((&desired, (_, text, _, _))) = docs.iter().next_back() else {
        bail!("no desired config for {node} at this tier");
    };
    if running == desired {
        println!("{node} runs its desired config v{desired}: no difference");
        return Ok(());
    }
    let before = match docs.get(&running) {
        Some((_, text, _, _)) => {
            println!("--- {node} runs v{running}\n+++ desired v{desired}");
            text.clone()
        }
        None if running == 0 => {
            println!(
                "--- {node} runs its local file (no document applied)\n+++ desired v{desired}"
            );
            String::new()
        }
        None => {
            println!("--- {node} runs v{running} (not kept at this tier)\n+++ desired v{desired}");
            String::new()
        }
    };
    print!("{}", line_diff(&before, text));
    Ok(())
}

/// A line diff: `-` lines only in `a`, `+` only in `b`, `  ` in both.
pub fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut out = String::new();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        for l in &a {
            let _ = writeln!(out, "- {l}");
        }
        for l in &b {
            let _ = writeln!(out, "+ {l}");
        }
        return out;
    }
    // Longest common subsequence, then walk it.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

async fn history(tier: &Tier, node: &str, json: bool) -> anyhow::Result<()> {
    let docs = documents(tier, node).await?;
    let mut outcomes: BTreeMap<u64, Value> = BTreeMap::new();
    let events = tier.audits(OUTCOME_EVENT).await.unwrap_or_default();
    for event in events.iter().filter(|e| e.source == node) {
        if let Some(v) = event.payload.get("version").and_then(Value::as_u64) {
            outcomes.insert(v, Value::Object(event.payload.clone()));
        }
    }
    let versions: BTreeSet<u64> = docs.keys().chain(outcomes.keys()).copied().collect();
    let mut list = Vec::new();
    for v in versions {
        let doc = docs.get(&v);
        let outcome = outcomes.get(&v);
        list.push(json!({
            "version": v,
            "issuer": doc.map(|d| d.0.clone()),
            "issued_at": doc.map(|d| d.3),
            "sections": doc.and_then(|d| d.2.clone()),
            "result": outcome.and_then(|o| o["result"].as_str()).unwrap_or("no outcome yet"),
            "cause": outcome.and_then(|o| o.get("cause").cloned()),
            "errors": outcome.and_then(|o| o.get("errors").cloned()),
        }));
    }
    if json {
        println!("{}", Value::from(list));
        return Ok(());
    }
    if list.is_empty() {
        println!("no desired config was issued for {node} (as far as this tier knows)");
        return Ok(());
    }
    for row in list {
        let issued = row["issued_at"]
            .as_i64()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "?".to_owned());
        let what = match row["sections"].as_array() {
            Some(s) => format!(
                "sections {}",
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => "whole file".to_owned(),
        };
        let mut line = format!(
            "v{} {issued} by {} ({what}): {}",
            row["version"],
            row["issuer"].as_str().unwrap_or("?"),
            row["result"].as_str().unwrap_or("?")
        );
        if let Some(cause) = row["cause"].as_str() {
            let _ = write!(line, " — {cause}");
        }
        if let Some(errors) = row["errors"].as_array() {
            for e in errors.iter().filter_map(Value::as_str) {
                let _ = write!(line, "\n    {e}");
            }
        }
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_changes() {
        let d = line_diff("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ x\n  c\n+ d\n");
    }

    #[test]
    fn status_says_what_a_node_runs() {
        let r = |v: u64, state: &str| json!({"version": v, "state": state, "hash": "h"});
        assert_eq!(
            judge("n", Some(3), Some(&r(3, "desired")), None).state,
            "in_sync"
        );
        assert_eq!(
            judge("n", Some(3), Some(&r(2, "desired")), None).state,
            "pending"
        );
        assert_eq!(judge("n", None, Some(&r(0, "local")), None).state, "local");
        assert_eq!(
            judge("n", Some(3), Some(&r(3, "drifted")), None).state,
            "drifted"
        );
        assert_eq!(judge("n", Some(3), None, None).state, "unknown");
        let refused = json!({"version": 2, "state": "refused", "desired_version": 3,
                             "errors": ["iot.broker: bad", "acl[0]: wide"]});
        let row = judge("n", Some(3), Some(&refused), None);
        assert_eq!(
            (row.state.as_str(), row.detail.as_str()),
            ("refused", "iot.broker: bad; acl[0]: wide")
        );
    }

    #[test]
    fn targets_expand_globs_over_known_nodes() {
        let known: BTreeMap<String, Option<Value>> = ["edge-01", "edge-02", "gw-01"]
            .iter()
            .map(|n| (n.to_string(), None))
            .collect();
        assert_eq!(
            targets("edge-*", &known).expect("glob"),
            vec!["edge-01", "edge-02"]
        );
        assert_eq!(
            targets("gw-01,new-node", &known).expect("ids"),
            vec!["gw-01", "new-node"]
        );
        assert!(targets("zz-*", &known).is_err());
        assert!(targets("Bad Id", &known).is_err());
    }
}
