//! Test support for nexus-agent's end-to-end tests: real processes, no mocks.
//!
//! Starts real `nats-server` (with JetStream) and `mosquitto` on loopback ports of their own,
//! each in a temp dir, waits until they serve clients (with a deadline), restarts them on the
//! same port with the same data for outage tests, and kills them on `Drop` — modelled on the
//! nats-server helper crate of nats.rs. Runs the `nexus-agent` binary as a child process, and
//! offers deadline-bound waits so that tests never sleep to synchronise.
//!
//! A missing program panics with how to install it (`./dev setup`). Programs are found via
//! `NATS_SERVER_BIN`, `MOSQUITTO_BIN` and `NEXUS_E2E_AGENT_BIN` first (see [`bins`]).
//!
//! Process handling is synchronous (std::process) so it works from sync and async tests
//! alike; starting or stopping blocks the calling thread for at most a few seconds.
//!
//! # Layout
//! - [`bench`]: the benchmarks' shared parts (signed events, publishers, MQTT, CPU, machine,
//!   simulated members).
//! - [`bins`]: finding nats-server, mosquitto and its clients, nexus-agent.
//! - [`nats`]: [`NatsServer`], a JetStream-enabled nats-server on a port it chose.
//! - [`cluster`]: [`NatsCluster`], JetStream servers routed into a cluster (a clustered
//!   root); one can be SIGKILLed and restarted, a stream's leader found or stepped down.
//! - [`mosquitto`]: [`Mosquitto`], a persistent mosquitto broker on a free port.
//! - [`agent`]: [`AgentProcess`] (`nexus-agent run`) and [`keygen`].
//! - [`contract`]: envelopes against the event registry; the AsyncAPI document through the
//!   official parser.
//! - [`examples`]: [`examples::ExampleFleet`], the fleet of `config/examples/*.toml` as shipped.
//! - [`fleet`]: [`Fleet`], root + hub + member with keys and CLI-issued tokens.
//! - [`landing`]: a member-like uplink into a hub's ingress; readers of the root's landing.
//! - [`leaf`]: [`leaf::LeafSite`], a member's box server as a leaf node of the hub's.
//! - [`prometheus`]: [`Prometheus`], a real Prometheus scraping the agents' `/metrics`;
//!   [`prometheus::http_get`].
//! - [`proxy`]: [`Proxy`], a TCP proxy that can be frozen (a half-open link, lost acks).
//! - [`wait`]: [`wait_until`], [`assert_eventually!`], [`collect_until`], [`payload_json`],
//!   [`request_answered`].
//! - `process`: the owned-child plumbing all of them share (signals, bounded waits, logs).

pub mod agent;
pub mod bench;
pub mod bins;
pub mod browser;
pub mod cluster;
pub mod contract;
pub mod examples;
pub mod fleet;
pub mod landing;
pub mod leaf;
pub mod mosquitto;
pub mod nats;
mod process;
pub mod prometheus;
pub mod proxy;
pub mod releases;
pub mod wait;

pub use agent::{agent_cli, keygen, AgentProcess, Launch, LogsOnPanic};
pub use bins::{
    agent_bin, mosquitto_bin, mosquitto_client_bin, nats_server_bin, prometheus_bin, INSTALL_HINT,
};
pub use browser::Browser;
pub use cluster::NatsCluster;
pub use fleet::{Fleet, NodeKey};
pub use mosquitto::Mosquitto;
pub use nats::{NatsServer, NatsServerBuilder};
pub use process::pid_exists;
pub use prometheus::Prometheus;
pub use proxy::Proxy;
pub use wait::{
    collect_until, payload_json, request_answered, wait_until, Outcome, Seen, DEFAULT_DEADLINE,
};
