//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_wal::{Lsn, NewEntry, RecoveryMode, Wal, WalConfig};

/// The payload every test writes at `lsn`: its length and bytes follow from the LSN, so any
/// reader can check an entry without a copy of what was written.
pub fn payload(lsn: Lsn) -> Bytes {
    let len = (lsn.wrapping_mul(2_654_435_761) % 300) as usize;
    let mut out = lsn.to_le_bytes().to_vec();
    out.extend((0..len).map(|i| (lsn as usize + i) as u8));
    Bytes::from(out)
}

pub fn entry_for(lsn: Lsn) -> NewEntry {
    NewEntry::data(Timestamp::from_parts(lsn, 0, NodeId(1)).unwrap(), payload(lsn))
}

/// Small segments so that tests cross many of them.
pub fn small_config() -> WalConfig {
    WalConfig {
        segment_bytes: 4096,
        max_record_bytes: 2048,
        max_queue_bytes: 64 << 10,
        ..WalConfig::default()
    }
}

pub fn config_with(mode: RecoveryMode) -> WalConfig {
    WalConfig { recovery: mode, ..small_config() }
}

/// A closed log with entries 1..=n in small segments.
pub fn write_log(dir: &Path, n: Lsn) {
    let (wal, _) = Wal::open(dir, small_config()).unwrap();
    for lsn in 1..=n {
        assert_eq!(wal.append(&[entry_for(lsn)]).unwrap().first, lsn);
    }
    wal.close().unwrap();
}

/// Checks that the log holds exactly `first..=last` with the expected payloads.
pub fn assert_holds(wal: &Wal, first: Lsn, last: Lsn) {
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (first, last), "range held");
    let mut expect = first;
    for entry in wal.reader(first, 1000) {
        let entry = entry.unwrap();
        assert_eq!(entry.lsn, expect);
        assert_eq!(entry.payload, payload(expect), "payload of LSN {expect}");
        expect += 1;
    }
    assert_eq!(expect, last + 1);
}

/// The segment files of `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    out.sort();
    out
}

/// The truncated segment files the log keeps for reuse (`recycle.*.wal.tmp`), sorted.
pub fn kept_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("recycle.") && n.ends_with(".wal.tmp"))
        })
        .collect();
    out.sort();
    out
}

/// Whether a segment file's header carries the recycled flag.
pub fn is_recycled(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    themis_wal::segment::SegmentHeader::decode(&bytes).unwrap().recycled
}
