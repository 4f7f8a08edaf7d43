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

use crate::entry::{Entry, EntryKind, Lsn, LsnRange, NewEntry};

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
#[non_exhaustive]
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
    let size = check(rest, max_record)?;
    let record = &rest[..size];
    let entry = Entry {
        lsn: u64_at(record, 8),
        term: u64_at(record, 16),
        timestamp: Timestamp::from_raw(u64_at(record, 24), NodeId(u64_at(record, 32))),
        kind: EntryKind::new(record[40]).expect("checked"),
        payload: buf.slice(offset + RECORD_HEADER_LEN..offset + size),
    };
    Ok((entry, size))
}

/// Checks the record at the start of `rest` (length, checksum, kind, reserved bytes)
/// and returns its size, without building an entry.
fn check(rest: &[u8], max_record: usize) -> Result<usize, RecordError> {
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
    if EntryKind::new(record[40]).is_none() {
        return Err(RecordError::Invalid("record kind 0"));
    }
    if record[41..44] != [0, 0, 0] {
        return Err(RecordError::Invalid("reserved record bytes are not zero"));
    }
    Ok(size)
}

/// Encoded records, back to back, each checked as [`decode`] checks it and holding
/// consecutive LSNs: a batch the log can append as it is, with no entry built and no
/// record encoded again (a follower appending what its leader shipped). Only
/// [`CheckedRecords::check`] makes one.
#[derive(Debug, Clone)]
pub struct CheckedRecords {
    range: LsnRange,
    bytes: Bytes,
    /// Start of each record within `bytes`.
    offsets: Vec<u32>,
}

/// Why bytes are not a batch of consecutive records; `offset` is within the bytes given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    /// No records at all.
    Empty,
    /// More bytes than a batch's `u32` offsets can address.
    TooLarge {
        /// The bytes given.
        size: usize,
    },
    /// The record at `offset` is damaged or malformed.
    Record {
        /// Where it starts.
        offset: usize,
        /// What is wrong with it.
        error: RecordError,
    },
    /// The record at `offset` does not hold the LSN that follows the one before it.
    Lsn {
        /// Where it starts.
        offset: usize,
        /// The LSN it holds.
        found: Lsn,
        /// The LSN it should hold.
        expected: Lsn,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Empty => f.write_str("no records"),
            BatchError::TooLarge { size } => {
                write!(f, "{size} bytes of records, above the 4 GiB a batch can hold")
            }
            BatchError::Record { offset, error } => write!(f, "record at {offset}: {error}"),
            BatchError::Lsn { offset, found, expected } => {
                write!(f, "record at {offset} holds LSN {found}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for BatchError {}

impl CheckedRecords {
    /// Checks that `bytes` holds whole, undamaged records of at most `max_record` bytes
    /// each, with LSNs from `first` on and no gap. Nothing is copied.
    pub fn check(bytes: Bytes, first: Lsn, max_record: usize) -> Result<CheckedRecords, BatchError> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(BatchError::TooLarge { size: bytes.len() });
        }
        let mut offsets = Vec::with_capacity(bytes.len() / RECORD_HEADER_LEN.max(1));
        let mut at = 0;
        while at < bytes.len() {
            let size =
                check(&bytes[at..], max_record).map_err(|error| BatchError::Record { offset: at, error })?;
            let expected = first + offsets.len() as u64;
            let found = lsn_of(&bytes[at..]);
            if found != expected {
                return Err(BatchError::Lsn { offset: at, found, expected });
            }
            offsets.push(at as u32);
            at += size;
        }
        if offsets.is_empty() {
            return Err(BatchError::Empty);
        }
        let last = first + offsets.len() as u64 - 1;
        Ok(CheckedRecords { range: LsnRange { first, last }, bytes, offsets })
    }

    /// The LSNs the records hold.
    #[must_use]
    pub fn range(&self) -> LsnRange {
        self.range
    }

    /// The records, back to back.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many records there are (never zero).
    #[must_use]
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Always `false`: a checked batch holds at least one record.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Each record's start within [`bytes`](Self::bytes).
    pub(crate) fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Decodes the records into entries (payloads are slices of the batch, not copies).
    #[must_use]
    pub fn entries(&self) -> Vec<Entry> {
        self.offsets
            .iter()
            .map(|&o| decode(&self.bytes, o as usize, usize::MAX).expect("checked").0)
            .collect()
    }
}

/// Where record `i` ends in `total` bytes of back-to-back records that start at
/// `offsets`: where the next one starts, or the end.
pub(crate) fn end_of(offsets: &[u32], i: usize, total: usize) -> usize {
    offsets.get(i + 1).map_or(total, |&o| o as usize)
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

    fn batch(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
        let mut buf = Vec::new();
        for lsn in lsns {
            encode(&mut buf, lsn, &sample(b"batched payload"));
        }
        buf
    }

    #[test]
    fn checked_records_accept_consecutive_records_and_decode_to_the_same_entries() {
        let buf = Bytes::from(batch(5..=9));
        let checked = CheckedRecords::check(buf.clone(), 5, MAX).unwrap();
        assert_eq!(checked.range(), LsnRange { first: 5, last: 9 });
        assert_eq!((checked.len(), checked.bytes(), checked.is_empty()), (5, &buf, false));
        let entries = checked.entries();
        assert_eq!(entries.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
        assert!(entries.iter().all(|e| &e.payload[..] == b"batched payload"));
    }

    #[test]
    fn checked_records_name_what_is_wrong_and_where() {
        let one = encoded_len(b"batched payload".len());
        assert_eq!(CheckedRecords::check(Bytes::new(), 1, MAX).unwrap_err(), BatchError::Empty);
        // A gap, a repeat, or a batch that starts elsewhere.
        let mut gap = batch(1..=2);
        gap.extend(batch(4..=4));
        let err = CheckedRecords::check(Bytes::from(gap), 1, MAX).unwrap_err();
        assert_eq!(err, BatchError::Lsn { offset: 2 * one, found: 4, expected: 3 });
        assert!(err.to_string().contains("holds LSN 4, expected 3"), "{err}");
        assert!(matches!(
            CheckedRecords::check(Bytes::from(batch(1..=2)), 2, MAX),
            Err(BatchError::Lsn { offset: 0, found: 1, expected: 2 })
        ));
        // A flipped bit in the third record, a torn last record, a record above the limit.
        let mut flipped = batch(1..=4);
        flipped[2 * one + 50] ^= 0x10;
        assert!(matches!(
            CheckedRecords::check(Bytes::from(flipped), 1, MAX),
            Err(BatchError::Record { offset, error: RecordError::Checksum { .. } }) if offset == 2 * one
        ));
        let torn = Bytes::from(batch(1..=3)).slice(..3 * one - 1);
        assert!(matches!(
            CheckedRecords::check(torn, 1, MAX),
            Err(BatchError::Record { error: RecordError::Truncated { .. }, .. })
        ));
        assert!(matches!(
            CheckedRecords::check(Bytes::from(batch(1..=2)), 1, one - 1),
            Err(BatchError::Record { offset: 0, error: RecordError::BadLength { .. } })
        ));
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
