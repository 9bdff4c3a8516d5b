//! CBOR helpers for untrusted bytes: size cap first, typed structs only, a recursion
//! limit, and the whole input consumed. Byte fields are CBOR byte strings.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserializer, Serialize, Serializer};

use crate::error::TokenError;

/// Nesting limit handed to ciborium (our structures nest three deep).
pub(crate) const RECURSION_LIMIT: usize = 16;

/// Decodes one CBOR item of type `T` from exactly `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    max: usize,
) -> Result<T, TokenError> {
    if bytes.len() > max {
        return Err(TokenError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
        .map_err(|e| TokenError::Malformed(format!("{what}: {e}")))?;
    if !reader.is_empty() {
        return Err(TokenError::TrailingBytes);
    }
    Ok(value)
}

/// Encodes `value` as CBOR.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and our types serialize without error.
    if let Err(e) = ciborium::ser::into_writer(value, &mut out) {
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    out
}

/// A fixed-size byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteArray<const N: usize>(pub [u8; N]);

/// A borrowed byte string (for encoding).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BytesRef<'a>(pub &'a [u8]);

/// An owned byte string of any length (bounded by the input size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ByteBuf(pub Vec<u8>);

impl<const N: usize> Serialize for ByteArray<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct BytesVisitor(Option<usize>);

impl serde::de::Visitor<'_> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "a byte string of {n} bytes"),
            None => f.write_str("a byte string"),
        }
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.visit_byte_buf(v.to_vec())
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        match self.0 {
            Some(n) if v.len() != n => Err(E::invalid_length(v.len(), &self)),
            _ => Ok(v),
        }
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for ByteArray<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_byte_buf(BytesVisitor(Some(N)))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&v);
        Ok(Self(out))
    }
}

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BytesVisitor(None)).map(Self)
    }
}

/// A signed document's wire form: `{ "doc": bstr, "sig": bstr(64) }`, the signature over
/// the exact `doc` bytes (desired config, release manifests, rollouts).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedWire {
    doc: ByteBuf,
    sig: ByteArray<64>,
}

#[derive(Serialize)]
struct SignedWireRef<'a> {
    doc: BytesRef<'a>,
    sig: ByteArray<64>,
}

/// Wraps a signed document body and its signature.
pub(crate) fn seal(body: &[u8], sig: &crate::keys::Signature) -> Vec<u8> {
    encode(&SignedWireRef {
        doc: BytesRef(body),
        sig: ByteArray(sig.to_bytes()),
    })
}

/// The body and signature of a signed document (untrusted: at most `max` bytes).
pub(crate) fn unseal(
    bytes: &[u8],
    what: &'static str,
    max: usize,
) -> Result<(Vec<u8>, crate::keys::Signature), TokenError> {
    let wire: SignedWire = decode(bytes, what, max)?;
    Ok((wire.doc.0, crate::keys::Signature::from_bytes(&wire.sig.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: ByteArray<2>,
        b: ByteBuf,
    }

    #[test]
    fn byte_fields_are_cbor_byte_strings_and_round_trip() {
        let t = T {
            a: ByteArray([1, 2]),
            b: ByteBuf(vec![9; 5000]),
        };
        let bytes = encode(&t);
        // map(2), "a", bytes(2) 01 02
        assert_eq!(&bytes[..6], &[0xa2, 0x61, b'a', 0x42, 1, 2]);
        assert_eq!(decode::<T>(&bytes, "t", 1 << 20), Ok(t));
    }

    #[test]
    fn untrusted_input_rules_are_enforced() {
        let t = T {
            a: ByteArray([1, 2]),
            b: ByteBuf(vec![]),
        };
        let mut bytes = encode(&t);
        assert_eq!(
            decode::<T>(&bytes, "t", 3),
            Err(TokenError::TooLarge {
                what: "t",
                len: bytes.len(),
                max: 3
            })
        );
        bytes.push(0);
        assert_eq!(
            decode::<T>(&bytes, "t", 100),
            Err(TokenError::TrailingBytes)
        );
        // An array of ints is not a byte string.
        let wrong = encode(&serde_cbor_like());
        assert!(matches!(
            decode::<T>(&wrong, "t", 100),
            Err(TokenError::Malformed(_))
        ));
        // Deep nesting hits the recursion limit, not the stack.
        let deep = [vec![0x81u8; 10_000], vec![0x00]].concat();
        assert!(matches!(
            decode::<Vec<serde::de::IgnoredAny>>(&deep, "t", 1 << 20),
            Err(TokenError::Malformed(_))
        ));
    }

    fn serde_cbor_like() -> std::collections::BTreeMap<&'static str, Vec<u8>> {
        [("a", vec![1u8, 2]), ("b", vec![])].into_iter().collect()
    }
}
