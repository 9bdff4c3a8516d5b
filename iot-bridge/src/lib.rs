//! MQTT sensor data → `iot.sensor_data@1` envelopes.
//!
//! This crate will own the MQTT client (rumqttc), the topic/payload mapping rules and the
//! acknowledgement of QoS 1 messages after their envelopes are durable. It must not know
//! about NATS, tiers or tokens: it hands envelopes to the federation's outbox.
//!
//! Nothing is implemented here yet (the IoT bridge is its own work item); the crate exists
//! so that the workspace layout is final.
