//! The WAL-backed Raft storage on real files: restarts, conflicts, compaction, snapshot
//! installs, a crash between the snapshot file and the log, and damaged state files.

use std::path::Path;

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_raft::durable::{decode_hard_state, encode_hard_state};
use themis_raft::{
    AckPolicy, ConfState, HardState, Snapshot, SnapshotMeta, Storage, StorageError, WalStorage,
};
use themis_wal::{Entry, EntryKind, FsyncPolicy, Lsn, WalConfig};

fn config() -> WalConfig {
    WalConfig { segment_bytes: 4096, max_record_bytes: 1024, max_queue_bytes: 4096, ..WalConfig::default() }
}

fn bootstrap() -> (ConfState, AckPolicy) {
    (ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]), AckPolicy::ASYNC)
}

fn entry(lsn: Lsn, term: u64) -> Entry {
    Entry {
        lsn,
        term,
        timestamp: Timestamp::ZERO,
        kind: EntryKind::DATA,
        payload: Bytes::from(format!("entry {lsn} of term {term} {}", "x".repeat(60))),
    }
}

fn entries(range: std::ops::RangeInclusive<Lsn>, term: u64) -> Vec<Entry> {
    range.map(|lsn| entry(lsn, term)).collect()
}

fn open(dir: &Path) -> WalStorage {
    WalStorage::open(dir, config(), Some(bootstrap())).unwrap().0
}

fn snapshot_at(storage: &WalStorage, lsn: Lsn, data: &'static [u8]) -> Snapshot {
    let meta = SnapshotMeta {
        lsn,
        term: storage.term(lsn).unwrap(),
        conf_state: ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        policy: AckPolicy::ASYNC,
    };
    Snapshot { meta, data: Bytes::from_static(data) }
}

#[test]
fn entries_terms_and_hard_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (1, 0));
    storage.append(&entries(1..=100, 1)).unwrap();
    storage.append(&entries(101..=150, 2)).unwrap();
    storage.set_hard_state(HardState { term: 2, vote: Some(NodeId(3)), commit: 120 }).unwrap();
    // A commit-only change is not written: after a restart the leader tells it again.
    storage.set_hard_state(HardState { term: 2, vote: Some(NodeId(3)), commit: 140 }).unwrap();
    drop(storage);

    let storage = open(dir.path());
    let state = storage.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState { term: 2, vote: Some(NodeId(3)), commit: 120 });
    assert_eq!(state.conf_state, bootstrap().0);
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (1, 150));
    assert_eq!((storage.term(0).unwrap(), storage.term(100).unwrap(), storage.term(101).unwrap()), (0, 1, 2));
    let read = storage.entries(90, 110, u64::MAX).unwrap();
    assert_eq!(read, entries(90..=100, 1).into_iter().chain(entries(101..=109, 2)).collect::<Vec<_>>());
    let bounded = storage.entries(1, 151, 500).unwrap();
    assert!(!bounded.is_empty() && bounded.len() < 10, "bounded by bytes: {}", bounded.len());
    assert_eq!(storage.entries(5, 6, 0).unwrap().len(), 1, "at least one entry");
    assert!(matches!(storage.entries(140, 152, u64::MAX), Err(StorageError::Unavailable { .. })));
    assert!(matches!(storage.term(151), Err(StorageError::Unavailable { lsn: 151, last_lsn: 150 })));
}

#[test]
fn a_conflicting_append_replaces_the_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    storage.append(&entries(1..=80, 1)).unwrap();
    storage.append(&entries(41..=50, 3)).unwrap();
    assert_eq!(storage.last_lsn().unwrap(), 50);
    assert_eq!((storage.term(40).unwrap(), storage.term(41).unwrap()), (1, 3));
    let err = storage.append(&entries(60..=61, 3)).unwrap_err();
    assert!(err.to_string().contains("gap after 50"), "{err}");
    let mut holey = entries(51..=53, 3);
    holey.remove(1);
    assert!(storage.append(&holey).unwrap_err().to_string().contains("not dense at LSN 53"));
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(storage.last_lsn().unwrap(), 50);
    assert_eq!(storage.entries(41, 51, u64::MAX).unwrap(), entries(41..=50, 3));
}

#[test]
fn compaction_moves_the_first_lsn_and_the_snapshot_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    storage.append(&entries(1..=300, 1)).unwrap();
    let segments = storage.wal().segments().len();
    storage.compact(&snapshot_at(&storage, 200, b"state at 200")).unwrap();
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (201, 300));
    assert!(storage.wal().segments().len() < segments, "whole segments below the snapshot are gone");
    assert!(matches!(
        storage.entries(150, 160, u64::MAX),
        Err(StorageError::Compacted { snapshot_lsn: 200, .. })
    ));
    assert!(matches!(storage.term(199), Err(StorageError::Compacted { .. })));
    assert_eq!(storage.term(200).unwrap(), 1);
    // An older snapshot changes nothing; one past the log is refused.
    storage.compact(&snapshot_at(&storage, 200, b"again")).unwrap();
    let mut past = snapshot_at(&storage, 300, b"");
    past.meta.lsn = 301;
    assert!(matches!(storage.compact(&past), Err(StorageError::Unavailable { lsn: 301, .. })));
    drop(storage);

    let storage = open(dir.path());
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (201, 300));
    let snapshot = storage.snapshot().unwrap();
    assert_eq!((snapshot.meta.lsn, &snapshot.data[..]), (200, &b"state at 200"[..]));
    assert_eq!(storage.initial_state().unwrap().hard_state.commit, 200, "commit is never below the snapshot");
}

#[test]
fn installing_a_snapshot_keeps_an_agreeing_suffix_and_restarts_a_diverging_log() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    storage.append(&entries(1..=100, 1)).unwrap();
    // Agrees with entry 60: entries 61..=100 stay.
    let agreeing = snapshot_at(&storage, 60, b"sixty");
    storage.install_snapshot(&agreeing).unwrap();
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (61, 100));
    // Beyond the log (or contradicting it): the log restarts after the snapshot.
    let beyond = Snapshot {
        meta: SnapshotMeta { lsn: 5_000, term: 4, ..agreeing.meta.clone() },
        data: Bytes::from_static(b"far ahead"),
    };
    storage.install_snapshot(&beyond).unwrap();
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (5_001, 5_000));
    assert_eq!(storage.hard_state().commit, 5_000);
    storage.append(&entries(5_001..=5_010, 4)).unwrap();
    drop(storage);
    let storage = open(dir.path());
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (5_001, 5_010));
    assert_eq!(storage.term(5_000).unwrap(), 4);
    assert_eq!(&storage.snapshot().unwrap().data[..], b"far ahead");
}

#[test]
fn a_crash_between_the_snapshot_file_and_the_log_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    storage.append(&entries(1..=50, 1)).unwrap();
    let mut snapshot = snapshot_at(&storage, 50, b"installed");
    snapshot.meta.lsn = 900;
    snapshot.meta.term = 7;
    drop(storage);
    // The snapshot file was replaced, then the process died before the log restarted.
    themis_raft::durable::write_snapshot_file(dir.path(), &snapshot).unwrap();
    let storage = open(dir.path());
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (901, 900));
    assert_eq!(storage.wal().first_lsn(), 901);
    // And with the log deleted entirely (a crash inside `restart_at`).
    drop(storage);
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let storage = open(dir.path());
    assert_eq!((storage.first_lsn().unwrap(), storage.last_lsn().unwrap()), (901, 900));
}

#[test]
fn damaged_state_files_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    storage.set_hard_state(HardState { term: 3, vote: Some(NodeId(1)), commit: 0 }).unwrap();
    drop(storage);
    let hs_path = dir.path().join("hard-state");
    let good = std::fs::read(&hs_path).unwrap();
    assert_eq!(decode_hard_state(&hs_path, &good).unwrap().term, 3);
    for (i, needle) in [(0, "wrong magic"), (8, "unknown version"), (16, "CRC32C mismatch")] {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        std::fs::write(&hs_path, &bad).unwrap();
        let err = WalStorage::open(dir.path(), config(), Some(bootstrap())).unwrap_err();
        assert!(err.to_string().contains(needle) && err.to_string().contains("hard-state"), "{err}");
    }
    std::fs::write(&hs_path, &good[..10]).unwrap();
    let err = WalStorage::open(dir.path(), config(), Some(bootstrap())).unwrap_err();
    assert!(err.to_string().contains("shorter than the 20-byte frame"), "{err}");
    std::fs::write(&hs_path, encode_hard_state(&HardState::default())).unwrap();

    let snap_path = dir.path().join("snapshot");
    let mut bad = std::fs::read(&snap_path).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&snap_path, &bad).unwrap();
    let err = WalStorage::open(dir.path(), config(), Some(bootstrap())).unwrap_err();
    assert!(err.to_string().contains("snapshot") && err.to_string().contains("CRC32C"), "{err}");
    std::fs::remove_file(&snap_path).unwrap();
    let err = WalStorage::open(dir.path(), config(), None).unwrap_err();
    assert!(err.to_string().contains("no bootstrap membership"), "{err}");
}

#[test]
fn a_single_voter_raw_node_commits_over_wal_storage_and_restarts_with_it() {
    use themis_raft::{Config, Ed25519Votes, RawNode};
    let dir = tempfile::tempdir().unwrap();
    let boot = Some((ConfState::with_voters([NodeId(1)]), AckPolicy::ASYNC));
    let wal = WalConfig { fsync: FsyncPolicy::Always, ..config() };
    let signer = || Box::new(Ed25519Votes::from_seed(NodeId(1), &[1; 32]).unwrap());
    let run = |storage: WalStorage, propose: bool| {
        let mut node =
            RawNode::new(Config::new(NodeId(1), "t"), storage.clone(), signer(), || Timestamp::ZERO).unwrap();
        node.campaign().unwrap();
        let mut applied = Vec::new();
        for round in 0..6 {
            if propose && round == 2 {
                node.propose(Bytes::from_static(b"hello")).unwrap();
            }
            if !node.has_ready() {
                continue;
            }
            let ready = node.ready().unwrap();
            storage.append(&ready.entries).unwrap();
            if let Some(hs) = ready.hard_state {
                storage.set_hard_state(hs).unwrap();
            }
            applied.extend(ready.committed_entries.iter().map(|e| (e.lsn, e.kind, e.payload.clone())));
            node.advance().unwrap();
        }
        applied
    };
    let (storage, _) = WalStorage::open(dir.path(), wal.clone(), boot.clone()).unwrap();
    let applied = run(storage, true);
    assert!(applied.iter().any(|(_, k, p)| *k == EntryKind::DATA && &p[..] == b"hello"), "{applied:?}");
    let (storage, _) = WalStorage::open(dir.path(), wal, boot).unwrap();
    assert!(storage.last_lsn().unwrap() >= 2);
    let data = storage.entries(1, storage.last_lsn().unwrap() + 1, u64::MAX).unwrap();
    assert!(data.iter().any(|e| &e.payload[..] == b"hello"), "the entry is in the log after a restart");
}

#[test]
fn wal_and_file_failures_are_typed_and_keep_their_source() {
    use std::error::Error as _;
    // A segment whose header is garbage: the WAL refuses it, and says why underneath.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("wal")).unwrap();
    std::fs::write(dir.path().join("wal").join(themis_wal::segment::file_name(1)), vec![0xAB; 4096]).unwrap();
    let err = WalStorage::open(dir.path(), config(), Some(bootstrap())).unwrap_err();
    assert!(matches!(err, StorageError::Wal(_)), "{err:?}");
    let source = err.source().expect("the WAL's error is the source");
    assert!(source.downcast_ref::<themis_wal::WalError>().is_some(), "{source:?}");
    // The hard state is a directory: an I/O error naming the file, with the OS error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("hard-state")).unwrap();
    let err = WalStorage::open(dir.path(), config(), Some(bootstrap())).unwrap_err();
    match &err {
        StorageError::Io { op, path, .. } => {
            assert_eq!(*op, "read");
            assert!(path.ends_with("hard-state"), "{path:?}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(err.source().and_then(|s| s.downcast_ref::<std::io::Error>()).is_some());
    assert!(err.to_string().contains("hard-state"), "{err}");
}
