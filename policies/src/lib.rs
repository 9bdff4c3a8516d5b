//! The trust core of nexus-agent: node keys and signatures (later: prefix ACLs and
//! capability tokens).
//!
//! This crate does no I/O, reads no clock and spawns nothing: bytes, keys and time are
//! arguments. That makes it the easiest crate to test and fuzz, and the one that must
//! never be wrong.
//!
//! # Layout
//! - `keys`: Ed25519 public/secret keys, signatures and their text forms.
//! - `error`: the error enums, comparable with `==` in tests.

pub mod error;
pub mod keys;

pub use error::KeyError;
pub use keys::{PublicKey, SecretKey, Signature};
