//! The command line. Every value is parsed by clap (the parsers are in [`parse`]), so a
//! bad one is a usage error: exit 2 with a message naming the flag.

pub mod parse;

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use nexus_policies::{SubjectPattern, TokenId};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use self::parse::{PublicKeyArg, PublicKeyParser, RoleArg, Ttl};

/// nexus-agent: one binary for every tier of a Nexus edge fleet (member, hub, root).
#[derive(Debug, Parser)]
#[command(
    name = "nexus-agent",
    version = concat!(env!("NEXUS_AGENT_VERSION"), " (", env!("NEXUS_AGENT_TARGET"), ")"),
    about,
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the mode its config names.
    Run {
        /// The TOML config file (environment variables `NEXUS_SECTION__KEY` override it).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config: print the effective config (secrets redacted) and exit 0, or
    /// print every error and exit 2.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create an Ed25519 key pair: PATH (secret, mode 0600) and PATH.pub; prints the
    /// public key.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "PATH", value_parser = parse::file_path)]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the envelopes published on a subject pattern, one line each, until Ctrl-C.
    Tail {
        /// A NATS subject pattern, e.g. `nexus.>` or `nexus._core.edge.health.*`.
        #[arg(value_parser = parse::subject_pattern)]
        pattern: SubjectPattern,
        /// The NATS server to subscribe on.
        #[arg(
            long,
            value_name = "URL",
            default_value = "nats://127.0.0.1:4222",
            value_parser = parse::nats_url
        )]
        server: String,
        /// Print each envelope as one JSON object per line instead.
        #[arg(long)]
        json: bool,
        /// Stop after this many envelopes (at least 1).
        #[arg(long, value_name = "N", value_parser = parse::count)]
        count: Option<u64>,
    },
    /// Send a command to a node and print its reply (from the root or a hub, with its
    /// config: the command is signed with its key and token). Exit 0 on an `ok` reply,
    /// 1 on an error reply, a timeout, or when no agent answers.
    Request {
        /// The config of the node sending the command (its [local] NATS, key and token).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The node the command is for.
        #[arg(value_parser = parse::node_id)]
        node: String,
        /// The command: a built-in (agent.ping, agent.health, agent.token.rotate) or one a
        /// [[bridge.down]] rule of the node maps to a local app.
        #[arg(value_parser = parse::event_name)]
        command: String,
        /// The command's data: a JSON object.
        #[arg(long, value_name = "JSON", value_parser = parse::json_object)]
        data: Option<Map<String, Value>>,
        /// How long to wait for the reply (the command expires then, too), at most 5m.
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "5s",
            value_parser = parse::command_timeout
        )]
        timeout: Duration,
        /// Print the whole reply envelope as JSON instead of its payload.
        #[arg(long)]
        json: bool,
    },
    /// Publish a signed event from this node (straight into the next tier's ingress,
    /// acknowledged durably); prints its event id.
    Publish {
        /// The config of the node publishing (its key, token, tenant and NATS links).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The event name, e.g. booking.created (a tenant event if the node has a tenant).
        #[arg(value_parser = parse::event_name)]
        event: String,
        /// The payload: a JSON object.
        #[arg(long, value_name = "JSON", value_parser = parse::json_object)]
        data: Option<Map<String, Value>>,
        /// Encode the envelope as CBOR instead of JSON.
        #[arg(long)]
        cbor: bool,
    },
    /// The fleet as a tree (status, last heartbeat, outbox, cause) from the last heartbeat
    /// of every node in the root's journal. Exit 0 when every node is healthy, 1 when any
    /// is degraded, offline or unknown (or the journal cannot be read).
    Fleet {
        /// The root's config (its [local] NATS, journal and heartbeat.offline_after).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Draw again every heartbeat interval until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Print the nodes as one JSON array instead.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// Where an event is: every tier answers a signed `agent.trace` command (its outbox,
    /// dead letters, ingress, the root's journal); tiers that cannot be asked are named.
    /// Exit 0 when it landed at the root, 1 otherwise.
    Trace {
        /// The root's config (its [local] NATS, key and journal).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The event's id (its `event_id`, a UUID).
        #[arg(value_parser = parse::event_id)]
        event_id: String,
        /// How long each tier may take to answer, at most 5m.
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "5s",
            value_parser = parse::command_timeout
        )]
        timeout: Duration,
        /// Print every tier's answer as one JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// List, show, replay and purge this node's dead letters (rejected or undeliverable
    /// messages kept in `{data_dir}/deadletter.db`).
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        command: crate::dlq::DlqCommand,
    },
    /// The event registry: list, show, validate a payload, scaffold a new event, lint a
    /// registry, print the AsyncAPI 3.0 document.
    Events {
        /// What to do.
        #[command(subcommand)]
        command: crate::events_cmd::EventsCommand,
    },
    /// Desired config for nodes below this tier: push a signed document, and see status,
    /// diff and history (docs/remote-config.md).
    Config {
        /// What to do.
        #[command(subcommand)]
        command: crate::remote_config::cmd::ConfigCommand,
    },
    /// Agent releases at the root: publish a signed binary, list, show (docs/updates.md).
    Release {
        /// What to do.
        #[command(subcommand)]
        command: crate::update::cmd::ReleaseCommand,
    },
    /// Rollouts of a release to the fleet, in waves per hub: start, status, pause, resume,
    /// abort (docs/updates.md).
    Rollout {
        /// What to do.
        #[command(subcommand)]
        command: crate::update::cmd::RolloutCommand,
    },
    /// Issue, inspect and verify capability token chains.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `nexus-agent token …`.
#[allow(clippy::large_enum_variant)] // parsed once, like `Command`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a node and write its chain (the new token first, then the parent
    /// chain). Prints the token id on stdout and a summary on stderr.
    Issue(IssueArgs),
    /// Print every token of a chain, leaf first, in words (never key material).
    Inspect {
        /// The token chain file.
        file: PathBuf,
    },
    /// Verify a chain up to trust anchors, now or at a given time: exit 0 if valid,
    /// 1 with the reason if not.
    Verify {
        /// The token chain file.
        file: PathBuf,
        /// A trusted root public key (`ed25519:…` or a .pub file); repeatable.
        #[arg(long, value_name = "ROOT_PUBKEY", required = true, value_parser = PublicKeyParser)]
        trust: Vec<PublicKeyArg>,
        /// Verify at this time (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339", value_parser = parse::rfc3339)]
        at: Option<OffsetDateTime>,
    },
    /// Revoke tokens fleet-wide: add their ids to the signed revocation list in the root's
    /// NATS (`NEXUS_TRUST` bucket), which every hub and member watches and persists.
    #[command(group(ArgGroup::new("target").args(["server", "out"]).required(true).multiple(true)))]
    Revoke {
        /// A trust anchor's secret key (the root key); it signs the list.
        #[arg(long, value_name = "ROOT.key")]
        key: PathBuf,
        /// A token id to revoke (as printed by `token issue` / `token inspect`); repeatable.
        #[arg(
            long = "id",
            value_name = "TOKEN_ID",
            required = true,
            value_parser = parse::token_id
        )]
        ids: Vec<TokenId>,
        /// The root's NATS server, where the list is published.
        #[arg(long, value_name = "URL", value_parser = parse::nats_url)]
        server: Option<String>,
        /// Also write the signed list to this file.
        #[arg(long, value_name = "FILE", value_parser = parse::file_path)]
        out: Option<PathBuf>,
    },
}

/// The arguments of `token issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The issuer's secret key: a trust anchor (root key) without --parent, else the key
    /// the parent token was issued to.
    #[arg(long, value_name = "ISSUER.key")]
    pub key: PathBuf,
    /// The issuer's own token chain: the new token hangs from it and can grant only
    /// what it grants. Without it, the new token is a top token signed by a root key.
    #[arg(long, value_name = "ISSUER.token")]
    pub parent: Option<PathBuf>,
    /// The node the token is for (1-64 chars of [a-z0-9_-]).
    #[arg(long, value_name = "ID", value_parser = parse::node_id)]
    pub node: String,
    /// The node's public key: the `ed25519:…` text or the path of its .pub file.
    #[arg(long, value_name = "PUBKEY", value_parser = PublicKeyParser)]
    pub node_key: PublicKeyArg,
    /// The tenant the node is bound to; omit for a node serving every tenant (required
    /// under a parent bound to a tenant).
    #[arg(long, value_name = "T", value_parser = parse::tenant_id)]
    pub tenant: Option<String>,
    /// The node's tier.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Subject patterns the node may publish (`*` one token, `>` the rest); repeatable.
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_parser = parse::subject_pattern)]
    pub publish: Vec<SubjectPattern>,
    /// Subject patterns the node may receive; repeatable.
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_parser = parse::subject_pattern)]
    pub receive: Vec<SubjectPattern>,
    /// How long the token is valid, from --not-before (e.g. 30d, 12h, 90m).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse::ttl)]
    pub ttl: Ttl,
    /// When the token becomes valid (RFC 3339); default now.
    #[arg(long, value_name = "RFC3339", value_parser = parse::rfc3339)]
    pub not_before: Option<OffsetDateTime>,
    /// Where to write the chain.
    #[arg(long, value_name = "FILE", value_parser = parse::file_path)]
    pub out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
    /// After writing, record a `nexus._core.audit.cap_token_issued` event on this NATS
    /// server's ingress stream (a hub's or the root's) and wait for its ack.
    #[arg(long, value_name = "URL", value_parser = parse::nats_url)]
    pub server: Option<String>,
    /// The node id the audit event comes from (its `source`).
    #[arg(long, value_name = "ID", default_value = "root", value_parser = parse::node_id)]
    pub issuer_id: String,
}
