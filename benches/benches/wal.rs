//! themis-wal: durable append under group commit against a raw write + fdatasync loop of
//! the same bytes in the same batches; replay and recovery throughput of a large log.
//!
//! `cargo bench -p themis-benches --bench wal`. `THEMIS_BENCH_WAL_MIB` sizes the replay
//! log (default 1024 MiB).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use themis_benches::{Comparison, Target};
use themis_replication::clock::Timestamp;
use themis_replication::wal::{FsyncPolicy, NewEntry, Wal, WalConfig, record};

const SIZES: [usize; 3] = [128, 1024, 16 * 1024];
const WRITERS: [usize; 3] = [1, 8, 64];
/// Bytes of the raw baseline's file, zero-filled, that its writes cycle through.
const RAW_REGION: u64 = 64 << 20;

/// `writers` threads that each append `iters` single-record batches on command; returns
/// the time from the start barrier until the last one is done.
struct WriterPool {
    go: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
    start: Arc<Barrier>,
}

impl WriterPool {
    fn new(wal: &Wal, writers: usize, payload: usize) -> WriterPool {
        let (done_tx, done) = mpsc::channel();
        let start = Arc::new(Barrier::new(writers + 1));
        let go = (0..writers)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<u64>();
                let wal = wal.clone();
                let done = done_tx.clone();
                let start = start.clone();
                thread::spawn(move || {
                    let entry = [NewEntry::data(Timestamp::ZERO, vec![0xa5u8; payload])];
                    for iters in rx {
                        start.wait();
                        for _ in 0..iters {
                            wal.append(&entry).expect("append");
                        }
                        done.send(()).unwrap();
                    }
                });
                tx
            })
            .collect();
        WriterPool { go, done, start }
    }

    fn run(&self, iters: u64) -> Duration {
        for tx in &self.go {
            tx.send(iters).unwrap();
        }
        self.start.wait();
        let began = Instant::now();
        for _ in &self.go {
            self.done.recv().unwrap();
        }
        began.elapsed()
    }
}

/// `writers` async tasks on a two-thread runtime that each append `iters` single-record
/// batches with `append_async`; returns the time until the last one is done.
fn run_tasks(
    runtime: &tokio::runtime::Runtime,
    wal: &Wal,
    writers: usize,
    payload: usize,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (wal, start) = (wal.clone(), start.clone());
                tokio::spawn(async move {
                    let entry = [NewEntry::data(Timestamp::ZERO, vec![0xa5u8; payload])];
                    start.wait().await;
                    for _ in 0..iters {
                        wal.append_async(&entry).await.expect("append");
                    }
                })
            })
            .collect();
        start.wait().await;
        let began = Instant::now();
        for task in tasks {
            task.await.unwrap();
        }
        began.elapsed()
    })
}

fn durable_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("wal_append");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for size in SIZES {
        for writers in WRITERS {
            let id = format!("{size}B_{writers}w");
            // One iteration: every writer appends one record, durably.
            group.throughput(Throughput::Elements(writers as u64));
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
            let pool = WriterPool::new(&wal, writers, size);
            group.bench_function(BenchmarkId::new("themis", &id), |b| b.iter_custom(|iters| pool.run(iters)));
            drop(pool);
            // The same writers as async tasks: a wake-up is a task switch, not a thread's.
            group.bench_function(BenchmarkId::new("themis_async", &id), |b| {
                b.iter_custom(|iters| run_tasks(&runtime, &wal, writers, size, iters));
            });
            wal.close().unwrap();

            // The baseline: the same records, framed the same way, written as one batch of
            // `writers` records per write + fdatasync: the ideal group commit. Its file is
            // zero-filled first, as the log's segments are, so both sides sync data only.
            let mut batch = Vec::new();
            for lsn in 0..writers as u64 {
                record::encode(&mut batch, lsn + 1, &NewEntry::data(Timestamp::ZERO, vec![0xa5u8; size]));
            }
            let raw = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let file = raw.as_file();
            let zeros = vec![0u8; 1 << 20];
            for mib in 0..RAW_REGION >> 20 {
                file.write_all_at(&zeros, mib << 20).unwrap();
            }
            file.sync_all().unwrap();
            let mut at = 0u64;
            group.bench_function(BenchmarkId::new("raw_fdatasync", &id), |b| {
                b.iter(|| {
                    file.write_all_at(&batch, at).unwrap();
                    file.sync_data().unwrap();
                    at += batch.len() as u64;
                    if at + batch.len() as u64 > RAW_REGION {
                        at = 0;
                    }
                });
            });
        }
    }
    group.finish();
}

/// Writes a log of about `mib` MiB of 1 KiB records (no fsync: the page cache is what
/// replay is measured from).
fn build_log(mib: u64) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let batch: Vec<_> = (0..256).map(|_| NewEntry::data(Timestamp::ZERO, vec![0x3cu8; 1024 - 44])).collect();
    let total = mib << 20;
    let mut written = 0;
    while written < total {
        wal.submit(&batch).unwrap();
        written += 256 * 1024;
    }
    wal.close().unwrap();
    (dir, written)
}

fn replay(c: &mut Criterion) -> u64 {
    let mib = std::env::var("THEMIS_BENCH_WAL_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let (dir, bytes) = build_log(mib);
    let config = || WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() };
    let mut group = c.benchmark_group("wal_replay");
    group.sample_size(10).throughput(Throughput::Bytes(bytes));
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    group.bench_function("themis_reader", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for entry in wal.reader(1, 4 << 20) {
                n += entry.unwrap().payload.len() as u64;
            }
            n
        });
    });
    wal.close().unwrap();
    drop(wal);
    group.bench_function("themis_recovery_open", |b| {
        b.iter(|| {
            let (wal, report) = Wal::open(dir.path(), config()).unwrap();
            wal.close().unwrap();
            report.entries
        });
    });
    // Baseline: read the same files into memory, with no checks at all.
    group.bench_function("raw_read", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let mut file = File::open(entry.unwrap().path()).unwrap();
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut buf).unwrap();
                n += buf.len() as u64;
            }
            std::io::sink().write_all(&n.to_le_bytes()).unwrap();
            n
        });
    });
    group.finish();
    bytes
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    durable_append(&mut criterion);
    let log_bytes = replay(&mut criterion);
    criterion.final_summary();

    let ids: Vec<(String, String, String, usize, usize)> = SIZES
        .iter()
        .flat_map(|&size| {
            WRITERS.iter().flat_map(move |&w| {
                [("threads", "themis"), ("async tasks", "themis_async")].map(|(kind, name)| {
                    (
                        format!("durable append {size} B, {w} writers ({kind})"),
                        format!("wal_append/{name}/{size}B_{w}w"),
                        format!("wal_append/raw_fdatasync/{size}B_{w}w"),
                        size,
                        w,
                    )
                })
            })
        })
        .collect();
    let targets: Vec<Vec<Target>> = ids
        .iter()
        .map(|&(_, _, _, size, w)| {
            let mut t = vec![Target::NotSlowerThan(0.7)];
            if size == 128 && w == 64 {
                t.push(Target::AtLeastPerSec { per_iter: 64.0, min_per_sec: 500_000.0, unit: "records" });
            }
            t
        })
        .collect();
    let mut comparisons: Vec<Comparison<'_>> = ids
        .iter()
        .zip(&targets)
        .map(|((what, ours, base, _, _), targets)| Comparison { what, ours, baseline: base, targets })
        .collect();
    let replay_target = [Target::AtLeastPerSec { per_iter: log_bytes as f64, min_per_sec: 1e9, unit: "B" }];
    comparisons.push(Comparison {
        what: "replay (reader), vs raw read of the files",
        ours: "wal_replay/themis_reader",
        baseline: "wal_replay/raw_read",
        targets: &replay_target,
    });
    comparisons.push(Comparison {
        what: "recovery (open + scan), vs raw read",
        ours: "wal_replay/themis_recovery_open",
        baseline: "wal_replay/raw_read",
        targets: &replay_target,
    });
    themis_benches::report(started, &comparisons);
}
