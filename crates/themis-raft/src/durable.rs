//! [`WalStorage`]: the Raft log on disk. Entries live in a themis-wal log (the Raft log
//! is the WAL); the hard state and the latest snapshot live in two small files beside it,
//! each replaced atomically (write a temporary file, fsync, rename, fsync the directory).
//!
//! Layout of a node's Raft directory:
//!
//! ```text
//! <dir>/wal/          the log (themis-wal segments)
//! <dir>/hard-state    term, vote, commit            (HARD_STATE_MAGIC, see docs/raft.md)
//! <dir>/snapshot      the latest snapshot: meta + state machine image (SNAPSHOT_MAGIC)
//! ```
//!
//! The snapshot file always exists once the storage is created: a new node writes its
//! bootstrap membership and policy as a snapshot at LSN 0. Opening reconciles the three:
//! a log that does not continue the snapshot (a crash during an install, or entries the
//! snapshot's term contradicts) is restarted just after it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use themis_wal::{Entry, Lsn, RecoveryReport, Wal, WalConfig};

use crate::error::StorageError;
use crate::storage::{InitialState, Storage};
use crate::types::{AckPolicy, ConfState, HardState, Snapshot, SnapshotMeta};

/// First bytes of the hard-state file.
pub const HARD_STATE_MAGIC: [u8; 8] = *b"THMSHARD";
/// First bytes of the snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"THMSSNAP";
/// Version of both file formats.
pub const FILE_VERSION: u16 = 1;
/// Largest hard-state body accepted.
const MAX_HARD_STATE_BYTES: u32 = 4096;
/// Largest snapshot meta accepted (membership lists).
const MAX_META_BYTES: u32 = 1 << 20;

const HARD_STATE_FILE: &str = "hard-state";
const SNAPSHOT_FILE: &str = "snapshot";

fn other(what: impl std::fmt::Display) -> StorageError {
    StorageError::Other(what.to_string())
}

fn io_err(op: &'static str, path: &Path, err: std::io::Error) -> StorageError {
    StorageError::Io { op, path: path.to_path_buf(), source: std::sync::Arc::new(err) }
}

/// Replaces `dir/name` with the concatenation of `parts` so that a crash leaves the old
/// file or the new one, never a mix: write `name.tmp`, fsync it, rename over `name`, fsync
/// the directory. The parts are written in turn, so a large snapshot is never copied into
/// one buffer first.
pub fn write_file_atomic(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    for part in parts {
        file.write_all(part).map_err(|e| io_err("write", &tmp, e))?;
    }
    file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_err("rename", &tmp, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("fsync directory", dir, e))
}

/// Frames a body given as consecutive `parts` as `magic, version u16, reserved u16,
/// length u32, body, CRC32C u32` (all little-endian; the CRC covers everything before it).
/// Returns the 16-byte header and the CRC that go around the parts.
fn frame_parts(magic: [u8; 8], parts: &[&[u8]]) -> Result<([u8; 16], [u8; 4]), StorageError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total)
        .map_err(|_| other(format!("a {total}-byte body does not fit the u32 length of a state file")))?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&magic);
    header[8..10].copy_from_slice(&FILE_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&len.to_le_bytes());
    let crc = parts.iter().fold(crc32c::crc32c(&header), |crc, part| crc32c::crc32c_append(crc, part));
    Ok((header, crc.to_le_bytes()))
}

/// [`frame_parts`] of one body, as one buffer.
fn frame(magic: [u8; 8], body: &[u8]) -> Result<Vec<u8>, StorageError> {
    let (header, crc) = frame_parts(magic, &[body])?;
    Ok([&header[..], body, &crc].concat())
}

/// Checks a [`frame`] and returns its body; every failure names the file and the field.
fn unframe<'a>(
    path: &Path,
    magic: [u8; 8],
    bytes: &'a [u8],
    max_body: u32,
) -> Result<&'a [u8], StorageError> {
    let bad = |what: String| other(format!("{}: {what}", path.display()));
    if bytes.len() < 20 {
        return Err(bad(format!("{} bytes is shorter than the 20-byte frame", bytes.len())));
    }
    if bytes[..8] != magic {
        return Err(bad(format!("wrong magic {:?}", &bytes[..8])));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FILE_VERSION {
        return Err(bad(format!("unknown version {version} (this build reads {FILE_VERSION})")));
    }
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if len > max_body {
        return Err(bad(format!("body length {len} is above the limit {max_body}")));
    }
    let end = 16 + len as usize;
    if bytes.len() != end + 4 {
        return Err(bad(format!("length {len} does not match the file size {}", bytes.len())));
    }
    let stored = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    let computed = crc32c::crc32c(&bytes[..end]);
    if stored != computed {
        return Err(bad(format!("CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})")));
    }
    Ok(&bytes[16..end])
}

/// Encodes a hard-state file.
#[must_use]
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let body = postcard::to_stdvec(hs).expect("a hard state always encodes");
    frame(HARD_STATE_MAGIC, &body).expect("a hard state is a few bytes")
}

/// Decodes a hard-state file (`path` names it in errors).
pub fn decode_hard_state(path: &Path, bytes: &[u8]) -> Result<HardState, StorageError> {
    let body = unframe(path, HARD_STATE_MAGIC, bytes, MAX_HARD_STATE_BYTES)?;
    postcard::from_bytes(body).map_err(|e| other(format!("{}: hard state: {e}", path.display())))
}

/// Writes a snapshot file atomically: the frame's body is `meta length u32, meta
/// (postcard), data`. A snapshot of 4 GiB or more is refused.
pub fn write_snapshot_file(dir: &Path, snapshot: &Snapshot) -> Result<(), StorageError> {
    let meta = postcard::to_stdvec(&snapshot.meta).expect("snapshot meta always encodes");
    let meta_len = u32::try_from(meta.len()).map_err(|_| other("snapshot meta above 4 GiB"))?.to_le_bytes();
    let (header, crc) = frame_parts(SNAPSHOT_MAGIC, &[&meta_len, &meta, &snapshot.data])?;
    write_file_atomic(dir, SNAPSHOT_FILE, &[&header, &meta_len, &meta, &snapshot.data, &crc])
}

/// Decodes a snapshot file (`path` names it in errors).
pub fn decode_snapshot(path: &Path, bytes: &Bytes) -> Result<Snapshot, StorageError> {
    let body = unframe(path, SNAPSHOT_MAGIC, bytes, u32::MAX)?;
    let bad = |what: String| other(format!("{}: {what}", path.display()));
    if body.len() < 4 {
        return Err(bad("the body has no meta length".into()));
    }
    let meta_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    if meta_len > MAX_META_BYTES || 4 + meta_len as usize > body.len() {
        return Err(bad(format!("meta length {meta_len} does not fit the body of {} bytes", body.len())));
    }
    let meta_end = 4 + meta_len as usize;
    let meta: SnapshotMeta =
        postcard::from_bytes(&body[4..meta_end]).map_err(|e| bad(format!("snapshot meta: {e}")))?;
    // The data shares the file's buffer: 16 bytes of frame header, then the body.
    let data = bytes.slice(16 + meta_end..16 + body.len());
    Ok(Snapshot { meta, data })
}

#[derive(Debug)]
struct Inner {
    hard_state: HardState,
    /// The latest snapshot's meta.
    meta: SnapshotMeta,
    /// Its data (as in the file), for sending to followers that need it.
    data: Bytes,
    /// Terms of LSNs `meta.lsn + 1 ..= last`, in order.
    terms: VecDeque<u64>,
}

impl Inner {
    fn first_lsn(&self) -> Lsn {
        self.meta.lsn + 1
    }

    fn last_lsn(&self) -> Lsn {
        self.meta.lsn + self.terms.len() as Lsn
    }
}

/// The Raft log over themis-wal, with the hard state and snapshot in files. Cheap to
/// clone; clones share everything. The core reads it through [`Storage`]; the driver
/// writes through the inherent methods, in the order a `Ready` asks for.
#[derive(Debug, Clone)]
pub struct WalStorage {
    dir: PathBuf,
    wal: Wal,
    inner: Arc<RwLock<Inner>>,
    /// Serializes writers of the two files.
    files: Arc<Mutex<()>>,
}

impl WalStorage {
    /// Opens the Raft directory `dir`, creating it when new. A new directory needs
    /// `bootstrap` (the initial membership and policy), which is written as a snapshot at
    /// LSN 0; an existing one ignores it. Returns the WAL's recovery report.
    pub fn open(
        dir: impl AsRef<Path>,
        wal_config: WalConfig,
        bootstrap: Option<(ConfState, AckPolicy)>,
    ) -> Result<(WalStorage, RecoveryReport), StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let snap_path = dir.join(SNAPSHOT_FILE);
        let (meta, data) = match fs::read(&snap_path) {
            Ok(bytes) => {
                let snapshot = decode_snapshot(&snap_path, &Bytes::from(bytes))?;
                (snapshot.meta, snapshot.data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some((conf_state, policy)) = bootstrap else {
                    return Err(other(format!(
                        "{} is missing and no bootstrap membership was given",
                        snap_path.display()
                    )));
                };
                let snapshot = Snapshot {
                    meta: SnapshotMeta { lsn: 0, term: 0, conf_state, policy },
                    data: Bytes::new(),
                };
                write_snapshot_file(&dir, &snapshot)?;
                (snapshot.meta, snapshot.data)
            }
            Err(e) => return Err(io_err("read", &snap_path, e)),
        };
        let hs_path = dir.join(HARD_STATE_FILE);
        let mut hard_state = match fs::read(&hs_path) {
            Ok(bytes) => decode_hard_state(&hs_path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HardState::default(),
            Err(e) => return Err(io_err("read", &hs_path, e)),
        };
        let (wal, report) = Wal::open(dir.join("wal"), wal_config).map_err(StorageError::from)?;
        let terms = reconcile(&wal, &meta)?;
        let last = meta.lsn + terms.len() as Lsn;
        // The commit LSN is persisted lazily (see `set_hard_state`): never below the
        // snapshot, never past the log.
        hard_state.commit = hard_state.commit.clamp(meta.lsn, last.max(meta.lsn));
        let inner = Inner { hard_state, meta, data, terms };
        let storage =
            WalStorage { dir, wal, inner: Arc::new(RwLock::new(inner)), files: Arc::new(Mutex::new(())) };
        Ok((storage, report))
    }

    /// The log underneath (for shipping raw records, holds and progress).
    #[must_use]
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The Raft directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The hard state as last set.
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state
    }

    /// The latest snapshot's meta.
    #[must_use]
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.read().meta.clone()
    }

    /// Whether [`set_hard_state`](Self::set_hard_state) of `hs` writes the file (and so
    /// blocks on fsyncs): only when the term or vote changes.
    #[must_use]
    pub fn hard_state_needs_write(&self, hs: &HardState) -> bool {
        let previous = self.read().hard_state;
        previous.term != hs.term || previous.vote != hs.vote
    }

    /// Records `hs`. The file is rewritten (durably) only when the term or vote changed:
    /// those are what Raft's safety needs on disk before a vote or an append is answered.
    /// A commit-only change stays in memory until the next rewrite; after a restart the
    /// node learns the commit LSN again from its leader.
    pub fn set_hard_state(&self, hs: HardState) -> Result<(), StorageError> {
        if self.hard_state_needs_write(&hs) {
            let _files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            write_file_atomic(&self.dir, HARD_STATE_FILE, &[&encode_hard_state(&hs)])?;
        }
        self.write().hard_state = hs;
        Ok(())
    }

    /// Appends `entries` (dense, from the core's `Ready`), replacing any entries at or
    /// after the first one's LSN; returns once they are durable under the WAL's fsync
    /// policy. Blocking: call it off the async runtime's worker threads, or use
    /// [`append_async`](Self::append_async).
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = self.prepare_append(entries)? else { return Ok(()) };
        let mut lsn = first;
        for chunk in self.chunks(entries) {
            self.wal.append_at(lsn, &chunk).map_err(StorageError::from)?;
            lsn += chunk.len() as Lsn;
        }
        self.record_terms(entries);
        Ok(())
    }

    /// [`append`](Self::append) for async callers: the chunks are queued back to back and
    /// one wait covers them. A conflicting suffix is still cut with a blocking call (rare:
    /// only after a leader change).
    pub async fn append_async(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = self.prepare_append(entries)? else { return Ok(()) };
        let mut lsn = first;
        for chunk in self.chunks(entries) {
            self.wal.submit_at_async(lsn, &chunk).await.map_err(StorageError::from)?;
            lsn += chunk.len() as Lsn;
        }
        self.wal.acknowledged_async(lsn - 1).await.map_err(StorageError::from)?;
        self.record_terms(entries);
        Ok(())
    }

    /// Splits `entries` into batches the WAL's queue takes whole (a `Ready` may carry more
    /// than `max_queue_bytes`).
    fn chunks(&self, entries: &[Entry]) -> Vec<Vec<themis_wal::NewEntry>> {
        let limit = self.wal.config().max_queue_bytes;
        let mut out = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            let size = themis_wal::record::RECORD_HEADER_LEN + entry.payload.len();
            if !chunk.is_empty() && bytes + size > limit {
                out.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(entry.to_new());
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
        out
    }

    /// Checks `entries` and cuts any suffix they replace; returns the first LSN.
    fn prepare_append(&self, entries: &[Entry]) -> Result<Option<Lsn>, StorageError> {
        let Some(first) = entries.first() else { return Ok(None) };
        for pair in entries.windows(2) {
            if pair[1].lsn != pair[0].lsn + 1 {
                return Err(other(format!("entries are not dense at LSN {}", pair[1].lsn)));
            }
        }
        let (first_lsn, last_lsn, snapshot_lsn) = {
            let inner = self.read();
            (inner.first_lsn(), inner.last_lsn(), inner.meta.lsn)
        };
        if first.lsn < first_lsn {
            return Err(StorageError::Compacted { lsn: first.lsn, snapshot_lsn });
        }
        if first.lsn > last_lsn + 1 {
            return Err(other(format!("appending at LSN {} would leave a gap after {last_lsn}", first.lsn)));
        }
        if first.lsn <= last_lsn {
            self.wal.truncate_suffix(first.lsn - 1).map_err(StorageError::from)?;
            let mut inner = self.write();
            let keep = (first.lsn - inner.first_lsn()) as usize;
            inner.terms.truncate(keep);
        }
        Ok(Some(first.lsn))
    }

    fn record_terms(&self, entries: &[Entry]) {
        let mut inner = self.write();
        let keep = (entries[0].lsn - inner.first_lsn()) as usize;
        inner.terms.truncate(keep);
        inner.terms.extend(entries.iter().map(|e| e.term));
    }

    /// Installs a snapshot received from the leader: the file first (durable), then the
    /// log: entries after the snapshot that agree with it are kept, otherwise the log
    /// restarts just after it.
    pub fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = &snapshot.meta;
        {
            let _files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            write_snapshot_file(&self.dir, snapshot)?;
        }
        let keeps_suffix =
            self.term(meta.lsn).is_ok_and(|t| t == meta.term) && meta.lsn >= self.read().meta.lsn;
        let mut inner = self.write();
        if keeps_suffix {
            let drop = ((meta.lsn - inner.meta.lsn) as usize).min(inner.terms.len());
            inner.terms.drain(..drop);
        } else {
            self.wal.restart_at(meta.lsn + 1).map_err(StorageError::from)?;
            inner.terms.clear();
        }
        inner.meta = meta.clone();
        inner.data = snapshot.data.clone();
        inner.hard_state.commit = inner.hard_state.commit.max(meta.lsn);
        drop(inner);
        if keeps_suffix {
            self.wal.truncate_prefix(meta.lsn + 1).map_err(StorageError::from)?;
        }
        Ok(())
    }

    /// Log compaction: stores `snapshot` (the state machine's image at or below the
    /// applied LSN) and drops the entries it covers. Whole WAL segments below it are
    /// deleted unless a retention hold (a replication slot, the archiver) still needs them.
    pub fn compact(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let lsn = snapshot.meta.lsn;
        {
            let inner = self.read();
            if lsn <= inner.meta.lsn {
                return Ok(());
            }
            if lsn > inner.last_lsn() {
                return Err(StorageError::Unavailable { lsn, last_lsn: inner.last_lsn() });
            }
            let term = inner.terms[(lsn - inner.first_lsn()) as usize];
            if term != snapshot.meta.term {
                return Err(other(format!(
                    "snapshot at LSN {lsn} says term {}, the log says {term}",
                    snapshot.meta.term
                )));
            }
        }
        {
            let _files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            write_snapshot_file(&self.dir, snapshot)?;
        }
        {
            let mut inner = self.write();
            let drop = (lsn - inner.meta.lsn) as usize;
            inner.terms.drain(..drop);
            inner.meta = snapshot.meta.clone();
            inner.data = snapshot.data.clone();
        }
        self.wal.truncate_prefix(lsn + 1).map_err(StorageError::from)?;
        Ok(())
    }

    /// How many entries follow the snapshot in the log (the compaction trigger).
    #[must_use]
    pub fn entries_since_snapshot(&self) -> u64 {
        self.read().terms.len() as u64
    }
}

/// Makes the log continue the snapshot `meta`, restarting it when it does not; returns
/// the terms of the entries after the snapshot.
fn reconcile(wal: &Wal, meta: &SnapshotMeta) -> Result<VecDeque<u64>, StorageError> {
    let next = meta.lsn + 1;
    let continues = if wal.first_lsn() > next || wal.last_lsn() < meta.lsn {
        false
    } else if wal.first_lsn() == next {
        true
    } else {
        wal.read(meta.lsn).map_err(StorageError::from)?.term == meta.term
    };
    if !continues {
        tracing::warn!(
            snapshot_lsn = meta.lsn,
            wal_first = wal.first_lsn(),
            wal_last = wal.last_lsn(),
            "the log does not continue the snapshot; restarting it after the snapshot"
        );
        wal.restart_at(next).map_err(StorageError::from)?;
        return Ok(VecDeque::new());
    }
    let mut terms = VecDeque::with_capacity((wal.last_lsn() + 1).saturating_sub(next) as usize);
    for (expected, entry) in (next..).zip(wal.reader(next, 4 << 20)) {
        let entry = entry.map_err(StorageError::from)?;
        if entry.lsn != expected {
            return Err(other(format!("the log skips from LSN {} to {}", expected - 1, entry.lsn)));
        }
        terms.push_back(entry.term);
    }
    Ok(terms)
}

impl Storage for WalStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let inner = self.read();
        Ok(InitialState {
            hard_state: inner.hard_state,
            conf_state: inner.meta.conf_state.clone(),
            policy: inner.meta.policy,
        })
    }

    fn entries(&self, low: Lsn, high: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        {
            let inner = self.read();
            if low < inner.first_lsn() {
                return Err(StorageError::Compacted { lsn: low, snapshot_lsn: inner.meta.lsn });
            }
            if high > inner.last_lsn() + 1 {
                return Err(StorageError::Unavailable { lsn: high - 1, last_lsn: inner.last_lsn() });
            }
        }
        let mut out = Vec::new();
        let mut next = low;
        let mut bytes = 0u64;
        while next < high {
            let budget = usize::try_from(max_bytes.saturating_sub(bytes)).unwrap_or(usize::MAX).max(1);
            let chunk = self.wal.read_range(next, budget).map_err(StorageError::from)?;
            if chunk.is_empty() {
                break;
            }
            for entry in chunk {
                if entry.lsn >= high {
                    return Ok(out);
                }
                bytes += entry.payload.len() as u64;
                if !out.is_empty() && bytes > max_bytes {
                    return Ok(out);
                }
                next = entry.lsn + 1;
                out.push(entry);
            }
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn term(&self, lsn: Lsn) -> Result<u64, StorageError> {
        let inner = self.read();
        if lsn == inner.meta.lsn {
            return Ok(inner.meta.term);
        }
        if lsn < inner.first_lsn() {
            return Err(StorageError::Compacted { lsn, snapshot_lsn: inner.meta.lsn });
        }
        if lsn > inner.last_lsn() {
            return Err(StorageError::Unavailable { lsn, last_lsn: inner.last_lsn() });
        }
        Ok(inner.terms[(lsn - inner.first_lsn()) as usize])
    }

    fn first_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(self.read().first_lsn())
    }

    fn last_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(self.read().last_lsn())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let inner = self.read();
        Ok(Snapshot { meta: inner.meta.clone(), data: inner.data.clone() })
    }
}

#[cfg(feature = "driver")]
impl crate::io::LogStore for WalStorage {
    fn max_record_bytes(&self) -> usize {
        self.wal.config().max_record_bytes
    }

    fn append(
        &self,
        entries: &[Entry],
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send {
        self.append_async(entries)
    }

    fn hard_state_needs_write(&self, hs: &HardState) -> bool {
        WalStorage::hard_state_needs_write(self, hs)
    }

    fn set_hard_state(&self, hs: HardState) -> Result<(), StorageError> {
        WalStorage::set_hard_state(self, hs)
    }

    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        WalStorage::install_snapshot(self, snapshot)
    }

    fn compact(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        WalStorage::compact(self, snapshot)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        WalStorage::snapshot_meta(self)
    }

    fn entries_since_snapshot(&self) -> u64 {
        WalStorage::entries_since_snapshot(self)
    }

    /// The Raft directory: a transfer cut by a restart resumes from its part file.
    fn snapshot_staging_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}
