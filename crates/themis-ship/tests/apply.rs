//! The serial and parallel appliers: transactions, barriers, errors, snapshots, and the
//! property that parallel apply ends where serial apply does, in the same per-key order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use themis_clock::{NodeId, Timestamp};
use themis_ship::apply::{
    Applier, ApplyError, ApplyTask, Change, MemoryStateMachine, ParallelApplier, ParallelConfig,
    SerialApplier, StateMachine, TxnAssembler,
};
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{Entry, EntryKind, Lsn};

fn upsert(key: &str, value: &str) -> Op {
    Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Upsert {
            collection: "c".into(),
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(value.to_owned()),
        },
        stamp: None,
    }
}

fn in_txn(mut op: Op, txn: u64) -> Op {
    op.txn = txn;
    op
}

fn marker(kind: OpKind, txn: u64) -> Op {
    Op { origin: NodeId(1), txn, kind, stamp: None }
}

fn ddl(version: u64) -> Op {
    Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Ddl { statement: format!("ALTER c v{version}"), schema_version: version },
        stamp: None,
    }
}

fn parallel(machine: &Arc<MemoryStateMachine>, workers: usize) -> ParallelApplier<MemoryStateMachine> {
    ParallelApplier::new(machine, ParallelConfig { workers, max_pending: 64 }).unwrap()
}

#[test]
fn a_transaction_spanning_entries_applies_at_its_commit() {
    let mut asm = TxnAssembler::default();
    assert_eq!(asm.push(1, vec![marker(OpKind::Begin, 7), in_txn(upsert("a", "1"), 7)]).unwrap(), []);
    // An op outside the transaction goes on its own.
    let tasks = asm.push(2, vec![upsert("b", "x")]).unwrap();
    assert_eq!(tasks, [ApplyTask { lsn: 2, ops: vec![upsert("b", "x")] }]);
    let tasks = asm.push(3, vec![in_txn(upsert("c", "3"), 7), marker(OpKind::Commit, 7)]).unwrap();
    assert_eq!(
        tasks,
        [ApplyTask { lsn: 3, ops: vec![in_txn(upsert("a", "1"), 7), in_txn(upsert("c", "3"), 7)] }]
    );
    assert_eq!(asm.open_transactions(), 0);
}

#[test]
fn transaction_markers_out_of_order_are_errors() {
    let mut asm = TxnAssembler::default();
    let err = asm.push(4, vec![marker(OpKind::Commit, 9)]).unwrap_err();
    assert_eq!(err, ApplyError::Transaction { lsn: 4, origin: 1, txn: 9, reason: "commit without begin" });
    asm.push(5, vec![marker(OpKind::Begin, 9)]).unwrap();
    assert!(matches!(
        asm.push(6, vec![marker(OpKind::Begin, 9)]),
        Err(ApplyError::Transaction { reason: "begun twice", .. })
    ));
    assert!(matches!(asm.push(7, vec![marker(OpKind::Begin, 0)]), Err(ApplyError::Transaction { .. })));
}

#[test]
fn a_transaction_is_invisible_until_it_commits_and_then_whole() {
    let machine = Arc::new(MemoryStateMachine::new());
    let mut applier = parallel(&machine, 4);
    applier.submit(1, vec![marker(OpKind::Begin, 5), in_txn(upsert("a", "1"), 5)]).unwrap();
    applier.submit(2, vec![in_txn(upsert("b", "2"), 5)]).unwrap();
    let stats = applier.sync().unwrap();
    assert_eq!(machine.get("c", b"a"), None);
    assert_eq!(stats.applied_lsn, 0, "nothing below an open transaction is fully applied");
    applier.submit(3, vec![marker(OpKind::Commit, 5)]).unwrap();
    let stats = applier.sync().unwrap();
    assert_eq!(machine.get("c", b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(machine.get("c", b"b").as_deref(), Some(&b"2"[..]));
    assert_eq!(stats.applied_lsn, 3);
}

#[test]
fn changes_report_the_previous_value() {
    let machine = Arc::new(MemoryStateMachine::new());
    let mut applier = SerialApplier::new(Arc::clone(&machine));
    applier.submit(1, vec![upsert("k", "old")]).unwrap();
    applier.submit(2, vec![upsert("k", "new")]).unwrap();
    applier
        .submit(
            3,
            vec![Op {
                origin: NodeId(1),
                txn: 0,
                kind: OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"k"), before: None },
                stamp: None,
            }],
        )
        .unwrap();
    let changes = applier.take_changes();
    let summary: Vec<_> =
        changes.iter().map(|c: &Change| (c.lsn, c.previous.clone(), c.current.clone())).collect();
    assert_eq!(
        summary,
        [
            (1, None, Some(Bytes::from_static(b"old"))),
            (2, Some(Bytes::from_static(b"old")), Some(Bytes::from_static(b"new"))),
            (3, Some(Bytes::from_static(b"new")), None),
        ]
    );
}

#[test]
fn replaying_applied_entries_changes_nothing() {
    let machine = Arc::new(MemoryStateMachine::new());
    machine.apply(5, &[upsert("k", "five")]).unwrap();
    assert_eq!(machine.apply(4, &[upsert("k", "four")]).unwrap(), []);
    assert_eq!(machine.apply(5, &[upsert("k", "again")]).unwrap(), []);
    assert_eq!(machine.get("c", b"k").as_deref(), Some(&b"five"[..]));
}

#[test]
fn a_failed_apply_stops_the_applier_and_names_the_lsn() {
    for parallel_apply in [false, true] {
        let machine = Arc::new(MemoryStateMachine::new());
        let mut applier: Box<dyn Applier<Op = Op>> = if parallel_apply {
            Box::new(parallel(&machine, 2))
        } else {
            Box::new(SerialApplier::new(Arc::clone(&machine)))
        };
        let update = Op {
            origin: NodeId(1),
            txn: 0,
            kind: OpKind::Update {
                collection: "c".into(),
                key: Bytes::from_static(b"missing"),
                value: Bytes::new(),
                before: None,
            },
            stamp: None,
        };
        let _ = applier.submit(1, vec![update]);
        let err = applier.sync().unwrap_err();
        assert!(
            matches!(&err, ApplyError::Stopped { lsn: 1, reason } if reason.contains("does not exist")),
            "{err}"
        );
        let again = applier.submit(2, vec![upsert("k", "v")]);
        assert!(
            matches!(again, Err(ApplyError::Stopped { lsn: 1, .. })),
            "parallel={parallel_apply}: {again:?}"
        );
    }
}

#[test]
fn entries_that_are_not_op_batches_are_decode_errors() {
    let machine = Arc::new(MemoryStateMachine::new());
    let mut applier = parallel(&machine, 2);
    let entry = |lsn, kind, payload: &'static [u8]| Entry {
        lsn,
        term: 1,
        timestamp: Timestamp::ZERO,
        kind,
        payload: Bytes::from_static(payload),
    };
    // A no-op advances the applied LSN without decoding.
    applier.submit_entry(&entry(1, EntryKind::NO_OP, b"")).unwrap();
    assert_eq!(applier.sync().unwrap().applied_lsn, 1);
    let err = applier.submit_entry(&entry(2, EntryKind::DATA, b"\x01\x00")).unwrap_err();
    assert!(matches!(err, ApplyError::Decode { lsn: 2, .. }), "{err}");
    let good = Entry {
        lsn: 2,
        term: 1,
        timestamp: Timestamp::ZERO,
        kind: EntryKind::DATA,
        payload: encode_batch(&[upsert("k", "v")]).unwrap(),
    };
    applier.submit_entry(&good).unwrap();
    assert_eq!(applier.sync().unwrap().applied_lsn, 2);
}

#[test]
fn bad_configuration_names_the_setting() {
    let machine = Arc::new(MemoryStateMachine::new());
    for (workers, max_pending, needle) in
        [(1, 8, "workers = 1"), (65, 8, "workers = 65"), (4, 0, "max_pending = 0")]
    {
        let err = ParallelApplier::new(&machine, ParallelConfig { workers, max_pending }).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn snapshots_restore_documents_schema_and_idempotence() {
    let machine = MemoryStateMachine::new();
    machine.apply(1, &[upsert("a", "1"), upsert("b", "2")]).unwrap();
    machine.apply(2, &[ddl(3)]).unwrap();
    machine
        .apply(
            3,
            &[Op {
                origin: NodeId(1),
                txn: 0,
                kind: OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"b"), before: None },
                stamp: None,
            }],
        )
        .unwrap();
    let snapshot = machine.snapshot().unwrap();
    let restored = MemoryStateMachine::new();
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored.get("c", b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(restored.get("c", b"b"), None);
    assert_eq!(restored.schema(), machine.schema());
    // Replaying the log after a restore changes nothing it already holds.
    assert_eq!(restored.apply(1, &[upsert("a", "1")]).unwrap(), []);
    // Damaged snapshots are errors, not panics.
    for cut in [0, 3, 10, snapshot.len() - 1] {
        assert!(
            matches!(restored.restore(&snapshot.slice(..cut)), Err(ApplyError::Snapshot(_))),
            "cut {cut}"
        );
    }
}

/// A state machine that sleeps in every apply and records how many applies overlap.
struct Slow {
    inner: MemoryStateMachine,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl StateMachine for Slow {
    type Op = Op;

    fn apply(&self, lsn: Lsn, ops: &[Op]) -> Result<Vec<Change>, ApplyError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        let out = self.inner.apply(lsn, ops);
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        self.inner.snapshot()
    }
    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError> {
        self.inner.restore(snapshot)
    }
}

#[test]
fn disjoint_keys_apply_together_and_ddl_runs_alone() {
    let machine = Arc::new(Slow {
        inner: MemoryStateMachine::new(),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let mut applier = ParallelApplier::new(&machine, ParallelConfig { workers: 8, max_pending: 64 }).unwrap();
    for i in 0..32u64 {
        applier.submit(i + 1, vec![upsert(&format!("k{i}"), "v")]).unwrap();
    }
    let stats = applier.sync().unwrap();
    assert!(
        machine.most.load(Ordering::SeqCst) >= 4,
        "at most {} applies overlapped",
        machine.most.load(Ordering::SeqCst)
    );
    assert!(stats.effective_parallelism() > 2.0, "{stats:?}");
    assert_eq!(stats.dependencies, 0);

    machine.most.store(0, Ordering::SeqCst);
    // Disjoint keys with a barrier between each: the barrier waits for the task before
    // it, and the task after it waits for the barrier.
    for i in 0..8u64 {
        applier.submit(100 + 2 * i, vec![upsert(&format!("a{i}"), "v")]).unwrap();
        applier.submit(101 + 2 * i, vec![ddl(i + 1)]).unwrap();
    }
    let stats = applier.sync().unwrap();
    assert_eq!(machine.most.load(Ordering::SeqCst), 1, "a barrier between every pair serializes everything");
    assert_eq!(stats.barriers, 8);
    assert_eq!(machine.inner.schema().0, 8);
}

#[test]
fn the_pending_queue_is_bounded() {
    let machine = Arc::new(Slow {
        inner: MemoryStateMachine::new(),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let mut applier = ParallelApplier::new(&machine, ParallelConfig { workers: 2, max_pending: 4 }).unwrap();
    let start = std::time::Instant::now();
    // 40 tasks on one key, 2 ms each, with 4 pending at most: submit itself must wait.
    for i in 0..40u64 {
        applier.submit(i + 1, vec![upsert("same", &i.to_string())]).unwrap();
    }
    assert!(start.elapsed() >= Duration::from_millis(2 * 35), "submit returned after {:?}", start.elapsed());
    let stats = applier.sync().unwrap();
    assert_eq!(stats.dependencies, 39);
    assert_eq!(machine.inner.get("c", b"same").as_deref(), Some(&b"39"[..]));
}

/// One generated log entry.
#[derive(Debug, Clone)]
enum Step {
    /// Upserts or deletes outside a transaction.
    Auto(Vec<(u8, Option<u8>)>),
    /// Opens transaction `id`.
    Begin(u8),
    /// A write inside transaction `id` (ignored when it is not open).
    TxnWrite(u8, u8, Option<u8>),
    /// Commits transaction `id` (ignored when it is not open).
    Commit(u8),
    /// A schema change.
    Ddl,
}

fn step() -> impl Strategy<Value = Step> {
    let write = (0u8..12, proptest::option::weighted(0.8, any::<u8>()));
    prop_oneof![
        6 => proptest::collection::vec(write.clone(), 1..4).prop_map(Step::Auto),
        1 => (0u8..3).prop_map(Step::Begin),
        2 => (0u8..3, write).prop_map(|(t, (k, v))| Step::TxnWrite(t, k, v)),
        1 => (0u8..3).prop_map(Step::Commit),
        1 => Just(Step::Ddl),
    ]
}

/// Turns steps into entries (LSN, ops), keeping transaction markers well formed.
fn log(steps: &[Step]) -> Vec<(Lsn, Vec<Op>)> {
    let mut open = [false; 3];
    let mut version = 0;
    let write = |key: u8, value: Option<u8>, txn: u64, lsn: Lsn| {
        let key = Bytes::from(format!("k{key}"));
        let collection = if key.len() % 2 == 0 { "even" } else { "odd" }.to_owned();
        let kind = match value {
            Some(v) => OpKind::Upsert { collection, key, value: Bytes::from(format!("{v}@{lsn}")) },
            None => OpKind::Delete { collection, key, before: None },
        };
        Op { origin: NodeId(1), txn, kind, stamp: None }
    };
    let mut out = Vec::new();
    for s in steps {
        let lsn = out.len() as u64 + 1;
        let ops = match *s {
            Step::Auto(ref writes) => writes.iter().map(|&(k, v)| write(k, v, 0, lsn)).collect(),
            Step::Begin(t) if !open[t as usize] => {
                open[t as usize] = true;
                vec![marker(OpKind::Begin, u64::from(t) + 1)]
            }
            Step::TxnWrite(t, k, v) if open[t as usize] => vec![write(k, v, u64::from(t) + 1, lsn)],
            Step::Commit(t) if open[t as usize] => {
                open[t as usize] = false;
                vec![marker(OpKind::Commit, u64::from(t) + 1)]
            }
            Step::Ddl => {
                version += 1;
                vec![ddl(version)]
            }
            _ => continue,
        };
        out.push((lsn, ops));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn parallel_apply_equals_serial_apply(steps in proptest::collection::vec(step(), 1..120), workers in 2usize..9) {
        let entries = log(&steps);
        let serial_machine = Arc::new(MemoryStateMachine::new());
        let mut serial = SerialApplier::new(Arc::clone(&serial_machine));
        let parallel_machine = Arc::new(MemoryStateMachine::new());
        let mut par = ParallelApplier::new(&parallel_machine, ParallelConfig { workers, max_pending: 16 }).unwrap();
        for (lsn, ops) in &entries {
            serial.submit(*lsn, ops.clone()).unwrap();
            par.submit(*lsn, ops.clone()).unwrap();
        }
        let (s, p) = (serial.sync().unwrap(), par.sync().unwrap());
        // Final values and every key's sequence of changing LSNs are identical.
        prop_assert_eq!(serial_machine.dump(), parallel_machine.dump());
        prop_assert_eq!(serial_machine.schema(), parallel_machine.schema());
        prop_assert_eq!((s.tasks, s.ops, s.changes, s.applied_lsn), (p.tasks, p.ops, p.changes, p.applied_lsn));
        // Per key, the reported changes chain: each previous is the value before it.
        let mut last: std::collections::HashMap<(String, Bytes), Option<Bytes>> = std::collections::HashMap::default();
        for c in par.take_changes() {
            let before = last.insert((c.collection.clone(), c.key.clone()), c.current.clone()).flatten();
            prop_assert_eq!(before, c.previous.clone(), "change at LSN {}", c.lsn);
        }
    }
}
