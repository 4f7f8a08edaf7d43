//! Crash test with real processes: a child appends durably from four threads and prints
//! each acknowledged LSN; the parent kills it with SIGKILL at a random moment, recovers the
//! log, and checks that every acknowledged entry is present with identical bytes and that
//! nothing follows the tail. A second run also truncates the log's prefix as it goes, so
//! that new segments are recycled files with old records past their end.
//! `THEMIS_TEST_BUDGET=full` kills 100 times instead of 12; `THEMIS_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use themis_clock::Timestamp;
use themis_wal::{NewEntry, RecoveryMode, Wal, WalConfig};

const DIR_VAR: &str = "THEMIS_WAL_CRASH_DIR";
/// Set in the child when it should truncate the log's prefix as it appends.
const TRUNCATE_VAR: &str = "THEMIS_WAL_CRASH_TRUNCATE";
/// How many entries the truncating child keeps below the durable LSN.
const KEEP: u64 = 300;

fn config() -> WalConfig {
    // Small segments, so kills also land during rotation.
    WalConfig {
        segment_bytes: 64 << 10,
        max_record_bytes: 8 << 10,
        max_queue_bytes: 1 << 20,
        ..WalConfig::default()
    }
}

fn body(thread: u64, counter: u64) -> Vec<u8> {
    let len = ((thread * 7919 + counter * 104_729) % 2000) as usize;
    let mut out = format!("{thread}:{counter}:").into_bytes();
    out.extend((0..len).map(|i| (i as u64 ^ counter) as u8));
    out
}

/// The child: runs only when the parent sets the directory variable.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else { return };
    let (wal, _) = Wal::open(&dir, config()).expect("child opens the log");
    if std::env::var(TRUNCATE_VAR).is_ok() {
        let wal = wal.clone();
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_millis(2));
                wal.truncate_prefix(wal.durable_lsn().saturating_sub(KEEP)).expect("truncate");
            }
        });
    }
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                for counter in 0.. {
                    let batch = 1 + (counter % 3);
                    let entries: Vec<_> = (0..batch)
                        .map(|i| NewEntry::data(Timestamp::ZERO, body(t, counter * 4 + i)))
                        .collect();
                    let range = wal.append(&entries).expect("append");
                    let mut out = std::io::stdout().lock();
                    for i in 0..batch {
                        writeln!(out, "ack {} {t} {}", range.first + i, counter * 4 + i).unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_entry() {
    kill_and_recover(false);
}

#[test]
fn sigkill_never_loses_an_acknowledged_entry_in_recycled_segments() {
    kill_and_recover(true);
}

fn kill_and_recover(truncate: bool) {
    if std::env::var(DIR_VAR).is_ok() {
        return;
    }
    let seed =
        std::env::var("THEMIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let kills = if std::env::var("THEMIS_TEST_BUDGET").as_deref() == Ok("full") { 100 } else { 12 };
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let (mut torn_tails, mut recycled, mut checked) = (0, 0, 0);
    for kill in 0..kills {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if truncate {
            command.env(TRUNCATE_VAR, "1");
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledgement, then kill at a random moment.
        let first = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("ack ") => break line,
                Ok(_) => {}
                Err(err) => panic!("seed {seed} kill {kill}: the child acknowledged nothing ({err})"),
            }
        };
        thread::sleep(Duration::from_millis(rng.u64(1..80)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_run = 0;
        for line in std::iter::once(first).chain(rx.try_iter()) {
            let parts: Vec<u64> = line
                .strip_prefix("ack ")
                .map_or_else(Vec::new, |rest| rest.split(' ').map(|p| p.parse().unwrap()).collect());
            if let [lsn, t, counter] = parts[..] {
                assert!(
                    acked.insert(lsn, (t, counter)).is_none(),
                    "seed {seed}: LSN {lsn} acknowledged twice"
                );
                this_run += 1;
            }
        }
        assert!(this_run > 0);

        let context = format!("seed {seed} kill {kill}");
        let (wal, report) = Wal::open(dir.path(), config()).unwrap_or_else(|e| panic!("{context}: {e}"));
        if truncate {
            // Entries below the first held were truncated on purpose, never within KEEP
            // of what was durable. The child may have made a batch per thread durable
            // without printing it yet (4 threads, at most 3 entries each).
            let last_acked = acked.keys().next_back().copied().unwrap_or(0);
            let limit = (last_acked + 12).saturating_sub(KEEP).max(1);
            assert!(wal.first_lsn() <= limit, "{context}: truncated past LSN {limit}");
            acked.retain(|&lsn, _| lsn >= wal.first_lsn());
            recycled += wal.segments().iter().filter(|(path, _)| common::is_recycled(path)).count();
        }
        checked += acked.len();
        for (&lsn, &(t, counter)) in &acked {
            let entry =
                wal.read(lsn).unwrap_or_else(|e| panic!("{context}: acknowledged LSN {lsn} lost: {e}"));
            assert_eq!(&entry.payload[..], &body(t, counter)[..], "{context}: LSN {lsn} changed");
        }
        // Everything up to the tail reads cleanly, and nothing follows it.
        let mut count = 0u64;
        for entry in wal.reader(wal.first_lsn(), 1 << 20) {
            entry.unwrap_or_else(|e| panic!("{context}: {e}"));
            count += 1;
        }
        assert_eq!(count, wal.last_lsn() + 1 - wal.first_lsn(), "{context}");
        assert!(report.skipped.is_empty(), "{context}: {report:?}");
        torn_tails += report.truncated.len();
        drop(wal);
        let strict = WalConfig { recovery: RecoveryMode::AbsoluteConsistency, ..config() };
        Wal::open(dir.path(), strict).unwrap_or_else(|e| panic!("{context}: garbage after the tail: {e}"));
    }
    eprintln!(
        "seed {seed}: {kills} kills, {checked} acknowledged entries checked over all recoveries, \
         {torn_tails} torn tails truncated, {} segments, {recycled} recycled segments recovered",
        std::fs::read_dir(dir.path()).unwrap().count()
    );
    assert!(acked.len() > kills, "seed {seed}: too few acknowledgements to mean anything");
    if truncate {
        assert!(recycled > 0, "seed {seed}: no kill left a recycled segment to recover");
    }
}
