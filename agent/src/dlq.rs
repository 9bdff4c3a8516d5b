//! `nexus-agent dlq list | show | replay | purge`: a node's dead-letter store
//! (`{data_dir}/deadletter.db`), for operators. Works beside a running agent (the store is
//! shared); never creates the store.
//!
//! `replay` publishes an entry's stored subject, headers and body with a JetStream publish
//! to this node's own ingress — a hub's or root's `[local]` NATS, a member's `[uplink]` —
//! and removes the entry only after its PubAck, so an interrupted replay loses nothing (at
//! worst an entry is replayed twice, and `Nats-Msg-Id` dedups that).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::message::PublishMessage;
use clap::{Args, Subcommand};
use nexus_config::{Config, Mode};
use nexus_federation::deadletter::{
    DeadLetter, DeadLetterSummary, DeadLetters, Filter, STAGE_BRIDGE, STAGE_COMMAND, STAGE_IOT,
};
use nexus_federation::envelope::format_ts;
use nexus_federation::Link;
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How long a replayed message's PubAck may take.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a binary body `show` prints.
const HEX_PREFIX: usize = 256;

/// `nexus-agent dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first, one line each: id, last failure time, reason,
    /// stage, subject, body size, detail.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this reason code (e.g. bad_signature, malformed, subject_not_granted).
        #[arg(long, value_name = "REASON")]
        reason: Option<String>,
        /// Only entries that failed since then: a duration back from now (30m, 1h, 7d) or an
        /// RFC 3339 time.
        #[arg(long, value_name = "1h|RFC3339", value_parser = crate::cli::parse::time_or_ago)]
        since: Option<OffsetDateTime>,
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole: every field, its headers and its body (as text if it is
    /// UTF-8, else a hex dump of its start).
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The entry's id (from `dlq list`).
        id: u64,
    },
    /// Publish dead letters again to this node's ingress (hub/root: [local]; member:
    /// [uplink]) and remove each one once its JetStream PubAck arrived. Prints one result
    /// per entry; exits 1 if any failed (those stay in the store).
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// The entries' ids.
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<u64>,
        /// Every entry.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters: every one, or those that last failed before --before. Prints
    /// how many.
    Purge {
        #[command(flatten)]
        store: StoreArgs,
        /// Only entries that last failed before then: a duration back from now (7d) or an
        /// RFC 3339 time.
        #[arg(long, value_name = "7d|RFC3339", value_parser = crate::cli::parse::time_or_ago)]
        before: Option<OffsetDateTime>,
    },
}

/// Which node's store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The node's TOML config file (its `node.data_dir` holds the store).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

impl DlqCommand {
    fn config_path(&self) -> &PathBuf {
        match self {
            DlqCommand::List { store, .. }
            | DlqCommand::Show { store, .. }
            | DlqCommand::Replay { store, .. }
            | DlqCommand::Purge { store, .. } => &store.config,
        }
    }
}

/// Runs a `dlq` command: exit 0, 1 on failure, 2 on a bad config.
pub fn main(command: DlqCommand) -> ExitCode {
    let config = match nexus_config::load(command.config_path()) {
        Ok(config) => config,
        Err(errors) => return crate::config_failed(&errors),
    };
    let path = store_path(&config);
    let result = match command {
        DlqCommand::List {
            reason,
            since,
            json,
            ..
        } => list(&path, reason, since, json),
        DlqCommand::Show { id, .. } => show(&path, id),
        DlqCommand::Purge { before, .. } => purge(&path, before),
        DlqCommand::Replay { ids, all, .. } => {
            return crate::runtime(async move { replay(&config, &path, ids, all).await })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => crate::failed(&error),
    }
}

/// `{data_dir}/deadletter.db`.
pub fn store_path(config: &Config) -> PathBuf {
    config.node.data_dir.join("deadletter.db")
}

fn open(path: &std::path::Path) -> anyhow::Result<DeadLetters> {
    DeadLetters::open_existing(path).map_err(|e| anyhow!("{e}"))
}

fn summary_line(entry: &DeadLetterSummary) -> String {
    let attempts = if entry.attempts > 1 {
        format!(" (×{})", entry.attempts)
    } else {
        String::new()
    };
    format!(
        "{}  {}  {}  {}  {}  {} B  {}{attempts}",
        entry.id,
        format_ts(entry.last_at),
        entry.reason,
        entry.stage,
        entry.subject,
        entry.body_size,
        one_line(&entry.detail),
    )
}

fn summary_json(entry: &DeadLetterSummary) -> serde_json::Value {
    json!({
        "id": entry.id,
        "first_at": format_ts(entry.first_at),
        "last_at": format_ts(entry.last_at),
        "reason": entry.reason,
        "stage": entry.stage,
        "subject": entry.subject,
        "body_size": entry.body_size,
        "attempts": entry.attempts,
        "detail": entry.detail,
    })
}

/// Control characters (a newline in a detail) would break "one line each".
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn list(
    path: &std::path::Path,
    reason: Option<String>,
    since: Option<OffsetDateTime>,
    json: bool,
) -> anyhow::Result<()> {
    let store = open(path)?;
    let filter = Filter {
        reason,
        since,
        limit: None,
    };
    let entries = store.list(&filter).map_err(|e| anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    for entry in &entries {
        let line = if json {
            summary_json(entry).to_string()
        } else {
            summary_line(entry)
        };
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed (piped into `head`)
        }
    }
    eprintln!("{} dead letter(s) in {}.", entries.len(), path.display());
    Ok(())
}

fn show(path: &std::path::Path, id: u64) -> anyhow::Result<()> {
    let store = open(path)?;
    let entry = store
        .get(id)
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("no dead letter with id {id} in {}", path.display()))?;
    print!("{}", render(&entry));
    Ok(())
}

fn render(entry: &DeadLetter) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| out.push_str(&format!("{name:<10} {value}\n"));
    field("id:", &entry.id.to_string());
    field("reason:", &entry.reason);
    field("stage:", &entry.stage);
    field("subject:", &entry.subject);
    field("attempts:", &entry.attempts.to_string());
    field("first_at:", &format_ts(entry.first_at));
    field("last_at:", &format_ts(entry.last_at));
    field("detail:", &entry.detail);
    out.push_str("headers:\n");
    for (name, value) in &entry.headers {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    let kept = if entry.is_truncated() {
        format!(
            " (only the first {} bytes were kept; it cannot be replayed)",
            entry.body.len()
        )
    } else {
        String::new()
    };
    match std::str::from_utf8(&entry.body) {
        Ok(text) => {
            out.push_str(&format!(
                "body:      {} bytes, UTF-8{kept}\n",
                entry.body_size
            ));
            out.push_str(text);
            out.push('\n');
        }
        Err(_) => {
            let shown = entry.body.len().min(HEX_PREFIX);
            out.push_str(&format!(
                "body:      {} bytes, binary{kept}; the first {shown} in hex:\n",
                entry.body_size
            ));
            for chunk in entry.body[..shown].chunks(32) {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                out.push_str(&format!("  {}\n", hex.join(" ")));
            }
        }
    }
    out
}

fn purge(path: &std::path::Path, before: Option<OffsetDateTime>) -> anyhow::Result<()> {
    let store = open(path)?;
    let purged = store.purge(before).map_err(|e| anyhow!("{e}"))?;
    println!("{purged}");
    match before {
        Some(before) => eprintln!(
            "Purged {purged} dead letter(s) that last failed before {} from {}.",
            format_ts(before),
            path.display()
        ),
        None => eprintln!("Purged {purged} dead letter(s) from {}.", path.display()),
    }
    Ok(())
}

async fn replay(
    config: &Config,
    path: &std::path::Path,
    ids: Vec<u64>,
    all: bool,
) -> anyhow::Result<()> {
    let store = open(path)?;
    let ids = if all {
        store
            .list(&Filter::default())
            .map_err(|e| anyhow!("{e}"))?
            .iter()
            .map(|e| e.id)
            .collect()
    } else {
        ids
    };
    if ids.is_empty() {
        eprintln!("Nothing to replay: {} is empty.", path.display());
        return Ok(());
    }
    // This node's own ingress: where the messages it dead-lettered arrived (or, for a
    // member's own events, where they were going).
    let (role, link_config) = match config.node.mode {
        Mode::Hub | Mode::Root => ("local", config.local.as_ref()),
        Mode::Member => ("uplink", config.uplink.as_ref()),
    };
    let link_config = link_config
        .ok_or_else(|| anyhow!("mode {} needs [{role}] to replay to", config.node.mode))?;
    let url = nexus_config::redact_url(&link_config.url);
    let link = Link::connect(
        role,
        link_config,
        &format!("nexus-agent dlq replay {}", config.node.id),
    )
    .await?;
    let wait = link_config.connect_timeout.max(Duration::from_secs(5)) * 2;
    if tokio::time::timeout(wait, link.wait_connected(&CancellationToken::new()))
        .await
        .is_err()
    {
        bail!(
            "cannot reach the {role} NATS at {url} within {}s; nothing was replayed",
            wait.as_secs()
        );
    }
    let mut failed = 0usize;
    for id in &ids {
        match replay_one(&store, &link, *id).await {
            Ok(done) => println!("{id}: {done}"),
            Err(error) => {
                failed += 1;
                println!("{id}: FAILED: {error:#}");
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), link.client().flush()).await;
    eprintln!(
        "Replayed {} of {} dead letter(s) to {url}.",
        ids.len() - failed,
        ids.len()
    );
    if failed > 0 {
        bail!("{failed} dead letter(s) could not be replayed; they stay in the store");
    }
    Ok(())
}

/// Publishes one entry and removes it after the PubAck; says what happened.
async fn replay_one(store: &DeadLetters, link: &Link, id: u64) -> anyhow::Result<String> {
    let entry = store
        .get(id)
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("no such entry"))?;
    if entry.stage == STAGE_IOT {
        bail!(
            "it is a raw MQTT message from topic `{}` that no rule could map; fix the [[iot.sensors]] \
             rule and publish it to the broker again (`nexus-agent dlq show {id}` prints it), then \
             purge it",
            entry.subject
        );
    }
    if entry.stage == STAGE_BRIDGE {
        bail!(
            "it is a local app's message on `{}` that the subject bridge refused (see its reason); \
             fix the [[bridge.up]] rule, the [[acl]] or the token, have the app publish it again \
             (`nexus-agent dlq show {id}` prints it), then purge it",
            entry.subject
        );
    }
    if entry.stage == STAGE_COMMAND {
        bail!("it is a refused command; commands are not replayed (they expire): send it again with `nexus-agent request`");
    }
    if entry.is_truncated() {
        bail!(
            "its body was cut at {} of {} bytes when it was recorded; it cannot be replayed",
            entry.body.len(),
            entry.body_size
        );
    }
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &entry.headers {
        headers.append(name.as_str(), value.as_str());
    }
    let message = PublishMessage::build()
        .payload(entry.body.clone().into())
        .headers(headers);
    let ack = link
        .jetstream()
        .send_publish(entry.subject.clone(), message)
        .await
        .with_context(|| format!("publish on `{}`", entry.subject))?;
    let ack = tokio::time::timeout(PUBACK_TIMEOUT, std::future::IntoFuture::into_future(ack))
        .await
        .map_err(|_| anyhow!("no PubAck within {}s", PUBACK_TIMEOUT.as_secs()))?
        .with_context(|| format!("publish on `{}`", entry.subject))?;
    if ack.duplicate {
        bail!(
            "stream {} already holds a message with this Nats-Msg-Id (inside its duplicate \
             window), so it was not stored again; replay it after the window has passed",
            ack.stream
        );
    }
    store.remove(&[id]).map_err(|e| {
        anyhow!(
            "stored as {} #{}, but removing it failed: {e}",
            ack.stream,
            ack.sequence
        )
    })?;
    Ok(format!(
        "replayed to `{}` (stream {} #{}), removed",
        entry.subject, ack.stream, ack.sequence
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_body_is_shown_as_a_hex_prefix_and_text_as_text() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let binary = DeadLetter::new("iot", "malformed", "x", "s", vec![], vec![0xff; 300], at);
        let shown = render(&binary);
        assert!(shown.contains("300 bytes, binary"), "{shown}");
        assert_eq!(shown.matches("ff").count(), HEX_PREFIX);
        let text = DeadLetter::new("iot", "malformed", "x", "s", vec![], "héllo", at);
        assert!(render(&text).ends_with("héllo\n"));
    }
}
