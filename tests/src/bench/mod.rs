//! The benchmarks' shared parts (`tests/benches/*.rs`, `./dev bench`): signed events and
//! the JetStream publishers that play a member's uplink ([`events`]), a local app on the
//! member's NATS ([`app`]), MQTT publishers and nats-server's MQTT gateway ([`mqtt`]),
//! latency summaries and CPU accounting ([`stats`]), what a run ran on ([`machine`]), and
//! many simulated members against one hub ([`members`]).
//!
//! Harness code: what fails panics with what it saw, which is the benchmark's failure
//! report.

pub mod app;
pub mod events;
pub mod machine;
pub mod members;
pub mod mqtt;
pub mod stats;
