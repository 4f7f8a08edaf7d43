//! The appliers over an operation of a store's own (not the document op): a counter store
//! whose ops say, through `KeyedOp`, which key they touch, which must run alone, and which
//! transaction they belong to. Parallel apply must end where serial apply does, with each
//! key's updates in log order, transactions applied whole at their commit and barriers
//! alone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_ship::apply::{
    Applier, ApplyError, Change, KeyedOp, OpRole, ParallelApplier, ParallelConfig, SerialApplier,
    StateMachine,
};
use themis_wal::{Entry, EntryKind, Lsn};

/// The key names this store's single namespace uses, one per counter.
const KEYS: [&str; 8] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];

/// A counter store's op. Encoded as 10 bytes: tag, key index (or 0), and a u64.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CounterOp {
    /// Folds `n` into counter `key` (order-sensitive: `c = c * 31 + n`), in transaction
    /// `txn` when it is not 0.
    Fold {
        key: usize,
        n: u64,
        txn: u64,
    },
    /// Sets every counter to its value mod 1000: a barrier.
    Squash,
    Begin(u64),
    Commit(u64),
}

impl CounterOp {
    fn encode(ops: &[CounterOp]) -> Bytes {
        let mut out = Vec::new();
        for op in ops {
            let (tag, key, word) = match *op {
                CounterOp::Fold { key, n, txn } => (b'F', key, n ^ (txn << 48)),
                CounterOp::Squash => (b'S', 0, 0),
                CounterOp::Begin(txn) => (b'B', 0, txn),
                CounterOp::Commit(txn) => (b'C', 0, txn),
            };
            out.push(tag);
            out.push(u8::try_from(key).unwrap());
            out.extend_from_slice(&word.to_le_bytes());
        }
        Bytes::from(out)
    }
}

impl KeyedOp for CounterOp {
    fn decode(lsn: Lsn, payload: &Bytes) -> Result<Vec<CounterOp>, ApplyError> {
        let bad = |reason: String| ApplyError::StateMachine { lsn, reason };
        if !payload.len().is_multiple_of(10) {
            return Err(bad(format!("{} bytes is not a whole number of ops", payload.len())));
        }
        payload
            .chunks(10)
            .map(|op| {
                let word = u64::from_le_bytes(op[2..].try_into().expect("8 bytes"));
                let key = usize::from(op[1]);
                match op[0] {
                    b'F' if key < KEYS.len() => {
                        Ok(CounterOp::Fold { key, n: word & ((1 << 48) - 1), txn: word >> 48 })
                    }
                    b'S' => Ok(CounterOp::Squash),
                    b'B' => Ok(CounterOp::Begin(word)),
                    b'C' => Ok(CounterOp::Commit(word)),
                    tag => Err(bad(format!("op tag {tag} with key {key}"))),
                }
            })
            .collect()
    }

    fn role(&self) -> OpRole<'_> {
        match self {
            CounterOp::Fold { key, .. } => {
                OpRole::Keyed { namespace: "counters", key: KEYS[*key].as_bytes() }
            }
            CounterOp::Squash => OpRole::Barrier,
            CounterOp::Begin(_) => OpRole::Begin,
            CounterOp::Commit(_) => OpRole::Commit,
        }
    }

    fn transaction(&self) -> Option<(NodeId, u64)> {
        match *self {
            CounterOp::Fold { txn: 0, .. }
            | CounterOp::Squash
            | CounterOp::Begin(0)
            | CounterOp::Commit(0) => None,
            CounterOp::Fold { txn, .. } | CounterOp::Begin(txn) | CounterOp::Commit(txn) => {
                Some((NodeId(1), txn))
            }
        }
    }
}

/// Counters, each with the LSNs of the tasks that changed it, in apply order.
#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<usize, (u64, Vec<Lsn>)>>);

impl Counters {
    fn state(&self) -> BTreeMap<usize, (u64, Vec<Lsn>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl StateMachine for Counters {
    type Op = CounterOp;

    fn apply(&self, lsn: Lsn, ops: &[CounterOp]) -> Result<Vec<Change>, ApplyError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for op in ops {
            match op {
                CounterOp::Fold { key, n, .. } => {
                    let (value, history) = map.entry(*key).or_default();
                    *value = value.wrapping_mul(31).wrapping_add(*n);
                    if history.last() != Some(&lsn) {
                        history.push(lsn);
                    }
                }
                CounterOp::Squash => {
                    for (value, history) in map.values_mut() {
                        *value %= 1000;
                        history.push(lsn);
                    }
                }
                CounterOp::Begin(_) | CounterOp::Commit(_) => unreachable!("the assembler keeps markers"),
            }
        }
        Ok(Vec::new())
    }

    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        Err(ApplyError::Snapshot("not used here".into()))
    }

    fn restore(&self, _: &Bytes) -> Result<(), ApplyError> {
        Err(ApplyError::Snapshot("not used here".into()))
    }
}

/// A seeded workload of entries: single folds, multi-key folds, squashes, and
/// transactions that span entries (interleaved with other writes).
fn workload(seed: u64, entries: usize) -> Vec<Vec<CounterOp>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    let mut open: Vec<u64> = Vec::new();
    let mut next_txn = 1;
    while out.len() < entries {
        let entry = match rng.u8(0..100) {
            0..2 => vec![CounterOp::Squash],
            2..6 if open.len() < 3 => {
                open.push(next_txn);
                next_txn += 1;
                vec![CounterOp::Begin(next_txn - 1)]
            }
            6..10 if !open.is_empty() => {
                let txn = open.swap_remove(rng.usize(..open.len()));
                vec![CounterOp::Commit(txn)]
            }
            10..30 if !open.is_empty() => {
                let txn = open[rng.usize(..open.len())];
                vec![CounterOp::Fold { key: rng.usize(..KEYS.len()), n: rng.u64(..1000), txn }]
            }
            _ => (0..rng.usize(1..4))
                .map(|_| CounterOp::Fold { key: rng.usize(..KEYS.len()), n: rng.u64(..1000), txn: 0 })
                .collect(),
        };
        out.push(entry);
    }
    out.extend(open.into_iter().map(|txn| vec![CounterOp::Commit(txn)]));
    out
}

fn entry(lsn: Lsn, ops: &[CounterOp]) -> Entry {
    Entry { lsn, term: 1, timestamp: Timestamp::ZERO, kind: EntryKind::DATA, payload: CounterOp::encode(ops) }
}

fn run(applier: &mut dyn Applier<Op = CounterOp>, work: &[Vec<CounterOp>]) -> Lsn {
    for (lsn, ops) in (1..).zip(work) {
        applier.submit_entry(&entry(lsn, ops)).unwrap();
    }
    applier.sync().unwrap().applied_lsn
}

#[test]
fn parallel_apply_of_a_stores_own_op_ends_where_serial_apply_does() {
    for seed in 0..20 {
        let work = workload(seed, 2_000);
        let serial = Arc::new(Counters::default());
        let serial_lsn = run(&mut SerialApplier::new(Arc::clone(&serial)), &work);
        let parallel = Arc::new(Counters::default());
        let mut applier =
            ParallelApplier::new(&parallel, ParallelConfig { workers: 4, max_pending: 64 }).unwrap();
        let parallel_lsn = run(&mut applier, &work);
        assert_eq!(serial_lsn, work.len() as Lsn, "seed {seed}");
        assert_eq!(parallel_lsn, serial_lsn, "seed {seed}");
        assert_eq!(parallel.state(), serial.state(), "seed {seed}: parallel apply differs from serial");
        let stats = applier.sync().unwrap();
        assert!(stats.barriers > 0 && stats.dependencies > 0, "seed {seed}: {stats:?}");
    }
}

#[test]
fn a_transaction_of_a_stores_own_op_applies_whole_at_its_commit() {
    let counters = Arc::new(Counters::default());
    let mut applier = SerialApplier::new(Arc::clone(&counters));
    applier.submit(1, vec![CounterOp::Begin(9)]).unwrap();
    applier.submit(2, vec![CounterOp::Fold { key: 0, n: 5, txn: 9 }]).unwrap();
    applier.submit(3, vec![CounterOp::Fold { key: 1, n: 7, txn: 0 }]).unwrap();
    // Held: only the write outside the transaction is applied, and the applied LSN waits
    // for the open transaction.
    assert_eq!(counters.state().get(&0), None);
    assert_eq!(counters.state()[&1], (7, vec![3]));
    assert_eq!(applier.sync().unwrap().applied_lsn, 0);
    applier.submit(4, vec![CounterOp::Commit(9)]).unwrap();
    assert_eq!(counters.state()[&0], (5, vec![4]), "applied at its commit's LSN");
    assert_eq!(applier.sync().unwrap().applied_lsn, 4);
}

#[test]
fn bad_entries_and_markers_of_a_stores_own_op_are_typed_errors() {
    let mut applier = SerialApplier::new(Arc::new(Counters::default()));
    let mut short = entry(1, &[CounterOp::Squash]);
    short.payload = short.payload.slice(..7);
    let err = applier.submit_entry(&short).unwrap_err();
    assert!(
        matches!(&err, ApplyError::StateMachine { lsn: 1, reason } if reason.contains("7 bytes")),
        "{err}"
    );

    let mut applier = SerialApplier::new(Arc::new(Counters::default()));
    let err = applier.submit(1, vec![CounterOp::Begin(0)]).unwrap_err();
    assert!(
        matches!(err, ApplyError::Transaction { lsn: 1, reason: "begin without a transaction id", .. }),
        "{err}"
    );
    let err = applier.submit(2, vec![CounterOp::Commit(4)]).unwrap_err();
    assert!(
        matches!(err, ApplyError::Transaction { lsn: 2, txn: 4, reason: "commit without begin", .. }),
        "{err}"
    );
}
