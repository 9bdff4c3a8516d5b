//! Errors of the trust core. They derive `PartialEq` so that tests assert exact variants.

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not start with the expected prefix.
    #[error("expected text starting with `{expected}`")]
    MissingPrefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The text is not unpadded base64url.
    #[error("not valid unpadded base64url")]
    BadEncoding,
    /// The decoded bytes have the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    BadLength {
        /// Expected byte count.
        expected: usize,
        /// Decoded byte count.
        got: usize,
    },
    /// The bytes are not a point on the curve.
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
    /// A small-order (weak) key, a known forgery vector.
    #[error("weak (small-order) Ed25519 key refused")]
    Weak,
    /// The signature does not verify over the given bytes with the given key.
    #[error("signature does not verify")]
    BadSignature,
}
