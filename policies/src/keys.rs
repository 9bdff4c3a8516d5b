//! Ed25519 node keys and their text forms.
//!
//! Text forms (what configs, key files and tokens carry):
//! - public key: `ed25519:` followed by the 32 key bytes in unpadded base64url (43 chars);
//! - secret key file: `ed25519-secret:` followed by the 32-byte seed in unpadded base64url,
//!   one line.
//!
//! Weak (small-order) public keys are refused wherever a key is parsed, and signatures are
//! checked with `verify_strict` only.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::KeyError;

/// How the text form of a public key starts. Other crates use it to tell a public key
/// from a path, or a key file from a token, before parsing.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// How a secret key file starts. Other crates use it to refuse a secret key where
/// something else is expected without ever showing it.
pub const SECRET_KEY_PREFIX: &str = "ed25519-secret:";

/// A node's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

/// A node's secret key. Its bytes are zeroized on drop and never printed.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

/// An Ed25519 signature over exact bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

impl PublicKey {
    /// Parses the `ed25519:…` text form, refusing weak keys.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let body = text
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(KeyError::MissingPrefix {
                expected: PUBLIC_KEY_PREFIX,
            })?;
        let bytes = decode_32(body)?;
        Self::from_bytes(&bytes)
    }

    /// Builds a key from its 32 raw bytes, refusing weak keys.
    ///
    /// Decompressing the point costs about as much as a third of a signature check, and a
    /// tier parses the signer of every event it receives, mostly the same few keys: keys
    /// already parsed come from [`KeyMemo`].
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let memo = KeyMemo::shared();
        if let Some(key) = memo.get(bytes) {
            return Ok(key);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint)?;
        if key.is_weak() {
            return Err(KeyError::Weak);
        }
        let key = Self(key);
        memo.put(*bytes, key);
        Ok(key)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks `signature` over exactly `message` (strict: no malleable or weak-key forms).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        self.0
            .verify_strict(message, &signature.0)
            .map_err(|_| KeyError::BadSignature)
    }
}

/// The keys parsed lately, by their bytes: two generations of at most
/// [`KeyMemo::GENERATION`] keys each (about 200 bytes a key, so at most ~1.6 MiB). A key is
/// looked up in the current generation, then in the previous one (and moved up); when the
/// current one is full it becomes the previous one. Only keys that parsed are remembered,
/// and a key's parse depends on its bytes alone, so a remembered key is what parsing again
/// would give.
struct KeyMemo {
    generation: usize,
    generations: Mutex<[HashMap<[u8; 32], PublicKey>; 2]>,
}

impl KeyMemo {
    const GENERATION: usize = 4_096;

    fn new(generation: usize) -> Self {
        Self {
            generation,
            generations: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    fn shared() -> &'static Self {
        static MEMO: OnceLock<KeyMemo> = OnceLock::new();
        MEMO.get_or_init(|| Self::new(Self::GENERATION))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        generations[0].len() + generations[1].len()
    }

    fn get(&self, bytes: &[u8; 32]) -> Option<PublicKey> {
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = generations[0].get(bytes) {
            return Some(*key);
        }
        let key = generations[1].remove(bytes)?;
        self.insert(&mut generations, *bytes, key);
        Some(key)
    }

    fn put(&self, bytes: [u8; 32], key: PublicKey) {
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        self.insert(&mut generations, bytes, key);
    }

    fn insert(
        &self,
        generations: &mut [HashMap<[u8; 32], PublicKey>; 2],
        bytes: [u8; 32],
        key: PublicKey,
    ) {
        if generations[0].len() >= self.generation {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(bytes, key);
    }
}

/// Verifies many signatures at once (roughly twice as fast per signature as one by one).
/// `Ok` only if every signature verifies over its message with its key; on `Err`, verify
/// individually to find the culprits. Keys reaching here were parsed by [`PublicKey`], so
/// weak keys (which batch verification does not check) are already refused.
pub fn verify_batch(items: &[(&[u8], &Signature, &PublicKey)]) -> Result<(), KeyError> {
    let messages: Vec<&[u8]> = items.iter().map(|(m, _, _)| *m).collect();
    let signatures: Vec<ed25519_dalek::Signature> = items.iter().map(|(_, s, _)| s.0).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(_, _, k)| k.0).collect();
    // The one place batch verification is meant for (clippy.toml disallows it elsewhere).
    #[allow(clippy::disallowed_methods)]
    let verified = ed25519_dalek::verify_batch(&messages, &signatures, &keys);
    verified.map_err(|_| KeyError::BadSignature)
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.0.as_bytes())
        )
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl SecretKey {
    /// Builds a key from a 32-byte seed (the caller supplies the randomness: this crate
    /// does no I/O). Refuses a seed whose public key would be weak.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let key = SigningKey::from_bytes(seed);
        if key.verifying_key().is_weak() {
            return Err(KeyError::Weak);
        }
        Ok(Self(key))
    }

    /// Parses the contents of a secret key file.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let body = text
            .trim()
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or(KeyError::MissingPrefix {
                expected: SECRET_KEY_PREFIX,
            })?;
        let seed = Zeroizing::new(decode_32(body)?);
        Self::from_seed(&seed)
    }

    /// The contents of a secret key file (one line, newline-terminated).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.0.to_bytes());
        Zeroizing::new(format!(
            "{SECRET_KEY_PREFIX}{}\n",
            URL_SAFE_NO_PAD.encode(*seed)
        ))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs exactly `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretKey(public: {}, secret: <redacted>)",
            self.public()
        )
    }
}

impl Signature {
    /// Parses the unpadded base64url text form (86 chars).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 64];
        let n = URL_SAFE_NO_PAD
            .decode_slice(text.trim(), &mut bytes)
            .map_err(|_| KeyError::BadEncoding)?;
        if n != 64 {
            return Err(KeyError::BadLength {
                expected: 64,
                got: n,
            });
        }
        Ok(Self(ed25519_dalek::Signature::from_bytes(&bytes)))
    }

    /// A signature from its 64 raw bytes (any value: validity is decided by `verify`).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Self(ed25519_dalek::Signature::from_bytes(bytes))
    }

    /// The 64 raw bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0.to_bytes()))
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({self})")
    }
}

fn decode_32(text: &str) -> Result<[u8; 32], KeyError> {
    // Decode into a larger buffer so that an over-long input is reported as a length error.
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = URL_SAFE_NO_PAD
        .decode_slice(text, &mut *buf)
        .map_err(|_| KeyError::BadEncoding)?;
    if n != 32 {
        return Err(KeyError::BadLength {
            expected: 32,
            got: n,
        });
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&buf[..32]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("seed gives a strong key")
    }

    #[test]
    fn public_key_text_form_round_trips() {
        let public = key(7).public();
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.len(), "ed25519:".len() + 43);
        assert_eq!(PublicKey::parse(&text), Ok(public));
    }

    #[test]
    fn secret_key_file_round_trips_and_debug_hides_the_secret() {
        let secret = key(9);
        let text = secret.to_file_text();
        let parsed = SecretKey::parse(&text).expect("parses");
        assert_eq!(parsed.public(), secret.public());
        let seed_text = text
            .trim()
            .trim_start_matches("ed25519-secret:")
            .to_string();
        assert!(!format!("{parsed:?}").contains(&seed_text));
    }

    #[test]
    fn a_signature_verifies_only_over_the_exact_bytes_and_key() {
        let secret = key(1);
        let sig = secret.sign(b"body");
        assert_eq!(secret.public().verify(b"body", &sig), Ok(()));
        assert_eq!(
            secret.public().verify(b"body ", &sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            key(2).public().verify(b"body", &sig),
            Err(KeyError::BadSignature)
        );
        let reparsed = Signature::parse(&sig.to_string()).expect("parses");
        assert_eq!(reparsed, sig);
    }

    #[test]
    fn a_batch_verifies_only_if_every_signature_does() {
        let keys: Vec<SecretKey> = (1..=8).map(key).collect();
        let messages: Vec<Vec<u8>> = (0..8u8).map(|n| vec![n; 40]).collect();
        let sigs: Vec<Signature> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
        let publics: Vec<PublicKey> = keys.iter().map(SecretKey::public).collect();
        let items: Vec<(&[u8], &Signature, &PublicKey)> = messages
            .iter()
            .zip(&sigs)
            .zip(&publics)
            .map(|((m, s), k)| (m.as_slice(), s, k))
            .collect();
        assert_eq!(verify_batch(&items), Ok(()));
        let mut bad = items.clone();
        bad[3].0 = b"tampered";
        assert_eq!(verify_batch(&bad), Err(KeyError::BadSignature));
    }

    #[test]
    fn weak_public_keys_are_refused() {
        // The identity point (a small-order point) encoded as 0x01 followed by zeros.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::Weak));
        let text = format!("ed25519:{}", URL_SAFE_NO_PAD.encode(identity));
        assert_eq!(PublicKey::parse(&text), Err(KeyError::Weak));
    }

    #[test]
    fn a_remembered_key_is_the_parsed_one_and_a_refused_one_is_refused_every_time() {
        let public = key(9).public();
        let first = PublicKey::from_bytes(&public.to_bytes()).expect("strong key");
        let again = PublicKey::from_bytes(&public.to_bytes()).expect("remembered");
        assert_eq!(first, public);
        assert_eq!(again, public);
        assert!(KeyMemo::shared().get(&public.to_bytes()).is_some());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for _ in 0..2 {
            assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::Weak));
        }
        assert!(KeyMemo::shared().get(&identity).is_none());
    }

    #[test]
    fn the_key_memo_keeps_at_most_two_generations_and_moves_a_used_key_up() {
        let memo = KeyMemo::new(4);
        let keys: Vec<PublicKey> = (1..=10).map(|n| key(n).public()).collect();
        for k in &keys[..4] {
            memo.put(k.to_bytes(), *k);
        }
        // The fifth key starts a generation: the first four become the previous one.
        memo.put(keys[4].to_bytes(), keys[4]);
        assert_eq!(memo.len(), 5);
        // Using key 0 moves it into the current generation, so it outlives the next turn.
        assert_eq!(memo.get(&keys[0].to_bytes()), Some(keys[0]));
        for k in &keys[5..8] {
            memo.put(k.to_bytes(), *k);
        }
        // Current {4, 0, 5, 6} was full when 7 came: it became the previous one.
        assert!(memo.len() <= 8);
        assert_eq!(memo.get(&keys[0].to_bytes()), Some(keys[0]));
        assert_eq!(memo.get(&keys[1].to_bytes()), None);
        for k in &keys {
            memo.put(k.to_bytes(), *k);
            assert!(memo.len() <= 8);
        }
    }

    #[test]
    fn malformed_key_texts_get_precise_errors() {
        assert_eq!(
            PublicKey::parse("abc"),
            Err(KeyError::MissingPrefix {
                expected: "ed25519:"
            })
        );
        assert_eq!(PublicKey::parse("ed25519:!!!"), Err(KeyError::BadEncoding));
        assert_eq!(
            PublicKey::parse("ed25519:AAAA"),
            Err(KeyError::BadLength {
                expected: 32,
                got: 3
            })
        );
        assert_eq!(
            SecretKey::parse("ed25519:AAAA").map(|k| k.public()),
            Err(KeyError::MissingPrefix {
                expected: "ed25519-secret:"
            })
        );
        assert_eq!(
            Signature::parse("AAAA"),
            Err(KeyError::BadLength {
                expected: 64,
                got: 3
            })
        );
    }
}
