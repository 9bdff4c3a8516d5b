//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// nexus-agent: one binary for every tier of a Nexus edge fleet (member, hub, root).
#[derive(Debug, Parser)]
#[command(name = "nexus-agent", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
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
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the envelopes published on a subject pattern, one line each, until Ctrl-C.
    Tail {
        /// A NATS subject pattern, e.g. `nexus.>` or `nexus._core.edge.health.*`.
        pattern: String,
        /// The NATS server to subscribe on.
        #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
        server: String,
        /// Print each envelope as one JSON object per line instead.
        #[arg(long)]
        json: bool,
        /// Stop after this many envelopes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}
