//! An archived object: a fixed header, then the payload compressed with zstd and encrypted
//! with AES-256-GCM.
//!
//! ```text
//! offset size field
//!      0    4 magic      "TPA1"
//!      4    1 kind       1: WAL records, 2: base backup
//!      5    1 codec      1: zstd
//!      6    2 reserved   zero
//!      8    8 first_lsn  little-endian
//!     16    8 last_lsn   little-endian (a base backup: its LSN in both)
//!     24    8 key id     the first 8 bytes of the key's SHA-256
//!     32   12 nonce      random per object
//!     44    - sealed     the compressed payload encrypted, then the 16-byte GCM tag
//! ```
//!
//! The tag authenticates bytes 0..32 and the cluster's name as well: an object moved to
//! another range, kind or cluster does not open. A WAL object's payload is WAL records as
//! they lie in a segment (each with its own CRC-32C); a base backup's is the store's
//! snapshot.

use themis_wal::Lsn;

use crate::error::PitrError;
use crate::keys::{KeyId, Keyring};

/// Bytes before the sealed payload.
pub const HEADER_LEN: usize = 44;
const MAGIC: &[u8; 4] = b"TPA1";
const CODEC_ZSTD: u8 = 1;
/// The most bytes a payload may decompress to (a base backup of a large store).
pub const MAX_PAYLOAD: usize = 16 << 30;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// WAL records for an LSN range.
    Wal,
    /// A base backup (the store's snapshot) at an LSN.
    Base,
}

impl Kind {
    const fn code(self) -> u8 {
        match self {
            Kind::Wal => 1,
            Kind::Base => 2,
        }
    }
}

/// An object's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it holds.
    pub kind: Kind,
    /// The first LSN.
    pub first_lsn: Lsn,
    /// The last LSN.
    pub last_lsn: Lsn,
    /// The key it is encrypted with.
    pub key: KeyId,
}

fn aad(header: &[u8], cluster: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + cluster.len());
    aad.extend_from_slice(&header[..32]);
    aad.extend_from_slice(cluster.as_bytes());
    aad
}

/// Seals `payload` as an object of `kind` for `first..=last`.
#[must_use]
pub fn seal(
    keyring: &Keyring,
    cluster: &str,
    kind: Kind,
    first_lsn: Lsn,
    last_lsn: Lsn,
    payload: &[u8],
    level: i32,
) -> Vec<u8> {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = kind.code();
    header[5] = CODEC_ZSTD;
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    header[16..24].copy_from_slice(&last_lsn.to_le_bytes());
    header[24..32].copy_from_slice(&keyring.current().0);
    let mut body = zstd::bulk::compress(payload, level).expect("zstd compresses any input");
    let nonce = keyring.seal(&aad(&header, cluster), &mut body);
    header[32..44].copy_from_slice(&nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    out
}

/// Reads an object's header without opening it.
pub fn header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < HEADER_LEN + 16 {
        return Err(format!("{} bytes, shorter than a header and a tag", bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err("not an archive object (bad magic)".into());
    }
    let kind = match bytes[4] {
        1 => Kind::Wal,
        2 => Kind::Base,
        k => return Err(format!("unknown kind {k}")),
    };
    if bytes[5] != CODEC_ZSTD {
        return Err(format!("unknown codec {}", bytes[5]));
    }
    if bytes[6..8] != [0, 0] {
        return Err("reserved bytes are not zero".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (first_lsn, last_lsn) = (u64_at(8), u64_at(16));
    if first_lsn > last_lsn {
        return Err(format!("LSN range {first_lsn}..={last_lsn} is backwards"));
    }
    Ok(Header { kind, first_lsn, last_lsn, key: KeyId(bytes[24..32].try_into().expect("8 bytes")) })
}

/// Opens an object: checks its header, authenticates and decrypts it with the keyring,
/// and decompresses it. `restorable_to` is what a damaged object's error reports as the
/// latest reachable LSN.
pub fn open(
    keyring: &Keyring,
    cluster: &str,
    object: &str,
    bytes: &[u8],
    restorable_to: Lsn,
) -> Result<(Header, Vec<u8>), PitrError> {
    let damaged = |first_lsn, last_lsn, message: String| PitrError::Damaged {
        object: object.to_string(),
        first_lsn,
        last_lsn,
        message,
        restorable_to,
    };
    let header = header(bytes).map_err(|m| damaged(0, 0, m))?;
    let damaged = |m: String| damaged(header.first_lsn, header.last_lsn, m);
    if !keyring.holds(header.key) {
        return Err(PitrError::UnknownKey {
            object: object.to_string(),
            key_id: header.key.to_string(),
            known: keyring.ids().join(", "),
        });
    }
    let nonce: [u8; 12] = bytes[32..44].try_into().expect("12 bytes");
    let mut sealed = bytes[HEADER_LEN..].to_vec();
    let plain = match keyring.open(header.key, nonce, &aad(bytes, cluster), &mut sealed) {
        Some(Ok(plain)) => plain,
        Some(Err(())) => {
            return Err(damaged(
                "its authentication tag does not verify (altered bytes, another cluster's object, or the wrong key)".into(),
            ));
        }
        None => unreachable!("checked that the keyring holds the key"),
    };
    let size = zstd::bulk::Decompressor::upper_bound(plain).unwrap_or(MAX_PAYLOAD).min(MAX_PAYLOAD);
    let payload = zstd::bulk::decompress(plain, size).map_err(|e| damaged(format!("zstd: {e}")))?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_every_kind_of_damage_is_refused() {
        let ring = Keyring::new([7; 32]);
        let payload = b"records records records".repeat(50);
        let sealed = seal(&ring, "prod", Kind::Wal, 10, 20, &payload, 3);
        let (h, back) = open(&ring, "prod", "wal/10", &sealed, 9).unwrap();
        assert_eq!((h.kind, h.first_lsn, h.last_lsn), (Kind::Wal, 10, 20));
        assert_eq!(back, payload);
        let refuse = |bytes: &[u8], cluster: &str, ring: &Keyring| {
            open(ring, cluster, "wal/10", bytes, 9).unwrap_err().to_string()
        };
        let mut flipped = sealed.clone();
        flipped[60] ^= 1;
        assert!(refuse(&flipped, "prod", &ring).contains("authentication tag"));
        let mut moved = sealed.clone();
        moved[16] = 99; // another range
        assert!(refuse(&moved, "prod", &ring).contains("authentication tag"));
        assert!(refuse(&sealed, "staging", &ring).contains("authentication tag"), "another cluster's object");
        assert!(refuse(&sealed[..30], "prod", &ring).contains("shorter than a header"));
        assert!(refuse(&sealed, "prod", &Keyring::new([8; 32])).contains("which the keyring does not hold"));
        let message = refuse(&flipped, "prod", &ring);
        assert!(message.contains("wal/10 (LSNs 10..=20)") && message.contains("up to LSN 9"), "{message}");
    }
}
