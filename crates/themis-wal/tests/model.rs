//! The log against a model (a map from LSN to payload) under random sequences of appends,
//! prefix and suffix truncation, restarts, clean reopens and torn last writes, on real
//! files with small segments, so that segments rotate, are recycled and are recovered
//! all the time. Each run prints its seed on failure (`THEMIS_SEED=<n>` replays it);
//! `THEMIS_TEST_BUDGET=full` runs 60 seeds instead of 12.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use themis_clock::Timestamp;
use themis_wal::segment::{self, OnBadRecord};
use themis_wal::{Lsn, NewEntry, RecoveryMode, Wal, WalConfig};

/// What the log should hold: consecutive LSNs from `next - entries.len()`.
struct Model {
    entries: BTreeMap<Lsn, Bytes>,
    next: Lsn,
}

impl Model {
    fn first(&self) -> Lsn {
        self.entries.keys().next().copied().unwrap_or(self.next)
    }
}

/// The log's configuration for the run with `seed`: three seeds in four recycle
/// segment files (consecutive seeds take every choice).
fn config(seed: u64) -> WalConfig {
    WalConfig {
        segment_bytes: 4096,
        max_record_bytes: 2048,
        // The tail window is half a segment, so damage can lie beyond it.
        max_queue_bytes: 2048,
        recycle_segments: [2, 4, 1, 0][(seed % 4) as usize],
        ..WalConfig::default()
    }
}

fn check(wal: &Wal, model: &Model, context: &str) {
    assert_eq!(wal.next_lsn(), model.next, "{context}: next LSN");
    assert_eq!(wal.first_lsn(), model.first(), "{context}: first LSN");
    let mut expect = model.entries.iter();
    for entry in wal.reader(model.first(), 2048) {
        let entry = entry.unwrap_or_else(|e| panic!("{context}: {e}"));
        let (&lsn, payload) = expect.next().unwrap_or_else(|| panic!("{context}: extra LSN {}", entry.lsn));
        assert_eq!((entry.lsn, &entry.payload), (lsn, payload), "{context}");
    }
    assert!(expect.next().is_none(), "{context}: entries missing");
}

/// Writes garbage where the next record of the last segment would start, as a write that
/// reached the disk only in part, without its terminator; returns whether it did, and
/// whether that segment is a recycled file.
fn tear_last_write(dir: &Path, rng: &mut fastrand::Rng) -> (bool, bool) {
    let Some(last) = common::segments(dir).pop() else { return (false, false) };
    let mut bytes = fs::read(&last).unwrap();
    let scan = segment::scan(&Bytes::from(bytes.clone()), 2048, OnBadRecord::Stop).unwrap();
    let end = scan.valid_len as usize;
    let len = rng.usize(1..=2048).min(4096 - end);
    if len == 0 {
        return (false, scan.header.recycled);
    }
    if bytes.len() < end + len {
        bytes.resize(end + len, 0);
    }
    for b in &mut bytes[end..end + len] {
        *b = rng.u8(1..);
    }
    fs::write(&last, bytes).unwrap();
    (true, scan.header.recycled)
}

/// How often a run met what it is for.
#[derive(Default)]
struct Seen {
    torn_recycled: usize,
    torn_fresh: usize,
}

fn run(seed: u64, ops: usize, met: &mut Seen) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = config(seed);
    let (mut wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
    let mut model = Model { entries: BTreeMap::new(), next: 1 };
    let mut counter = 0u64;
    for op in 0..ops {
        let context = format!("seed {seed} op {op} ({config:?})");
        match rng.u32(..100) {
            0..72 => {
                let batch: Vec<_> = (0..rng.usize(1..=3))
                    .map(|_| {
                        counter += 1;
                        let mut payload = counter.to_le_bytes().to_vec();
                        payload.resize(8 + rng.usize(0..600), (counter % 251) as u8);
                        NewEntry::data(Timestamp::ZERO, payload)
                    })
                    .collect();
                let range = wal.append(&batch).unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_eq!(range.first, model.next, "{context}");
                for entry in batch {
                    model.entries.insert(model.next, entry.payload);
                    model.next += 1;
                }
            }
            72..84 => {
                let below = rng.u64(model.first()..=model.next);
                let first = wal.truncate_prefix(below).unwrap_or_else(|e| panic!("{context}: {e}"));
                assert!(
                    first <= below.max(model.first()) && first >= model.first(),
                    "{context}: first {first}"
                );
                model.entries.retain(|&lsn, _| lsn >= first);
            }
            84..90 => {
                let after = rng.u64(model.first() - 1..model.next);
                wal.truncate_suffix(after).unwrap_or_else(|e| panic!("{context}: {e}"));
                model.entries.retain(|&lsn, _| lsn <= after);
                model.next = after + 1;
            }
            90..92 => {
                let next = rng.u64(1..=model.next + 50);
                wal.restart_at(next).unwrap_or_else(|e| panic!("{context}: {e}"));
                model.entries.clear();
                model.next = next;
            }
            92..96 => {
                wal.close().unwrap();
                drop(wal);
                let strict = WalConfig { recovery: RecoveryMode::AbsoluteConsistency, ..config.clone() };
                let (reopened, report) =
                    Wal::open(dir.path(), strict).unwrap_or_else(|e| panic!("{context}: {e}"));
                assert!(report.truncated.is_empty() && report.skipped.is_empty(), "{context}: {report:?}");
                wal = reopened;
            }
            _ => {
                wal.close().unwrap();
                drop(wal);
                let (torn, recycled) = tear_last_write(dir.path(), &mut rng);
                match (torn, recycled) {
                    (true, true) => met.torn_recycled += 1,
                    (true, false) => met.torn_fresh += 1,
                    _ => {}
                }
                let (reopened, report) =
                    Wal::open(dir.path(), config.clone()).unwrap_or_else(|e| panic!("{context}: {e}"));
                assert!(report.skipped.is_empty(), "{context}: {report:?}");
                assert_eq!(report.truncated.len(), usize::from(torn), "{context}: {report:?}");
                if let Some(cut) = report.truncated.first() {
                    assert!(cut.reason.starts_with("torn tail"), "{context}: {report:?}");
                    assert_eq!(cut.lsn, model.next, "{context}: {report:?}");
                }
                wal = reopened;
            }
        }
        check(&wal, &model, &context);
    }
}

#[test]
fn the_log_matches_its_model_through_truncation_recycling_and_recovery() {
    let seeds = if std::env::var("THEMIS_TEST_BUDGET").as_deref() == Ok("full") { 60 } else { 12 };
    let replay: Option<u64> = std::env::var("THEMIS_SEED").ok().and_then(|s| s.parse().ok());
    let base = replay.unwrap_or_else(|| fastrand::u64(..));
    let mut met = Seen::default();
    let runs = if replay.is_some() { 1 } else { seeds };
    for i in 0..runs {
        run(base.wrapping_add(i), 400, &mut met);
    }
    eprintln!(
        "{runs} runs: {} torn writes in recycled last segments, {} in fresh ones",
        met.torn_recycled, met.torn_fresh
    );
    if replay.is_none() {
        assert!(met.torn_recycled > 0, "no run tore a write in a recycled segment");
    }
}
