//! The log through its public API, on real files.

mod common;

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use common::{assert_holds, entry_for, is_recycled, kept_files, payload, segments, small_config, write_log};
use themis_clock::{NodeId, Timestamp};
use themis_wal::{FsyncPolicy, NewEntry, Wal, WalConfig, WalError};

#[test]
fn entries_survive_reopen_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 500);
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert!(report.segments > 10, "{report:?}");
    assert_eq!((report.entries, report.last_lsn), (500, 500));
    assert!(report.truncated.is_empty() && report.skipped.is_empty());
    assert_holds(&wal, 1, 500);
    let batch = wal.read_range(10, 1000).unwrap();
    assert!(!batch.is_empty() && batch.len() < 500, "one segment, bounded by bytes");
    assert_eq!(batch[0].lsn, 10);
    // Appends continue after the last LSN.
    assert_eq!(wal.append(&[entry_for(501)]).unwrap().first, 501);
}

#[test]
fn concurrent_writers_get_unique_lsns_and_every_acknowledged_entry_is_readable() {
    // Writers that spin for their acknowledgement (the default) and writers that park.
    for commit_spin in [WalConfig::default().commit_spin, std::time::Duration::ZERO] {
        concurrent_writers(WalConfig { commit_spin, ..small_config() });
    }
}

fn concurrent_writers(config: WalConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        let body = Bytes::from(format!("writer {t} entry {i}"));
                        let range = wal.append(&[NewEntry::data(Timestamp::ZERO, body.clone())]).unwrap();
                        assert!(wal.durable_lsn() >= range.last, "acknowledged before durable");
                        (range.first, body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    acked.sort();
    assert_eq!(acked.len(), 400);
    for (i, (lsn, body)) in acked.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "LSNs are dense and unique");
        assert_eq!(&wal.read(*lsn).unwrap().payload, body);
    }
}

#[test]
fn a_batch_gets_a_contiguous_range_and_append_at_checks_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    let range = wal.append(&[entry_for(1), entry_for(2), entry_for(3)]).unwrap();
    assert_eq!((range.first, range.last), (1, 3));
    let err = wal.append_at(7, &[entry_for(7)]).unwrap_err();
    assert!(matches!(err, WalError::LsnMismatch { expected: 7, next: 4 }), "{err}");
    assert_eq!(wal.append_at(4, &[entry_for(4)]).unwrap().first, 4);
    assert_holds(&wal, 1, 4);
}

#[test]
fn oversized_records_and_batches_are_refused_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    let big = NewEntry::data(Timestamp::ZERO, vec![0u8; 4000]);
    assert!(matches!(wal.append(&[big]).unwrap_err(), WalError::RecordTooLarge { size: 4044, max: 2048 }));
    let many: Vec<_> = (0..100).map(|_| NewEntry::data(Timestamp::ZERO, vec![1u8; 1000])).collect();
    assert!(matches!(wal.append(&many).unwrap_err(), WalError::BatchTooLarge { max: 65536, .. }));
    assert!(matches!(wal.append(&[]).unwrap_err(), WalError::Config(_)));
    assert_eq!(wal.next_lsn(), 1);
    assert_eq!(wal.append(&[entry_for(1)]).unwrap().first, 1);
}

#[test]
fn reads_outside_the_log_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    for lsn in [0, 4, u64::MAX] {
        let err = wal.read(lsn).unwrap_err();
        assert!(matches!(err, WalError::OutOfRange { first: 1, last: 3, .. }), "{lsn}: {err}");
    }
    assert_eq!(wal.reader(4, 100).count(), 0);
}

#[test]
fn suffix_truncation_is_durable_and_appends_continue_from_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    let before = wal.segments().len();
    wal.truncate_suffix(120).unwrap();
    assert!(wal.segments().len() < before);
    assert_holds(&wal, 1, 120);
    assert_eq!(wal.durable_lsn(), 120);
    // Followers of the tail see the cut: an LSN it removed is not durable any more.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let waited = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(50), wal.durable_async(121)).await
    });
    assert!(waited.is_err(), "durable_async(121) returned after the log was cut at 120");
    assert_eq!(wal.append(&[entry_for(121), entry_for(122)]).unwrap().first, 121);
    rt.block_on(wal.durable_async(122)).unwrap();
    wal.truncate_suffix(122).unwrap(); // nothing after 122: no change
    wal.close().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, 1, 122);
    wal.truncate_suffix(0).unwrap();
    assert_eq!((wal.first_lsn(), wal.last_lsn(), wal.next_lsn()), (1, 0, 1));
}

#[test]
fn prefix_truncation_deletes_whole_segments_and_honours_holds() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    wal.set_hold("slot-a", 100);
    let first = wal.truncate_prefix(250).unwrap();
    assert!(first <= 100 && first > 1, "hold at 100 keeps it: first is {first}");
    assert_eq!(wal.first_lsn(), first);
    assert!(matches!(wal.read(first - 1), Err(WalError::OutOfRange { .. })));
    assert_eq!(wal.release_hold("slot-a"), Some(100));
    let first = wal.truncate_prefix(250).unwrap();
    assert!(first <= 250 && first > 200, "first is {first}");
    assert_holds(&wal, first, 300);
    // The active segment always stays, even when everything is below the limit.
    wal.truncate_prefix(u64::MAX).unwrap();
    assert_eq!(wal.segments().len(), 1);
    let err = wal.truncate_suffix(wal.first_lsn().saturating_sub(5)).unwrap_err();
    assert!(matches!(err, WalError::Truncate(_)), "{err}");
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    assert_eq!(wal.last_lsn(), 300);
}

#[test]
fn invalid_configuration_names_the_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (WalConfig { segment_bytes: 100, ..WalConfig::default() }, "segment_bytes = 100"),
        (WalConfig { max_record_bytes: 10, ..WalConfig::default() }, "max_record_bytes = 10"),
        (WalConfig { max_queue_bytes: 1024, ..WalConfig::default() }, "max_queue_bytes = 1024"),
        (WalConfig { fsync: FsyncPolicy::Interval(0), ..WalConfig::default() }, "Interval(0)"),
        (
            WalConfig { commit_spin: std::time::Duration::from_millis(11), ..WalConfig::default() },
            "commit_spin = 11ms",
        ),
        (WalConfig { recycle_segments: 65, ..WalConfig::default() }, "recycle_segments = 65"),
    ];
    for (config, needle) in cases {
        let err = Wal::open(dir.path(), config).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn interval_policy_acknowledges_on_write_and_syncs_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { fsync: FsyncPolicy::Interval(20), ..small_config() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let range = wal.append(&[entry_for(1)]).unwrap();
    assert!(wal.progress().written >= range.last);
    wal.wait_durable(range.last).unwrap();
    assert!(wal.durable_lsn() >= 1);
}

#[test]
fn async_appends_and_tail_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let follower = {
            let wal = wal.clone();
            tokio::spawn(async move { wal.durable_async(20).await })
        };
        for lsn in 1..=20 {
            assert_eq!(wal.append_async(&[entry_for(lsn)]).await.unwrap().first, lsn);
        }
        follower.await.unwrap().unwrap();
    });
    assert_holds(&wal, 1, 20);
}

#[test]
fn many_async_writers_over_a_small_queue_are_each_acknowledged_once_durable() {
    // 32 tasks on two runtime threads, a queue with room for two records: tasks wait for
    // room and for acknowledgement on wakers, and each learns its own LSN only when durable.
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { max_queue_bytes: 2 * 600, max_record_bytes: 600, ..small_config() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut lsns: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..32u8)
            .map(|task| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for _ in 0..20 {
                        let range = wal
                            .append_async(&[NewEntry::data(Timestamp::ZERO, vec![task; 500])])
                            .await
                            .unwrap();
                        assert!(wal.durable_lsn() >= range.last, "acknowledged before durable");
                        mine.push((range.first, task));
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        for (lsn, task) in &all {
            assert_eq!(wal.read(*lsn).unwrap().payload[0], *task, "LSN {lsn} holds another task's bytes");
        }
        all.into_iter().map(|(lsn, _)| lsn).collect()
    });
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=640).collect::<Vec<_>>());
}

#[test]
fn closing_the_log_fails_async_writers_waiting_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { max_queue_bytes: 600, max_record_bytes: 600, ..small_config() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    wal.append_async(&[NewEntry::data(Timestamp::ZERO, vec![1u8; 500])]).await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        wal.close().unwrap();
        let mut acknowledged = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(range) => acknowledged.push(range.last),
                Err(WalError::Closed(_)) => {}
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        // Every task returned (none hangs on a waker nobody wakes). Closing flushed what was
        // queued, and every acknowledged append is durable and readable.
        assert_eq!(wal.last_lsn(), wal.durable_lsn());
        for lsn in acknowledged {
            assert!(lsn <= wal.durable_lsn());
            assert_eq!(wal.read(lsn).unwrap().payload.len(), 500);
        }
        assert!(matches!(
            wal.append_async(&[NewEntry::data(Timestamp::ZERO, vec![1u8; 8])]).await,
            Err(WalError::Closed(_))
        ));
    });
}

#[test]
fn a_small_queue_applies_backpressure_without_losing_entries() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { max_queue_bytes: 2048, ..small_config() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let wal = wal.clone();
            thread::spawn(move || {
                for _ in 0..50 {
                    wal.submit(&[NewEntry::data(Timestamp::ZERO, vec![9u8; 500])]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wal.wait_durable(200).unwrap();
    assert_eq!(wal.reader(1, 1 << 20).filter(|e| e.as_ref().unwrap().payload.len() == 500).count(), 200);
}

#[test]
fn closed_log_refuses_appends_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    wal.append(&[NewEntry::data(Timestamp::from_parts(1, 0, NodeId(2)).unwrap(), payload(1))]).unwrap();
    wal.close().unwrap();
    let err = wal.append(&[entry_for(2)]).unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    assert_holds(&wal, 1, 1);
}

#[test]
fn raw_reads_return_the_records_as_encoded_and_a_follower_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    let raw = wal.read_raw(30, 1500).unwrap();
    assert_eq!(raw.range.first, 30);
    assert!(raw.range.last > 30 && raw.range.last < 200, "{:?}", raw.range);
    let mut expect = Vec::new();
    for lsn in raw.range.first..=raw.range.last {
        themis_wal::record::encode(&mut expect, lsn, &entry_for(lsn));
    }
    assert_eq!(&raw.bytes[..], &expect[..]);

    // A follower appending the decoded entries at the same LSNs writes the same bytes.
    let follower_dir = tempfile::tempdir().unwrap();
    let (follower, _) = Wal::open(follower_dir.path(), small_config()).unwrap();
    let entries = wal.read_range(1, 1 << 20).unwrap();
    let news: Vec<NewEntry> = entries.iter().map(themis_wal::Entry::to_new).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let range = follower.submit_at_async(1, &news).await.unwrap();
        assert!(matches!(follower.submit_at_async(1, &news).await, Err(WalError::LsnMismatch { .. })));
        follower.durable_async(range.last).await.unwrap();
        let again = follower.append_at_async(range.last + 1, &[entry_for(range.last + 1)]).await.unwrap();
        assert_eq!(again.first, range.last + 1);
    });
    let theirs = follower.read_raw(1, 1 << 20).unwrap();
    assert_eq!(theirs.bytes, wal.read_raw(1, theirs.bytes.len()).unwrap().bytes);

    // Bounded by an LSN as well as by bytes (a shipper sends acknowledged records only).
    let upto = wal.read_raw_upto(30, 33, 1 << 20).unwrap();
    assert_eq!((upto.range.first, upto.range.last), (30, 33));
    assert_eq!(upto.bytes, raw.bytes.slice(..upto.bytes.len()));
    assert_eq!(wal.read_raw_upto(30, 30, 1 << 20).unwrap().range.last, 30);
    assert!(matches!(wal.read_raw_upto(31, 30, 1 << 20), Err(WalError::OutOfRange { lsn: 31, .. })));
    // The extent, from the index alone, is what the read returns.
    for (from, last, max) in [(30, 33, 1 << 20), (1, 200, 1500), (150, 200, 0), (199, 200, 1 << 20)] {
        let read = wal.read_raw_upto(from, last, max).unwrap();
        assert_eq!(
            wal.raw_extent(from, last, max).unwrap(),
            (read.range, read.bytes.len()),
            "{from} {last} {max}"
        );
    }
    assert!(matches!(wal.raw_extent(31, 30, 1 << 20), Err(WalError::OutOfRange { lsn: 31, .. })));
    assert!(matches!(wal.raw_extent(201, 300, 1 << 20), Err(WalError::OutOfRange { lsn: 201, .. })));
}

#[test]
fn restart_empties_the_log_and_continues_at_the_given_lsn_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 200);
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    wal.set_hold("slot", 1);
    wal.restart_at(1_001).unwrap();
    assert_eq!((wal.first_lsn(), wal.last_lsn(), wal.durable_lsn()), (1_001, 1_000, 1_000));
    assert_eq!(wal.segments().len(), 1, "every old segment is gone");
    assert!(matches!(wal.read(5), Err(WalError::OutOfRange { lsn: 5, first: 1_001, .. })));
    let err = wal.append_at(1_000, &[entry_for(1_000)]).unwrap_err();
    assert!(matches!(err, WalError::LsnMismatch { .. }), "{err}");
    wal.append_at(1_001, &[entry_for(1_001), entry_for(1_002)]).unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert_eq!((report.entries, report.last_lsn), (2, 1_002));
    assert_holds(&wal, 1_001, 1_002);
    // Restarting below the log is allowed too (a snapshot that truncates a suffix).
    wal.restart_at(3).unwrap();
    assert_eq!(wal.append(&[entry_for(3)]).unwrap().first, 3);
    for bad in [0, (1 << 62) + 1] {
        let err = wal.restart_at(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("restart at LSN {bad}")), "{err}");
    }
}

#[test]
fn every_fdatasync_is_reported_to_the_sync_observer() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&syncs);
    let config = WalConfig {
        on_sync: Some(Arc::new(move |took: std::time::Duration| {
            assert!(took < std::time::Duration::from_mins(1));
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
        ..common::small_config()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for lsn in 1..=5 {
        wal.append(&[common::entry_for(lsn)]).unwrap();
    }
    // Each durable append waited for a sync that covered it.
    assert!(syncs.load(std::sync::atomic::Ordering::Relaxed) >= 5);
}

#[test]
fn checked_records_are_appended_as_they_are_and_bad_positions_or_sizes_leave_no_trace() {
    use themis_wal::record::CheckedRecords;
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300);
    let (leader, _) = Wal::open(dir.path(), small_config()).unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (follower, _) = Wal::open(follower_dir.path(), small_config()).unwrap();

    // The whole log, shipped in raw chunks across many segments (both sides use 4 KiB
    // segments, so the follower rotates in the middle of chunks).
    let mut next = 1;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    while next <= 300 {
        let raw = leader.read_raw(next, 3000).unwrap();
        let checked = CheckedRecords::check(raw.bytes.clone(), next, 2048).unwrap();
        assert_eq!(checked.range(), raw.range);
        let range = if next % 2 == 0 {
            follower.append_checked(&checked).unwrap()
        } else {
            rt.block_on(follower.submit_checked_async(&checked)).unwrap()
        };
        assert_eq!(range, raw.range);
        next = range.last + 1;
    }
    follower.wait_durable(300).unwrap();
    assert_holds(&follower, 1, 300);

    // At the wrong position: refused, nothing queued.
    let raw = leader.read_raw(100, 500).unwrap();
    let stale = CheckedRecords::check(raw.bytes, 100, 2048).unwrap();
    assert!(matches!(
        follower.append_checked(&stale),
        Err(WalError::LsnMismatch { expected: 100, next: 301 })
    ));

    // A record above the follower's own limit: refused, nothing queued.
    let mut big = Vec::new();
    themis_wal::record::encode(&mut big, 301, &NewEntry::data(Timestamp::ZERO, vec![7u8; 3000]));
    let big = CheckedRecords::check(Bytes::from(big), 301, 1 << 20).unwrap();
    assert!(matches!(follower.append_checked(&big), Err(WalError::RecordTooLarge { .. })));
    assert_eq!(follower.next_lsn(), 301);

    // Entries appended after checked records continue the log, and all of it survives reopen.
    assert_eq!(follower.append(&[entry_for(301)]).unwrap().first, 301);
    follower.close().unwrap();
    drop(follower);
    let (follower, report) = Wal::open(follower_dir.path(), small_config()).unwrap();
    assert_eq!((report.entries, report.last_lsn), (301, 301));
    assert!(report.truncated.is_empty());
    assert_holds(&follower, 1, 301);
    // LSNs 1..=300 are the leader's bytes.
    for lsn in 1..=300 {
        assert_eq!(
            follower.read_raw(lsn, 1).unwrap().bytes,
            leader.read_raw(lsn, 1).unwrap().bytes,
            "LSN {lsn}"
        );
    }
}

#[test]
fn prefix_truncation_recycles_segment_files_and_the_log_reopens_clean() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { recycle_segments: 2, ..small_config() };
    let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
    for lsn in 1..=200 {
        wal.append(&[entry_for(lsn)]).unwrap();
    }
    let before = wal.segments().len();
    assert!(before > 6, "{before} segments");
    let first = wal.truncate_prefix(150).unwrap();
    // Two files are kept for reuse, filled to the segment size; the rest are deleted.
    let kept = kept_files(dir.path());
    assert_eq!(kept.len(), 2, "{kept:?}");
    for path in &kept {
        assert_eq!(std::fs::metadata(path).unwrap().len(), 4096);
    }
    assert_holds(&wal, first, 200);
    // The next two segments are the kept files; the one after is made afresh.
    let held = wal.segments().len();
    let mut lsn = 201;
    while wal.segments().len() < held + 3 {
        wal.append(&[entry_for(lsn)]).unwrap();
        lsn += 1;
    }
    let segments = segments(dir.path());
    let flags: Vec<bool> = segments.iter().map(|p| is_recycled(p)).collect();
    assert_eq!(flags.iter().filter(|&&r| r).count(), 2, "{flags:?}");
    assert!(!flags[flags.len() - 1], "the third new segment is a fresh one: {flags:?}");
    assert!(kept_files(dir.path()).is_empty());
    let last = lsn - 1;
    assert_holds(&wal, first, last);
    // Reopened after a clean close, the recycled segments hold exactly what was written:
    // the old records past the end are neither read nor reported as damage, even by the
    // strictest mode.
    wal.close().unwrap();
    drop(wal);
    let strict = WalConfig { recovery: themis_wal::RecoveryMode::AbsoluteConsistency, ..config.clone() };
    let (wal, report) = Wal::open(dir.path(), strict).unwrap();
    assert!(report.truncated.is_empty() && report.skipped.is_empty(), "{report:?}");
    assert_holds(&wal, first, last);
    drop(wal);
    // Appends continue in the last (recycled) segment and survive another reopen.
    let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
    let more = wal.append(&[entry_for(last + 1), entry_for(last + 2)]).unwrap();
    assert_eq!(more.first, last + 1);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, first, last + 2);
    // Suffix truncation into a recycled segment leaves no old bytes behind it.
    wal.truncate_suffix(last).unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_config()).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, first, last);
}

#[test]
fn nothing_is_recycled_when_turned_off_or_without_preallocation() {
    for config in [
        WalConfig { recycle_segments: 0, ..small_config() },
        WalConfig { preallocate: false, ..small_config() },
        WalConfig { fsync: FsyncPolicy::Never, ..small_config() },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
        for lsn in 1..=100 {
            wal.append(&[entry_for(lsn)]).unwrap();
        }
        let first = wal.truncate_prefix(90).unwrap();
        for lsn in 101..=200 {
            wal.append(&[entry_for(lsn)]).unwrap();
        }
        assert!(segments(dir.path()).iter().all(|p| !is_recycled(p)), "{config:?}");
        assert!(kept_files(dir.path()).is_empty());
        assert_holds(&wal, first, 200);
    }
}

#[test]
fn a_restart_to_a_lower_lsn_never_reuses_a_file_with_higher_lsns_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_config()).unwrap();
    for lsn in 1..=200 {
        wal.append(&[entry_for(lsn)]).unwrap();
    }
    wal.truncate_prefix(150).unwrap();
    assert_eq!(kept_files(dir.path()).len(), 2);
    // A snapshot installed at 9 restarts the log at 10: the kept files hold LSNs up to
    // about 140, which a recycled segment starting at 10 could take for its own.
    wal.restart_at(10).unwrap();
    assert!(kept_files(dir.path()).is_empty());
    for lsn in 10..=150 {
        assert_eq!(wal.append(&[entry_for(lsn)]).unwrap().first, lsn);
    }
    assert!(wal.segments().len() > 3);
    assert!(segments(dir.path()).iter().all(|p| !is_recycled(p)));
    drop(wal);
    let strict = WalConfig { recovery: themis_wal::RecoveryMode::AbsoluteConsistency, ..small_config() };
    let (wal, report) = Wal::open(dir.path(), strict).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_holds(&wal, 10, 150);
}

#[test]
fn a_directory_removed_under_the_log_fails_appends_with_an_error_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let (wal, _) = Wal::open(&path, small_config()).unwrap();
    wal.append(&[entry_for(1)]).unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        for n in 2..10_000u64 {
            if let Err(e) = wal.append(&[entry_for(n)]) {
                tx.send(e).unwrap();
                return;
            }
        }
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("an append fails once a segment cannot be made");
    assert!(matches!(err, WalError::Io { .. } | WalError::Closed(_)), "{err}");
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_wakes_tasks_waiting_for_durability() {
    // A task waits for an LSN not yet durable; the flush that would make it durable fails
    // without moving the progress. The task must learn of the failure, not wait forever
    // (found by a node whose WAL directory was removed: its driver hung instead of
    // stopping).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let (wal, _) = Wal::open(&path, small_config()).unwrap();
    let wal = Arc::new(wal);
    wal.append(&[entry_for(1)]).unwrap();
    let waiter = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.durable_async(1_000).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&path).unwrap();
    let appender = wal.clone();
    let failed = tokio::task::spawn_blocking(move || {
        (2..10_000u64).find_map(|n| appender.append(&[entry_for(n)]).err())
    })
    .await
    .unwrap();
    assert!(failed.is_some(), "an append fails once a segment cannot be made");
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the waiting task is woken by the failure")
        .unwrap();
    assert!(matches!(outcome, Err(WalError::Closed(_))), "{outcome:?}");
}
