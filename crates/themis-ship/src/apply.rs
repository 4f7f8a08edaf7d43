//! Applying replicated operations to a state machine, serially or in parallel.
//!
//! The appliers are generic over the operation a [`StateMachine`] applies: any type that
//! implements [`KeyedOp`], which says how a data entry's payload decodes into ops and, per
//! op, which key it touches, whether it must run alone, and which transaction it belongs
//! to. The document op of themis-wal ([`Op`], a batch per entry made by
//! `themis_wal::op::encode_batch`) is the one the node uses; a store of its own brings its
//! own.
//!
//! Each entry becomes one [`ApplyTask`], applied atomically; a transaction that spans
//! entries (a begin … commit with one `(origin, txn)`) is gathered and applied as one task
//! at its commit's LSN. [`TxnAssembler`] does that grouping for both appliers, so they see
//! the same tasks.
//!
//! [`ParallelApplier`] runs tasks on 2 to 64 worker threads. A task waits for every
//! earlier task that touches one of its `(namespace, key)` pairs, so each key sees its
//! writes in log order; a barrier task (DDL) waits for everything before it and holds back
//! everything after it. The result equals [`SerialApplier`]'s, which the property tests
//! check.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use themis_clock::NodeId;
use themis_wal::op::{self, Op, OpError, OpKind};
use themis_wal::{Entry, EntryKind, Lsn};

/// One change a state machine made, with the value before it (change data capture needs
/// both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The LSN of the task that made it.
    pub lsn: Lsn,
    /// The collection.
    pub collection: String,
    /// The document key.
    pub key: Bytes,
    /// The value before (None: it did not exist).
    pub previous: Option<Bytes>,
    /// The value after (None: deleted).
    pub current: Option<Bytes>,
}

/// Why a task was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// An entry's payload is not an op batch.
    #[error("entry {lsn}: {source}")]
    Decode {
        /// The entry.
        lsn: Lsn,
        /// Why.
        #[source]
        source: OpError,
    },
    /// An operation does not fit the state (insert of an existing key, update of a
    /// missing one).
    #[error("LSN {lsn}: {op} {collection}/{key}: {reason}")]
    Conflict {
        /// The task's LSN.
        lsn: Lsn,
        /// The operation.
        op: &'static str,
        /// The collection.
        collection: String,
        /// The key, lossily as text.
        key: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// Transaction markers out of order.
    #[error("LSN {lsn}: transaction {txn} from node {origin}: {reason}")]
    Transaction {
        /// The entry.
        lsn: Lsn,
        /// The origin node.
        origin: u64,
        /// The transaction id.
        txn: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A state machine's own failure.
    #[error("LSN {lsn}: {reason}")]
    StateMachine {
        /// The task's LSN.
        lsn: Lsn,
        /// What failed.
        reason: String,
    },
    /// A snapshot could not be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// An earlier task failed; the applier stopped there and applies nothing more.
    #[error("the applier stopped after an error at LSN {lsn}: {reason}")]
    Stopped {
        /// The LSN that failed.
        lsn: Lsn,
        /// Its error.
        reason: String,
    },
    /// A bad setting; the message names it.
    #[error("invalid applier configuration: {0}")]
    Config(String),
}

/// What an op is to the appliers' scheduler ([`KeyedOp::role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpRole<'a> {
    /// Touches one key of one namespace: ops on one key apply in log order, ops on
    /// different keys may apply at once.
    Keyed {
        /// The namespace (a collection, a table).
        namespace: &'a str,
        /// The key within it.
        key: &'a [u8],
    },
    /// Touches no key: applies in any order relative to keyed tasks.
    Unkeyed,
    /// Must apply alone: after every earlier task, before every later one (a schema
    /// change).
    Barrier,
    /// Opens the transaction [`KeyedOp::transaction`] names: its later ops are held until
    /// its commit.
    Begin,
    /// Commits it: its held ops apply as one task at this entry's LSN.
    Commit,
}

/// An operation the appliers decode from data entries and schedule by key.
pub trait KeyedOp: Sized + Send + Sync + 'static {
    /// The ops of the data entry at `lsn`, in order. A payload that is not a valid batch
    /// is an error naming the entry (the applier stops there: it never skips an entry).
    fn decode(lsn: Lsn, payload: &Bytes) -> Result<Vec<Self>, ApplyError>;

    /// What the op is to the scheduler.
    fn role(&self) -> OpRole<'_>;

    /// The transaction `(origin, id)` the op belongs to, if any. A begin or commit without
    /// one is an error.
    fn transaction(&self) -> Option<(NodeId, u64)>;
}

/// themis-wal's document op: an entry is a batch (`themis_wal::op::encode_batch`), an op
/// touches one `(collection, key)`, DDL is a barrier, and `txn != 0` names a transaction.
impl KeyedOp for Op {
    fn decode(lsn: Lsn, payload: &Bytes) -> Result<Vec<Op>, ApplyError> {
        op::decode_batch(payload).map_err(|source| ApplyError::Decode { lsn, source })
    }

    fn role(&self) -> OpRole<'_> {
        match &self.kind {
            OpKind::Insert { collection, key, .. }
            | OpKind::Update { collection, key, .. }
            | OpKind::Upsert { collection, key, .. }
            | OpKind::Delete { collection, key, .. } => OpRole::Keyed { namespace: collection, key },
            OpKind::Ddl { .. } => OpRole::Barrier,
            OpKind::Begin => OpRole::Begin,
            OpKind::Commit => OpRole::Commit,
        }
    }

    fn transaction(&self) -> Option<(NodeId, u64)> {
        (self.txn != 0).then_some((self.origin, self.txn))
    }
}

/// What applying means for a store. Implementations are shared by the parallel applier's
/// workers, which call [`apply`](Self::apply) concurrently for tasks that touch disjoint
/// keys (never for two tasks that share a key).
pub trait StateMachine: Send + Sync + 'static {
    /// The operation it applies ([`Op`] for a document store).
    type Op: KeyedOp;

    /// Applies `ops` atomically as of `lsn` and returns the changes. Idempotent by LSN: an
    /// op on a key that already reflects `lsn` or later changes nothing and reports no
    /// change (a replay after restart is harmless).
    fn apply(&self, lsn: Lsn, ops: &[Self::Op]) -> Result<Vec<Change>, ApplyError>;

    /// A consistent image of the whole state. Call it when no apply is running (after
    /// `sync`).
    fn snapshot(&self) -> Result<Bytes, ApplyError>;

    /// Replaces the whole state with a snapshot.
    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError>;
}

/// One unit of apply: ops applied atomically at one LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyTask<O = Op> {
    /// The LSN the task becomes visible at (a transaction's: its commit's).
    pub lsn: Lsn,
    /// The operations, in log order.
    pub ops: Vec<O>,
}

impl<O: KeyedOp> ApplyTask<O> {
    /// Whether the task must run alone, after everything before it (DDL).
    #[must_use]
    pub fn is_barrier(&self) -> bool {
        self.ops.iter().any(|op| op.role() == OpRole::Barrier)
    }
}

/// Groups entries into [`ApplyTask`]s: ops outside a transaction go with their entry,
/// a transaction's ops are held from `Begin` to `Commit`.
#[derive(Debug)]
pub struct TxnAssembler<O = Op> {
    open: HashMap<(NodeId, u64), Vec<O>>,
}

impl<O> Default for TxnAssembler<O> {
    fn default() -> Self {
        TxnAssembler { open: HashMap::new() }
    }
}

impl<O: KeyedOp> TxnAssembler<O> {
    /// The tasks the entry at `lsn` with `ops` completes, in order.
    pub fn push(&mut self, lsn: Lsn, ops: Vec<O>) -> Result<Vec<ApplyTask<O>>, ApplyError> {
        let mut tasks = Vec::new();
        let mut own = Vec::new();
        for op in ops {
            let txn = op.transaction();
            let bad = |reason| {
                let (origin, txn) = txn.unwrap_or((NodeId(0), 0));
                ApplyError::Transaction { lsn, origin: origin.0, txn, reason }
            };
            match (op.role(), txn) {
                (OpRole::Begin, None) => return Err(bad("begin without a transaction id")),
                (OpRole::Begin, Some(id)) => {
                    if self.open.insert(id, Vec::new()).is_some() {
                        return Err(bad("begun twice"));
                    }
                }
                (OpRole::Commit, id) => {
                    let ops =
                        id.and_then(|id| self.open.remove(&id)).ok_or_else(|| bad("commit without begin"))?;
                    tasks.push(ApplyTask { lsn, ops });
                }
                (_, id) => match id.and_then(|id| self.open.get_mut(&id)) {
                    Some(held) => held.push(op),
                    None => own.push(op),
                },
            }
        }
        if !own.is_empty() {
            // Ops outside a transaction come before the entry's commits at the same LSN;
            // they touch keys a transaction may also touch, so keep the entry's order.
            tasks.insert(0, ApplyTask { lsn, ops: own });
        }
        Ok(tasks)
    }

    /// Transactions begun and not yet committed.
    #[must_use]
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }
}

/// Counters of an applier.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ApplyStats {
    /// Tasks applied.
    pub tasks: u64,
    /// Ops applied.
    pub ops: u64,
    /// Changes the state machine reported.
    pub changes: u64,
    /// Waits on an earlier task found by key (parallel only).
    pub dependencies: u64,
    /// Barriers (DDL) that serialized the stream.
    pub barriers: u64,
    /// Summed time workers spent inside `apply`, in nanoseconds.
    pub busy_nanos: u64,
    /// Wall time from the first task to the last completion, in nanoseconds.
    pub wall_nanos: u64,
    /// The highest LSN below which every task is applied.
    pub applied_lsn: Lsn,
}

impl ApplyStats {
    /// Average number of tasks applying at once: `busy / wall` (1.0 for serial apply).
    #[must_use]
    pub fn effective_parallelism(&self) -> f64 {
        if self.wall_nanos == 0 { 0.0 } else { self.busy_nanos as f64 / self.wall_nanos as f64 }
    }
}

/// Feeds tasks to a state machine.
pub trait Applier {
    /// The operation applied.
    type Op: KeyedOp;
    /// Submits one WAL entry: a data entry's payload is decoded into ops
    /// ([`KeyedOp::decode`]); other kinds (no-op, configuration) only advance the applied
    /// LSN. Blocks while the queue is full.
    fn submit_entry(&mut self, entry: &Entry) -> Result<(), ApplyError>;
    /// Submits one entry's ops.
    fn submit(&mut self, lsn: Lsn, ops: Vec<Self::Op>) -> Result<(), ApplyError>;
    /// Waits for everything submitted and returns the counters, or the first error.
    fn sync(&mut self) -> Result<ApplyStats, ApplyError>;
    /// The changes applied since the last call, in completion order (per key: log order).
    fn take_changes(&mut self) -> Vec<Change>;
}

fn decode_entry<O: KeyedOp>(entry: &Entry) -> Result<Option<Vec<O>>, ApplyError> {
    if entry.kind != EntryKind::DATA {
        return Ok(None);
    }
    O::decode(entry.lsn, &entry.payload).map(Some)
}

/// Applies tasks one at a time on the caller's thread: the reference the parallel applier
/// is measured and tested against.
pub struct SerialApplier<S: StateMachine> {
    machine: Arc<S>,
    txns: TxnAssembler<S::Op>,
    stats: ApplyStats,
    changes: Vec<Change>,
    started: Option<Instant>,
    failed: Option<(Lsn, String)>,
}

impl<S: StateMachine> fmt::Debug for SerialApplier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialApplier").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl<S: StateMachine> SerialApplier<S> {
    /// An applier for `machine`.
    pub fn new(machine: Arc<S>) -> Self {
        SerialApplier {
            machine,
            txns: TxnAssembler::default(),
            stats: ApplyStats::default(),
            changes: Vec::new(),
            started: None,
            failed: None,
        }
    }

    fn advance(&mut self, lsn: Lsn) {
        if self.txns.open_transactions() == 0 {
            self.stats.applied_lsn = self.stats.applied_lsn.max(lsn);
        }
    }
}

impl<S: StateMachine> Applier for SerialApplier<S> {
    type Op = S::Op;

    fn submit_entry(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if let Some(ops) = decode_entry(entry)? {
            return self.submit(entry.lsn, ops);
        }
        self.advance(entry.lsn);
        Ok(())
    }

    fn submit(&mut self, lsn: Lsn, ops: Vec<S::Op>) -> Result<(), ApplyError> {
        if let Some((lsn, reason)) = &self.failed {
            return Err(ApplyError::Stopped { lsn: *lsn, reason: reason.clone() });
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        for task in self.txns.push(lsn, ops)? {
            let t0 = Instant::now();
            let result = self.machine.apply(task.lsn, &task.ops);
            self.stats.busy_nanos += nanos_since(t0);
            match result {
                Ok(changes) => {
                    self.stats.tasks += 1;
                    self.stats.ops += task.ops.len() as u64;
                    self.stats.changes += changes.len() as u64;
                    self.stats.barriers += u64::from(task.is_barrier());
                    self.changes.extend(changes);
                }
                Err(e) => {
                    self.failed = Some((task.lsn, e.to_string()));
                    return Err(e);
                }
            }
        }
        self.advance(lsn);
        self.stats.wall_nanos = nanos_since(started);
        Ok(())
    }

    fn sync(&mut self) -> Result<ApplyStats, ApplyError> {
        match &self.failed {
            Some((lsn, reason)) => Err(ApplyError::Stopped { lsn: *lsn, reason: reason.clone() }),
            None => Ok(self.stats),
        }
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }
}

fn nanos_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Settings of a [`ParallelApplier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelConfig {
    /// Worker threads, from 2 to 64 (default 4).
    pub workers: usize,
    /// Tasks submitted and not yet applied before `submit` blocks (default 4096).
    pub max_pending: usize,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig { workers: 4, max_pending: 4096 }
    }
}

impl ParallelConfig {
    /// Checks the bounds; the message names the setting and the value.
    pub fn validate(&self) -> Result<(), ApplyError> {
        if !(2..=64).contains(&self.workers) {
            return Err(ApplyError::Config(format!("workers = {} is outside 2..=64", self.workers)));
        }
        if self.max_pending == 0 {
            return Err(ApplyError::Config("max_pending = 0; it must be at least 1".into()));
        }
        Ok(())
    }
}

/// A task in the dependency graph.
struct Node<O> {
    /// The task's LSN (kept here: the task itself moves to the worker that runs it).
    lsn: Lsn,
    task: ApplyTask<O>,
    /// Earlier tasks it still waits for.
    waits: usize,
    /// Later tasks waiting for it.
    dependents: Vec<u64>,
    /// The key hashes it touches, forgotten on completion if no later task touched them.
    keys: Vec<u64>,
}

/// The scheduler's state, under one mutex.
struct Graph<O> {
    /// Incomplete tasks by id: slot `i` holds task `first_id + i`, `None` once completed.
    /// Ids are dense and completed slots leave from the front, so the front is the oldest
    /// incomplete task (the applied watermark) and a lookup is an index.
    nodes: VecDeque<Option<Node<O>>>,
    /// The id of `nodes[0]`.
    first_id: u64,
    /// The last incomplete task (by id) that touched each key hash; a key leaves when that
    /// task completes, so the map is bounded by the pending tasks, not by every key seen.
    last_by_key: HashMap<u64, u64, KeyHashState>,
    /// The last barrier, which every later task waits for until it completes.
    barrier: Option<u64>,
    /// Tasks whose waits are over, in the order they became ready.
    ready: VecDeque<u64>,
    next_id: u64,
    /// Submitted and not yet completed.
    pending: usize,
    /// Workers waiting on `work`: a submitter signals only when one is there to wake.
    idle_workers: usize,
    /// A submitter waits on `done` for room below `max_pending`.
    waiting_for_room: bool,
    /// A `sync` waits on `done` for `pending == 0`.
    waiting_for_sync: bool,
    /// The highest LSN submitted whose tasks are all known.
    submitted_lsn: Lsn,
    changes: Vec<Change>,
    stats: ApplyStats,
    started: Option<Instant>,
    failed: Option<(Lsn, String)>,
    shutdown: bool,
}

impl<O> Graph<O> {
    /// Applied watermark: below the oldest incomplete task, or everything submitted.
    fn applied_lsn(&self) -> Lsn {
        match self.nodes.front() {
            Some(Some(oldest)) => oldest.lsn.saturating_sub(1).min(self.submitted_lsn),
            _ => self.submitted_lsn,
        }
    }

    fn node(&mut self, id: u64) -> Option<&mut Node<O>> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.nodes.get_mut(index)?.as_mut()
    }

    /// Takes a completed task's node out and drops the completed slots at the front.
    fn complete(&mut self, id: u64) -> Node<O> {
        let index = usize::try_from(id - self.first_id).expect("an incomplete id is in the window");
        let node = self.nodes[index].take().expect("a running task stays in the graph");
        while let Some(None) = self.nodes.front() {
            self.nodes.pop_front();
            self.first_id += 1;
        }
        node
    }
}

/// Hashes a key hash (already uniform 64 bits) by passing it through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyHashState = std::hash::BuildHasherDefault<KeyHasher>;

struct Shared<O> {
    graph: Mutex<Graph<O>>,
    /// Workers wait here for ready tasks.
    work: Condvar,
    /// Submitters wait here for room; `sync` for completion.
    done: Condvar,
    /// [`ParallelConfig::max_pending`].
    max_pending: usize,
}

fn lock<O>(m: &Mutex<Graph<O>>) -> MutexGuard<'_, Graph<O>> {
    // A worker that panicked inside a state machine poisons the lock; the graph itself is
    // only changed in short sections that do not panic, so its state stays consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies tasks on worker threads, in log order per key. See the module docs.
pub struct ParallelApplier<S: StateMachine> {
    shared: Arc<Shared<S::Op>>,
    workers: Vec<JoinHandle<()>>,
    txns: TxnAssembler<S::Op>,
    hasher: RandomState,
    config: ParallelConfig,
    _machine: std::marker::PhantomData<S>,
}

impl<S: StateMachine> fmt::Debug for ParallelApplier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelApplier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S: StateMachine> ParallelApplier<S> {
    /// Starts `config.workers` threads applying to `machine`.
    pub fn new(machine: &Arc<S>, config: ParallelConfig) -> Result<Self, ApplyError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            graph: Mutex::new(Graph {
                nodes: VecDeque::new(),
                first_id: 0,
                last_by_key: HashMap::default(),
                barrier: None,
                ready: VecDeque::new(),
                next_id: 0,
                pending: 0,
                idle_workers: 0,
                waiting_for_room: false,
                waiting_for_sync: false,
                submitted_lsn: 0,
                changes: Vec::new(),
                stats: ApplyStats::default(),
                started: None,
                failed: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            max_pending: config.max_pending,
        });
        let workers = (0..config.workers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let machine = Arc::clone(machine);
                std::thread::Builder::new()
                    .name(format!("themis-apply-{i}"))
                    .spawn(move || worker(&shared, &*machine))
                    .map_err(|e| ApplyError::Config(format!("cannot start worker thread {i}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ParallelApplier {
            shared,
            workers,
            txns: TxnAssembler::default(),
            hasher: RandomState::new(),
            config,
            _machine: std::marker::PhantomData,
        })
    }

    fn schedule(&mut self, task: ApplyTask<S::Op>) -> Result<(), ApplyError> {
        let mut keys: Vec<u64> = task
            .ops
            .iter()
            .filter_map(|op| match op.role() {
                OpRole::Keyed { namespace, key } => Some(key_hash(&self.hasher, namespace, key)),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let barrier = task.is_barrier();
        let mut g = lock(&self.shared.graph);
        while g.pending >= self.config.max_pending && g.failed.is_none() {
            g.waiting_for_room = true;
            g = self.shared.done.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.waiting_for_room = false;
        if let Some((lsn, reason)) = &g.failed {
            return Err(ApplyError::Stopped { lsn: *lsn, reason: reason.clone() });
        }
        g.started.get_or_insert_with(Instant::now);
        let id = g.next_id;
        g.next_id += 1;
        let mut waits_on: Vec<u64> = Vec::new();
        if barrier {
            // Wait for every incomplete task; everything later waits for this one.
            let first = g.first_id;
            waits_on.extend((first..).zip(&g.nodes).filter(|(_, n)| n.is_some()).map(|(id, _)| id));
            g.last_by_key.clear();
            g.barrier = Some(id);
            g.stats.barriers += 1;
        } else {
            if let Some(b) = g.barrier.filter(|&b| g.node(b).is_some()) {
                waits_on.push(b);
            }
            for key in &keys {
                match g.last_by_key.entry(*key) {
                    MapEntry::Occupied(mut last) => {
                        let prev = last.insert(id);
                        waits_on.push(prev);
                    }
                    MapEntry::Vacant(v) => {
                        v.insert(id);
                    }
                }
            }
        }
        waits_on.sort_unstable();
        waits_on.dedup();
        let mut waits = 0;
        for prev in waits_on {
            // Completed tasks have left the graph; only incomplete ones are waited for.
            if let Some(node) = g.node(prev) {
                node.dependents.push(id);
                waits += 1;
            }
        }
        g.stats.dependencies += waits as u64;
        g.pending += 1;
        let lsn = task.lsn;
        if g.nodes.is_empty() {
            g.first_id = id;
        }
        g.nodes.push_back(Some(Node { lsn, task, waits, dependents: Vec::new(), keys }));
        if waits == 0 {
            g.ready.push_back(id);
            // A busy worker takes the task when it finishes its own; a futex wake per task
            // would cost the submitter a system call and the workers a context switch.
            let wake = g.idle_workers > 0;
            drop(g);
            if wake {
                self.shared.work.notify_one();
            }
        }
        Ok(())
    }
}

/// The hash of a (collection, key) pair: the parallel applier's dependency key and the
/// memory store's shard selector. A collision only adds a needless wait.
fn key_hash(hasher: &RandomState, collection: &str, key: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    collection.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

fn worker<S: StateMachine>(shared: &Shared<S::Op>, machine: &S) {
    let mut g = lock(&shared.graph);
    loop {
        let Some(id) = g.ready.pop_front() else {
            if g.shutdown {
                return;
            }
            g.idle_workers += 1;
            g = shared.work.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
            g.idle_workers -= 1;
            continue;
        };
        let skip = g.failed.is_some();
        let task = std::mem::replace(
            &mut g.node(id).expect("ready tasks are in the graph").task,
            ApplyTask { lsn: 0, ops: Vec::new() },
        );
        drop(g);
        let t0 = Instant::now();
        let result = if skip { Ok(Vec::new()) } else { machine.apply(task.lsn, &task.ops) };
        let busy = nanos_since(t0);
        g = lock(&shared.graph);
        g.stats.busy_nanos += busy;
        match result {
            Ok(changes) if !skip => {
                g.stats.tasks += 1;
                g.stats.ops += task.ops.len() as u64;
                g.stats.changes += changes.len() as u64;
                g.changes.extend(changes);
            }
            Ok(_) => {}
            Err(e) => {
                if g.failed.as_ref().is_none_or(|(lsn, _)| task.lsn < *lsn) {
                    g.failed = Some((task.lsn, e.to_string()));
                }
            }
        }
        let node = g.complete(id);
        for key in &node.keys {
            if let MapEntry::Occupied(last) = g.last_by_key.entry(*key)
                && *last.get() == id
            {
                last.remove();
            }
        }
        if g.failed.is_none() {
            let watermark = g.applied_lsn();
            g.stats.applied_lsn = g.stats.applied_lsn.max(watermark);
        }
        let mut woke = 0;
        for dep in node.dependents {
            let d = g.node(dep).expect("dependents stay until their waits are over");
            d.waits -= 1;
            if d.waits == 0 {
                g.ready.push_back(dep);
                woke += 1;
            }
        }
        g.pending -= 1;
        if let Some(started) = g.started {
            g.stats.wall_nanos = nanos_since(started);
        }
        // Keep one woken task for this worker; wake idle ones for the rest.
        for _ in 1..woke.min(g.idle_workers + 1) {
            shared.work.notify_one();
        }
        // Wake a waiter on `done` only when its wait can end: room for a blocked submitter
        // (one completion makes it), everything done for `sync`, or a failure for both.
        let failed = g.failed.is_some();
        if (g.waiting_for_room && (g.pending < shared.max_pending || failed))
            || (g.waiting_for_sync && g.pending == 0)
        {
            shared.done.notify_all();
        }
    }
}

impl<S: StateMachine> Applier for ParallelApplier<S> {
    type Op = S::Op;

    fn submit_entry(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        match decode_entry(entry)? {
            Some(ops) => self.submit(entry.lsn, ops),
            None => self.submit(entry.lsn, Vec::new()),
        }
    }

    fn submit(&mut self, lsn: Lsn, ops: Vec<S::Op>) -> Result<(), ApplyError> {
        for task in self.txns.push(lsn, ops)? {
            self.schedule(task)?;
        }
        if self.txns.open_transactions() == 0 {
            let mut g = lock(&self.shared.graph);
            g.submitted_lsn = g.submitted_lsn.max(lsn);
            if g.pending == 0 && g.failed.is_none() {
                g.stats.applied_lsn = g.submitted_lsn;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<ApplyStats, ApplyError> {
        let mut g = lock(&self.shared.graph);
        while g.pending > 0 {
            g.waiting_for_sync = true;
            g = self.shared.done.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.waiting_for_sync = false;
        if let Some((lsn, reason)) = &g.failed {
            return Err(ApplyError::Stopped { lsn: *lsn, reason: reason.clone() });
        }
        g.stats.applied_lsn = g.submitted_lsn;
        Ok(g.stats)
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut lock(&self.shared.graph).changes)
    }
}

impl<S: StateMachine> Drop for ParallelApplier<S> {
    fn drop(&mut self) {
        lock(&self.shared.graph).shutdown = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One document in [`MemoryStateMachine::dump`]: its (collection, key), its value (None
/// once deleted) and the LSNs that changed it.
pub type DumpRow = ((String, Bytes), Option<Bytes>, Vec<Lsn>);

type Shard = HashMap<(String, Bytes), Doc>;

/// An in-memory document store: the reference [`StateMachine`] for tests and benches.
/// Keys are sharded over 64 locks, so disjoint keys apply without contention.
pub struct MemoryStateMachine {
    shards: Vec<Mutex<Shard>>,
    schema: Mutex<(u64, Vec<(String, u64)>)>,
    hasher: RandomState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Doc {
    value: Option<Bytes>,
    lsn: Lsn,
    /// Every LSN that changed the key, in apply order (a test and audit aid: 8 bytes per change).
    history: Vec<Lsn>,
}

impl fmt::Debug for MemoryStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStateMachine").finish_non_exhaustive()
    }
}

impl Default for MemoryStateMachine {
    fn default() -> Self {
        MemoryStateMachine {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            schema: Mutex::new((0, Vec::new())),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryStateMachine {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        MemoryStateMachine::default()
    }

    fn shard_of(&self, collection: &str, key: &[u8]) -> usize {
        (key_hash(&self.hasher, collection, key) % self.shards.len() as u64) as usize
    }

    /// The current value of a document.
    #[must_use]
    pub fn get(&self, collection: &str, key: &[u8]) -> Option<Bytes> {
        let shard = self.shards[self.shard_of(collection, key)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shard.get(&(collection.to_owned(), Bytes::copy_from_slice(key))).and_then(|d| d.value.clone())
    }

    /// Every live document and the LSNs that changed each key, sorted: two stores that
    /// applied the same log the same way have equal dumps.
    #[must_use]
    pub fn dump(&self) -> Vec<DumpRow> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.iter().map(|(k, d)| (k.clone(), d.value.clone(), d.history.clone())).collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// The schema version and the DDL statements applied, in order, with their versions.
    #[must_use]
    pub fn schema(&self) -> (u64, Vec<(String, u64)>) {
        self.schema.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl StateMachine for MemoryStateMachine {
    type Op = Op;

    fn apply(&self, lsn: Lsn, ops: &[Op]) -> Result<Vec<Change>, ApplyError> {
        // Lock every shard the task touches, in index order (no deadlock), so the task is
        // atomic; check every op first, then write.
        let mut shard_ids: Vec<usize> =
            ops.iter().filter_map(|op| op.kind.target()).map(|(c, k)| self.shard_of(c, k)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: HashMap<usize, MutexGuard<'_, Shard>> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
            .collect();
        // Staged values, so later ops of the task see earlier ones.
        let mut staged: HashMap<(String, Bytes), Option<Bytes>> = HashMap::new();
        let mut changes = Vec::new();
        let mut ddl = Vec::new();
        for op in ops {
            let Some((collection, key)) = op.kind.target() else {
                if let OpKind::Ddl { statement, schema_version } = &op.kind {
                    ddl.push((statement.clone(), *schema_version));
                }
                continue;
            };
            let id = (collection.to_owned(), key.clone());
            let shard = &guards[&self.shard_of(collection, key)];
            if shard.get(&id).is_some_and(|d| d.lsn >= lsn) {
                continue; // Already applied: idempotent replay.
            }
            let before = match staged.get(&id) {
                Some(v) => v.clone(),
                None => shard.get(&id).and_then(|d| d.value.clone()),
            };
            let conflict = |op: &'static str, reason| ApplyError::Conflict {
                lsn,
                op,
                collection: collection.to_owned(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            };
            let after = match &op.kind {
                OpKind::Insert { .. } if before.is_some() => {
                    return Err(conflict("insert", "the document exists"));
                }
                OpKind::Update { .. } if before.is_none() => {
                    return Err(conflict("update", "the document does not exist"));
                }
                OpKind::Insert { value, .. }
                | OpKind::Update { value, .. }
                | OpKind::Upsert { value, .. } => Some(value.clone()),
                OpKind::Delete { .. } => None,
                OpKind::Ddl { .. } | OpKind::Begin | OpKind::Commit => unreachable!("ops without a target"),
            };
            changes.push(Change {
                lsn,
                collection: id.0.clone(),
                key: id.1.clone(),
                previous: before,
                current: after.clone(),
            });
            staged.insert(id, after);
        }
        for ((collection, key), value) in staged {
            let shard = guards.get_mut(&self.shard_of(&collection, &key)).expect("locked above");
            let doc =
                shard.entry((collection, key)).or_insert(Doc { value: None, lsn: 0, history: Vec::new() });
            doc.value = value;
            doc.lsn = lsn;
            doc.history.push(lsn);
        }
        if !ddl.is_empty() {
            let mut schema = self.schema.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (statement, version) in ddl {
                // A statement at or below the current version was applied before (replay).
                if version > schema.0 {
                    schema.0 = version;
                    schema.1.push((statement, version));
                }
            }
        }
        Ok(changes)
    }

    /// Layout: `batch_len:u32 batch lsn:u64{upserts}`, where `batch` is an op batch of one
    /// upsert per live document followed by the DDL statements, and the LSNs are each
    /// document's last change (kept so replay after a restore stays idempotent).
    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        let mut ops = Vec::new();
        let mut lsns = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((collection, key), doc) in shard.iter() {
                if let Some(value) = &doc.value {
                    let kind = OpKind::Upsert {
                        collection: collection.clone(),
                        key: key.clone(),
                        value: value.clone(),
                    };
                    ops.push(Op { origin: NodeId(0), txn: 0, kind, stamp: None });
                    lsns.push(doc.lsn);
                }
            }
        }
        for (statement, schema_version) in self.schema().1 {
            ops.push(Op {
                origin: NodeId(0),
                txn: 0,
                kind: OpKind::Ddl { statement, schema_version },
                stamp: None,
            });
        }
        let batch = op::encode_batch(&ops).map_err(|e| ApplyError::Snapshot(e.to_string()))?;
        let len =
            u32::try_from(batch.len()).map_err(|_| ApplyError::Snapshot("snapshot above 4 GiB".into()))?;
        let mut out = Vec::with_capacity(4 + batch.len() + lsns.len() * 8);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&batch);
        for lsn in lsns {
            out.extend_from_slice(&lsn.to_le_bytes());
        }
        Ok(out.into())
    }

    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError> {
        let bad = |reason: String| ApplyError::Snapshot(reason);
        let len = snapshot.get(..4).ok_or_else(|| bad("shorter than its 4-byte length".into()))?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let batch =
            snapshot.get(4..4 + len).ok_or_else(|| bad(format!("batch of {len} bytes is truncated")))?;
        let ops = op::decode_batch(&snapshot.slice_ref(batch)).map_err(|e| bad(e.to_string()))?;
        let mut lsns = snapshot[4 + len..].chunks(8);
        let mut docs: Vec<Shard> = (0..self.shards.len()).map(|_| HashMap::new()).collect();
        let mut schema = (0, Vec::new());
        for op in ops {
            match op.kind {
                OpKind::Upsert { collection, key, value } => {
                    let lsn = match lsns.next() {
                        Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                        _ => {
                            return Err(bad(format!(
                                "no LSN for document {collection}/{}",
                                String::from_utf8_lossy(&key)
                            )));
                        }
                    };
                    let shard = self.shard_of(&collection, &key);
                    docs[shard]
                        .insert((collection, key), Doc { value: Some(value), lsn, history: Vec::new() });
                }
                OpKind::Ddl { statement, schema_version } => {
                    schema.0 = schema_version.max(schema.0);
                    schema.1.push((statement, schema_version));
                }
                other => return Err(bad(format!("unexpected op in a snapshot: {other:?}"))),
            }
        }
        if lsns.next().is_some() {
            return Err(bad("more LSNs than documents".into()));
        }
        for (shard, docs) in self.shards.iter().zip(docs) {
            *shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = docs;
        }
        *self.schema.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = schema;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(key: u64) -> Vec<Op> {
        let kind = OpKind::Upsert {
            collection: "c".into(),
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"v"),
        };
        vec![Op { origin: NodeId(1), txn: 0, kind, stamp: None }]
    }

    #[test]
    fn the_scheduler_forgets_keys_and_tasks_once_applied() {
        // A follower's applier runs for as long as the node; what it remembers per key must
        // leave with the last task that touched it, or it grows with every key ever written.
        let machine = Arc::new(MemoryStateMachine::new());
        let mut applier =
            ParallelApplier::new(&machine, ParallelConfig { workers: 2, max_pending: 16 }).unwrap();
        for lsn in 1..=5_000 {
            // Repeats (lsn % 3000) keep some dependencies in play.
            applier.submit(lsn, upsert(lsn % 3_000)).unwrap();
        }
        let stats = applier.sync().unwrap();
        assert_eq!((stats.tasks, stats.applied_lsn), (5_000, 5_000));
        let g = lock(&applier.shared.graph);
        assert!(g.last_by_key.is_empty(), "{} keys still held", g.last_by_key.len());
        assert!(g.nodes.is_empty(), "{} task slots still held", g.nodes.len());
        assert_eq!(g.first_id, 5_000);
        drop(g);
        assert_eq!(machine.get("c", b"1999").as_deref(), Some(&b"v"[..]));
    }
}
