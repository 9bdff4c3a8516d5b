//! `nexus-agent release publish | list | show` and `nexus-agent rollout start | status |
//! pause | resume | abort`, at the root (docs/updates.md).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt as _;
use nexus_config::{Config, Mode};
use nexus_federation::Link;
use nexus_policies::{
    AgentVersion, ReleaseManifest, ReleaseSpec, Rollout, RolloutSpec, RolloutState, UnixTime,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::{bucket, hex_digest, manifest_key, object_name, objects, selected, ROLLOUT_KEY};
use crate::fleet_cmd::read_envelopes;
use crate::keygen::load_secret;

fn version_arg(text: &str) -> Result<AgentVersion, String> {
    AgentVersion::parse(text)
}

/// `release …`.
#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Sign a release binary with a release key and store it at the root.
    #[command(disable_version_flag = true)]
    Publish {
        /// The root's config (its [local] NATS).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The release key (`nexus-agent keygen`), listed in trust.release_keys.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The agent binary.
        binary: PathBuf,
        /// The target triple it is built for (`nexus-agent --version` on it says).
        #[arg(long, value_parser = crate::cli::parse::target_triple)]
        target: String,
        /// The version it reports (MAJOR.MINOR.PATCH).
        #[arg(long, value_parser = version_arg)]
        version: AgentVersion,
        /// The oldest version it may replace. Default 0.0.0 (any).
        #[arg(long, value_parser = version_arg)]
        min_version: Option<AgentVersion>,
    },
    /// The releases stored at the root.
    List {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// One release's manifests, per target.
    #[command(disable_version_flag = true)]
    Show {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The version.
        #[arg(value_parser = version_arg)]
        version: AgentVersion,
    },
}

/// `rollout …`.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of a published release: hubs install it on their members in waves.
    #[command(disable_version_flag = true)]
    Start {
        /// The root's config (its key signs the rollout).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The version to install.
        #[arg(long, value_parser = version_arg)]
        version: AgentVersion,
        /// The nodes: an id or a glob (`edge-*`).
        #[arg(long, value_parser = crate::cli::parse::node_pattern)]
        to: String,
        /// The share of matching nodes, 1-100. Default 100.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        /// Each hub stops when more than this many of its members fail. Default 0.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        /// Let an older version replace a newer one.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The rollout and each selected node's version and update state. Exit 0 when every
    /// selected node runs the version.
    Status {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// No new wave starts; installs under way finish.
    Pause {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Waves start again.
    Resume {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// No install starts any more.
    Abort {
        /// The root's config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = nexus_config::load(path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    if config.node.mode != Mode::Root {
        bail!(
            "releases and rollouts live at the root: run this with the root's config (this one is a {})",
            config.node.mode
        );
    }
    Ok(config)
}

async fn connect(config: &Config) -> anyhow::Result<Link> {
    let local = config
        .local
        .as_ref()
        .context("the root's config has no [local] NATS")?;
    crate::request_cmd::connect("local", local, "nexus-agent release").await
}

/// `release …`.
pub async fn release(command: ReleaseCommand) -> anyhow::Result<bool> {
    match command {
        ReleaseCommand::Publish {
            config,
            key,
            binary,
            target,
            version,
            min_version,
        } => {
            let config = load(&config)?;
            let key = load_secret(&key)?;
            if config.trust.root_keys.contains(&key.public()) {
                bail!("{} is a root key: releases are signed with a release key of their own (docs/updates.md)", key.public());
            }
            if !config.trust.release_keys.contains(&key.public()) {
                eprintln!(
                    "warning: {} is not in this root's trust.release_keys; nodes accept only the keys in theirs",
                    key.public()
                );
            }
            let bytes = std::fs::read(&binary)
                .with_context(|| format!("cannot read {}", binary.display()))?;
            let sha256: [u8; 32] = Sha256::digest(&bytes).into();
            let manifest = ReleaseManifest::issue(
                ReleaseSpec {
                    version,
                    target: target.clone(),
                    size: bytes.len() as u64,
                    sha256,
                    min_version: min_version.unwrap_or(AgentVersion(0, 0, 0)),
                    issued_at: UnixTime(OffsetDateTime::now_utc().unix_timestamp()),
                },
                &key,
            )
            .map_err(|e| anyhow::anyhow!("cannot sign the manifest: {e}"))?;
            let link = connect(&config).await?;
            let store = objects(&link, true)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the release store: {e}"))?;
            let name = object_name(version, &target);
            store
                .put(name.as_str(), &mut bytes.as_slice())
                .await
                .map_err(|e| anyhow::anyhow!("cannot store {name}: {e}"))?;
            bucket(&link, true)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the update bucket: {e}"))?
                .put(manifest_key(version, &target), manifest.encode().into())
                .await
                .map_err(|e| anyhow::anyhow!("cannot store the manifest: {e}"))?;
            println!(
                "published {name}: {} bytes, {}, signed by {}",
                bytes.len(),
                hex_digest(&sha256),
                key.public()
            );
            Ok(true)
        }
        ReleaseCommand::List { config } => {
            let config = load(&config)?;
            let link = connect(&config).await?;
            for manifest in manifests(&link).await? {
                let s = manifest.spec();
                println!(
                    "{} {} {} bytes {} (replaces {} and later)",
                    s.version,
                    s.target,
                    s.size,
                    hex_digest(&s.sha256),
                    s.min_version
                );
            }
            Ok(true)
        }
        ReleaseCommand::Show { config, version } => {
            let config = load(&config)?;
            let link = connect(&config).await?;
            let found: Vec<ReleaseManifest> = manifests(&link)
                .await?
                .into_iter()
                .filter(|m| m.spec().version == version)
                .collect();
            if found.is_empty() {
                bail!("no release {version} at the root: `nexus-agent release publish`");
            }
            for manifest in found {
                let s = manifest.spec();
                let trusted = manifest.verify(&config.trust.release_keys).is_ok();
                println!(
                    "{}\n  target      {}\n  size        {} bytes\n  sha256      {}\n  min_version {}\n  signed by   {}{}\n  issued at   {}",
                    object_name(s.version, &s.target),
                    s.target,
                    s.size,
                    hex_digest(&s.sha256),
                    s.min_version,
                    manifest.signer(),
                    if trusted { " (a release key of this root)" } else { " (NOT in this root's trust.release_keys)" },
                    s.issued_at.0
                );
            }
            Ok(true)
        }
    }
}

async fn manifests(link: &Link) -> anyhow::Result<Vec<ReleaseManifest>> {
    let store = bucket(link, true)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the update bucket: {e}"))?;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list releases: {e}"))?;
    let mut names = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if key.starts_with("manifest.") {
            names.push(key);
        }
    }
    let mut out = Vec::new();
    for key in names {
        if let Ok(Some(bytes)) = store.get(&key).await {
            if let Ok(manifest) = ReleaseManifest::decode(&bytes) {
                out.push(manifest);
            }
        }
    }
    out.sort_by(|a, b| {
        (a.spec().version, &a.spec().target).cmp(&(b.spec().version, &b.spec().target))
    });
    Ok(out)
}

/// `rollout …`.
pub async fn rollout(command: RolloutCommand) -> anyhow::Result<bool> {
    let (path, change) = match command {
        RolloutCommand::Start {
            config,
            version,
            to,
            percent,
            max_failures,
            allow_downgrade,
        } => {
            let config = load(&config)?;
            let link = connect(&config).await?;
            if !manifests(&link)
                .await?
                .iter()
                .any(|m| m.spec().version == version)
            {
                bail!("no release {version} at the root: publish it first (`nexus-agent release publish`)");
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            // A new id, after the previous rollout's even within the same second.
            let previous = current(&config, &link).await.map_or(0, |r| r.spec().id);
            let spec = RolloutSpec {
                id: u64::try_from(now).unwrap_or(0).max(previous + 1),
                version,
                to,
                percent,
                max_failures,
                allow_downgrade,
                state: RolloutState::Active,
                issued_at: UnixTime(now),
            };
            put_rollout(&config, &link, spec).await?;
            return Ok(true);
        }
        RolloutCommand::Status { config, json } => return status(&config, json).await,
        RolloutCommand::Pause { config } => (config, RolloutState::Paused),
        RolloutCommand::Resume { config } => (config, RolloutState::Active),
        RolloutCommand::Abort { config } => (config, RolloutState::Aborted),
    };
    let config = load(&path)?;
    let link = connect(&config).await?;
    let current = current(&config, &link).await?;
    let mut spec = current.spec().clone();
    if spec.state == RolloutState::Aborted {
        bail!("rollout {} was aborted; start a new one", spec.id);
    }
    spec.state = change;
    spec.issued_at = UnixTime(OffsetDateTime::now_utc().unix_timestamp());
    put_rollout(&config, &link, spec).await?;
    Ok(true)
}

async fn current(config: &Config, link: &Link) -> anyhow::Result<Rollout> {
    let store = bucket(link, true)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the update bucket: {e}"))?;
    let bytes = store
        .get(ROLLOUT_KEY)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the rollout: {e}"))?
        .context("no rollout: `nexus-agent rollout start`")?;
    let rollout =
        Rollout::decode(&bytes).map_err(|e| anyhow::anyhow!("the rollout does not decode: {e}"))?;
    rollout
        .verify(&config.trust.root_keys)
        .map_err(|e| anyhow::anyhow!("the rollout does not verify: {e}"))?;
    Ok(rollout)
}

async fn put_rollout(config: &Config, link: &Link, spec: RolloutSpec) -> anyhow::Result<()> {
    let key = load_secret(&config.node.key)?;
    let rollout =
        Rollout::issue(spec, &key).map_err(|e| anyhow::anyhow!("cannot sign the rollout: {e}"))?;
    bucket(link, true)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the update bucket: {e}"))?
        .put(ROLLOUT_KEY, rollout.encode().into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot store the rollout: {e}"))?;
    let s = rollout.spec();
    println!(
        "rollout {}: {} to {} ({}%, max failures {}{}): {}",
        s.id,
        s.version,
        s.to,
        s.percent,
        s.max_failures,
        if s.allow_downgrade {
            ", downgrades allowed"
        } else {
            ""
        },
        s.state.as_str()
    );
    Ok(())
}

async fn status(path: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    let config = load(path)?;
    let link = connect(&config).await?;
    let rollout = current(&config, &link).await?;
    let spec = rollout.spec();
    let beats = read_envelopes(
        link.jetstream(),
        &config.landing.stream,
        "nexus._core.edge.health.>",
        DeliverPolicy::LastPerSubject,
    )
    .await?;
    let mut rows = Vec::new();
    for beat in beats {
        if !selected(&beat.source, spec) {
            continue;
        }
        let p = &beat.payload;
        let version = p
            .get("agent_version")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let update = p.get("update").cloned().unwrap_or(Value::Null);
        let state = if version == spec.version.to_string() {
            "updated".to_owned()
        } else if update["rollout"].as_u64() == Some(spec.id) {
            update["state"].as_str().unwrap_or("pending").to_owned()
        } else {
            "pending".to_owned()
        };
        rows.push(serde_json::json!({
            "node": beat.source,
            "version": version,
            "state": state,
            "cause": update["cause"].clone(),
        }));
    }
    rows.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    let done = rows.iter().all(|r| r["state"] == "updated");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": spec.id, "version": spec.version.to_string(), "to": spec.to,
                "state": spec.state.as_str(), "nodes": rows,
            })
        );
    } else {
        println!(
            "rollout {}: {} to {} ({}%, max failures {}): {}",
            spec.id,
            spec.version,
            spec.to,
            spec.percent,
            spec.max_failures,
            spec.state.as_str()
        );
        for r in &rows {
            println!(
                "  {:<24} {:<10} {:<12} {}",
                r["node"].as_str().unwrap_or("?"),
                r["version"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?"),
                r["cause"].as_str().unwrap_or("")
            );
        }
    }
    Ok(done)
}
