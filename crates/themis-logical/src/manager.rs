//! The logical replication manager: slots over one CDC stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use themis_cdc::{CdcError, CdcStream, ChangeEvent, ChangeOp, Subscription};
use themis_clock::{NodeId, Timestamp};
use themis_wal::{Lsn, Wal};

use crate::change::{LogicalChange, parse_doc};
use crate::ddl::{Catalog, DdlRecord, DdlStatement};
use crate::error::LogicalError;
use crate::persist::StateDir;
use crate::slot::{SlotConfig, SlotFilter, SlotInfo, SlotRecord, SlotState, SlotStats, WalStatus};
use crate::transform::TransformHook;

/// The manager's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalConfig {
    /// The most WAL bytes one slot may hold; a slot that would hold more is marked lost
    /// and its hold released. `None`: no bound (PostgreSQL's `-1`).
    pub max_slot_wal_keep_size: Option<u64>,
    /// The most slots.
    pub max_slots: usize,
    /// An idle slot's confirmed LSN, moved forward because nothing it delivers changed,
    /// is written to its state file at most this often (losing it costs a re-scan).
    pub idle_persist_interval: Duration,
}

impl Default for LogicalConfig {
    fn default() -> LogicalConfig {
        LogicalConfig {
            max_slot_wal_keep_size: None,
            max_slots: 64,
            idle_persist_interval: Duration::from_secs(1),
        }
    }
}

/// One document of an initial-sync snapshot, with the LSN that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDoc {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub key: Bytes,
    /// The document.
    pub value: Bytes,
    /// The LSN that wrote this version.
    pub lsn: Lsn,
}

/// Documents for an initial sync, in batches. The source need not be a frozen cut: it
/// must hold every document as of at least the LSN it was opened for, and each document
/// with the LSN of the version it returns; the slot skips log changes the snapshot
/// already reflected.
pub trait SnapshotSource: Send {
    /// Up to `max` more documents; empty when done.
    fn next_batch(&mut self, max: usize) -> Result<Vec<SnapshotDoc>, String>;
}

/// Opens snapshot sources, for slots whose initial sync starts (or starts again after a
/// restart or failover) without one handed to `create_slot`.
pub trait SnapshotProvider: Send + Sync {
    /// A source covering at least everything up to `at_least`.
    fn open(&self, at_least: Lsn) -> Result<Box<dyn SnapshotSource>, String>;
}

/// What one `read_changes` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    /// The changes, in log order (snapshot rows first, during an initial sync).
    pub changes: Vec<LogicalChange>,
    /// Once these changes are applied, confirming this LSN with `advance_slot` loses
    /// nothing. `None` in the middle of an initial sync, which is confirmed as a whole.
    pub confirm_lsn: Option<Lsn>,
    /// The initial sync has more rows to come.
    pub snapshot: bool,
}

/// The manager's counters and every slot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogicalStats {
    /// The slots, by name.
    pub slots: Vec<SlotInfo>,
    /// The LSN up to which the change stream has published.
    pub resolved_lsn: Lsn,
    /// DDL changes the catalog recorded (at most its history length).
    pub ddl_recorded: usize,
}

struct Reader {
    generation: u64,
    sub: Subscription,
    /// The initial sync in progress and the LSN it covers.
    snapshot: Option<(Box<dyn SnapshotSource>, Lsn)>,
    /// Documents the snapshot returned at a version newer than its LSN: log changes to
    /// them up to that version are already reflected.
    dedupe: HashMap<(String, Bytes), Lsn>,
    /// An event taken by `tick` and not yet delivered.
    stash: VecDeque<ChangeEvent>,
}

struct Slot {
    state: Mutex<SlotState>,
    filter: SlotFilter,
    /// Bumped when the reader must start again from the confirmed LSN.
    generation: AtomicU64,
    reader: tokio::sync::Mutex<Option<Reader>>,
    /// A snapshot source handed to `create_slot`, taken by the first reader.
    handed_snapshot: Mutex<Option<Box<dyn SnapshotSource>>>,
    /// The highest LSN delivered since the reader opened.
    sent_lsn: AtomicU64,
    /// Everything up to here has been delivered or filtered out by the reader.
    read_lsn: AtomicU64,
    retention: Mutex<(WalStatus, u64)>,
    last_idle_persist: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long a read waits for another reader of its slot before it is refused as busy.
const BUSY_WAIT: Duration = Duration::from_millis(100);

/// The most log events one read looks at (beyond `max`) before it answers with what it
/// has.
const SCAN_PER_READ: usize = 65_536;

fn hold_name(slot: &str) -> String {
    format!("slot-{slot}")
}

fn slot_file(slot: &str) -> String {
    format!("{slot}.slot")
}

const CATALOG_FILE: &str = "catalog.state";

struct Inner {
    files: StateDir,
    stream: CdcStream,
    wal: Option<Wal>,
    config: LogicalConfig,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    catalog: Mutex<Catalog>,
    hooks: RwLock<HashMap<String, TransformHook>>,
    provider: RwLock<Option<Arc<dyn SnapshotProvider>>>,
}

/// Durable replication slots over a [`CdcStream`]. Cheap to clone; clones share
/// everything. See the crate documentation for an example.
#[derive(Clone)]
pub struct LogicalReplicationManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogicalReplicationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalReplicationManager")
            .field("slots", &self.slot_names())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LogicalReplicationManager {
    /// Opens the slots persisted in `dir` (conventionally `<wal_dir>/logical_slots`) over
    /// `stream`. With `wal`, each slot holds the WAL it still needs. A damaged state file
    /// is an error naming it: a slot is never silently forgotten.
    pub fn open(
        dir: impl AsRef<Path>,
        stream: CdcStream,
        wal: Option<Wal>,
        config: LogicalConfig,
    ) -> Result<LogicalReplicationManager, LogicalError> {
        let files = StateDir::open(dir.as_ref())?;
        let catalog = files.load::<Catalog>(CATALOG_FILE)?.unwrap_or_default();
        let mut slots = BTreeMap::new();
        for name in files.list(".slot")? {
            let file = slot_file(&name);
            let state: SlotState = files
                .load(&file)?
                .ok_or_else(|| LogicalError::State { path: files.path(&file), message: "vanished".into() })?;
            if state.record.config.name != name {
                return Err(LogicalError::State {
                    path: files.path(&file),
                    message: format!("holds slot {:?}", state.record.config.name),
                });
            }
            let filter = state
                .record
                .config
                .compile()
                .map_err(|e| LogicalError::State { path: files.path(&file), message: e.to_string() })?;
            slots.insert(name, Arc::new(Slot::new(state, filter)));
        }
        let manager = LogicalReplicationManager {
            inner: Arc::new(Inner {
                files,
                stream,
                wal,
                config,
                slots: RwLock::new(slots),
                catalog: Mutex::new(catalog),
                hooks: RwLock::new(HashMap::new()),
                provider: RwLock::new(None),
            }),
        };
        for slot in manager.all_slots() {
            manager.hold(&lock(&slot.state).record);
        }
        Ok(manager)
    }

    /// Where slots' initial syncs get their snapshots when none was handed to
    /// `create_slot` (always, after a restart or failover).
    pub fn set_snapshot_provider(&self, provider: Arc<dyn SnapshotProvider>) {
        *self.inner.provider.write().unwrap_or_else(PoisonError::into_inner) = Some(provider);
    }

    /// Registers a transform hook that slot configurations name in `transform.hook`.
    pub fn register_transform(&self, name: impl Into<String>, hook: TransformHook) {
        self.inner.hooks.write().unwrap_or_else(PoisonError::into_inner).insert(name.into(), hook);
    }

    fn slot_names(&self) -> Vec<String> {
        self.inner.slots.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.inner.slots.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, LogicalError> {
        self.inner
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| LogicalError::NoSlot(name.to_string()))
    }

    fn hold(&self, record: &SlotRecord) {
        if let Some(wal) = &self.inner.wal {
            if record.lost {
                wal.release_hold(&hold_name(&record.config.name));
            } else {
                wal.set_hold(&hold_name(&record.config.name), record.restart_lsn());
            }
        }
    }

    fn persist(&self, state: &SlotState) -> Result<(), LogicalError> {
        self.inner.files.save(&slot_file(&state.record.config.name), state)
    }

    /// Creates a slot that delivers what is committed after the stream's current
    /// position (with `initial_sync`, a snapshot first). `snapshot` is the source for the
    /// initial sync; without one the provider is asked.
    pub fn create_slot(
        &self,
        config: SlotConfig,
        snapshot: Option<Box<dyn SnapshotSource>>,
    ) -> Result<SlotInfo, LogicalError> {
        let start = self.inner.stream.resolved().0;
        self.create_slot_at(config, start, snapshot)
    }

    /// As [`Self::create_slot`], starting after `start`: a replicated store creates
    /// each slot at the LSN of the entry that created it, on every node.
    pub fn create_slot_at(
        &self,
        config: SlotConfig,
        start: Lsn,
        snapshot: Option<Box<dyn SnapshotSource>>,
    ) -> Result<SlotInfo, LogicalError> {
        let record = SlotRecord::new(config, start, now_ms());
        let name = record.config.name.clone();
        self.insert(record, snapshot)?;
        self.slot_info(&name)
    }

    fn insert(
        &self,
        record: SlotRecord,
        snapshot: Option<Box<dyn SnapshotSource>>,
    ) -> Result<(), LogicalError> {
        let filter = record.config.compile()?;
        if let Some(hook) = record.config.transform.as_ref().and_then(|t| t.hook.as_ref())
            && !self.inner.hooks.read().unwrap_or_else(PoisonError::into_inner).contains_key(hook)
        {
            return Err(LogicalError::Config(format!("transform hook {hook:?} is not registered")));
        }
        let name = record.config.name.clone();
        let mut slots = self.inner.slots.write().unwrap_or_else(PoisonError::into_inner);
        if slots.contains_key(&name) {
            return Err(LogicalError::SlotExists(name));
        }
        if slots.len() >= self.inner.config.max_slots {
            return Err(LogicalError::Config(format!(
                "max_slots is {}; drop a slot before creating {name:?}",
                self.inner.config.max_slots
            )));
        }
        let state = SlotState { record, stats: SlotStats::default() };
        self.persist(&state)?;
        self.hold(&state.record);
        let slot = Slot::new(state, filter);
        *lock(&slot.handed_snapshot) = snapshot;
        slots.insert(name, Arc::new(slot));
        Ok(())
    }

    /// Applies a slot record replicated through the log: creates the slot if this node
    /// lacks it, otherwise moves its confirmed LSN forward (never back) and takes its
    /// paused and lost flags. Replays are harmless.
    pub fn apply_record(&self, record: SlotRecord) -> Result<(), LogicalError> {
        let Ok(slot) = self.slot(&record.config.name) else {
            return match self.insert(record, None) {
                Err(LogicalError::SlotExists(_)) => Ok(()),
                other => other,
            };
        };
        // A slot dropped and created again under the same name (this node may have missed
        // the tombstone in between): the new one replaces the old, whatever its position.
        let (created, config) = {
            let state = lock(&slot.state);
            (state.record.created_at_ms, state.record.config.clone())
        };
        if created != record.created_at_ms || config != record.config {
            match self.drop_slot(&record.config.name) {
                Ok(()) | Err(LogicalError::NoSlot(_)) => {}
                Err(e) => return Err(e),
            }
            return self.apply_record(record);
        }
        let mut state = lock(&slot.state);
        let current = &mut state.record;
        let before = current.clone();
        if record.confirmed_flush_lsn > current.confirmed_flush_lsn {
            slot.confirm(current, record.confirmed_flush_lsn);
        }
        current.paused = record.paused;
        current.lost |= record.lost;
        if *current == before {
            return Ok(());
        }
        let state = state.clone();
        self.hold(&state.record);
        self.persist(&state)
    }

    /// The slot's replicated record.
    pub fn record(&self, name: &str) -> Result<SlotRecord, LogicalError> {
        Ok(lock(&self.slot(name)?.state).record.clone())
    }

    /// Confirms everything up to `lsn`: the slot will not deliver it again and releases
    /// the WAL before it. Confirming an LSN at or below the confirmed one changes nothing;
    /// past the stream's end is refused. Durable when it returns.
    pub fn advance_slot(&self, name: &str, lsn: Lsn) -> Result<SlotInfo, LogicalError> {
        let slot = self.slot(name)?;
        let end = self.inner.stream.resolved().0;
        if lsn > end {
            return Err(LogicalError::AdvanceBeyond { slot: name.to_string(), lsn, last: end });
        }
        let state = {
            let mut state = lock(&slot.state);
            if lsn <= state.record.confirmed_flush_lsn {
                None
            } else {
                slot.confirm(&mut state.record, lsn);
                state.stats.advances += 1;
                Some(state.clone())
            }
        };
        if let Some(state) = state {
            self.hold(&state.record);
            self.persist(&state)?;
        }
        self.slot_info(name)
    }

    /// Stops delivering (reads fail with [`LogicalError::Paused`]); the WAL stays held.
    pub fn pause(&self, name: &str) -> Result<SlotInfo, LogicalError> {
        self.set_paused(name, true)
    }

    /// Delivers again after [`Self::pause`].
    pub fn resume(&self, name: &str) -> Result<SlotInfo, LogicalError> {
        self.set_paused(name, false)
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<SlotInfo, LogicalError> {
        let slot = self.slot(name)?;
        let state = {
            let mut state = lock(&slot.state);
            state.record.paused = paused;
            state.clone()
        };
        self.persist(&state)?;
        self.slot_info(name)
    }

    /// Drops a slot: its state file and WAL hold go; a reader of it gets
    /// [`LogicalError::NoSlot`].
    pub fn drop_slot(&self, name: &str) -> Result<(), LogicalError> {
        let slot = self
            .inner
            .slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| LogicalError::NoSlot(name.to_string()))?;
        slot.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(wal) = &self.inner.wal {
            wal.release_hold(&hold_name(name));
        }
        self.inner.files.remove(&slot_file(name))
    }

    /// Makes every reader start again from its slot's confirmed LSN (a node that
    /// becomes leader does this: what an earlier reader here delivered may not have been
    /// confirmed through the log).
    pub fn reset_readers(&self) {
        for slot in self.all_slots() {
            slot.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Records a DDL change at `lsn` in the schema catalog, from which each change is
    /// stamped with its collection's schema version. The DDL change itself reaches slots
    /// from the log (an `OpKind::Ddl` entry). Returns whether it was new.
    pub fn record_ddl(&self, statement: &str, schema_version: u64, lsn: Lsn) -> Result<bool, LogicalError> {
        let collection =
            DdlStatement::parse(statement).map(|s| s.collection().to_string()).unwrap_or_default();
        let mut catalog = lock(&self.inner.catalog);
        let record = DdlRecord { statement: statement.to_string(), collection, schema_version, lsn };
        if !catalog.record(record) {
            return Ok(false);
        }
        self.inner.files.save(CATALOG_FILE, &*catalog)?;
        Ok(true)
    }

    /// The schema catalog.
    #[must_use]
    pub fn catalog(&self) -> Catalog {
        lock(&self.inner.catalog).clone()
    }

    /// One slot's state.
    pub fn slot_info(&self, name: &str) -> Result<SlotInfo, LogicalError> {
        let slot = self.slot(name)?;
        Ok(self.info(&slot))
    }

    fn info(&self, slot: &Slot) -> SlotInfo {
        let (record, stats) = {
            let state = lock(&slot.state);
            (state.record.clone(), state.stats.clone())
        };
        let (wal_status, held_bytes) = *lock(&slot.retention);
        let end = self.inner.stream.resolved().0;
        let sent = slot.sent_lsn.load(Ordering::Relaxed);
        // Entries the reader scanned past without finding anything to deliver are not
        // lag once everything it delivered is confirmed.
        let caught_up = if sent <= record.confirmed_flush_lsn {
            slot.read_lsn.load(Ordering::Relaxed).max(record.confirmed_flush_lsn)
        } else {
            record.confirmed_flush_lsn
        };
        SlotInfo {
            restart_lsn: record.restart_lsn(),
            wal_status: if record.lost { WalStatus::Lost } else { wal_status },
            held_bytes,
            lag_lsn: end.saturating_sub(caught_up),
            sent_lsn: sent,
            active: slot.reader.try_lock().is_err(),
            record,
            stats,
        }
    }

    /// Every slot, and the manager's counters.
    #[must_use]
    pub fn get_stats(&self) -> LogicalStats {
        LogicalStats {
            slots: self.all_slots().iter().map(|s| self.info(s)).collect(),
            resolved_lsn: self.inner.stream.resolved().0,
            ddl_recorded: lock(&self.inner.catalog).history().count(),
        }
    }

    /// Encodes changes with the slot's output plugin and counts the bytes as sent.
    pub fn encode(&self, name: &str, changes: &[LogicalChange]) -> Result<Vec<Bytes>, LogicalError> {
        let slot = self.slot(name)?;
        let plugin = lock(&slot.state).record.config.plugin;
        let records = plugin.encode(changes)?;
        let bytes: usize = records.iter().map(Bytes::len).sum();
        lock(&slot.state).stats.bytes_sent += bytes as u64;
        Ok(records)
    }

    /// Checks every slot's WAL hold against `max_slot_wal_keep_size`. `floor` is the
    /// first LSN the log keeps without slots (its compaction point): a slot that needs
    /// nothing before it is `reserved`, one that does is `extended`, and one whose hold
    /// would exceed the bound becomes `lost` and its hold is released. Returns the slots
    /// lost by this call.
    pub fn enforce_retention(&self, floor: Lsn) -> Result<Vec<String>, LogicalError> {
        let Some(wal) = &self.inner.wal else { return Ok(Vec::new()) };
        let segments: Vec<(Lsn, u64)> = wal
            .segments()
            .into_iter()
            .map(|(path, first)| (first, std::fs::metadata(path).map_or(0, |m| m.len())))
            .collect();
        let held = |restart: Lsn| -> u64 {
            let from = segments.partition_point(|(first, _)| *first <= restart).saturating_sub(1);
            segments[from..].iter().map(|(_, len)| len).sum()
        };
        let mut lost = Vec::new();
        for slot in self.all_slots() {
            let mut state = lock(&slot.state);
            if state.record.lost {
                *lock(&slot.retention) = (WalStatus::Lost, 0);
                continue;
            }
            let restart = state.record.restart_lsn();
            let bytes = held(restart);
            let status = if restart >= floor { WalStatus::Reserved } else { WalStatus::Extended };
            if let Some(limit) = self.inner.config.max_slot_wal_keep_size
                && status == WalStatus::Extended
                && bytes > limit
            {
                state.record.lost = true;
                slot.generation.fetch_add(1, Ordering::SeqCst);
                *lock(&slot.retention) = (WalStatus::Lost, bytes);
                let snapshot = state.clone();
                drop(state);
                self.hold(&snapshot.record);
                self.persist(&snapshot)?;
                lost.push(snapshot.record.config.name.clone());
                continue;
            }
            *lock(&slot.retention) = (status, bytes);
        }
        Ok(lost)
    }

    /// Reads up to `max` changes from the slot, waiting at most `wait` for the first.
    /// Changes after the confirmed LSN that an earlier read delivered are not delivered
    /// again until the reader starts over (restart, failover, [`Self::reset_readers`]).
    pub async fn read_changes(
        &self,
        name: &str,
        max: usize,
        wait: Duration,
    ) -> Result<ChangeBatch, LogicalError> {
        let slot = self.slot(name)?;
        self.check_readable(name, &slot)?;
        // One reader at a time; a brief hold (the leader's idle scan) is waited out.
        let mut guard = tokio::time::timeout(BUSY_WAIT, slot.reader.lock())
            .await
            .map_err(|_| LogicalError::Busy(name.to_string()))?;
        let reader = self.reader(name, &slot, &mut guard)?;
        let batch = if reader.snapshot.is_some() {
            self.read_snapshot(name, &slot, reader, max)?
        } else {
            self.read_log(name, &slot, reader, max, wait).await?
        };
        let mut state = lock(&slot.state);
        state.stats.reads += 1;
        state.stats.last_read_ms = now_ms();
        Ok(batch)
    }

    fn check_readable(&self, name: &str, slot: &Slot) -> Result<(), LogicalError> {
        let state = lock(&slot.state);
        if state.record.lost {
            let (_, held_bytes) = *lock(&slot.retention);
            return Err(LogicalError::Lost {
                slot: name.to_string(),
                needed: state.record.restart_lsn(),
                held_bytes,
                limit_bytes: self.inner.config.max_slot_wal_keep_size.unwrap_or(0),
            });
        }
        if state.record.paused {
            return Err(LogicalError::Paused(name.to_string()));
        }
        Ok(())
    }

    /// The slot's reader, opened again if its generation moved on.
    fn reader<'a>(
        &self,
        name: &str,
        slot: &Slot,
        guard: &'a mut Option<Reader>,
    ) -> Result<&'a mut Reader, LogicalError> {
        let generation = slot.generation.load(Ordering::SeqCst);
        if guard.as_ref().is_none_or(|r| r.generation != generation) {
            *guard = None;
            let record = lock(&slot.state).record.clone();
            let (from, snapshot) = match record.snapshot_lsn {
                Some(lsn) => (lsn, Some((self.snapshot_source(name, slot, lsn)?, lsn))),
                None => (record.confirmed_flush_lsn, None),
            };
            let sub = self
                .inner
                .stream
                .subscribe(slot.filter.include.clone(), from)
                .map_err(|source| LogicalError::Cdc { slot: name.to_string(), source })?;
            slot.sent_lsn.store(record.confirmed_flush_lsn, Ordering::Relaxed);
            slot.read_lsn.store(from, Ordering::Relaxed);
            *guard =
                Some(Reader { generation, sub, snapshot, dedupe: HashMap::new(), stash: VecDeque::new() });
        }
        Ok(guard.as_mut().expect("opened above"))
    }

    fn snapshot_source(
        &self,
        name: &str,
        slot: &Slot,
        lsn: Lsn,
    ) -> Result<Box<dyn SnapshotSource>, LogicalError> {
        if let Some(source) = lock(&slot.handed_snapshot).take() {
            return Ok(source);
        }
        let provider = self.inner.provider.read().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(provider) = provider else {
            return Err(LogicalError::Snapshot {
                slot: name.to_string(),
                message: "no snapshot source was given and no provider is set".into(),
            });
        };
        provider.open(lsn).map_err(|message| LogicalError::Snapshot { slot: name.to_string(), message })
    }

    fn read_snapshot(
        &self,
        name: &str,
        slot: &Slot,
        reader: &mut Reader,
        max: usize,
    ) -> Result<ChangeBatch, LogicalError> {
        let (source, lsn) = reader.snapshot.as_mut().expect("checked by the caller");
        let lsn = *lsn;
        let docs = source
            .next_batch(max)
            .map_err(|message| LogicalError::Snapshot { slot: name.to_string(), message })?;
        if docs.is_empty() {
            reader.snapshot = None;
            return Ok(ChangeBatch { changes: Vec::new(), confirm_lsn: Some(lsn), snapshot: false });
        }
        let mut changes = Vec::with_capacity(docs.len());
        let mut stats = SlotStats::default();
        for doc in docs {
            if doc.lsn > lsn {
                reader.dedupe.insert((doc.collection.clone(), doc.key.clone()), doc.lsn);
            }
            if !slot.filter.wants_collection(&doc.collection) {
                stats.changes_filtered += 1;
                continue;
            }
            let (after, raw) = parse_doc(&doc.value);
            stats.non_json += u64::from(raw);
            if slot.filter.predicate.as_ref().is_some_and(|p| !p.eval(&after)) {
                stats.changes_filtered += 1;
                continue;
            }
            let change = LogicalChange {
                op: ChangeOp::Snapshot,
                schema_version: lock(&self.inner.catalog).version_at(&doc.collection, lsn),
                collection: doc.collection,
                key: String::from_utf8_lossy(&doc.key).into_owned(),
                before: None,
                after: Some(after),
                lsn,
                index: 0,
                hlc: Timestamp::ZERO,
                origin: NodeId(0),
                txn: 0,
                ddl: None,
            };
            if let Some(change) = self.transform(name, slot, change, &mut stats)? {
                stats.snapshot_rows += 1;
                changes.push(change);
            }
        }
        Self::count(slot, &stats, changes.len());
        Ok(ChangeBatch { changes, confirm_lsn: None, snapshot: true })
    }

    async fn read_log(
        &self,
        name: &str,
        slot: &Slot,
        reader: &mut Reader,
        max: usize,
        wait: Duration,
    ) -> Result<ChangeBatch, LogicalError> {
        let cdc = |source| self.cdc_error(name, slot, source);
        let mut stats = SlotStats::default();
        let mut changes = Vec::new();
        let mut events: Vec<ChangeEvent> = reader.stash.drain(..).collect();
        let mut wait = if events.is_empty() { wait } else { Duration::ZERO };
        // Events the slot filters out do not count against `max`: read on while more are
        // ready, within a bound, so a slot that delivers little of a busy log still answers.
        let mut scanned = 0;
        loop {
            if changes.len() + events.len() < max {
                let more =
                    reader.sub.next_batch(max - changes.len() - events.len(), wait).await.map_err(cdc)?;
                events.extend(more);
            }
            if events.is_empty() {
                break;
            }
            scanned += events.len();
            for event in events.drain(..) {
                if let Some(change) = self.shape(name, slot, reader, &event, &mut stats)? {
                    changes.push(change);
                }
            }
            if changes.len() >= max || scanned >= SCAN_PER_READ.max(max) {
                break;
            }
            wait = Duration::ZERO;
        }
        let through = reader.sub.delivered_through();
        if !reader.dedupe.is_empty() {
            reader.dedupe.retain(|_, lsn| *lsn > through);
        }
        slot.read_lsn.store(through, Ordering::Relaxed);
        if let Some(last) = changes.last() {
            slot.sent_lsn.fetch_max(last.lsn, Ordering::Relaxed);
        }
        Self::count(slot, &stats, changes.len());
        if changes.is_empty() {
            self.idle_advance(slot, through)?;
        }
        Ok(ChangeBatch { changes, confirm_lsn: Some(through), snapshot: false })
    }

    fn cdc_error(&self, name: &str, slot: &Slot, source: CdcError) -> LogicalError {
        if matches!(source, CdcError::Gone { .. }) && lock(&slot.state).record.lost {
            return self.check_readable(name, slot).expect_err("a lost slot is not readable");
        }
        LogicalError::Cdc { slot: name.to_string(), source }
    }

    /// Moves an idle slot's confirmed LSN to `through` when the consumer has confirmed
    /// everything delivered: nothing in between concerns the slot.
    fn idle_advance(&self, slot: &Slot, through: Lsn) -> Result<(), LogicalError> {
        let state = {
            let mut state = lock(&slot.state);
            let record = &mut state.record;
            if through <= record.confirmed_flush_lsn
                || record.snapshot_lsn.is_some()
                || slot.sent_lsn.load(Ordering::Relaxed) > record.confirmed_flush_lsn
            {
                return Ok(());
            }
            record.confirmed_flush_lsn = through;
            self.hold(record);
            let mut last = lock(&slot.last_idle_persist);
            if last.is_some_and(|at| at.elapsed() < self.inner.config.idle_persist_interval) {
                return Ok(());
            }
            *last = Some(Instant::now());
            state.clone()
        };
        self.persist(&state)
    }

    /// Lets idle slots release WAL without a consumer reading them: each slot's reader
    /// scans ahead; a slot whose consumer has confirmed everything delivered moves its
    /// confirmed LSN past log entries it does not deliver. The first change it would
    /// deliver is kept for the next read. Slots being read are skipped.
    pub async fn tick(&self) -> Result<(), LogicalError> {
        for slot in self.all_slots() {
            let name = lock(&slot.state).record.config.name.clone();
            if self.check_readable(&name, &slot).is_err() || lock(&slot.state).record.snapshot_lsn.is_some() {
                continue;
            }
            let Ok(mut guard) = slot.reader.try_lock() else { continue };
            let reader = self.reader(&name, &slot, &mut guard)?;
            if !reader.stash.is_empty() {
                continue;
            }
            let events = reader
                .sub
                .next_batch(1, Duration::ZERO)
                .await
                .map_err(|e| self.cdc_error(&name, &slot, e))?;
            reader.stash.extend(events);
            if reader.stash.is_empty() {
                let through = reader.sub.delivered_through();
                slot.read_lsn.store(through, Ordering::Relaxed);
                self.idle_advance(&slot, through)?;
            }
        }
        Ok(())
    }

    fn count(slot: &Slot, batch: &SlotStats, sent: usize) {
        let mut state = lock(&slot.state);
        let total = &mut state.stats;
        total.changes_sent += sent as u64;
        total.changes_filtered += batch.changes_filtered;
        total.ddl_sent += batch.ddl_sent;
        total.snapshot_rows += batch.snapshot_rows;
        total.snapshot_deduplicated += batch.snapshot_deduplicated;
        total.non_json += batch.non_json;
        total.unfiltered_deletes += batch.unfiltered_deletes;
    }

    /// One event as the slot delivers it: collection filter, snapshot dedupe, predicate
    /// (an update that moves a document into or out of the predicate becomes an insert or
    /// a delete, when the before-image allows telling), transform.
    fn shape(
        &self,
        name: &str,
        slot: &Slot,
        reader: &Reader,
        event: &ChangeEvent,
        stats: &mut SlotStats,
    ) -> Result<Option<LogicalChange>, LogicalError> {
        if event.op == ChangeOp::Ddl {
            let ddl = event.ddl.as_ref();
            let collection = ddl
                .and_then(|d| DdlStatement::parse(&d.statement).ok())
                .map(|s| s.collection().to_string())
                .unwrap_or_default();
            let version = ddl.map_or(0, |d| d.schema_version);
            // Recorded before the changes after it are stamped, whoever else records it.
            if let Some(d) = ddl {
                self.record_ddl(&d.statement, d.schema_version, event.lsn)?;
            }
            if !slot.filter.replicate_ddl {
                return Ok(None);
            }
            let (change, _) = LogicalChange::from_event(event, collection, version);
            let change = self.transform(name, slot, change, stats)?;
            stats.ddl_sent += u64::from(change.is_some());
            return Ok(change);
        }
        if !slot.filter.wants_collection(&event.collection) {
            stats.changes_filtered += 1;
            return Ok(None);
        }
        if reader
            .dedupe
            .get(&(event.collection.clone(), event.key.clone()))
            .is_some_and(|lsn| event.lsn <= *lsn)
        {
            stats.snapshot_deduplicated += 1;
            return Ok(None);
        }
        let version = lock(&self.inner.catalog).version_at(&event.collection, event.lsn);
        let (mut change, non_json) = LogicalChange::from_event(event, event.collection.clone(), version);
        stats.non_json += u64::from(non_json);
        if let Some(predicate) = &slot.filter.predicate {
            let after = change.after.as_ref().map(|d| predicate.eval(d));
            let before = change.before.as_ref().map(|d| predicate.eval(d));
            let keep = match (change.op, before, after) {
                (ChangeOp::Delete, None, _) => {
                    stats.unfiltered_deletes += 1;
                    true
                }
                (ChangeOp::Delete, Some(before), _) => before,
                (ChangeOp::Update, Some(false), Some(true)) => {
                    change.op = ChangeOp::Insert;
                    change.before = None;
                    true
                }
                (ChangeOp::Update, Some(true), Some(false)) => {
                    change.op = ChangeOp::Delete;
                    change.after = None;
                    true
                }
                (_, _, after) => after == Some(true),
            };
            if !keep {
                stats.changes_filtered += 1;
                return Ok(None);
            }
        }
        self.transform(name, slot, change, stats)
    }

    fn transform(
        &self,
        name: &str,
        slot: &Slot,
        mut change: LogicalChange,
        stats: &mut SlotStats,
    ) -> Result<Option<LogicalChange>, LogicalError> {
        let Some(transform) = &slot.filter.transform else {
            return Ok(Some(change));
        };
        transform.apply_steps(&mut change);
        let Some(hook_name) = &transform.hook else { return Ok(Some(change)) };
        let hook = self.inner.hooks.read().unwrap_or_else(PoisonError::into_inner).get(hook_name).cloned();
        let fail = |change: &LogicalChange, message: String| LogicalError::Transform {
            slot: name.to_string(),
            collection: change.collection.clone(),
            key: change.key.clone(),
            lsn: change.lsn,
            message,
        };
        let Some(hook) = hook else {
            return Err(fail(&change, format!("hook {hook_name:?} is not registered on this node")));
        };
        match hook(&mut change) {
            Ok(true) => Ok(Some(change)),
            Ok(false) => {
                stats.changes_filtered += 1;
                Ok(None)
            }
            Err(message) => Err(fail(&change, message)),
        }
    }
}

impl Slot {
    fn new(state: SlotState, filter: SlotFilter) -> Slot {
        let confirmed = state.record.confirmed_flush_lsn;
        Slot {
            state: Mutex::new(state),
            filter,
            generation: AtomicU64::new(0),
            reader: tokio::sync::Mutex::new(None),
            handed_snapshot: Mutex::new(None),
            sent_lsn: AtomicU64::new(confirmed),
            read_lsn: AtomicU64::new(confirmed),
            retention: Mutex::new((WalStatus::Reserved, 0)),
            last_idle_persist: Mutex::new(None),
        }
    }

    /// Moves the confirmed LSN to `lsn` (above the current one): ends an initial sync it
    /// covers, and starts the reader over when `lsn` skips past what it has read.
    fn confirm(&self, record: &mut SlotRecord, lsn: Lsn) {
        record.confirm(lsn);
        if lsn > self.read_lsn.load(Ordering::Relaxed) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}
