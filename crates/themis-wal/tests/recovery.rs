//! Recovery: torn tails, corruption and every recovery mode, on real files. The damage
//! tests draw offsets from a seeded RNG and print the seed on failure
//! (`THEMIS_SEED=<n>` replays it).

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::{assert_holds, config_with, segments, small_config, write_log};
use themis_wal::segment::{self, HEADER_LEN, SegmentHeader};
use themis_wal::{RecoveryMode, Wal, WalError};

fn flip(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

/// Where the records of a segment file end (a segment is zero-filled past them while it
/// is the last one).
fn records_end(path: &Path) -> u64 {
    let bytes = bytes::Bytes::from(fs::read(path).unwrap());
    segment::scan(&bytes, 1 << 20, segment::OnBadRecord::Stop).unwrap().valid_len
}

fn cut(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn seed() -> u64 {
    std::env::var("THEMIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

fn cases() -> usize {
    if std::env::var("THEMIS_TEST_BUDGET").as_deref() == Ok("full") { 400 } else { 40 }
}

#[test]
fn a_torn_tail_is_truncated_and_reported_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 100);
    let last = segments(dir.path()).pop().unwrap();
    let len = records_end(&last);
    cut(&last, len - 3);
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    let t = &report.truncated[0];
    assert_eq!((t.path.clone(), t.lsn), (last, 100));
    assert!(t.reason.starts_with("torn tail"), "{}", t.reason);
    assert_holds(&wal, 1, 99);
    assert_eq!(wal.append(&[common::entry_for(100)]).unwrap().first, 100);
    assert_holds(&wal, 1, 100);
}

#[test]
fn zeros_after_the_last_record_are_unused_space_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 50);
    let last = segments(dir.path()).pop().unwrap();
    // The last segment is zero-filled to its full size, and sealed ones are trimmed.
    assert_eq!(fs::metadata(&last).unwrap().len(), small_config().segment_bytes);
    let sealed = &segments(dir.path())[0];
    assert_eq!(fs::metadata(sealed).unwrap().len(), records_end(sealed));
    for mode in [RecoveryMode::TolerateCorruptedTail, RecoveryMode::AbsoluteConsistency] {
        let (wal, report) = Wal::open(dir.path(), config_with(mode)).unwrap();
        assert!(report.truncated.is_empty() && report.skipped.is_empty(), "{mode:?}: {report:?}");
        assert_holds(&wal, 1, 50);
        wal.close().unwrap();
    }
    // Appends go after the last record, not after the zeros, and survive a reopen.
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    assert_eq!(wal.append(&[common::entry_for(51)]).unwrap().first, 51);
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, 1, 51);
    // Without preallocation a zeroed stretch after the records means the same thing.
    wal.close().unwrap();
    let plain = tempfile::tempdir().unwrap();
    let config = themis_wal::WalConfig { preallocate: false, ..small_config() };
    let (wal, _) = Wal::open(plain.path(), config.clone()).unwrap();
    wal.append(&[common::entry_for(1)]).unwrap();
    wal.close().unwrap();
    let only = segments(plain.path()).pop().unwrap();
    assert_eq!(fs::metadata(&only).unwrap().len(), records_end(&only), "not preallocated");
    OpenOptions::new().write(true).open(&only).unwrap().set_len(records_end(&only) + 3000).unwrap();
    let (wal, report) = Wal::open(plain.path(), config).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, 1, 1);
}

#[test]
fn absolute_consistency_refuses_even_a_torn_tail_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 100);
    let last = segments(dir.path()).pop().unwrap();
    let len = records_end(&last);
    cut(&last, len - 1);
    let err = Wal::open(dir.path(), config_with(RecoveryMode::AbsoluteConsistency)).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { lsn: Some(100), .. }), "{err}");
    assert_eq!(fs::metadata(&last).unwrap().len(), len - 1, "nothing was truncated");
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_segment_offset_and_lsn() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let first = &segments(dir.path())[0];
    flip(first, HEADER_LEN as u64 + 100, 3);
    let err = Wal::open(dir.path(), small_config()).unwrap_err();
    match err {
        WalError::Corrupt { segment, offset, lsn, reason } => {
            assert_eq!((segment, offset, lsn), (1, HEADER_LEN as u64, Some(1)));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn point_in_time_cuts_at_the_first_damage_and_deletes_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let all = segments(dir.path());
    let second = &all[1];
    let header = SegmentHeader::decode(&fs::read(second).unwrap()).unwrap();
    flip(second, HEADER_LEN as u64 + 50, 0);
    let (wal, report) = Wal::open(dir.path(), config_with(RecoveryMode::PointInTime)).unwrap();
    assert_holds(&wal, 1, header.first_lsn - 1);
    assert_eq!(segments(dir.path()).len(), 2);
    assert_eq!(report.truncated.len(), all.len() - 1, "the cut plus every later segment: {report:?}");
}

#[test]
fn skip_corrupted_keeps_the_rest_and_reports_each_skipped_record() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let first = &segments(dir.path())[0];
    flip(first, HEADER_LEN as u64 + 60, 5);
    let (wal, report) = Wal::open(dir.path(), config_with(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].record.lsn, 1);
    assert_eq!(report.entries, 199);
    assert!(matches!(wal.read(1), Err(WalError::Skipped { lsn: 1 })));
    let read: Vec<_> = wal.reader(1, 4096).collect();
    assert!(matches!(read[0], Err(WalError::Skipped { lsn: 1 })));
    assert_eq!(read.len(), 200);
    for (i, entry) in read.iter().enumerate().skip(1) {
        let entry = entry.as_ref().unwrap();
        assert_eq!(entry.payload, common::payload(i as u64 + 1));
    }
}

#[test]
fn segment_level_damage_is_a_typed_error() {
    // Wrong magic, unknown version, a missing segment, one that does not follow.
    type Damage = fn(&[PathBuf]);
    let setups: [(&str, Damage); 4] = [
        ("wrong magic", |s| flip(&s[1], 0, 0)),
        ("unknown format version 3", |s| {
            let mut bytes = fs::read(&s[1]).unwrap();
            let mut header = SegmentHeader::decode(&bytes).unwrap().encode();
            header[8] = 3;
            // Recompute the checksum so that only the version is wrong.
            let crc = crc32c::crc32c(&header[..60]);
            header[60..].copy_from_slice(&crc.to_le_bytes());
            bytes[..HEADER_LEN].copy_from_slice(&header);
            fs::write(&s[1], bytes).unwrap();
        }),
        ("segment 2 is missing", |s| fs::remove_file(&s[1]).unwrap()),
        ("does not follow", |s| {
            let mut bytes = fs::read(&s[1]).unwrap();
            let mut header = SegmentHeader::decode(&bytes).unwrap();
            header.first_lsn += 1;
            bytes[..HEADER_LEN].copy_from_slice(&header.encode());
            fs::write(&s[1], bytes).unwrap();
        }),
    ];
    for (needle, damage) in setups {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 100);
        damage(&segments(dir.path()));
        for mode in [RecoveryMode::TolerateCorruptedTail, RecoveryMode::AbsoluteConsistency] {
            let err = Wal::open(dir.path(), config_with(mode)).unwrap_err().to_string();
            assert!(err.contains(needle), "{mode:?}: {err}");
        }
    }
}

#[test]
fn leftover_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let tmp = dir.path().join(format!("{}.tmp", segment::file_name(99)));
    fs::write(&tmp, b"half a header").unwrap();
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
    assert_holds(&wal, 1, 10);
}

/// Random cuts of the last segment: every mode does what it promises.
#[test]
fn random_truncation_of_the_last_segment() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let pristine = tempfile::tempdir().unwrap();
    write_log(pristine.path(), 150);
    for case in 0..cases() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let last = segments(dir.path()).pop().unwrap();
        let len = records_end(&last);
        let at = rng.u64(HEADER_LEN as u64..len);
        cut(&last, at);
        let context = format!("seed {seed} case {case}: cut {} at {at}", last.display());
        // Default: recovers every record that ends at or before the cut.
        let (wal, _) = Wal::open(dir.path(), small_config()).expect(&context);
        let held = wal.last_lsn();
        assert_holds(&wal, 1, held);
        drop(wal);
        assert!(held < 150, "{context}");
        // Absolute consistency on a fresh copy with the same cut refuses unless the cut
        // fell exactly on a record boundary.
        let strict = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), strict.path());
        cut(&segments(strict.path()).pop().unwrap(), at);
        match Wal::open(strict.path(), config_with(RecoveryMode::AbsoluteConsistency)) {
            Ok((wal, _)) => assert_eq!(wal.last_lsn(), held, "{context}"),
            Err(err) => assert!(matches!(err, WalError::Corrupt { .. }), "{context}: {err}"),
        }
    }
}

/// Random single-bit flips anywhere: no mode panics or returns a wrong payload; the
/// default mode either truncates a damaged tail of the last segment or reports Corrupt.
#[test]
fn random_bit_flips_are_caught_by_every_mode() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let pristine = tempfile::tempdir().unwrap();
    write_log(pristine.path(), 150);
    let files = segments(pristine.path());
    for case in 0..cases() {
        let file_no = rng.usize(..files.len());
        let len = fs::metadata(&files[file_no]).unwrap().len();
        let offset = rng.u64(..len);
        let bit = rng.u8(..8);
        let context =
            format!("seed {seed} case {case}: flip bit {bit} at {offset} of segment {}", file_no + 1);
        for mode in [
            RecoveryMode::TolerateCorruptedTail,
            RecoveryMode::AbsoluteConsistency,
            RecoveryMode::PointInTime,
            RecoveryMode::SkipCorrupted,
        ] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), dir.path());
            flip(&segments(dir.path())[file_no], offset, bit);
            match Wal::open(dir.path(), config_with(mode)) {
                Ok((wal, report)) => {
                    assert_ne!(mode, RecoveryMode::AbsoluteConsistency, "{context}: damage went unnoticed");
                    // Whatever is readable is exactly what was written.
                    for entry in wal.reader(wal.first_lsn(), 4096) {
                        match entry {
                            Ok(entry) => assert_eq!(entry.payload, common::payload(entry.lsn), "{context}"),
                            Err(WalError::Skipped { .. }) => assert_eq!(mode, RecoveryMode::SkipCorrupted),
                            Err(err) => panic!("{context}: {mode:?}: {err}"),
                        }
                    }
                    match mode {
                        RecoveryMode::TolerateCorruptedTail => {
                            assert_eq!(
                                file_no + 1,
                                files.len(),
                                "{context}: only the last segment has a tail"
                            );
                            assert_eq!(report.truncated.len(), 1, "{context}");
                        }
                        RecoveryMode::PointInTime => assert!(!report.truncated.is_empty(), "{context}"),
                        _ => assert!(!report.skipped.is_empty() || !report.truncated.is_empty(), "{context}"),
                    }
                }
                Err(err) => assert!(
                    matches!(err, WalError::Corrupt { .. } | WalError::Segment { .. }),
                    "{context}: {mode:?}: {err}"
                ),
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn check_reads_a_healthy_log_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let before: Vec<_> = segments(dir.path()).iter().map(|p| fs::read(p).unwrap()).collect();
    let report = themis_wal::check(dir.path(), small_config().max_record_bytes).unwrap();
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!((report.records, report.first_lsn, report.last_lsn), (300, 1, 300));
    assert_eq!(report.segments, before.len());
    let after: Vec<_> = segments(dir.path()).iter().map(|p| fs::read(p).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn check_names_segment_offset_and_lsn_of_each_problem_and_tells_a_torn_tail_apart() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let files = segments(dir.path());
    assert!(files.len() >= 3, "the small config rotates");
    // A flipped bit in the middle of the first segment, and a torn last record.
    let first_len = fs::metadata(&files[0]).unwrap().len();
    flip(&files[0], first_len / 2, 3);
    let last = files.last().unwrap();
    cut(last, records_end(last) - 2);
    let before = fs::read(&files[0]).unwrap();
    let report = themis_wal::check(dir.path(), small_config().max_record_bytes).unwrap();
    assert!(!report.is_healthy() && !report.opens_by_default(), "{report:?}");
    assert_eq!(report.problems.len(), 2, "{report:?}");
    let (mid, tail) = (&report.problems[0], &report.problems[1]);
    assert_eq!(mid.path, files[0]);
    assert!(mid.offset > HEADER_LEN as u64 && mid.offset <= first_len / 2, "{mid}");
    assert!(mid.lsn.is_some_and(|l| l >= 1) && !mid.torn_tail, "{mid}");
    assert_eq!((&tail.path, tail.lsn, tail.torn_tail), (last, Some(300), true), "{tail}");
    assert!(tail.to_string().contains("LSN 300"), "{tail}");
    assert_eq!(fs::read(&files[0]).unwrap(), before, "check repairs nothing");
}

#[test]
fn check_reports_a_missing_segment_and_a_bad_header() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let files = segments(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let report = themis_wal::check(dir.path(), small_config().max_record_bytes).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].path, files[2]);
    assert!(report.problems[0].reason.contains("is missing"), "{}", report.problems[0]);
    flip(&files[2], 0, 0);
    let report = themis_wal::check(dir.path(), small_config().max_record_bytes).unwrap();
    let reasons: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(reasons.iter().any(|r| r.contains("unreadable segment header")), "{reasons:?}");
    assert!(report.problems.iter().all(|p| !p.torn_tail), "{reasons:?}");
    let no_dir = themis_wal::check(dir.path().join("nope"), 1024).unwrap_err();
    assert!(no_dir.to_string().contains("nope"), "{no_dir}");
}

/// Segments of 16 KiB whose tail window (1 KiB) is much smaller than a segment, so that
/// damage in the last segment can lie beyond the reach of one write.
fn recycling_config() -> themis_wal::WalConfig {
    themis_wal::WalConfig {
        segment_bytes: 16 << 10,
        max_record_bytes: 1024,
        max_queue_bytes: 1024,
        recycle_segments: 2,
        ..small_config()
    }
}

/// A closed log whose last segment is a recycled file holding at least 25 records, with an
/// earlier segment's records past them. Returns the first and last LSNs held.
fn recycled_log(dir: &Path) -> (u64, u64) {
    let (wal, _) = Wal::open(dir, recycling_config()).unwrap();
    let append = |wal: &Wal| {
        let lsn = wal.next_lsn();
        assert_eq!(wal.append(&[common::entry_for(lsn)]).unwrap().first, lsn);
    };
    while wal.segments().len() < 4 {
        append(&wal);
    }
    wal.truncate_prefix(wal.last_lsn()).unwrap();
    while wal.segments().len() < 2 {
        append(&wal);
    }
    let recycled_first = wal.segments()[1].1;
    while wal.last_lsn() < recycled_first + 25 {
        append(&wal);
    }
    let lsn = wal.last_lsn();
    let first = wal.first_lsn();
    wal.close().unwrap();
    let last = segments(dir).pop().unwrap();
    assert!(common::is_recycled(&last), "{}", last.display());
    assert!(fs::metadata(&last).unwrap().len() > records_end(&last) + 1024, "old bytes follow");
    (first, lsn)
}

#[test]
fn a_torn_write_in_a_recycled_segment_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (first, last) = recycled_log(dir.path());
    let path = segments(dir.path()).pop().unwrap();
    // The next write landed only in part: a piece of a record over the terminator.
    let end = records_end(&path) as usize;
    let mut bytes = fs::read(&path).unwrap();
    bytes[end..end + 30].fill(0xab);
    fs::write(&path, bytes).unwrap();
    let strict = themis_wal::WalConfig { recovery: RecoveryMode::AbsoluteConsistency, ..recycling_config() };
    assert!(matches!(Wal::open(dir.path(), strict.clone()), Err(WalError::Corrupt { .. })));
    let (wal, report) = Wal::open(dir.path(), recycling_config()).unwrap();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    assert_eq!(report.truncated[0].lsn, last + 1);
    assert!(report.truncated[0].reason.starts_with("torn tail"), "{report:?}");
    assert_holds(&wal, first, last);
    assert_eq!(wal.append(&[common::entry_for(last + 1)]).unwrap().first, last + 1);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), strict).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, first, last + 1);
}

#[test]
fn damage_in_a_recycled_segment_beyond_one_write_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (first, last) = recycled_log(dir.path());
    let path = segments(dir.path()).pop().unwrap();
    let recycled_first = SegmentHeader::decode(&fs::read(&path).unwrap()).unwrap().first_lsn;
    // The segment's first record is damaged, and more than a write's worth of its records
    // follow: durable data was lost, whatever the bytes past the end hold.
    flip(&path, HEADER_LEN as u64 + 50, 2);
    let err = Wal::open(dir.path(), recycling_config()).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { offset, lsn: Some(lsn), .. } if offset == HEADER_LEN as u64 && lsn == recycled_first),
        "{err}"
    );
    // Point in time keeps the log up to the damage.
    let pit = themis_wal::WalConfig { recovery: RecoveryMode::PointInTime, ..recycling_config() };
    let (wal, report) = Wal::open(dir.path(), pit).unwrap();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    assert_holds(&wal, first, recycled_first - 1);
    assert!(last > recycled_first);
}

#[test]
fn check_segment_reports_one_segment_and_whether_it_follows_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let files = segments(dir.path());
    let id =
        |p: &Path| themis_wal::segment::parse_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
    let max = small_config().max_record_bytes;
    let whole = themis_wal::check(dir.path(), max).unwrap();
    let mut records = 0;
    for file in &files {
        let one = themis_wal::check_segment(dir.path(), id(file), max).unwrap();
        assert!(one.is_healthy(), "{one:?}");
        assert_eq!(one.segments, 1);
        assert_eq!(one.bytes, fs::metadata(file).unwrap().len());
        records += one.records;
    }
    assert_eq!(records, whole.records, "the segments' records add up to the log's");
    // Damage in the first segment is that segment's alone.
    flip(&files[0], fs::metadata(&files[0]).unwrap().len() / 2, 3);
    assert_eq!(themis_wal::check_segment(dir.path(), id(&files[0]), max).unwrap().problems.len(), 1);
    assert!(themis_wal::check_segment(dir.path(), id(&files[1]), max).unwrap().is_healthy());
    // A gap before a segment is reported on it; a segment that is not there is an error naming it.
    fs::remove_file(&files[1]).unwrap();
    let after_gap = themis_wal::check_segment(dir.path(), id(&files[2]), max).unwrap();
    assert!(after_gap.problems.iter().any(|p| p.reason.contains("is missing")), "{after_gap:?}");
    let err = themis_wal::check_segment(dir.path(), id(&files[1]), max).unwrap_err().to_string();
    assert!(
        err.contains("no such segment") && err.contains(&themis_wal::segment::file_name(id(&files[1]))),
        "{err}"
    );
}
