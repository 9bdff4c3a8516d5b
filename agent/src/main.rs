//! The nexus-agent binary: CLI → config → tracing → build → run → exit code.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad config or bad command line.
//!
//! # Layout
//! - `cli`: the command line (clap).
//! - `run`: mode assembly, shutdown, logging.
//! - `supervisor`: subsystems' tasks, their faults, and which faults stop the agent.
//! - `heartbeat`: `edge.health` emission and the watch over children.
//! - `keygen`: key pair creation and loading.
//! - `tail`: printing envelopes from a subject.
//! - `token_cmd`: `token issue | inspect | verify`.
//! - `trust_setup`: own token chain, trust clock and known revocations at start.
//! - `revoke`: `token revoke`, the fleet's signed revocation list.
//! - `commands`: commands to this node (built-ins, `[[bridge.down]]`) and hub routing.
//! - `request_cmd`: `request` (commands) and `publish` (events) for operators.
//! - `rejections`: refused messages → dead letters and audit events.
//! - `losses`: what the outbox drops or expires → a WARN and an audit event.
//! - `dlq`: `dlq list | show | replay | purge`, the dead-letter store for operators.
//! - `events_cmd`: `events list | show | validate | scaffold | lint | asyncapi`, the event
//!   registry.
//! - `sdnotify`: systemd's readiness and watchdog notifications (`Type=notify`).

mod children;
mod cli;
mod commands;
mod dlq;
mod events_cmd;
mod fleet_cmd;
mod health;
mod heartbeat;
mod keygen;
mod losses;
mod metrics;
mod page;
mod rejections;
mod remote_config;
mod request_cmd;
mod revoke;
mod run;
mod sdnotify;
mod supervisor;
mod tail;
mod token_cmd;
mod trace_cmd;
mod trust_setup;
mod update;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    nexus_federation::tls::install_crypto_provider(); // docs/pitfalls.md, "rustls crypto provider"
    let cli = Cli::parse();
    match cli.command {
        // The same rules decide whether a desired config is applied
        // (crate::remote_config::apply).
        Command::Check { config: path } => match remote_config::apply::check_rules(&path) {
            Ok(config) => {
                println!("{}", config.redacted());
                let warnings = config.warnings();
                let source = display_source(&config);
                for warning in &warnings {
                    eprintln!("{source}: warning: {warning}");
                }
                match warnings.len() {
                    0 => eprintln!("{source}: OK"),
                    n => eprintln!("{source}: OK, with {n} warning(s) above"),
                }
                ExitCode::SUCCESS
            }
            Err(remote_config::apply::CheckFailure::Config(errors)) => config_failed(&errors),
            Err(remote_config::apply::CheckFailure::Registry(error)) => {
                eprintln!("{}: error: {error}", path.display());
                ExitCode::from(2)
            }
        },
        Command::Keygen { out, force } => match keygen::keygen(&out, force) {
            Ok(public) => {
                eprintln!(
                    "Wrote {} (secret, mode 0600) and {}.",
                    out.display(),
                    keygen::public_path(&out).display()
                );
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(error) => failed(&error),
        },
        Command::Dlq { command } => dlq::main(command),
        Command::Events { command } => match events_cmd::main(command) {
            Ok(code) => code,
            Err(error) => failed(&error),
        },
        Command::Trace {
            config,
            event_id,
            timeout,
            json,
        } => {
            let config = match nexus_config::load(&config) {
                Ok(config) => config,
                Err(errors) => return config_failed(&errors),
            };
            runtime_check(trace_cmd::trace(&config, &event_id, timeout, json))
        }
        Command::Fleet {
            config,
            watch,
            json,
        } => {
            let config = match nexus_config::load(&config) {
                Ok(config) => config,
                Err(errors) => return config_failed(&errors),
            };
            runtime_check(fleet_cmd::fleet(&config, watch, json))
        }
        Command::Request {
            config,
            node,
            command,
            data,
            timeout,
            json,
        } => {
            let config = match nexus_config::load(&config) {
                Ok(config) => config,
                Err(errors) => return config_failed(&errors),
            };
            let data = data.unwrap_or_default();
            runtime(async move {
                request_cmd::request(&config, &node, &command, data, timeout, json).await
            })
        }
        Command::Publish {
            config,
            event,
            data,
            cbor,
        } => {
            let config = match nexus_config::load(&config) {
                Ok(config) => config,
                Err(errors) => return config_failed(&errors),
            };
            let data = data.unwrap_or_default();
            runtime(async move { request_cmd::publish(&config, &event, data, cbor).await })
        }
        Command::Config { command } => runtime_check(remote_config::cmd::main(command)),
        Command::Release { command } => runtime_check(update::cmd::release(command)),
        Command::Rollout { command } => runtime_check(update::cmd::rollout(command)),
        Command::Token { command } => match token_cmd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => failed(&error),
        },
        Command::Tail {
            pattern,
            server,
            json,
            count,
        } => runtime(async move { tail::tail(&pattern, &server, json, count).await }),
        Command::Run { config: path } => {
            if cfg!(nexus_test_bad_build) {
                // The update tests' broken release (agent/build.rs): it exits at once.
                eprintln!("error: this is a deliberately broken build (NEXUS_AGENT_TEST_BAD=exit)");
                return ExitCode::from(3);
            }
            // A desired config on trial that keeps the agent from starting is rolled
            // back before anything else (crate::remote_config::state).
            let files = remote_config::state::Files::new(&path);
            remote_config::state::boot(&files);
            let config = match nexus_config::load(&path) {
                Ok(config) => config,
                Err(errors)
                    if remote_config::state::roll_back_unloadable(&files, &errors.to_string()) =>
                {
                    match nexus_config::load(&path) {
                        Ok(config) => config,
                        Err(errors) => return config_failed(&errors),
                    }
                }
                Err(errors) => return config_failed(&errors),
            };
            // The release on trial or active runs instead of this binary
            // (crate::update::state).
            let me = std::env::var(update::state::SLOT_ENV).ok();
            if let update::state::Boot::Exec { path: bin, slot } =
                update::state::boot(&config.node.data_dir, me.as_deref(), update::version())
            {
                let error = update::state::exec(&bin, slot.as_deref());
                eprintln!(
                    "error: cannot start {}: {error}; going on with this binary",
                    bin.display()
                );
                let mut state = update::state::UpdateState::load(&config.node.data_dir);
                state.roll_back(format!("cannot start {}: {error}", bin.display()));
                state.active = None;
                let _ = state.save(&config.node.data_dir);
            }
            if let Err(error) = run::init_logging(&config.log) {
                eprintln!("error: {error:#}");
                return ExitCode::from(2);
            }
            let code = runtime(async move {
                let result = run::run(config).await;
                if let Err(error) = &result {
                    tracing::error!(error = format!("{error:#}"), "nexus-agent failed.");
                }
                result
            });
            if remote_config::restart_requested() {
                let error = remote_config::reexec();
                eprintln!("error: cannot restart with the new config file: {error}");
                return ExitCode::from(1);
            }
            code
        }
    }
}

fn runtime<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return failed(&anyhow::Error::new(error).context("cannot start the async runtime"))
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(&error),
    }
}

/// [`runtime`] of a check: exit 0 when it answers `true`, 1 when `false` or failed.
fn runtime_check<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<bool>>,
{
    let mut passed = false;
    let code = runtime(async {
        passed = future.await?;
        Ok(())
    });
    if code == ExitCode::SUCCESS && !passed {
        ExitCode::FAILURE
    } else {
        code
    }
}

fn failed(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

fn config_failed(errors: &nexus_config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::from(2)
}

fn display_source(config: &nexus_config::Config) -> String {
    config
        .source
        .as_ref()
        .map_or_else(|| "config".to_owned(), |p| p.display().to_string())
}
