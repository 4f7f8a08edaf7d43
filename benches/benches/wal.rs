//! themis-wal: durable append under group commit against a raw write + fdatasync loop of
//! the same bytes in the same batches; replay and recovery throughput of a large log.
//!
//! `cargo bench -p themis-benches --bench wal`. `THEMIS_BENCH_WAL_MIB` sizes the replay
//! log (default 1024 MiB).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Poll, Waker};
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

/// Truncates the log's prefix every 2 ms, keeping its last two segments, as a database
/// that checkpoints does: the segments it drops are recycled into new ones.
struct Truncator {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Truncator {
    fn start(wal: &Wal) -> Truncator {
        let stop = Arc::new(AtomicBool::new(false));
        let (wal, flag) = (wal.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(2));
                let segments = wal.segments();
                if segments.len() > 2 {
                    wal.truncate_prefix(segments[segments.len() - 2].1).expect("truncate");
                }
            }
        });
        Truncator { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap();
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

/// The raw baseline: the same records, framed the same way, written as one batch of
/// `writers` records per write + fdatasync (the ideal group commit), cycling through a
/// zero-filled region, as the log's segments are zero-filled, so both sides sync data only.
struct RawLoop {
    file: tempfile::NamedTempFile,
    batch: Vec<u8>,
    at: u64,
}

impl RawLoop {
    fn new(writers: usize, size: usize) -> RawLoop {
        let mut batch = Vec::new();
        for lsn in 0..writers as u64 {
            record::encode(&mut batch, lsn + 1, &NewEntry::data(Timestamp::ZERO, vec![0xa5u8; size]));
        }
        let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for mib in 0..RAW_REGION >> 20 {
            file.as_file().write_all_at(&zeros, mib << 20).unwrap();
        }
        file.as_file().sync_all().unwrap();
        RawLoop { file, batch, at: 0 }
    }

    fn round(&mut self) {
        let file = self.file.as_file();
        file.write_all_at(&self.batch, self.at).unwrap();
        file.sync_data().unwrap();
        self.at += self.batch.len() as u64;
        if self.at + self.batch.len() as u64 > RAW_REGION {
            self.at = 0;
        }
    }
}

/// What every round of group commit costs beyond the raw loop when each writer is a
/// thread or a task that waits for its acknowledgement: the writers the sync covers are
/// woken, and each runs once (here: checks in) before the next group is complete. The
/// bench thread plays the flusher, a thread outside the writers. A round wakes them all
/// and returns when the last has checked in.
struct Wakeable {
    round: AtomicU64,
    arrived: AtomicUsize,
    stop: AtomicBool,
    waiters: usize,
    flusher: thread::Thread,
    /// Task writers' wakers, registered under the lock as the log's ack waiters are.
    wakers: Mutex<Vec<Waker>>,
}

impl Wakeable {
    fn new(waiters: usize) -> Arc<Wakeable> {
        Arc::new(Wakeable {
            round: AtomicU64::new(0),
            arrived: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            waiters,
            flusher: thread::current(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    fn check_in(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.waiters {
            self.flusher.unpark();
        }
    }

    /// Waits, parked, until every waiter has checked in.
    fn wait_all(&self) {
        while self.arrived.load(Ordering::Acquire) < self.waiters {
            thread::park();
        }
        self.arrived.store(0, Ordering::Release);
    }
}

/// `waiters` parked threads, woken by `unpark` as the log's blocking writers are.
struct ThreadWaiters {
    shared: Arc<Wakeable>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ThreadWaiters {
    fn new(waiters: usize) -> ThreadWaiters {
        let shared = Wakeable::new(waiters);
        let threads = (0..waiters)
            .map(|_| {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut seen = 0;
                    loop {
                        let round = shared.round.load(Ordering::Acquire);
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        if round == seen {
                            thread::park();
                            continue;
                        }
                        seen = round;
                        shared.check_in();
                    }
                })
            })
            .collect();
        ThreadWaiters { shared, threads }
    }

    fn round(&self) {
        self.shared.round.fetch_add(1, Ordering::AcqRel);
        for t in &self.threads {
            t.thread().unpark();
        }
        self.shared.wait_all();
    }
}

impl Drop for ThreadWaiters {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            t.join().unwrap();
        }
    }
}

/// `waiters` tasks on `runtime` whose wakers the round wakes from the bench thread, as
/// the flusher wakes the log's async writers.
struct TaskWaiters {
    shared: Arc<Wakeable>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskWaiters {
    fn new(runtime: &tokio::runtime::Runtime, waiters: usize) -> TaskWaiters {
        let shared = Wakeable::new(waiters);
        let tasks = (0..waiters)
            .map(|_| {
                let shared = shared.clone();
                runtime.spawn(async move {
                    let mut seen = 0;
                    loop {
                        seen = std::future::poll_fn(|cx| {
                            let mut wakers = shared.wakers.lock().unwrap();
                            let round = shared.round.load(Ordering::Acquire);
                            if round == seen && !shared.stop.load(Ordering::Acquire) {
                                wakers.push(cx.waker().clone());
                                return Poll::Pending;
                            }
                            Poll::Ready(round)
                        })
                        .await;
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        shared.check_in();
                    }
                })
            })
            .collect();
        TaskWaiters { shared, tasks }
    }

    fn round(&self) {
        let woken = {
            let mut wakers = self.shared.wakers.lock().unwrap();
            self.shared.round.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *wakers)
        };
        woken.into_iter().for_each(Waker::wake);
        self.shared.wait_all();
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) {
        let woken = {
            let mut wakers = self.shared.wakers.lock().unwrap();
            self.shared.stop.store(true, Ordering::Release);
            std::mem::take(&mut *wakers)
        };
        woken.into_iter().for_each(Waker::wake);
        for task in self.tasks {
            runtime.block_on(task).unwrap();
        }
    }
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
            // The same threads with the log truncated as it goes: new segments are recycled
            // files, not zero-filled ones, as the raw loop rewrites one region.
            let truncator = Truncator::start(&wal);
            let pool = WriterPool::new(&wal, writers, size);
            group.bench_function(BenchmarkId::new("themis_truncated", &id), |b| {
                b.iter_custom(|iters| pool.run(iters));
            });
            drop(pool);
            group.bench_function(BenchmarkId::new("themis_async_truncated", &id), |b| {
                b.iter_custom(|iters| run_tasks(&runtime, &wal, writers, size, iters));
            });
            truncator.stop();
            wal.close().unwrap();

            let mut raw = RawLoop::new(writers, size);
            group.bench_function(BenchmarkId::new("raw_fdatasync", &id), |b| b.iter(|| raw.round()));
            if writers > 1 {
                // The raw loop plus the wake-ups no writer-per-thread (or per-task) design
                // avoids: the best either kind of writer can reach on this machine. With
                // threads, the writer that syncs is one of them and wakes the others.
                let threads = ThreadWaiters::new(writers - 1);
                group.bench_function(BenchmarkId::new("raw_fdatasync_wake_threads", &id), |b| {
                    b.iter(|| {
                        raw.round();
                        threads.round();
                    });
                });
                drop(threads);
                let tasks = TaskWaiters::new(&runtime, writers);
                group.bench_function(BenchmarkId::new("raw_fdatasync_wake_tasks", &id), |b| {
                    b.iter(|| {
                        raw.round();
                        tasks.round();
                    });
                });
                tasks.stop(&runtime);
            }
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
    // Open of a log whose last segment is a recycled file: recovery scans the old bytes
    // past its end for any record that could follow (wal-format.md, Recycling).
    let (recycled_dir, recycled_bytes) = build_recycled_log();
    group.throughput(Throughput::Bytes(recycled_bytes));
    group.bench_function("themis_recovery_open_recycled", |b| {
        b.iter(|| {
            let (wal, report) = Wal::open(recycled_dir.path(), WalConfig::default()).unwrap();
            assert!(report.truncated.is_empty());
            wal.close().unwrap();
            report.entries
        });
    });
    group.finish();
    bytes
}

/// A log of two default (64 MiB) segments whose last one is a recycled file with 1 MiB of
/// records in it and 63 MiB of the old segment's records after them; returns its bytes.
fn build_recycled_log() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let batch: Vec<_> = (0..256).map(|_| NewEntry::data(Timestamp::ZERO, vec![0x3cu8; 1024 - 44])).collect();
    while wal.segments().len() < 3 {
        wal.append(&batch).unwrap();
    }
    wal.truncate_prefix(wal.segments()[2].1).unwrap();
    while wal.segments().len() < 2 {
        wal.append(&batch).unwrap();
    }
    for _ in 0..4 {
        wal.append(&batch).unwrap();
    }
    wal.close().unwrap();
    let bytes = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    (dir, bytes)
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
                [
                    ("threads", "themis"),
                    ("async tasks", "themis_async"),
                    ("threads, log truncated as it goes", "themis_truncated"),
                    ("async tasks, log truncated as it goes", "themis_async_truncated"),
                ]
                .map(|(kind, name)| {
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
    // Against the raw loop plus the wake-ups each kind of writer needs (informational).
    let ceilings: Vec<(String, String, String)> = SIZES
        .iter()
        .flat_map(|&size| {
            WRITERS.iter().filter(|&&w| w > 1).flat_map(move |&w| {
                [("threads", "themis", "threads"), ("async tasks", "themis_async", "tasks")].map(
                    |(kind, name, wake)| {
                        (
                            format!("durable append {size} B, {w} writers ({kind}), vs raw + waking them"),
                            format!("wal_append/{name}/{size}B_{w}w"),
                            format!("wal_append/raw_fdatasync_wake_{wake}/{size}B_{w}w"),
                        )
                    },
                )
            })
        })
        .collect();
    comparisons.extend(ceilings.iter().map(|(what, ours, baseline)| Comparison {
        what,
        ours,
        baseline,
        targets: &[],
    }));
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
