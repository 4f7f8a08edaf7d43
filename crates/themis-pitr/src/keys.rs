//! Encryption at rest: AES-256-GCM keys by id.
//!
//! A key is 32 bytes, read from a file (raw, or 64 hex digits) or an environment variable
//! (64 hex digits). Its id is the first 8 bytes of the SHA-256 of the key, as 16 hex
//! digits: naming the key in each object's header and manifest entry without revealing it.
//! The keyring encrypts with its current key and decrypts with any key it holds, so keys
//! rotate without rewriting old objects: add the new key as current and keep the old ones.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::error::PitrError;

/// A key's id: 8 bytes of the SHA-256 of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl KeyId {
    /// Parses 16 hex digits.
    #[must_use]
    pub fn parse(text: &str) -> Option<KeyId> {
        if text.len() != 16 {
            return None;
        }
        let mut id = [0u8; 8];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KeyId(id))
    }
}

struct Key {
    aead: LessSafeKey,
}

/// Keys by id, one of them current.
pub struct Keyring {
    keys: BTreeMap<KeyId, Key>,
    current: KeyId,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys themselves are never printed.
        f.debug_struct("Keyring")
            .field("current", &self.current.to_string())
            .field("keys", &self.ids())
            .finish_non_exhaustive()
    }
}

fn parse_key(source_name: &str, bytes: &[u8]) -> Result<[u8; 32], PitrError> {
    let bad = |message: String| PitrError::Key { source_name: source_name.to_string(), message };
    if bytes.len() == 32 {
        return Ok(bytes.try_into().expect("32 bytes"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| bad(format!("{} bytes; a key is 32 raw bytes or 64 hex digits", bytes.len())))?;
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("{} characters; a key is 32 raw bytes or 64 hex digits", text.len())));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(key)
}

impl Keyring {
    /// A keyring of one key, current.
    #[must_use]
    pub fn new(key: [u8; 32]) -> Keyring {
        let mut ring = Keyring { keys: BTreeMap::new(), current: KeyId([0; 8]), rng: SystemRandom::new() };
        ring.current = ring.add(key);
        ring
    }

    /// Reads a key from a file: 32 raw bytes or 64 hex digits.
    pub fn key_from_file(path: &Path) -> Result<[u8; 32], PitrError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| PitrError::Key { source_name: name.clone(), message: e.to_string() })?;
        parse_key(&name, &bytes)
    }

    /// Reads a key from environment variable `var`: 64 hex digits.
    pub fn key_from_env(var: &str) -> Result<[u8; 32], PitrError> {
        let name = format!("${var}");
        let text = std::env::var(var)
            .map_err(|e| PitrError::Key { source_name: name.clone(), message: e.to_string() })?;
        parse_key(&name, text.as_bytes())
    }

    /// Adds a key for decrypting (an older one); returns its id.
    pub fn add(&mut self, key: [u8; 32]) -> KeyId {
        let digest = Sha256::digest(key);
        let id = KeyId(digest[..8].try_into().expect("8 bytes"));
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"));
        self.keys.insert(id, Key { aead });
        id
    }

    /// The key new objects are encrypted with.
    #[must_use]
    pub fn current(&self) -> KeyId {
        self.current
    }

    /// Every key's id.
    #[must_use]
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().map(ToString::to_string).collect()
    }

    /// Encrypts `plain` in place under the current key, binding `aad`; returns the nonce.
    /// `plain` grows by the 16-byte tag.
    pub(crate) fn seal(&self, aad: &[u8], plain: &mut Vec<u8>) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system random source works");
        let key = &self.keys[&self.current].aead;
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), plain)
            .expect("AES-GCM seals any length below 64 GiB");
        nonce
    }

    /// Decrypts `sealed` (ciphertext and tag) in place; `None` when the key is unknown,
    /// `Some(Err)` when the tag does not verify.
    pub(crate) fn open<'a>(
        &self,
        key: KeyId,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Option<Result<&'a mut [u8], ()>> {
        let key = &self.keys.get(&key)?.aead;
        Some(key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed).map_err(|_| ()))
    }

    pub(crate) fn holds(&self, key: KeyId) -> bool {
        self.keys.contains_key(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_raw_or_hex_seal_and_open_and_name_what_is_wrong() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = parse_key("k", hex.as_bytes()).unwrap();
        assert_eq!(parse_key("k", &key).unwrap(), key);
        assert!(parse_key("k.key", b"short").unwrap_err().to_string().contains("k.key: 5 characters"));
        let ring = Keyring::new(key);
        let id = ring.current();
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
        let mut data = b"hello".to_vec();
        let nonce = ring.seal(b"header", &mut data);
        assert_eq!(data.len(), 5 + 16);
        let mut copy = data.clone();
        assert_eq!(ring.open(id, nonce, b"header", &mut copy).unwrap().unwrap(), b"hello");
        let mut copy = data.clone();
        assert!(ring.open(id, nonce, b"other", &mut copy).unwrap().is_err(), "the header is bound");
        data[0] ^= 1;
        assert!(ring.open(id, nonce, b"header", &mut data).unwrap().is_err());
        assert!(ring.open(KeyId([9; 8]), nonce, b"header", &mut data).is_none());
    }
}
