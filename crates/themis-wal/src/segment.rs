//! Segment files: the header, file naming, and scanning a segment's records.
//!
//! ```text
//! offset size field
//!      0    8 magic        b"THEMISWL"
//!      8    2 version      1
//!     10    2 header len   64
//!     12    4 tail window  the largest single write, in bytes (see recovery)
//!     16    8 segment id
//!     24    8 first LSN
//!     32    8 created HLC time
//!     40    8 created HLC node
//!     48    1 flags        bit 0: recycled (old records may follow the log's end)
//!     49   11 reserved     zero
//!     60    4 crc          CRC32C of bytes 0..60
//! ```

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};

use crate::entry::Lsn;
use crate::record::{self, RECORD_HEADER_LEN, u32_at, u64_at};

/// The segment magic.
pub const MAGIC: [u8; 8] = *b"THEMISWL";
/// The segment format version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 64;

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment id (its file name).
    pub id: u64,
    /// The LSN of its first record.
    pub first_lsn: Lsn,
    /// When it was created.
    pub created: Timestamp,
    /// The largest single write into it: a crash can tear at most this many bytes at its
    /// end.
    pub tail_window: u32,
    /// The file held an earlier segment, so past the log's end lie old records, not
    /// zeros. Writes into it end with a zero terminator (see [`TERMINATOR_LEN`]).
    pub recycled: bool,
}

/// Header flag: the segment is a recycled file.
const FLAG_RECYCLED: u8 = 1;

/// Zero bytes written after the last record of a recycled segment, with each write: a
/// clean end reads as a zero length where the next record would start.
pub const TERMINATOR_LEN: usize = 8;

impl SegmentHeader {
    /// The 64 header bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        out[12..16].copy_from_slice(&self.tail_window.to_le_bytes());
        out[16..24].copy_from_slice(&self.id.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[32..40].copy_from_slice(&self.created.raw_time().to_le_bytes());
        out[40..48].copy_from_slice(&self.created.node().0.to_le_bytes());
        if self.recycled {
            out[48] = FLAG_RECYCLED;
        }
        let crc = crc32c::crc32c(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks a header: magic, version, length, checksum, first LSN >= 1.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "file of {} bytes is shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return Err(format!("wrong magic {:?}, expected {:?}", &bytes[..8], MAGIC));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(format!("unknown format version {version} (this build reads version {VERSION})"));
        }
        let header_len = u16::from_le_bytes([bytes[10], bytes[11]]);
        if usize::from(header_len) != HEADER_LEN {
            return Err(format!("header length {header_len}, expected {HEADER_LEN}"));
        }
        let stored = u32_at(bytes, 60);
        let computed = crc32c::crc32c(&bytes[..60]);
        if stored != computed {
            return Err(format!(
                "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        if bytes[48] & !FLAG_RECYCLED != 0 {
            return Err(format!("unknown segment flags {:#04x}", bytes[48]));
        }
        let header = SegmentHeader {
            recycled: bytes[48] & FLAG_RECYCLED != 0,
            tail_window: u32_at(bytes, 12),
            id: u64_at(bytes, 16),
            first_lsn: u64_at(bytes, 24),
            created: Timestamp::from_raw(u64_at(bytes, 32), NodeId(u64_at(bytes, 40))),
        };
        if header.first_lsn == 0 {
            return Err("first LSN 0 (LSNs start at 1)".into());
        }
        Ok(header)
    }
}

/// The file name of segment `id`.
#[must_use]
pub fn file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// The segment id a file name denotes, if it is a segment's.
#[must_use]
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How a scan treats a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRecord {
    /// Stop at it.
    Stop,
    /// Skip it: search forward for the next valid record and note what was skipped.
    Skip,
}

/// A bad record a scan met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Its offset in the segment file.
    pub offset: u64,
    /// The LSN expected there.
    pub lsn: Lsn,
    /// What is wrong.
    pub reason: String,
    /// Whether it lies where a crash can tear the last write: nothing the log wrote
    /// lies past the header's tail window (the most one write covers) from it. In a
    /// zero-filled segment that means only zeros; in a recycled one, no valid record
    /// that could follow it (old records carry older LSNs).
    pub in_tail: bool,
    /// Bytes from it to the next valid record (or the end of the file).
    pub len: u64,
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header.
    pub header: SegmentHeader,
    /// Record offsets by `lsn - first_lsn`; [`SKIPPED`] for an LSN lost to corruption.
    pub offsets: Vec<u32>,
    /// End of the last valid record: where the next one goes. Only zeros may follow it
    /// without a bad record being noted (a preallocated segment's unused space); in a
    /// recycled segment, a zero terminator and then nothing the log wrote.
    pub valid_len: u64,
    /// The bad record the scan stopped at (with [`OnBadRecord::Stop`]).
    pub stopped: Option<BadRecord>,
    /// Bad regions skipped (with [`OnBadRecord::Skip`]).
    pub skipped: Vec<BadRecord>,
}

/// An offset entry for an LSN whose record was skipped.
pub const SKIPPED: u32 = u32::MAX;

impl SegmentScan {
    /// The LSN after the last record held.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        self.header.first_lsn + self.offsets.len() as u64
    }
}

/// Scans a whole segment file held in `file`. Never panics and allocates only in
/// proportion to `file.len()`: every length is checked against the bytes present.
pub fn scan(file: &Bytes, max_record: usize, on_bad: OnBadRecord) -> Result<SegmentScan, String> {
    let header = SegmentHeader::decode(file)?;
    if file.len() > u32::MAX as usize {
        return Err(format!("segment of {} bytes is above the 4 GiB limit", file.len()));
    }
    let mut scan = SegmentScan {
        header,
        offsets: Vec::new(),
        valid_len: HEADER_LEN as u64,
        stopped: None,
        skipped: Vec::new(),
    };
    let mut offset = HEADER_LEN;
    while offset < file.len() {
        let lsn = scan.next_lsn();
        let failure = match record::decode(file, offset, max_record) {
            Ok((entry, size)) if entry.lsn == lsn => {
                scan.offsets.push(offset as u32);
                offset += size;
                scan.valid_len = offset as u64;
                continue;
            }
            Ok((entry, _)) => format!("record holds LSN {} where LSN {lsn} belongs", entry.lsn),
            Err(err) => err.to_string(),
        };
        let Some(in_tail) = classify(file, offset, lsn, &header, max_record) else {
            // The clean end of the log.
            break;
        };
        let mut bad = BadRecord {
            offset: offset as u64,
            lsn,
            reason: failure,
            in_tail,
            len: (file.len() - offset) as u64,
        };
        match on_bad {
            OnBadRecord::Stop => {
                scan.stopped = Some(bad);
                break;
            }
            OnBadRecord::Skip => {
                let Some((next, next_lsn)) = resync(file, offset + 1, lsn, max_record) else {
                    scan.skipped.push(bad);
                    break;
                };
                bad.len = (next - offset) as u64;
                scan.skipped.push(bad);
                scan.offsets.resize(scan.offsets.len() + (next_lsn - lsn) as usize, SKIPPED);
                offset = next;
            }
        }
    }
    Ok(scan)
}

/// What lies at `offset`, where the record for `lsn` failed its checks: `None` for the
/// clean end of the log, otherwise whether it is within reach of a torn last write.
///
/// A zero-filled segment ends cleanly in zeros to the end of the file (no record is all
/// zeros: kind 0 is invalid), and damage is in the tail when only zeros lie past the tail
/// window. A recycled segment holds an earlier segment's records past the end, so it ends
/// cleanly at a zero terminator with no record that could follow `lsn` anywhere after
/// it, and damage is in the tail when no such record lies past the tail window. Old
/// records never qualify: their LSNs are below the segment's first.
fn classify(
    file: &Bytes,
    offset: usize,
    lsn: Lsn,
    header: &SegmentHeader,
    max_record: usize,
) -> Option<bool> {
    let window_end = offset.saturating_add(header.tail_window as usize);
    if !header.recycled {
        let zero_from = |at: usize| file.get(at..).is_none_or(|rest| rest.iter().all(|&b| b == 0));
        return if zero_from(offset) { None } else { Some(zero_from(window_end)) };
    }
    let terminated = file[offset..].iter().take(TERMINATOR_LEN).all(|&b| b == 0);
    match find_next(file, offset + 1, offset, lsn, max_record) {
        None if terminated => None,
        None => Some(true),
        Some((at, _)) if at >= window_end => Some(false),
        Some(_) => Some(find_next(file, window_end, offset, lsn, max_record).is_none()),
    }
}

/// Finds the first valid record at or after `from` whose LSN could follow `lsn` after the
/// skipped bytes (each lost record took at least a header's worth of them).
fn resync(file: &Bytes, from: usize, lsn: Lsn, max_record: usize) -> Option<(usize, Lsn)> {
    find_next(file, from, from, lsn, max_record)
}

/// [`resync`], counting the skipped bytes from `origin` (at or before `from`).
fn find_next(file: &Bytes, from: usize, origin: usize, lsn: Lsn, max_record: usize) -> Option<(usize, Lsn)> {
    /// Where a record's kind byte and its three zero reserved bytes lie.
    const KIND: usize = 40;
    let mut at = from;
    while at + RECORD_HEADER_LEN <= file.len() {
        // A record's reserved bytes are zero: jump to the next zero byte where they would
        // start (memchr scans the bytes between with SIMD).
        let zero = memchr::memchr(0, &file[at + KIND + 1..])?;
        at += zero;
        if at + RECORD_HEADER_LEN > file.len() {
            return None;
        }
        let head = &file[at..at + RECORD_HEADER_LEN];
        if head[KIND] == 0 {
            // Inside a run of zeros (a kind is never zero): the next record could start
            // only where the run's first non-zero byte is its kind.
            let run_end = file[at + KIND..].iter().position(|&b| b != 0)?;
            at += run_end.max(1);
            continue;
        }
        // Cheap filters before the checksum: the rest of the reserved bytes zero, and an
        // LSN no further ahead than the skipped bytes allow.
        let candidate = record::lsn_of(head);
        let max_lost = ((at - origin + 1) / RECORD_HEADER_LEN + 1) as u64;
        if head[KIND + 2..RECORD_HEADER_LEN] == [0, 0]
            && candidate > lsn
            && candidate - lsn <= max_lost
            && let Ok((entry, _)) = record::decode(file, at, max_record)
        {
            return Some((at, entry.lsn));
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::NewEntry;

    fn segment(first: Lsn, payloads: &[&'static [u8]]) -> Vec<u8> {
        let header = SegmentHeader {
            id: 3,
            first_lsn: first,
            created: Timestamp::ZERO,
            tail_window: 0,
            recycled: false,
        };
        let mut out = header.encode().to_vec();
        for (i, payload) in payloads.iter().enumerate() {
            record::encode(
                &mut out,
                first + i as u64,
                &NewEntry::data(Timestamp::ZERO, Bytes::from_static(payload)),
            );
        }
        out
    }

    #[test]
    fn header_round_trips_and_rejects_each_kind_of_damage() {
        let header = SegmentHeader {
            id: 9,
            first_lsn: 100,
            created: Timestamp::from_parts(5, 1, NodeId(2)).unwrap(),
            tail_window: 4096,
            recycled: true,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), header);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("wrong magic"));
        let mut bad = bytes;
        bad[8] = 2;
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("unknown format version 2"));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("checksum"));
        assert!(SegmentHeader::decode(&bytes[..10]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn unknown_header_flags_are_refused() {
        let header =
            SegmentHeader { id: 1, first_lsn: 1, created: Timestamp::ZERO, tail_window: 0, recycled: false };
        let mut bytes = header.encode();
        bytes[48] = 0x82;
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes).unwrap_err(), "unknown segment flags 0x82");
    }

    /// A file that held segment 1 (LSNs 1 to 40) reused as a recycled segment starting at
    /// LSN 100 with `fresh` records, a terminator after them unless `terminated` is false,
    /// and the old records past that.
    fn recycled(fresh: usize, terminated: bool, tail_window: u32) -> Vec<u8> {
        let mut file = segment(1, &[]);
        let old = Timestamp::from_parts(1_700_000_000_000, 7, NodeId(3)).unwrap();
        for lsn in 1..=40 {
            record::encode(
                &mut file,
                lsn,
                &NewEntry::data(old, Bytes::from_static(b"old record with some bytes")),
            );
        }
        let header =
            SegmentHeader { id: 4, first_lsn: 100, created: Timestamp::ZERO, tail_window, recycled: true };
        let mut head = header.encode().to_vec();
        for i in 0..fresh {
            record::encode(
                &mut head,
                100 + i as u64,
                &NewEntry::data(Timestamp::ZERO, Bytes::from_static(b"new")),
            );
        }
        if terminated {
            head.extend_from_slice(&[0; TERMINATOR_LEN]);
        }
        file[..head.len()].copy_from_slice(&head);
        file
    }

    #[test]
    fn a_recycled_segment_ends_at_its_terminator_not_at_the_old_records() {
        for fresh in [0, 1, 3] {
            let file = Bytes::from(recycled(fresh, true, 64));
            let scan = scan(&file, 1 << 20, OnBadRecord::Stop).unwrap();
            assert!(scan.header.recycled);
            assert_eq!(scan.offsets.len(), fresh);
            assert!(scan.stopped.is_none(), "{fresh}: {:?}", scan.stopped);
            let end = HEADER_LEN + fresh * record::encoded_len(3);
            assert_eq!(scan.valid_len, end as u64);
            // Skip mode finds no record to resume at either: the old ones are older.
            let skip = super::scan(&file, 1 << 20, OnBadRecord::Skip).unwrap();
            assert!(skip.skipped.is_empty() && skip.offsets.len() == fresh);
        }
    }

    #[test]
    fn a_recycled_segment_without_its_terminator_has_a_torn_tail() {
        // The write that would have put the terminator there never landed: old bytes
        // follow the last record.
        let file = Bytes::from(recycled(2, false, 64));
        let stop = scan(&file, 1 << 20, OnBadRecord::Stop).unwrap().stopped.unwrap();
        assert_eq!(stop.lsn, 102);
        assert!(stop.in_tail, "{stop:?}");
        // A record of this segment further on than one write reaches is not a torn tail.
        let mut file = recycled(2, false, 64);
        let far = file.len() - 200;
        let mut later = Vec::new();
        record::encode(&mut later, 103, &NewEntry::data(Timestamp::ZERO, Bytes::from_static(b"later")));
        file[far..far + later.len()].copy_from_slice(&later);
        let stop = scan(&Bytes::from(file.clone()), 1 << 20, OnBadRecord::Stop).unwrap().stopped.unwrap();
        assert!(!stop.in_tail, "{stop:?}");
        // Nor is a terminator followed, beyond the window, by a record of this segment.
        let end = HEADER_LEN + 2 * record::encoded_len(3);
        file[end..end + TERMINATOR_LEN].fill(0);
        let stop = scan(&Bytes::from(file), 1 << 20, OnBadRecord::Stop).unwrap().stopped.unwrap();
        assert_eq!((stop.offset, stop.in_tail), (end as u64, false));
    }

    /// `find_next` without its jumps: every offset in turn.
    fn find_next_naive(file: &Bytes, from: usize, origin: usize, lsn: Lsn) -> Option<(usize, Lsn)> {
        (from..file.len().saturating_sub(RECORD_HEADER_LEN - 1)).find_map(|at| {
            let head = &file[at..at + RECORD_HEADER_LEN];
            let candidate = record::lsn_of(head);
            let max_lost = ((at - origin + 1) / RECORD_HEADER_LEN + 1) as u64;
            (head[40] != 0 && head[41..44] == [0, 0, 0] && candidate > lsn && candidate - lsn <= max_lost)
                .then(|| record::decode(file, at, 1 << 20).ok().map(|(e, _)| (at, e.lsn)))
                .flatten()
        })
    }

    #[test]
    fn find_next_jumps_to_the_same_record_as_a_scan_of_every_offset() {
        let seed = std::env::var("THEMIS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        let mut rng = fastrand::Rng::with_seed(seed);
        for case in 0..300 {
            // Random bytes with runs of zeros, and a few records (with LSNs near 10) at
            // random places.
            let mut file = vec![0u8; rng.usize(0..600)];
            for b in &mut file {
                *b = if rng.u8(..4) == 0 { 0 } else { rng.u8(..) };
            }
            for _ in 0..rng.usize(0..4) {
                let mut record = Vec::new();
                let payload = Bytes::from(vec![0u8; rng.usize(0..20)]);
                record::encode(&mut record, rng.u64(8..14), &NewEntry::data(Timestamp::ZERO, payload));
                if record.len() <= file.len() {
                    let at = rng.usize(0..=file.len() - record.len());
                    file[at..at + record.len()].copy_from_slice(&record);
                }
            }
            let file = Bytes::from(file);
            let from = rng.usize(0..=file.len());
            let origin = rng.usize(0..=from);
            assert_eq!(
                find_next(&file, from, origin, 9, 1 << 20),
                find_next_naive(&file, from, origin, 9),
                "seed {seed} case {case}"
            );
        }
    }

    #[test]
    fn file_names_are_twenty_digits() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_file_name("00000000000000000042.wal"), Some(42));
        for bad in ["42.wal", "0000000000000000004x.wal", "00000000000000000042.tmp", "00000000000000000042"]
        {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn scan_indexes_records_and_stops_at_a_gap_in_lsns() {
        let file = Bytes::from(segment(5, &[b"a", b"bb", b"ccc"]));
        let scan = scan(&file, 1 << 20, OnBadRecord::Stop).unwrap();
        assert_eq!(scan.offsets.len(), 3);
        assert_eq!(scan.next_lsn(), 8);
        assert_eq!(scan.valid_len, file.len() as u64);
        assert!(scan.stopped.is_none());

        let mut wrong = segment(5, &[b"a"]);
        record::encode(&mut wrong, 7, &NewEntry::data(Timestamp::ZERO, Bytes::from_static(b"x")));
        let scan = super::scan(&Bytes::from(wrong), 1 << 20, OnBadRecord::Stop).unwrap();
        let stop = scan.stopped.unwrap();
        assert_eq!((stop.lsn, stop.offset), (6, scan.valid_len));
        assert!(stop.reason.contains("LSN 7 where LSN 6 belongs"), "{}", stop.reason);
    }

    #[test]
    fn skip_mode_resumes_after_a_damaged_record() {
        let mut file = segment(1, &[b"first", b"second", b"third"]);
        let second = HEADER_LEN + record::encoded_len(5);
        file[second + RECORD_HEADER_LEN] ^= 0xff;
        let scan = scan(&Bytes::from(file), 1 << 20, OnBadRecord::Skip).unwrap();
        assert_eq!(scan.offsets.len(), 3);
        assert_eq!(scan.offsets[1], SKIPPED);
        assert_eq!(scan.skipped.len(), 1);
        assert_eq!(scan.skipped[0].lsn, 2);
        assert_eq!(scan.skipped[0].len, record::encoded_len(6) as u64);
    }
}
