//! The log: configuration, the flusher thread, reads, truncation and retention holds.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_clock::{Hlc, PhysicalClock, Timestamp};
use tokio::sync::watch;

use crate::commit::{AckOn, Batch, Coordinator, Enqueued, Progress, Sink, SyncRule};
use crate::entry::{Entry, Lsn, LsnRange, NewEntry};
use crate::error::WalError;
use crate::record::{self, CheckedRecords, RECORD_HEADER_LEN};
use crate::recovery::{self, RecoveryMode, RecoveryReport, fsync_dir};
use crate::segment::{self, HEADER_LEN, SKIPPED, SegmentHeader};

/// When appended bytes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Group commit: an append returns once an `fdatasync` covers it.
    #[default]
    Always,
    /// An append returns once written; the flusher syncs at most this many milliseconds
    /// after a write. A crash can lose up to that much acknowledged data.
    Interval(u64),
    /// Never sync (tests only): a crash can lose anything the OS had not written back.
    Never,
}

/// The highest LSN [`Wal::restart_at`] accepts (2^62, the wire limit), so LSN arithmetic
/// never overflows.
pub const MAX_RESTART_LSN: Lsn = 1 << 62;

/// A source of HLC timestamps (segment creation times).
pub type ClockFn = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Told how long each `fdatasync` of the log took (for a latency histogram).
pub type SyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// How a log is laid out and written.
#[derive(Clone)]
pub struct WalConfig {
    /// Segment size in bytes (a segment is sealed when the next record would pass it).
    /// Default 64 MiB; 4 KiB to 4 GiB.
    pub segment_bytes: u64,
    /// Largest record, framing included. Default 16 MiB. Enforced on write and on read.
    pub max_record_bytes: usize,
    /// Bound on bytes queued for the flusher; appenders wait beyond it. Also the largest
    /// single write, and so the most of the tail a crash can tear. Default 32 MiB; at
    /// least `max_record_bytes`.
    pub max_queue_bytes: usize,
    /// When bytes are synced.
    pub fsync: FsyncPolicy,
    /// Longest the flusher waits, under `Always`, for the writers of its previous batch to
    /// rejoin before it syncs a smaller group (PostgreSQL's `commit_delay`). Default
    /// 200 µs; zero turns it off; at most 100 ms.
    pub commit_delay: Duration,
    /// Longest a blocking writer ([`Wal::append`] and its kin) spins, yielding its CPU,
    /// for its acknowledgement before it parks, as `InnoDB`'s log waiters do
    /// (`innodb_log_wait_for_flush_spin_hwm`). Parked, each writer costs the one that
    /// syncs a wake-up and itself a trip through the scheduler, per sync: on the
    /// project's 2-core VM about 10 µs, which with 8 writers took a third of every round.
    /// A spinning writer sees its acknowledgement as soon as it is published. Writers
    /// spin only while the average sync takes no longer than this, so on a slow disk they
    /// park at once; async writers never spin. Default 200 µs; zero turns it off (writers
    /// then leave the CPU to other work while they wait); at most 10 ms.
    pub commit_spin: Duration,
    /// What opening does with damaged records.
    pub recovery: RecoveryMode,
    /// Timestamps for segment headers.
    pub clock: ClockFn,
    /// Called after each `fdatasync` of the log with its duration (none by default).
    pub on_sync: Option<SyncObserver>,
    /// Zero-fill each new segment to `segment_bytes` before it is used (default true;
    /// ignored under [`FsyncPolicy::Never`]). An `fdatasync` after appending to a file
    /// must also write the inode, whose size changed; within a zero-filled file the size
    /// does not change, and on this project's test disk each sync took about a third less
    /// time and a quarter less CPU (PostgreSQL zero-fills its WAL segments for the same
    /// reason). The next segment is filled by a background thread while the current one
    /// is written; a sealed segment is trimmed to its records.
    pub preallocate: bool,
    /// How many segment files [`Wal::truncate_prefix`] keeps for reuse instead of
    /// deleting them, as PostgreSQL recycles WAL segments and RocksDB its
    /// `recycle_log_file_num` files (default 2; at most 64; zero deletes them; only while
    /// preallocating). A recycled file becomes a later segment without being zero-filled
    /// again, so a log that is truncated as it goes writes each byte once where a fresh
    /// segment costs a second write of zeros. Kept files are temporary: a restart
    /// removes them.
    pub recycle_segments: usize,
}

impl std::fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalConfig")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("fsync", &self.fsync)
            .field("commit_delay", &self.commit_delay)
            .field("commit_spin", &self.commit_spin)
            .field("recovery", &self.recovery)
            .field("on_sync", &self.on_sync.is_some())
            .field("preallocate", &self.preallocate)
            .field("recycle_segments", &self.recycle_segments)
            .finish_non_exhaustive()
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        let hlc = Arc::new(Hlc::new(themis_clock::NodeId(0)));
        WalConfig {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_queue_bytes: 32 << 20,
            fsync: FsyncPolicy::Always,
            commit_delay: Duration::from_micros(200),
            commit_spin: Duration::from_micros(200),
            recovery: RecoveryMode::default(),
            clock: Arc::new(move || hlc.now()),
            on_sync: None,
            preallocate: true,
            recycle_segments: 2,
        }
    }
}

impl WalConfig {
    /// Takes segment timestamps from `hlc`.
    #[must_use]
    pub fn with_hlc<C: PhysicalClock + Send + Sync + 'static>(mut self, hlc: Arc<Hlc<C>>) -> Self {
        self.clock = Arc::new(move || hlc.now());
        self
    }

    /// Whether new segments are zero-filled (see [`preallocate`](Self::preallocate)).
    fn preallocating(&self) -> bool {
        self.preallocate && self.fsync != FsyncPolicy::Never
    }

    /// Checks every bound, naming the field and the value on failure.
    pub fn validate(&self) -> Result<(), WalError> {
        let fail = |msg: String| Err(WalError::Config(msg));
        if !(4096..=u64::from(u32::MAX)).contains(&self.segment_bytes) {
            return fail(format!("segment_bytes = {} is outside 4096..=4294967295", self.segment_bytes));
        }
        let largest = self.segment_bytes as usize - HEADER_LEN;
        if !(RECORD_HEADER_LEN + 1..=largest).contains(&self.max_record_bytes) {
            return fail(format!(
                "max_record_bytes = {} is outside {}..={largest} (a record must fit in a segment)",
                self.max_record_bytes,
                RECORD_HEADER_LEN + 1
            ));
        }
        if self.max_queue_bytes < self.max_record_bytes || self.max_queue_bytes > u32::MAX as usize {
            return fail(format!(
                "max_queue_bytes = {} must be at least max_record_bytes ({}) and at most 4294967295",
                self.max_queue_bytes, self.max_record_bytes
            ));
        }
        if self.commit_delay > Duration::from_millis(100) {
            return fail(format!("commit_delay = {:?} is above the 100 ms limit", self.commit_delay));
        }
        if self.commit_spin > Duration::from_millis(10) {
            return fail(format!("commit_spin = {:?} is above the 10 ms limit", self.commit_spin));
        }
        if self.recycle_segments > MAX_RECYCLED {
            return fail(format!(
                "recycle_segments = {} is above the limit of {MAX_RECYCLED}",
                self.recycle_segments
            ));
        }
        if self.fsync == FsyncPolicy::Interval(0) {
            return fail("fsync = Interval(0): use Always for a sync after every write".into());
        }
        Ok(())
    }
}

/// The most segment files [`WalConfig::recycle_segments`] may keep.
const MAX_RECYCLED: usize = 64;

/// One segment as the index knows it.
#[derive(Debug)]
struct SegmentInfo {
    id: u64,
    first_lsn: Lsn,
    path: PathBuf,
    /// A read handle; readers clone it and read without holding the index lock.
    file: Arc<File>,
    /// Record offsets by `lsn - first_lsn` ([`SKIPPED`] for a lost LSN).
    offsets: Vec<u32>,
    /// Bytes of valid data (where the next record goes).
    len: u64,
    /// The file held an earlier segment (old records lie past its end).
    recycled: bool,
}

impl SegmentInfo {
    fn next_lsn(&self) -> Lsn {
        self.first_lsn + self.offsets.len() as u64
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Oldest first; the last is the active segment.
    segments: Vec<SegmentInfo>,
}

impl Index {
    fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(1, |s| s.first_lsn)
    }

    fn last_lsn(&self) -> Lsn {
        self.segments.last().map_or(0, |s| s.next_lsn() - 1)
    }

    fn locate(&self, lsn: Lsn) -> Result<&SegmentInfo, WalError> {
        let out_of_range = || WalError::OutOfRange { lsn, first: self.first_lsn(), last: self.last_lsn() };
        if lsn < self.first_lsn() || lsn > self.last_lsn() {
            return Err(out_of_range());
        }
        let at = self.segments.partition_point(|s| s.first_lsn <= lsn);
        self.segments.get(at.wrapping_sub(1)).ok_or_else(out_of_range)
    }
}

/// The flusher's side: the active segment file.
struct Writer {
    dir: PathBuf,
    active: File,
    active_id: u64,
    active_len: u64,
    /// Records in the active segment.
    active_records: u64,
    /// The active segment is a recycled file: each write ends with a terminator.
    active_recycled: bool,
    config: WalConfig,
    index: Arc<RwLock<Index>>,
    /// The next segment's file, being zero-filled in the background.
    spare: Option<std::thread::JoinHandle<Result<File, WalError>>>,
    /// Files of truncated segments kept for reuse, filled to `segment_bytes`.
    kept: Vec<(PathBuf, File)>,
    /// Bumped by [`Wal::restart_at`], which may move the next LSN below the LSNs of the
    /// old records in a kept file: a file kept before a restart is never reused after it.
    recycle_epoch: u64,
}

/// A file made ready to become the next segment.
enum Prepared {
    /// The zero-filled spare.
    Spare(File),
    /// A truncated segment's file at the given path, filled to `segment_bytes`.
    Recycled(PathBuf, File),
}

/// The file a spare segment is prepared in (a temporary file: recovery removes it).
const SPARE_FILE: &str = "spare.wal.tmp";

impl Writer {
    /// Starts preparing the next segment's file, when preallocating and none is under way.
    fn start_spare(&mut self) {
        if !self.config.preallocating() || self.spare.is_some() {
            return;
        }
        let (path, len) = (self.dir.join(SPARE_FILE), self.config.segment_bytes);
        let spawned = std::thread::Builder::new().name("themis-wal-spare".into()).spawn(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(WalError::io("create", &path))?;
            zero_fill(&file, &path, 0, len)?;
            file.sync_all().map_err(WalError::io("fsync", &path))?;
            Ok(file)
        });
        // Without a thread the next segment is filled when it is created.
        self.spare = spawned.ok();
    }

    /// The prepared spare file, waiting for it if it is still being filled; `None` if
    /// there is none or preparing it failed (the segment is then made the slow way).
    fn take_spare(&mut self) -> Option<File> {
        // A failure here shows again, with its cause, when the segment is made directly.
        self.spare.take()?.join().ok()?.ok()
    }

    /// Creates segment `id` starting at `first_lsn`, from a recycled file when one is kept,
    /// else from the spare file when one is ready. Returns the append and read handles
    /// and whether the file was recycled.
    fn create(&mut self, id: u64, first_lsn: Lsn, sync: bool) -> Result<(File, File, bool), WalError> {
        let prepared = match self.kept.pop() {
            Some((path, file)) => Some(Prepared::Recycled(path, file)),
            None => self.take_spare().map(Prepared::Spare),
        };
        let made = create_segment(&self.dir, id, first_lsn, &self.config, sync, prepared);
        self.start_spare();
        made
    }

    /// Seals the active segment and starts segment `id + 1` at `first_lsn`: the old file is
    /// synced, the new one is written under a temporary name, synced, renamed, and the
    /// directory synced, so a crash leaves either no new segment or a complete header.
    fn rotate(&mut self, first_lsn: Lsn) -> Result<(), WalError> {
        let sync = self.config.fsync != FsyncPolicy::Never;
        if sync {
            self.sync()?;
        }
        // Seal: a zero-filled segment is trimmed to its records, durably, before the next
        // one exists (a crash in between leaves the trimmed segment last, which is fine).
        let path = self.path(self.active_id);
        let file_len = self.active.metadata().map_err(WalError::io("stat", &path))?.len();
        if file_len > self.active_len {
            self.active.set_len(self.active_len).map_err(WalError::io("truncate", &path))?;
            if sync {
                self.active.sync_all().map_err(WalError::io("fsync", &path))?;
            }
        }
        let id = self.active_id + 1;
        let (file, read, recycled) = self.create(id, first_lsn, sync)?;
        self.start_segment(id, first_lsn, file, read, recycled);
        Ok(())
    }

    /// Makes the new, empty segment `id` the active one and adds it to the index.
    fn start_segment(&mut self, id: u64, first_lsn: Lsn, file: File, read: File, recycled: bool) {
        self.active = file;
        self.active_id = id;
        self.active_len = HEADER_LEN as u64;
        self.active_records = 0;
        self.active_recycled = recycled;
        write_index(&self.index).segments.push(SegmentInfo {
            id,
            first_lsn,
            path: self.path(id),
            file: Arc::new(read),
            offsets: Vec::new(),
            len: HEADER_LEN as u64,
            recycled,
        });
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment::file_name(id))
    }
}

impl Sink for Writer {
    fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError> {
        let mut i = 0;
        while i < offsets.len() {
            let start = offsets[i] as usize;
            let end_of = |k: usize| record::end_of(offsets, k, bytes.len());
            if self.active_records > 0
                && self.active_len + (end_of(i) - start) as u64 > self.config.segment_bytes
            {
                self.rotate(first + i as u64)?;
            }
            // Take records while they fit (at least one).
            let mut j = i + 1;
            while j < offsets.len()
                && self.active_len + (end_of(j) - start) as u64 <= self.config.segment_bytes
            {
                j += 1;
            }
            let chunk = &bytes[start..end_of(j - 1)];
            let path = self.path(self.active_id);
            self.active.write_all_at(chunk, self.active_len).map_err(WalError::io("write", &path))?;
            let base = self.active_len;
            {
                let mut index = write_index(&self.index);
                let seg = index.segments.last_mut().expect("an active segment");
                seg.offsets
                    .extend(offsets[i..j].iter().map(|&o| (base + u64::from(o) - start as u64) as u32));
                seg.len = base + chunk.len() as u64;
            }
            self.active_len += chunk.len() as u64;
            self.active_records += (j - i) as u64;
            i = j;
        }
        if self.active_recycled && !offsets.is_empty() {
            // Old records follow; the terminator marks where this write ends. It goes out
            // with the same sync as the records, and the next write overwrites it.
            let room = self.config.segment_bytes.saturating_sub(self.active_len);
            let len = (segment::TERMINATOR_LEN as u64).min(room) as usize;
            let zeros = [0u8; segment::TERMINATOR_LEN];
            self.active
                .write_all_at(&zeros[..len], self.active_len)
                .map_err(WalError::io("write", self.path(self.active_id)))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        let started = std::time::Instant::now();
        self.active.sync_data().map_err(WalError::io("fdatasync", self.path(self.active_id)))?;
        if let Some(observe) = &self.config.on_sync {
            observe(started.elapsed());
        }
        Ok(())
    }
}

/// Publishes the coordinator's progress to the watchers of the log's tail. The flusher,
/// leading writers and truncation all publish, in any order: the value is read under the
/// channel's own lock, so the last to publish sends what is current, never a value it read
/// before another's (a stale value after a truncation would wake waiters for LSNs the
/// truncation removed).
fn publish(tx: &watch::Sender<Progress>, coordinator: &Coordinator) {
    tx.send_if_modified(|current| {
        let now = coordinator.progress();
        let changed = now != *current;
        *current = now;
        changed
    });
}

/// The writer behind a mutex: the flusher and truncation take turns.
struct SharedWriter(Arc<Mutex<Writer>>);

impl Sink for SharedWriter {
    fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError> {
        lock(&self.0).write(first, bytes, offsets)
    }

    fn sync(&mut self) -> Result<(), WalError> {
        lock(&self.0).sync()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_index(index: &RwLock<Index>) -> std::sync::RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_index(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes zeros over `[from, to)` of `file`.
fn zero_fill(file: &File, path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    let zeros = vec![0u8; to.saturating_sub(from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at).map_err(WalError::io("zero-fill", path))?;
        at += n as u64;
    }
    Ok(())
}

/// Creates segment `id` durably; returns the append handle, a read handle, and whether
/// the file is recycled. With a `prepared` file (the zero-filled spare or a recycled
/// segment), the header goes into it and it is renamed into place; otherwise a new file
/// is made (zero-filled when preallocating). A recycled file's header is followed by a
/// terminator, since the old records start right after it.
fn create_segment(
    dir: &Path,
    id: u64,
    first_lsn: Lsn,
    config: &WalConfig,
    sync: bool,
    prepared: Option<Prepared>,
) -> Result<(File, File, bool), WalError> {
    let path = dir.join(segment::file_name(id));
    let tmp = dir.join(format!("{}.tmp", segment::file_name(id)));
    let header = SegmentHeader {
        id,
        first_lsn,
        created: (config.clock)(),
        tail_window: config.max_queue_bytes as u32,
        recycled: matches!(prepared, Some(Prepared::Recycled(..))),
    };
    let (file, tmp) = if let Some(prepared) = prepared {
        match prepared {
            Prepared::Spare(file) => (file, dir.join(SPARE_FILE)),
            Prepared::Recycled(path, file) => (file, path),
        }
    } else {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(WalError::io("create", &tmp))?;
        if config.preallocating() {
            zero_fill(&file, &tmp, 0, config.segment_bytes)?;
        }
        (file, tmp)
    };
    let mut head = header.encode().to_vec();
    if header.recycled {
        head.extend_from_slice(&[0; segment::TERMINATOR_LEN]);
    }
    file.write_all_at(&head, 0).map_err(WalError::io("write", &tmp))?;
    if sync {
        file.sync_all().map_err(WalError::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(WalError::io("rename", &tmp))?;
    if sync {
        fsync_dir(dir)?;
    }
    let read = File::open(&path).map_err(WalError::io("open", &path))?;
    Ok((file, read, header.recycled))
}

/// Makes a truncated segment's file (renamed to `path`) ready for reuse: zero-filled from
/// its end up to `segment_bytes`, or cut down to it. Not synced: making it a segment does.
fn prepare_recycled(path: &Path, segment_bytes: u64) -> Result<File, WalError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(WalError::io("open", path))?;
    let len = file.metadata().map_err(WalError::io("stat", path))?.len();
    if len < segment_bytes {
        zero_fill(&file, path, len, segment_bytes)?;
    } else if len > segment_bytes {
        file.set_len(segment_bytes).map_err(WalError::io("truncate", path))?;
    }
    Ok(file)
}

struct Shared {
    dir: PathBuf,
    config: WalConfig,
    coordinator: Arc<Coordinator>,
    writer: Arc<Mutex<Writer>>,
    index: Arc<RwLock<Index>>,
    progress: watch::Receiver<Progress>,
    progress_tx: Arc<watch::Sender<Progress>>,
    holds: Mutex<BTreeMap<String, Lsn>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    ack: AckOn,
}

impl Shared {
    /// Waits for a spare segment being filled and removes it: a closed log holds segments
    /// only, and no thread outlives it.
    fn drop_spare(&self) {
        for (path, _) in lock(&self.writer).kept.drain(..) {
            let _ = fs::remove_file(path);
        }
        if let Some(spare) = lock(&self.writer).spare.take() {
            let _ = spare.join();
            let _ = fs::remove_file(self.dir.join(SPARE_FILE));
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.coordinator.close("the WAL was dropped");
        if let Some(flusher) = lock(&self.flusher).take() {
            let _ = flusher.join();
        }
        self.drop_spare();
    }
}

/// A durable, segmented write-ahead log. Cheap to clone; every clone is the same log.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = read_index(&self.shared.index);
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("first_lsn", &index.first_lsn())
            .field("last_lsn", &index.last_lsn())
            .field("segments", &index.segments.len())
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering it as
    /// `config.recovery` says.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Wal, RecoveryReport), WalError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(WalError::io("create directory", &dir))?;
        let (recovered, report) = recovery::recover(&dir, config.recovery, config.max_record_bytes)?;
        let sync = config.fsync != FsyncPolicy::Never;
        let mut index = Index::default();
        for r in recovered {
            index.segments.push(SegmentInfo {
                id: r.id,
                first_lsn: r.scan.header.first_lsn,
                path: r.path,
                file: r.file,
                len: r.scan.valid_len,
                recycled: r.scan.header.recycled,
                offsets: r.scan.offsets,
            });
        }
        if index.segments.is_empty() {
            let (_, read, _) = create_segment(&dir, 1, 1, &config, sync, None)?;
            index.segments.push(SegmentInfo {
                id: 1,
                first_lsn: 1,
                path: dir.join(segment::file_name(1)),
                file: Arc::new(read),
                offsets: Vec::new(),
                len: HEADER_LEN as u64,
                recycled: false,
            });
        }
        let last = index.segments.last().expect("one segment");
        let active =
            OpenOptions::new().write(true).open(&last.path).map_err(WalError::io("open", &last.path))?;
        let next_lsn = last.next_lsn();
        let (active_id, active_len, active_records) = (last.id, last.len, last.offsets.len() as u64);
        let active_recycled = last.recycled;
        let index = Arc::new(RwLock::new(index));
        let writer = Arc::new(Mutex::new(Writer {
            dir: dir.clone(),
            active,
            active_id,
            active_len,
            active_records,
            active_recycled,
            config: config.clone(),
            index: index.clone(),
            spare: None,
            kept: Vec::new(),
            recycle_epoch: 0,
        }));
        lock(&writer).start_spare();
        let coordinator = Arc::new(Coordinator::new(
            next_lsn,
            config.max_queue_bytes,
            config.max_record_bytes,
            config.commit_delay,
            config.fsync == FsyncPolicy::Always,
        ));
        let start = Progress { written: next_lsn - 1, durable: next_lsn - 1 };
        let (progress_tx, progress) = watch::channel(start);
        let progress_tx = Arc::new(progress_tx);
        let mut rule = match config.fsync {
            FsyncPolicy::Always => SyncRule::Always,
            FsyncPolicy::Never => SyncRule::Never,
            FsyncPolicy::Interval(ms) => {
                SyncRule::Every { interval: Duration::from_millis(ms), last: Instant::now() }
            }
        };
        let flusher = {
            let coordinator = coordinator.clone();
            let mut sink = SharedWriter(writer.clone());
            let tx = progress_tx.clone();
            std::thread::Builder::new()
                .name("themis-wal-flush".into())
                .spawn(move || {
                    while coordinator.flush_once(&mut sink, &mut rule) {
                        publish(&tx, &coordinator);
                    }
                    // The log is closed (a failed write or sync, or close): waiters must
                    // learn it even when the progress did not move, so this one always
                    // notifies. Tasks in `wait_progress` then see `closed` and fail.
                    tx.send_modify(|current| *current = coordinator.progress());
                })
                .map_err(WalError::io("spawn flusher thread", &dir))?
        };
        let ack = if config.fsync == FsyncPolicy::Always { AckOn::Durable } else { AckOn::Written };
        let shared = Shared {
            dir,
            config,
            coordinator,
            writer,
            index,
            progress,
            progress_tx,
            holds: Mutex::default(),
            flusher: Mutex::new(Some(flusher)),
            ack,
        };
        Ok((Wal { shared: Arc::new(shared) }, report))
    }

    /// Appends `entries` as one batch and returns their LSNs once the fsync policy
    /// acknowledges them (under [`FsyncPolicy::Always`]: once durable). Blocks while the
    /// queue is full.
    pub fn append(&self, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        self.append_blocking(Batch::Entries(entries), None)
    }

    /// Like [`append`](Self::append), but fails with [`WalError::LsnMismatch`] unless the
    /// batch starts at `first` (a Raft follower appending the leader's entries).
    pub fn append_at(&self, first: Lsn, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        self.append_blocking(Batch::Entries(entries), Some(first))
    }

    /// Queues `entries` and returns their LSNs without waiting for the write; pair with
    /// [`wait_durable`](Self::wait_durable). Blocks only while the queue is full.
    pub fn submit(&self, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        crate::sync::block_on(self.enqueue_async(Batch::Entries(entries), None))
    }

    /// Blocks until `lsn` is durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let coordinator = &self.shared.coordinator;
        crate::sync::block_on(std::future::poll_fn(|cx| {
            coordinator.poll_ack(lsn, AckOn::Durable, cx.waker())
        }))
        .map(|_| ())
    }

    /// [`append`](Self::append) for async callers: never blocks a runtime thread.
    pub async fn append_async(&self, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        self.append_waiting(Batch::Entries(entries), None, false, None).await
    }

    /// [`append_at`](Self::append_at) for async callers.
    pub async fn append_at_async(&self, first: Lsn, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        self.append_waiting(Batch::Entries(entries), Some(first), false, None).await
    }

    /// The blocking append: [`append_waiting`](Self::append_waiting) driven by a parked
    /// thread, which may lead: a writer whose batch completes the group flushes the group
    /// itself (under [`FsyncPolicy::Always`]), since it is awake already and waking the
    /// flusher thread instead costs a hand-off on every group.
    fn append_blocking(&self, batch: Batch<'_>, first: Option<Lsn>) -> Result<LsnRange, WalError> {
        let coordinator = &self.shared.coordinator;
        let ack = self.shared.ack;
        let max_spin = self.shared.config.commit_spin;
        // 0 until the batch is queued and registered (LSNs start at 1).
        let registered = std::sync::atomic::AtomicU64::new(0);
        let spin = || {
            // Waiting for room in a full queue, or told not to spin: park.
            let lsn = registered.load(std::sync::atomic::Ordering::Relaxed);
            if lsn == 0 {
                return false;
            }
            let budget = coordinator.spin_budget(max_spin);
            if budget.is_zero() {
                return false;
            }
            let until = Instant::now() + budget;
            while !coordinator.looks_acked(lsn, ack) {
                if Instant::now() >= until {
                    return false;
                }
                std::thread::yield_now();
            }
            true
        };
        crate::sync::block_on_spinning(self.append_waiting(batch, first, true, Some(&registered)), spin)
    }

    /// Queues `batch` and waits for its acknowledgement. The task is registered with the
    /// coordinator under the lock that queues it, and woken by exactly the flush that
    /// acknowledges it (or by the log closing), not by every change of progress. With
    /// `lead` (blocking callers only: the flush runs on the caller's thread), a batch that
    /// completes the group is flushed here.
    ///
    /// `registered`, when given, is set to the last LSN once the batch is queued and
    /// registered for its acknowledgement (a blocking caller spins on it).
    async fn append_waiting(
        &self,
        batch: Batch<'_>,
        first: Option<Lsn>,
        lead: bool,
        registered: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<LsnRange, WalError> {
        let coordinator = &self.shared.coordinator;
        let ack = self.shared.ack;
        let mut queued: Option<LsnRange> = None;
        std::future::poll_fn(|cx| match queued {
            None => match coordinator.poll_enqueue(batch, first, Some(ack), lead, cx.waker()) {
                Poll::Ready(Ok(Enqueued { range, group: Some(group) })) => {
                    let mut sink = SharedWriter(self.shared.writer.clone());
                    coordinator.finish_group(group, &mut sink, &mut SyncRule::Always);
                    publish(&self.shared.progress_tx, coordinator);
                    queued = Some(range);
                    // Acknowledged by the flush just done, or failed with it.
                    coordinator.poll_ack(range.last, ack, cx.waker()).map_ok(|_| range)
                }
                Poll::Ready(Ok(Enqueued { range, group: None })) => {
                    // Registered for the acknowledgement: the flush that reaches the range
                    // (or a close) wakes this task.
                    queued = Some(range);
                    if let Some(registered) = registered {
                        registered.store(range.last, std::sync::atomic::Ordering::Relaxed);
                    }
                    Poll::Pending
                }
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
            Some(range) => coordinator.poll_ack(range.last, ack, cx.waker()).map_ok(|_| range),
        })
        .await
    }

    /// Queues `entries`, which must start at `first`, and returns once they are queued
    /// (not yet durable): a receiver pipelines appends this way and acknowledges what
    /// [`durable_async`](Self::durable_async) reports. Waits (async) while the queue is full.
    pub async fn submit_at_async(&self, first: Lsn, entries: &[NewEntry]) -> Result<LsnRange, WalError> {
        self.enqueue_async(Batch::Entries(entries), Some(first)).await
    }

    /// [`submit_at_async`](Self::submit_at_async) for records already encoded and checked
    /// (a follower appending what its leader shipped): they are copied into the log as
    /// they are, at the LSNs they hold, with no entry built and no record encoded again.
    /// Fails with [`WalError::LsnMismatch`] unless the log's next LSN is their first, and
    /// with [`WalError::RecordTooLarge`] if a record is above this log's
    /// `max_record_bytes`; nothing is queued then.
    pub async fn submit_checked_async(&self, records: &CheckedRecords) -> Result<LsnRange, WalError> {
        self.enqueue_async(Batch::Checked(records), Some(records.range().first)).await
    }

    /// [`append`](Self::append) for records already encoded and checked: blocks until
    /// they are acknowledged under the fsync policy. See
    /// [`submit_checked_async`](Self::submit_checked_async).
    pub fn append_checked(&self, records: &CheckedRecords) -> Result<LsnRange, WalError> {
        self.append_blocking(Batch::Checked(records), Some(records.range().first))
    }

    async fn enqueue_async(&self, batch: Batch<'_>, first: Option<Lsn>) -> Result<LsnRange, WalError> {
        // A full queue registers the task, which the flusher wakes when it takes the queue.
        std::future::poll_fn(|cx| {
            self.shared.coordinator.poll_enqueue(batch, first, None, false, cx.waker()).map_ok(|e| e.range)
        })
        .await
    }

    /// Waits (async) until `lsn` is acknowledged under the fsync policy: durable under
    /// [`FsyncPolicy::Always`], written otherwise. What a receiver acknowledges upstream.
    pub async fn acknowledged_async(&self, lsn: Lsn) -> Result<(), WalError> {
        self.wait_ack(lsn).await
    }

    /// The last LSN acknowledged under the fsync policy (see
    /// [`acknowledged_async`](Self::acknowledged_async)).
    #[must_use]
    pub fn acknowledged_lsn(&self) -> Lsn {
        let progress = self.progress();
        match self.shared.ack {
            AckOn::Durable => progress.durable,
            AckOn::Written => progress.written,
        }
    }

    async fn wait_ack(&self, lsn: Lsn) -> Result<(), WalError> {
        match self.shared.ack {
            AckOn::Durable => self.durable_async(lsn).await,
            AckOn::Written => self.wait_progress(lsn, |p| p.written).await,
        }
    }

    /// Waits (async) until `lsn` is durable: followers of the tail wait with
    /// `durable_async(x + 1)` for "an LSN above x is durable".
    pub async fn durable_async(&self, lsn: Lsn) -> Result<(), WalError> {
        self.wait_progress(lsn, |p| p.durable).await
    }

    async fn wait_progress(&self, lsn: Lsn, field: fn(&Progress) -> Lsn) -> Result<(), WalError> {
        let mut progress = self.shared.progress.clone();
        loop {
            if field(&progress.borrow_and_update()) >= lsn {
                return Ok(());
            }
            // Checked after the borrow, so a failure published in between is not missed.
            if let Some(reason) = self.shared.coordinator.closed() {
                return Err(WalError::Closed(reason));
            }
            if progress.changed().await.is_err() {
                return Err(WalError::Closed("the flusher stopped".into()));
            }
        }
    }

    /// Written and durable LSNs.
    #[must_use]
    pub fn progress(&self) -> Progress {
        self.shared.coordinator.progress()
    }

    /// The last LSN durable on disk.
    #[must_use]
    pub fn durable_lsn(&self) -> Lsn {
        self.progress().durable
    }

    /// The first LSN held (after prefix truncation).
    #[must_use]
    pub fn first_lsn(&self) -> Lsn {
        read_index(&self.shared.index).first_lsn()
    }

    /// The last LSN written (readable); 0 when nothing was ever written.
    #[must_use]
    pub fn last_lsn(&self) -> Lsn {
        read_index(&self.shared.index).last_lsn()
    }

    /// The LSN the next append gets.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        self.shared.coordinator.next_lsn()
    }

    /// The settings the log was opened with.
    #[must_use]
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// The directory of the log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The entry at `lsn`.
    pub fn read(&self, lsn: Lsn) -> Result<Entry, WalError> {
        let mut entries = self.read_range(lsn, 0)?;
        Ok(entries.swap_remove(0))
    }

    /// Entries from `from` on, up to about `max_bytes` of records (always at least one),
    /// all from one segment, with one read. Payloads share one buffer.
    pub fn read_range(&self, from: Lsn, max_bytes: usize) -> Result<Vec<Entry>, WalError> {
        self.read_checked(from, Lsn::MAX, max_bytes).map(|(_, entries)| entries)
    }

    /// The records from `from` on as they are on disk (framing and CRCs included), up to
    /// about `max_bytes` (always at least one record), all from one segment. Every record
    /// is checked before it is returned. The shipper sends these bytes unchanged.
    pub fn read_raw(&self, from: Lsn, max_bytes: usize) -> Result<RawRecords, WalError> {
        self.read_raw_upto(from, Lsn::MAX, max_bytes)
    }

    /// [`read_raw`](Self::read_raw), but no record above `last`: a shipper passes the
    /// acknowledged LSN, so that records written and not yet durable are not sent.
    /// `from` above `last` is [`WalError::OutOfRange`].
    pub fn read_raw_upto(&self, from: Lsn, last: Lsn, max_bytes: usize) -> Result<RawRecords, WalError> {
        let (bytes, entries) = self.read_checked(from, last, max_bytes)?;
        let last = entries.last().map_or(from, |e| e.lsn);
        Ok(RawRecords { range: LsnRange { first: from, last }, bytes })
    }

    /// The LSNs [`read_raw_upto`](Self::read_raw_upto) with the same arguments returns,
    /// from the index alone (no read): a shipper plans the next frames with it and reads
    /// them on several threads. The answer is the same later, since records never move
    /// and the log only grows (unless it is truncated).
    pub fn raw_extent(&self, from: Lsn, last: Lsn, max_bytes: usize) -> Result<(LsnRange, usize), WalError> {
        let extent = self.extent(from, last, max_bytes)?;
        let range = LsnRange { first: from, last: from + extent.count as u64 - 1 };
        Ok((range, (extent.end - extent.start) as usize))
    }

    /// Where the records from `from` lie: one segment, at most `max_bytes` (at least one
    /// record), none above `upto`.
    fn extent(&self, from: Lsn, upto: Lsn, max_bytes: usize) -> Result<Extent, WalError> {
        let index = read_index(&self.shared.index);
        if from > upto {
            return Err(WalError::OutOfRange {
                lsn: from,
                first: index.first_lsn(),
                last: upto.min(index.last_lsn()),
            });
        }
        let seg = index.locate(from)?;
        let first = (from - seg.first_lsn) as usize;
        if seg.offsets[first] == SKIPPED {
            return Err(WalError::Skipped { lsn: from });
        }
        let start = u64::from(seg.offsets[first]);
        let mut k = first + 1;
        // Where the record before index `k` ends at the latest: the next known offset
        // (a skipped region after it is read along and ignored).
        let end_of = |k: usize| {
            seg.offsets
                .get(k..)
                .and_then(|rest| rest.iter().find(|&&o| o != SKIPPED))
                .map_or(seg.len, |&o| u64::from(o))
        };
        while k < seg.offsets.len()
            && seg.offsets[k] != SKIPPED
            && seg.first_lsn + k as u64 <= upto
            && end_of(k + 1) - start <= max_bytes as u64
        {
            k += 1;
        }
        Ok(Extent {
            file: seg.file.clone(),
            path: seg.path.clone(),
            id: seg.id,
            start,
            end: end_of(k),
            count: k - first,
        })
    }

    fn read_checked(&self, from: Lsn, upto: Lsn, max_bytes: usize) -> Result<(Bytes, Vec<Entry>), WalError> {
        let Extent { file, path, id, start, end, count } = self.extent(from, upto, max_bytes)?;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(WalError::io("read", &path))?;
        let buf = Bytes::from(buf);
        let mut entries = Vec::with_capacity(count);
        let mut at = 0;
        for i in 0..count {
            let lsn = from + i as u64;
            let corrupt = |reason: String| WalError::Corrupt {
                segment: id,
                offset: start + at as u64,
                lsn: Some(lsn),
                reason,
            };
            let (entry, size) = record::decode(&buf, at, self.shared.config.max_record_bytes)
                .map_err(|e| corrupt(e.to_string()))?;
            if entry.lsn != lsn {
                return Err(corrupt(format!("record holds LSN {}", entry.lsn)));
            }
            entries.push(entry);
            at += size;
        }
        // A skipped region read along at the end is not part of the records returned.
        Ok((buf.slice(..at), entries))
    }

    /// An iterator over the entries from `from` to the last written LSN (as of each
    /// refill), reading `chunk_bytes` at a time.
    #[must_use]
    pub fn reader(&self, from: Lsn, chunk_bytes: usize) -> WalReader {
        WalReader { wal: self.clone(), next: from, chunk_bytes, buffered: Vec::new().into_iter() }
    }

    /// Removes every entry after `after` (Raft dropping a conflicting suffix); durable when
    /// it returns. Waits for queued appends to be written first.
    pub fn truncate_suffix(&self, after: Lsn) -> Result<(), WalError> {
        let mut quiesced = self.shared.coordinator.quiesce();
        if let Some(reason) = quiesced.closed() {
            return Err(WalError::Closed(reason.to_string()));
        }
        let last = quiesced.next_lsn() - 1;
        if after >= last {
            return Ok(());
        }
        let mut writer = lock(&self.shared.writer);
        let mut index = write_index(&self.shared.index);
        if after + 1 < index.first_lsn() {
            return Err(WalError::Truncate(format!(
                "suffix after LSN {after} reaches below the first LSN held, {}",
                index.first_lsn()
            )));
        }
        // Newest segment first, so a crash midway leaves a log that ends cleanly.
        let mut deleted = false;
        while index.segments.len() > 1 && index.segments.last().is_some_and(|s| s.first_lsn > after) {
            let seg = index.segments.pop().expect("checked");
            fs::remove_file(&seg.path).map_err(WalError::io("remove", &seg.path))?;
            deleted = true;
        }
        if deleted {
            fsync_dir(&self.shared.dir)?;
        }
        let seg = index.segments.last_mut().expect("one segment");
        let keep = (after + 1 - seg.first_lsn) as usize;
        let new_len = seg.offsets.get(keep).map_or(seg.len, |&o| u64::from(o));
        let file = OpenOptions::new().write(true).open(&seg.path).map_err(WalError::io("open", &seg.path))?;
        file.set_len(new_len).map_err(WalError::io("truncate", &seg.path))?;
        file.sync_all().map_err(WalError::io("fsync", &seg.path))?;
        seg.offsets.truncate(keep);
        seg.len = new_len;
        writer.active = file;
        writer.active_id = seg.id;
        writer.active_len = new_len;
        writer.active_records = keep as u64;
        writer.active_recycled = seg.recycled;
        drop(index);
        drop(writer);
        quiesced.reset_to(after);
        drop(quiesced);
        publish(&self.shared.progress_tx, &self.shared.coordinator);
        Ok(())
    }

    /// Empties the log and continues it at `next` (a Raft follower that installed a
    /// snapshot at `next - 1` beyond its log). Retention holds are not consulted: the
    /// caller has made the snapshot durable first, so every entry dropped is covered.
    ///
    /// Crash-safe in this order: the old segments are removed oldest first and the
    /// directory synced, then the new segment (the next id, starting at `next`) is created
    /// durably. A crash midway leaves a contiguous suffix of the old log, or an empty
    /// directory that opens as an empty log at LSN 1; either way the owner (the Raft
    /// storage adapter) sees the log does not continue its snapshot and calls
    /// `restart_at` again. Returns once durable.
    pub fn restart_at(&self, next: Lsn) -> Result<(), WalError> {
        if next == 0 || next > MAX_RESTART_LSN {
            return Err(WalError::Truncate(format!("restart at LSN {next}: must be 1 to {MAX_RESTART_LSN}")));
        }
        let mut quiesced = self.shared.coordinator.quiesce();
        if let Some(reason) = quiesced.closed() {
            return Err(WalError::Closed(reason.to_string()));
        }
        let mut writer = lock(&self.shared.writer);
        let mut index = write_index(&self.shared.index);
        let sync = self.shared.config.fsync != FsyncPolicy::Never;
        let id = writer.active_id + 1;
        // The kept files hold records whose LSNs may lie above `next`: a recycled segment
        // relies on its old records' LSNs being below its own, so they go.
        writer.recycle_epoch += 1;
        for (path, _) in writer.kept.drain(..) {
            let _ = fs::remove_file(path);
        }
        for seg in index.segments.drain(..) {
            fs::remove_file(&seg.path).map_err(WalError::io("remove", &seg.path))?;
        }
        if sync {
            fsync_dir(&self.shared.dir)?;
        }
        let (file, read, recycled) = match writer.create(id, next, sync) {
            Ok(handles) => handles,
            Err(err) => {
                // No segment is left to write to: the log closes (reopening recovers it).
                drop(index);
                drop(writer);
                drop(quiesced);
                self.shared.coordinator.close(&format!("restart at LSN {next} failed: {err}"));
                return Err(err);
            }
        };
        drop(index);
        writer.start_segment(id, next, file, read, recycled);
        drop(writer);
        quiesced.reset_to(next - 1);
        drop(quiesced);
        publish(&self.shared.progress_tx, &self.shared.coordinator);
        Ok(())
    }

    /// Deletes whole segments whose entries all lie below `below`, and below every
    /// retention hold; never the active segment. Returns the first LSN now held.
    ///
    /// Up to [`WalConfig::recycle_segments`] of the files are kept for reuse instead: each
    /// is renamed to a temporary name (so the log no longer holds it, and a restart
    /// removes it), then filled to the segment size outside the log's locks. A file a
    /// reader still has open is deleted, never reused under it.
    pub fn truncate_prefix(&self, below: Lsn) -> Result<Lsn, WalError> {
        let limit = lock(&self.shared.holds).values().copied().fold(below, Lsn::min);
        let config = &self.shared.config;
        let mut kept = Vec::new();
        let (first, epoch) = {
            let writer = lock(&self.shared.writer);
            let mut index = write_index(&self.shared.index);
            let room = if config.preallocating() {
                config.recycle_segments.saturating_sub(writer.kept.len())
            } else {
                0
            };
            let mut removed = 0;
            while index.segments.len() > removed + 1 && index.segments[removed + 1].first_lsn <= limit {
                let seg = &index.segments[removed];
                // Only the index holds the read handle, and the index is locked: no reader
                // can be inside the file or reach it.
                if kept.len() < room && Arc::strong_count(&seg.file) == 1 {
                    let to = self.shared.dir.join(format!("recycle.{}.tmp", segment::file_name(seg.id)));
                    fs::rename(&seg.path, &to).map_err(WalError::io("rename", &seg.path))?;
                    kept.push(to);
                } else {
                    fs::remove_file(&seg.path).map_err(WalError::io("remove", &seg.path))?;
                }
                removed += 1;
            }
            if removed > 0 {
                index.segments.drain(..removed);
                fsync_dir(&self.shared.dir)?;
            }
            (index.first_lsn(), writer.recycle_epoch)
        };
        for path in kept {
            // Reuse saves work and is never needed: a file that cannot be prepared, or
            // that a restart made unsafe meanwhile, is deleted (or, failing that, removed
            // by the next open) and the next segment is made the usual way.
            let prepared = prepare_recycled(&path, config.segment_bytes);
            let mut writer = lock(&self.shared.writer);
            match prepared {
                Ok(file) if writer.recycle_epoch == epoch => writer.kept.push((path, file)),
                _ => {
                    drop(writer);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(first)
    }

    /// Registers (or moves) the retention hold `name`: prefix truncation keeps every entry
    /// from `lsn` on until the hold moves or is released. Holds live in memory; their
    /// owners (replication slots, the archiver) persist their positions and re-register
    /// at start.
    pub fn set_hold(&self, name: &str, lsn: Lsn) {
        lock(&self.shared.holds).insert(name.to_string(), lsn);
    }

    /// Releases the hold `name`; returns where it was.
    #[allow(clippy::must_use_candidate, reason = "releasing is the point; where the hold was is extra")]
    pub fn release_hold(&self, name: &str) -> Option<Lsn> {
        lock(&self.shared.holds).remove(name)
    }

    /// The holds, by name.
    #[must_use]
    pub fn holds(&self) -> BTreeMap<String, Lsn> {
        lock(&self.shared.holds).clone()
    }

    /// The segment files, oldest first, with the first LSN of each.
    #[must_use]
    pub fn segments(&self) -> Vec<(PathBuf, Lsn)> {
        read_index(&self.shared.index).segments.iter().map(|s| (s.path.clone(), s.first_lsn)).collect()
    }

    /// Stops accepting appends, flushes (and syncs, unless the policy is `Never`) what is
    /// queued, and waits for the flusher to finish.
    pub fn close(&self) -> Result<(), WalError> {
        self.shared.coordinator.close("the WAL was closed");
        if let Some(flusher) = lock(&self.shared.flusher).take() {
            flusher.join().map_err(|_| WalError::Closed("the flusher thread panicked".into()))?;
        }
        self.shared.drop_spare();
        Ok(())
    }
}

/// Where a raw read's records lie in one segment.
struct Extent {
    file: Arc<File>,
    path: PathBuf,
    id: u64,
    start: u64,
    end: u64,
    count: usize,
}

/// Records exactly as the log holds them; see [`Wal::read_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecords {
    /// The LSNs they hold.
    pub range: LsnRange,
    /// The encoded records, back to back.
    pub bytes: Bytes,
}

/// Iterates over a log's entries; see [`Wal::reader`].
#[derive(Debug)]
pub struct WalReader {
    wal: Wal,
    next: Lsn,
    chunk_bytes: usize,
    buffered: std::vec::IntoIter<Entry>,
}

impl Iterator for WalReader {
    type Item = Result<Entry, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.buffered.next() {
            return Some(Ok(entry));
        }
        if self.next > self.wal.last_lsn() {
            return None;
        }
        match self.wal.read_range(self.next, self.chunk_bytes) {
            Ok(entries) => {
                self.next += entries.len() as u64;
                self.buffered = entries.into_iter();
                self.buffered.next().map(Ok)
            }
            Err(WalError::Skipped { lsn }) => {
                self.next = lsn + 1;
                Some(Err(WalError::Skipped { lsn }))
            }
            Err(err) => {
                // Stop after reporting: the same read would fail again.
                self.next = Lsn::MAX;
                Some(Err(err))
            }
        }
    }
}
