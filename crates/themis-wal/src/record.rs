//! Record framing: the hand-written, little-endian layout of one entry on disk.
//!
//! ```text
//! offset size field
//!      0    4 len       bytes after this 8-byte prefix: 36 + payload length
//!      4    4 crc       CRC32C (Castagnoli) of bytes 0..4 and 8..8+len
//!      8    8 lsn
//!     16    8 term
//!     24    8 hlc time  (physical ms << 16 | logical)
//!     32    8 hlc node
//!     40    1 kind      never 0
//!     41    3 reserved  zero
//!     44    - payload
//! ```
//!
//! The checksum covers the length, so a torn or flipped length is caught like any other
//! byte. Decoding only slices its input: no allocation is sized by a stored length.

use bytes::{BufMut, Bytes};
use themis_clock::{NodeId, Timestamp};

use crate::entry::{Entry, EntryKind, Lsn, NewEntry};

/// Bytes of framing before a record's payload.
pub const RECORD_HEADER_LEN: usize = 44;
/// Bytes of the record counted by `len` that are not payload.
const FIXED_BODY: usize = RECORD_HEADER_LEN - 8;

/// The encoded size of a record with `payload_len` bytes of payload.
#[must_use]
pub const fn encoded_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len
}

/// Appends the record for `entry` at `lsn` to `buf`. The caller has checked the size
/// against the maximum (the length field is a `u32`).
pub fn encode(buf: &mut Vec<u8>, lsn: Lsn, entry: &NewEntry) {
    let start = buf.len();
    let len = (FIXED_BODY + entry.payload.len()) as u32;
    buf.reserve(RECORD_HEADER_LEN + entry.payload.len());
    buf.put_u32_le(len);
    buf.put_u32_le(0);
    buf.put_u64_le(lsn);
    buf.put_u64_le(entry.term);
    buf.put_u64_le(entry.timestamp.raw_time());
    buf.put_u64_le(entry.timestamp.node().0);
    buf.put_slice(&[entry.kind.code(), 0, 0, 0]);
    buf.put_slice(&entry.payload);
    let crc = checksum(&buf[start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C of a whole record (its crc field is skipped).
fn checksum(record: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&record[..4]), &record[8..])
}

/// Why bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end inside the record (a torn write when at the end of a file).
    Truncated {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The length field is below the fixed part or above the maximum record size.
    BadLength {
        /// The stored length (whole record, prefix included).
        size: u64,
        /// The maximum record size.
        max: usize,
    },
    /// The checksum does not match.
    Checksum {
        /// Stored in the record.
        stored: u32,
        /// Computed over its bytes.
        computed: u32,
    },
    /// Kind 0 or non-zero reserved bytes under a valid checksum: written by something else.
    Invalid(&'static str),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Truncated { needed, available } => {
                write!(f, "record needs {needed} bytes but only {available} remain")
            }
            RecordError::BadLength { size, max } => {
                write!(f, "record length {size} is outside {RECORD_HEADER_LEN}..={max}")
            }
            RecordError::Checksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            RecordError::Invalid(what) => f.write_str(what),
        }
    }
}

/// Decodes the record at `offset` of `buf`, returning the entry (its payload a slice of
/// `buf`) and the record's size. Records above `max_record` bytes are rejected unread.
pub fn decode(buf: &Bytes, offset: usize, max_record: usize) -> Result<(Entry, usize), RecordError> {
    let rest = buf.get(offset..).unwrap_or_default();
    if rest.len() < 8 {
        return Err(RecordError::Truncated { needed: 8, available: rest.len() });
    }
    let len = u64::from(u32_at(rest, 0));
    let size = len + 8;
    if size < RECORD_HEADER_LEN as u64 || size > max_record as u64 {
        return Err(RecordError::BadLength { size, max: max_record });
    }
    // `size <= max_record`, a usize, so the conversion is exact.
    let size = size as usize;
    if rest.len() < size {
        return Err(RecordError::Truncated { needed: size, available: rest.len() });
    }
    let record = &rest[..size];
    let stored = u32_at(record, 4);
    let computed = checksum(record);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    let kind = EntryKind::new(record[40]).ok_or(RecordError::Invalid("record kind 0"))?;
    if record[41..44] != [0, 0, 0] {
        return Err(RecordError::Invalid("reserved record bytes are not zero"));
    }
    let entry = Entry {
        lsn: u64_at(record, 8),
        term: u64_at(record, 16),
        timestamp: Timestamp::from_raw(u64_at(record, 24), NodeId(u64_at(record, 32))),
        kind,
        payload: buf.slice(offset + RECORD_HEADER_LEN..offset + size),
    };
    Ok((entry, size))
}

/// The LSN field of a record that [`decode`] accepted (no checks).
pub(crate) fn lsn_of(record: &[u8]) -> Lsn {
    u64_at(record, 8)
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn sample(payload: &'static [u8]) -> NewEntry {
        NewEntry {
            term: 7,
            timestamp: Timestamp::from_parts(1_700_000_000_000, 3, NodeId(9)).unwrap(),
            kind: EntryKind::CONFIG,
            payload: Bytes::from_static(payload),
        }
    }

    fn encoded(lsn: Lsn, payload: &'static [u8]) -> Bytes {
        let mut buf = Vec::new();
        encode(&mut buf, lsn, &sample(payload));
        Bytes::from(buf)
    }

    #[test]
    fn round_trips_and_payload_is_a_slice_of_the_buffer() {
        let buf = encoded(42, b"hello");
        assert_eq!(buf.len(), encoded_len(5));
        let (entry, size) = decode(&buf, 0, MAX).unwrap();
        assert_eq!(size, buf.len());
        assert_eq!((entry.lsn, entry.term, entry.kind), (42, 7, EntryKind::CONFIG));
        assert_eq!(entry.timestamp, sample(b"").timestamp);
        assert_eq!(&entry.payload[..], b"hello");
        assert_eq!(entry.payload.as_ptr(), buf[RECORD_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = encoded(1, b"payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&Bytes::from(bad), 0, MAX).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn every_prefix_is_truncated_not_a_panic() {
        let buf = encoded(1, b"payload");
        for cut in 0..buf.len() {
            let err = decode(&buf.slice(..cut), 0, MAX).unwrap_err();
            assert!(matches!(err, RecordError::Truncated { .. }), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn lengths_outside_the_bounds_are_refused_before_reading() {
        let mut huge = encoded(1, b"x").to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&Bytes::from(huge), 0, MAX).unwrap_err();
        assert_eq!(err, RecordError::BadLength { size: u64::from(u32::MAX) + 8, max: MAX });
        let zero = Bytes::from(vec![0u8; 64]);
        assert!(matches!(decode(&zero, 0, MAX), Err(RecordError::BadLength { size: 8, .. })));
        let buf = encoded(1, b"0123456789");
        assert!(matches!(decode(&buf, 0, 50), Err(RecordError::BadLength { .. })));
        assert!(matches!(decode(&buf, 1000, MAX), Err(RecordError::Truncated { available: 0, .. })));
    }
}
