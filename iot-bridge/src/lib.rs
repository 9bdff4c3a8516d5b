//! MQTT sensor data → `iot.sensor_data@1` envelopes.
//!
//! This crate owns the MQTT client (rumqttc), the topic/payload mapping rules and the
//! acknowledgement of QoS 1 messages after their envelopes are durable in the outbox. It
//! must not know about NATS, tiers or tokens: it seals envelopes (`nexus-wire`), hands them
//! to the outbox and refused messages to the dead-letter store (`nexus-store`); the uplink
//! takes them from there. It does not depend on `nexus-federation`, so no NATS client is
//! linked into it (`tests/tests/layering.rs` checks).
//!
//! # Layout
//! - `template`: topic templates (`zigbee2mqtt/{sensor_id}`), compiled once from the
//!   config's parse (`nexus_config::TopicTemplate`, the rule `check` applies), matched
//!   without allocation.
//! - `mapping`: the `[[iot.sensors]]` rules: topic + payload → readings, or a [`Reason`]
//!   to refuse. Pure (no I/O, no clock).
//! - `sensor_data`: the `iot.sensor_data@1` payload, its schema check, the envelope.
//! - `mqtt`: MQTT 3.1.1 and MQTT 5 (rumqttc's two clients) behind one small trait.
//! - `bridge`: the rumqttc connection (persistent session, manual acks, reconnect backoff,
//!   resubscribe on ConnAck), the bounded queue and the worker that stores, then acks.

pub mod bridge;
pub mod mapping;
mod mqtt;
pub mod sensor_data;
pub mod template;

pub use bridge::{Bridge, BridgeError, Stats};
pub use mapping::{Reading, Reason, Reject, Rules};
