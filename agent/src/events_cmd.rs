//! `nexus-agent events list | show | validate | scaffold | lint | asyncapi`: the event
//! registry for operators and app developers (docs/events.md).
//!
//! Every verb reads the built-in events plus, when asked, an operator's directory
//! (`--registry DIR`, or `-c CONFIG` for its `events.registry`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use nexus_events::lint::{lint, Severity};
use nexus_events::{Entry, Origin, Registry, Verdict};
use serde_json::{json, Value};

use crate::cli::parse;

/// `nexus-agent events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// One line per registered event@version: kind, subject, domain, retention, ordering
    /// key and where it comes from.
    List {
        #[command(flatten)]
        source: Source,
        /// Print a JSON array instead.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// Print the catalog table of docs/events.md (Markdown) instead.
        #[arg(long)]
        markdown: bool,
    },
    /// An event's metadata, schema and examples.
    Show {
        /// NAME@VERSION, or NAME for its latest version.
        #[arg(value_parser = parse::event_spec)]
        event: String,
        #[command(flatten)]
        source: Source,
    },
    /// Check a payload (or a whole envelope) against an event's schema: exit 0 when valid,
    /// 1 with the JSON pointer of the first failing field when not.
    Validate {
        /// NAME@VERSION, or NAME for its latest version.
        #[arg(value_parser = parse::event_spec)]
        event: String,
        /// The JSON file (`-` for stdin): the payload, or an envelope with it.
        file: PathBuf,
        #[command(flatten)]
        source: Source,
    },
    /// Write a new event's schema, example and metadata to edit:
    /// DIR/NAME/VERSION/{schema.json, event.toml, examples/1.json}.
    // `--version` is the event's here, not the agent's.
    #[command(disable_version_flag = true)]
    Scaffold {
        /// The event name (`namespace.noun_past`, e.g. booking.created).
        #[arg(value_parser = parse::event_name)]
        name: String,
        /// Its version.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        version: u32,
        /// The registry directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Check a registry directory (the built-in events without one): naming rules,
    /// metadata, examples valid; with --against, no breaking change within a version.
    /// Exit 1 on any error.
    Lint {
        /// The registry directory; none: the built-in events.
        dir: Option<PathBuf>,
        /// The previous registry: a directory, or a git ref of the repository DIR is in
        /// (e.g. origin/main).
        #[arg(long, value_name = "DIR|GIT_REF")]
        against: Option<String>,
    },
    /// Print the AsyncAPI 3.0 document (JSON) of every subject: tenant events, `_core`
    /// events, commands and their replies, with payload schemas, the envelope and the
    /// provenance headers.
    Asyncapi {
        #[command(flatten)]
        source: Source,
    },
}

/// Which registry: the built-ins, plus an operator's directory.
#[derive(Debug, Args)]
pub struct Source {
    /// An operator's registry directory, beside the built-in events.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    registry: Option<PathBuf>,
    /// A node's config: its `events.registry`.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Source {
    fn load(&self) -> anyhow::Result<Registry> {
        let dir = match (&self.registry, &self.config) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(config)) => match nexus_config::load(config) {
                Ok(config) => config.events.registry,
                Err(errors) => bail!("{errors}"),
            },
            (None, None) => None,
        };
        Ok(Registry::load(dir.as_deref())?)
    }
}

/// Runs one verb; the exit code.
pub fn main(command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::List {
            source,
            json,
            markdown,
        } => {
            let registry = source.load()?;
            if json {
                let rows: Vec<Value> = registry.entries().map(row).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if markdown {
                print!("{}", registry.catalog());
            } else {
                print!("{}", table(&registry));
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Show { event, source } => {
            let registry = source.load()?;
            let entry = find(&registry, &event)?;
            println!(
                "{} ({}, {})",
                entry.id(),
                entry.meta.kind.as_str(),
                entry.origin
            );
            println!("  {}", entry.meta.description);
            println!("  owner:        {}", entry.meta.owner);
            println!("  subject:      {}", entry.subject());
            println!("  domain:       {}", or_dash(&entry.meta.domain));
            println!("  retention:    {}", or_dash(&entry.meta.retention));
            println!("  ordering key: {}", or_dash(&entry.meta.ordering_key));
            println!(
                "\nschema.json:\n{}",
                serde_json::to_string_pretty(&entry.schema)?
            );
            for (file, example) in &entry.examples {
                println!(
                    "\nexamples/{file}:\n{}",
                    serde_json::to_string_pretty(example)?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Validate {
            event,
            file,
            source,
        } => {
            let registry = source.load()?;
            let entry = find(&registry, &event)?;
            let value = read_json(&file)?;
            let payload = payload_of(entry, value)?;
            match registry.validate(&entry.name, entry.version, &payload) {
                Verdict::Valid => {
                    println!("{}: valid {}", file.display(), entry.id());
                    Ok(ExitCode::SUCCESS)
                }
                Verdict::Invalid(invalid) => {
                    let pointer = if invalid.pointer.is_empty() {
                        "/"
                    } else {
                        &invalid.pointer
                    };
                    println!(
                        "{}: invalid {} at {pointer}: {}",
                        file.display(),
                        entry.id(),
                        invalid.message
                    );
                    Ok(ExitCode::FAILURE)
                }
                Verdict::Unknown => bail!("{} is not registered", entry.id()),
            }
        }
        EventsCommand::Scaffold { name, version, dir } => {
            let at = nexus_events::scaffold::scaffold(&dir, &name, version)?;
            println!("{}", at.display());
            eprintln!(
                "Wrote schema.json, event.toml and examples/1.json in {}: edit them, then run \
                 `nexus-agent events lint {}`.",
                at.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Lint { dir, against } => lint_cmd(dir.as_deref(), against.as_deref()),
        EventsCommand::Asyncapi { source } => {
            let registry = source.load()?;
            let document = nexus_events::asyncapi::document(&registry);
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn find<'a>(registry: &'a Registry, spec: &str) -> anyhow::Result<&'a Entry> {
    registry.find(spec).with_context(|| {
        let names: Vec<String> = registry.entries().map(Entry::id).collect();
        format!(
            "{spec} is not registered (known: {}); `nexus-agent events list` shows them",
            names.join(", ")
        )
    })
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

fn row(entry: &Entry) -> Value {
    json!({
        "event": entry.name, "version": entry.version, "kind": entry.meta.kind.as_str(),
        "subject": entry.subject(), "domain": entry.meta.domain,
        "retention": entry.meta.retention, "ordering_key": entry.meta.ordering_key,
        "owner": entry.meta.owner, "origin": entry.origin.to_string(),
    })
}

/// The plain listing: aligned columns.
fn table(registry: &Registry) -> String {
    let mut rows = vec![[
        "EVENT".to_owned(),
        "KIND".to_owned(),
        "SUBJECT".to_owned(),
        "DOMAIN".to_owned(),
        "RETENTION".to_owned(),
        "ORDERING KEY".to_owned(),
        "ORIGIN".to_owned(),
    ]];
    for entry in registry.entries() {
        rows.push([
            entry.id(),
            entry.meta.kind.as_str().to_owned(),
            entry.subject(),
            or_dash(&entry.meta.domain).to_owned(),
            or_dash(&entry.meta.retention).to_owned(),
            or_dash(&entry.meta.ordering_key).to_owned(),
            entry.origin.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A JSON file or stdin, capped.
fn read_json(file: &Path) -> anyhow::Result<Value> {
    const MAX: u64 = 1024 * 1024;
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(MAX + 1)
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot open {}", file.display()))?
            .take(MAX + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    if bytes.len() as u64 > MAX {
        bail!("{}: over 1 MiB, the envelope limit", file.display());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", file.display()))
}

/// The payload of `value`: the value itself, or an envelope's `payload` (whose name and
/// version must be the entry's).
fn payload_of(entry: &Entry, value: Value) -> anyhow::Result<Value> {
    let is_envelope = value.get("event_name").is_some() && value.get("payload").is_some();
    if !is_envelope {
        return Ok(value);
    }
    let name = value
        .get("event_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = value.get("version").and_then(Value::as_u64).unwrap_or(1);
    if name != entry.name || version != u64::from(entry.version) {
        bail!(
            "the envelope is {name}@{version}, not {}: name the event it is",
            entry.id()
        );
    }
    Ok(value.get("payload").cloned().unwrap_or(Value::Null))
}

fn lint_cmd(dir: Option<&Path>, against: Option<&str>) -> anyhow::Result<ExitCode> {
    let builtin = Registry::builtin()?;
    let (registry, label) = match dir {
        Some(dir) => {
            let mut registry = Registry::from_dir(dir)?;
            // The repository's own events/registry (or a copy): the agent's rules apply.
            registry.adopt_builtin_copies(&builtin);
            (registry, dir.display().to_string())
        }
        None => (Registry::builtin()?, "the built-in events".to_owned()),
    };
    let mut extracted = None;
    let previous = match against {
        None => None,
        Some(against) if Path::new(against).is_dir() => {
            Some(Registry::from_dir(Path::new(against))?)
        }
        Some(reference) => {
            let Some(dir) = dir else {
                bail!("--against {reference}: not a directory (a git ref needs the registry DIR, to find its repository)");
            };
            let (temp, previous_dir) = git_extract(dir, reference)?;
            extracted = Some(temp);
            if previous_dir.is_dir() {
                Some(Registry::from_dir(&previous_dir)?)
            } else {
                eprintln!("{label}: not in {reference}: every event is new, nothing to compare");
                None
            }
        }
    };
    let mut findings = lint(&registry, previous.as_ref());
    if dir.is_some() {
        // An operator's directory may not redefine the agent's own events.
        for entry in registry.entries() {
            if entry.origin != Origin::Builtin && builtin.get(&entry.name, entry.version).is_some()
            {
                findings.push(nexus_events::lint::Finding {
                    severity: Severity::Error,
                    event: entry.id(),
                    message: "redefines a built-in event: give yours another name".into(),
                });
            }
        }
    }
    drop(extracted);
    for finding in &findings {
        println!("{finding}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    eprintln!(
        "{label}: {} event(s), {errors} error(s), {warnings} warning(s)",
        registry.len()
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `DIR` as it is at git `reference`, extracted into a temp dir: the temp dir (kept alive
/// by the caller) and where DIR is in it.
fn git_extract(dir: &Path, reference: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let git = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run git (needed for --against GIT_REF)")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    };
    let prefix = String::from_utf8(git(&["rev-parse", "--show-prefix"])?)
        .context("git printed a non-UTF-8 path")?
        .trim()
        .to_owned();
    git(&["rev-parse", "--verify", &format!("{reference}^{{commit}}")])
        .with_context(|| format!("--against {reference}: not a directory nor a git commit"))?;
    let temp = tempfile::tempdir().context("cannot create a temp dir")?;
    let listed = git(&[
        "ls-tree",
        "-r",
        "--name-only",
        "--full-tree",
        reference,
        "--",
        &prefix,
    ])?;
    for path in String::from_utf8_lossy(&listed).lines() {
        let bytes = git(&["show", &format!("{reference}:{path}")])?;
        let dest = temp.path().join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    let previous = temp.path().join(prefix.trim_end_matches('/'));
    Ok((temp, previous))
}
