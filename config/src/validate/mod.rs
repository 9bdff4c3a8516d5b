//! The schema walk: the merged figment value → a validated [`Config`], with every problem.
//!
//! Why a walk and not `#[derive(Deserialize)]` + `deny_unknown_fields`: serde stops at
//! the first error, and an operator fixing a config one line per restart is what linkerd
//! and vector spare theirs. Walking the merged value against the schema reports every
//! unknown key, wrong type and bad value at once, each with the file or environment
//! variable it came from. Unknown keys are refused at every level, exactly as
//! `deny_unknown_fields` would.
//!
//! Defaults live in `schema` (not in a figment provider) because the presence of
//! `[uplink]` and `[local]` means something: a defaults provider would make every config
//! have both.
//!
//! # Layout
//!
//! One `Reader` walks the value and collects the problems; each module below adds the
//! `impl Reader` methods of its concern. [`Reader::config`], here, is the walk itself: the
//! order sections are read in (which is the order problems are reported in) and the checks
//! that span sections (a mode's required and forbidden sections, the token against
//! `[trust]`, the ingress window against the onward link). The section modules mirror the
//! test files: `config/tests/{iot,bridge,landing}.rs` for theirs, `load.rs` for the rest.
//!
//! - `schema`: every section's keys, and every default and bound that is a constant.
//! - `reader`: the reader and its problems; sections, nested tables and unknown keys (with
//!   "did you mean"); typed reads (strings, durations, integers, paths, ids, subject
//!   pattern lists, JetStream names).
//! - `preflight`: the only part that reads the filesystem: `node.key`, `node.token`,
//!   `node.data_dir`, `trust.revocations_file`, TLS files, and [`read_capped`].
//! - `node`: `[node]` and `[trust]`.
//! - `links`: `[uplink]`, `[local]` and their `[….tls]` (which `[iot.tls]` reuses); NATS URLs.
//! - `log`: `[log]` and `[heartbeat]`.
//! - `outbox`: `[outbox]` and `[dead_letter]`.
//! - `ingress`: `[ingress]`, and its `duplicate_window` against a redelivery.
//! - `acl`: `[[acl]]`.
//! - `iot`: `[iot]` and `[[iot.sensors]]`.
//! - `bridge`: `[bridge]`, `[[bridge.up]]` and `[[bridge.down]]`.
//! - `landing`: `[landing]` and `[[landing.domains]]`.

mod acl;
mod bridge;
mod ingress;
mod iot;
mod landing;
mod links;
mod log;
mod node;
mod outbox;
mod preflight;
mod reader;
mod schema;

use std::path::PathBuf;

use figment::value::{Dict, Value};
use figment::Figment;

use crate::error::{ConfigErrors, ErrorKind, Origin};
use crate::model::{Config, LinkConfig, Mode, NodeConfig, UpdatesConfig};
use crate::source;

pub use preflight::read_capped;
use reader::Reader;

/// Validates the merged value of `figment` into a [`Config`].
pub(crate) fn validate(figment: &Figment) -> Result<Config, ConfigErrors> {
    let root = match figment.find_value("") {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => Dict::new(),
        Err(error) => return Err(ConfigErrors::new(source::provider_errors(error))),
    };
    let file = source::config_file(figment);
    let fallback = match &file {
        Some(path) => Origin::File(path.clone()),
        None => Origin::Other("configuration".to_owned()),
    };
    let mut reader = Reader {
        figment,
        fallback,
        errors: Vec::new(),
    };
    let config = reader.config(&root, file);
    match config {
        Some(config) if reader.errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors::new(reader.errors)),
    }
}

impl Reader<'_> {
    /// The walk: every section in schema order, the checks that span sections, and the
    /// [`Config`] when nothing was reported (the caller checks `errors`).
    fn config(&mut self, root: &Dict, file: Option<PathBuf>) -> Option<Config> {
        self.unknown_sections(root);

        let node_section = self.section(root, "node");
        let node = self.node(&node_section);
        let mode = node.as_ref().and_then(|n| n.mode);

        let trust_section = self.section(root, "trust");
        let data_dir = node.as_ref().and_then(|n| n.data_dir.as_deref());
        let trust = self.trust(&trust_section, mode, data_dir);
        if let Some(node) = &node {
            self.check_token(node, trust.as_ref());
        }

        let uplink_section = self.section(root, "uplink");
        let uplink = match mode {
            Some(Mode::Root) if uplink_section.present => {
                self.push(
                    ErrorKind::ForbiddenSection,
                    uplink_section.origin.clone(),
                    "uplink",
                    "a root is the top tier and has no uplink: remove the [uplink] section \
                     (its own NATS goes in [local])"
                        .to_owned(),
                );
                None
            }
            Some(mode @ (Mode::Member | Mode::Hub)) if !uplink_section.present => {
                let parent = if mode == Mode::Member {
                    "its hub"
                } else {
                    "the root"
                };
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "uplink",
                    format!(
                        "a {mode} needs an [uplink] section with the url of {parent}'s NATS \
                         (e.g. url = \"nats://hub.example:4222\")"
                    ),
                );
                None
            }
            _ => self.link(&uplink_section),
        };
        // Through a leaf node, replies come back on this node's own inboxes.
        let uplink = uplink.map(|mut link| {
            if link.jetstream_domain.is_some() {
                let id = node.as_ref().and_then(|n| n.id.as_deref());
                link.inbox_prefix = id.map(LinkConfig::leaf_inbox_prefix);
            }
            link
        });

        let local_section = self.section(root, "local");
        if let Some(mode @ (Mode::Hub | Mode::Root)) = mode {
            if !local_section.present {
                self.push(
                    ErrorKind::MissingSection,
                    self.fallback.clone(),
                    "local",
                    format!(
                        "a {mode} needs a [local] section with the url of its own NATS \
                         (e.g. url = \"nats://127.0.0.1:4222\")"
                    ),
                );
            }
        }
        let local = self.link(&local_section);

        let section = self.section(root, "heartbeat");
        let heartbeat = self.heartbeat(&section);
        let section = self.section(root, "health");
        let health = self.health(&section);
        let section = self.section(root, "metrics");
        let metrics = self.metrics_listener(&section);
        let section = self.section(root, "page");
        let page = self.page(&section, mode);
        let section = self.section(root, "events");
        let events = self.events(&section);
        let section = self.section(root, "remote_config");
        let remote_config = self.remote_config(&section);
        let section = self.section(root, "updates");
        let updates = UpdatesConfig {
            gate: self.gate(&section, "updates.gate", UpdatesConfig::default().gate),
        };
        let section = self.section(root, "log");
        let log = self.log(&section);
        let section = self.section(root, "outbox");
        let outbox = self.outbox(&section);
        let ingress_section = self.section(root, "ingress");
        let ingress = self.ingress(&ingress_section);
        if let Some(mode @ (Mode::Hub | Mode::Root)) = mode {
            let (onward, link) = match mode {
                Mode::Root => ("local", local.as_ref()),
                _ => ("uplink", uplink.as_ref()),
            };
            if let Some(link) = link {
                self.redelivery_window(&ingress_section, &ingress, onward, link);
            }
        }
        let section = self.section(root, "dead_letter");
        let dead_letter = self.dead_letter(&section);
        let acl = self.acl(root);
        let section = self.section(root, "iot");
        let iot = self.iot(&section, node.as_ref());
        let section = self.section(root, "bridge");
        let bridge = self.bridge(&section, node.as_ref(), local_section.present);
        let section = self.section(root, "landing");
        let landing = self.landing(&section, mode, &ingress);

        let node = node?;
        Some(Config {
            source: file.map(|f| std::path::absolute(&f).unwrap_or(f)),
            node: NodeConfig {
                id: node.id?,
                mode: node.mode?,
                tenant: node.tenant,
                key: node.key?,
                token: node.token.map(|g| g.value),
                data_dir: node.data_dir?,
            },
            trust: trust?,
            acl,
            uplink,
            local,
            heartbeat,
            health,
            metrics,
            page,
            events,
            remote_config,
            updates,
            log,
            outbox,
            ingress,
            dead_letter,
            iot,
            bridge,
            landing,
        })
    }
}
