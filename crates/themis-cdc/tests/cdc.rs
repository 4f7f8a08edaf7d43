//! The change stream over a real WAL: filtering, catch-up from the log, resume, heartbeats
//! and the bad paths.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use themis_cdc::{CdcConfig, CdcError, CdcStream, ChangeEvent, ChangeOp, Filter};
use themis_clock::{Hlc, NodeId};
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{FsyncPolicy, Lsn, NewEntry, Wal, WalConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    wal: Wal,
    hlc: Hlc,
    cdc: CdcStream,
}

fn fixture(config: CdcConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let wal_config = WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 64 << 10,
        max_record_bytes: 32 << 10,
        preallocate: false,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), wal_config).unwrap();
    let hlc = Hlc::new(NodeId(7));
    let cdc = CdcStream::new(config, Arc::new(wal.clone()), 0, hlc.now()).unwrap();
    Fixture { _dir: dir, wal, hlc, cdc }
}

impl Fixture {
    /// Appends one entry holding `ops` and publishes it, as the commit path does.
    fn commit(&self, ops: &[OpKind]) -> Lsn {
        let ops: Vec<Op> =
            ops.iter().map(|k| Op { origin: NodeId(7), txn: 0, kind: k.clone(), stamp: None }).collect();
        let range = self.wal.append(&[NewEntry::data(self.hlc.now(), encode_batch(&ops).unwrap())]).unwrap();
        self.cdc.publish(&[self.wal.read(range.first).unwrap()]);
        range.first
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The `i`th op of the workload: inserts, updates (with a before-image) and deletes over
/// 40 collections.
fn workload_op(i: u64) -> OpKind {
    let collection = match i % 4 {
        0 => format!("orders_{}", i % 10),
        1 => format!("tenant_{}.items", ["acme", "globex", "initech"][(i % 3) as usize]),
        2 => format!("users{}", i % 7),
        _ => format!("log_{}", i % 20),
    };
    let key = b(&format!("k{}", i % 500));
    match i % 3 {
        0 => OpKind::Insert { collection, key, value: b(&format!("{{\"i\":{i}}}")) },
        1 => OpKind::Update { collection, key, value: b(&format!("{{\"i\":{i}}}")), before: Some(b("{}")) },
        _ => OpKind::Delete { collection, key, before: None },
    }
}

async fn collect(sub: &mut themis_cdc::Subscription, until_lsn: Lsn) -> Vec<ChangeEvent> {
    let mut out = Vec::new();
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("no stall").unwrap();
        if event.op == ChangeOp::Heartbeat {
            if event.lsn >= until_lsn {
                return out;
            }
            continue;
        }
        let lsn = event.lsn;
        out.push(event);
        if lsn >= until_lsn {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_reach_each_filter_exactly_as_it_asks_in_order() {
    let config = CdcConfig { heartbeat: Duration::from_millis(50), ..CdcConfig::default() };
    let f = fixture(config);
    let filters = [
        ("", ""),
        ("insert", ""),
        ("update,delete", "orders_*"),
        ("", "tenant_{acme,globex}.*"),
        ("insert,update", "users3, log_1?, orders_7"),
    ];
    let mut subs: Vec<_> = filters
        .iter()
        .map(|(ops, cols)| f.cdc.subscribe(Filter::parse(ops, cols).unwrap(), 0).unwrap())
        .collect();
    let total = 10_000u64;
    // Ten ops per entry for the first half, one per entry after: batches and singles.
    let mut i = 0;
    let mut last = 0;
    while i < total {
        let n = if i < total / 2 { 10 } else { 1 };
        last = f.commit(&(i..i + n).map(workload_op).collect::<Vec<_>>());
        i += n;
    }
    for ((ops, cols), sub) in filters.iter().zip(&mut subs) {
        let filter = Filter::parse(ops, cols).unwrap();
        let got = collect(sub, last).await;
        let expected: Vec<(ChangeOp, String, Bytes)> = (0..total)
            .map(workload_op)
            .map(|k| {
                let (op, c, key) = match k {
                    OpKind::Insert { collection, key, .. } => (ChangeOp::Insert, collection, key),
                    OpKind::Update { collection, key, .. } => (ChangeOp::Update, collection, key),
                    OpKind::Delete { collection, key, .. } => (ChangeOp::Delete, collection, key),
                    _ => unreachable!(),
                };
                (op, c, key)
            })
            .filter(|(op, c, _)| filter.wants(*op) && filter.matches_collection(c))
            .collect();
        let got_keys: Vec<_> = got.iter().map(|e| (e.op, e.collection.clone(), e.key.clone())).collect();
        assert_eq!(got_keys.len(), expected.len(), "filter ops={ops:?} collections={cols:?}");
        assert_eq!(got_keys, expected, "filter ops={ops:?} collections={cols:?}");
        assert!(got.windows(2).all(|w| (w[0].lsn, w[0].index) < (w[1].lsn, w[1].index)), "log order");
        // Exactly the last event a subscriber gets from each entry ends it.
        for w in got.windows(2) {
            assert_eq!(w[0].entry_end, w[0].lsn != w[1].lsn, "entry_end at LSN {}", w[0].lsn);
        }
        // Updates carry their before-image; every event names its origin and commit time.
        assert!(
            got.iter().filter(|e| e.op == ChangeOp::Update).all(|e| e.before.as_deref() == Some(&b"{}"[..]))
        );
        assert!(got.iter().all(|e| e.origin == NodeId(7) && e.hlc.physical_ms() > 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_catches_up_from_the_log_and_sees_every_event_once() {
    // A queue of 64 entries against 20,000 commits: the stalled subscriber falls far
    // behind, reads the log, and rejoins the queue while the writer goes on.
    let config = CdcConfig { max_depth: 64, heartbeat: Duration::from_millis(50), ..CdcConfig::default() };
    let f = Arc::new(fixture(config));
    let mut stalled = f.cdc.subscribe(Filter::all(), 0).unwrap();
    let writer = {
        let f = Arc::clone(&f);
        std::thread::spawn(move || {
            let mut last = 0;
            for i in 0..20_000u64 {
                last = f.commit(&[OpKind::Upsert {
                    collection: "c".into(),
                    key: b(&i.to_string()),
                    value: b("{}"),
                }]);
            }
            last
        })
    };
    // Read a little, stall while the writer runs, then read the rest.
    let mut got = collect(&mut stalled, 10).await;
    // Where it stands now: the end of the last batch it took (a poll takes every entry the
    // queue holds, up to a batch, so this depends on how far the writer had got).
    let stood = f.cdc.stats().subscribers[0].position;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    // The writer finished all 20,000 commits while the subscriber stood still: nothing it
    // did waited on the subscriber.
    assert_eq!(f.cdc.stats().subscribers[0].position, stood, "the subscriber did not move while stalled");
    assert!(stood < last, "it stalled behind the writer ({stood} of {last})");
    assert!(f.cdc.stats().evicted > 0, "the queue overflowed");
    got.extend(collect(&mut stalled, last).await);
    let keys: Vec<u64> = got.iter().map(|e| e.key_str().parse().unwrap()).collect();
    assert_eq!(keys, (0..20_000).collect::<Vec<_>>(), "every event once, in order");
    let stats = f.cdc.stats();
    assert_eq!(stats.subscribers[0].position, last);
    assert!(!stats.subscribers[0].catching_up, "it rejoined the live queue");
}

#[tokio::test]
async fn resuming_after_an_lsn_delivers_exactly_what_follows_it() {
    let f = fixture(CdcConfig { max_depth: 4, ..CdcConfig::default() });
    let lsns: Vec<Lsn> = (0..20)
        .map(|i| {
            f.commit(&[OpKind::Insert { collection: "c".into(), key: b(&format!("{i}")), value: b("1") }])
        })
        .collect();
    for from in [0, 1, 7, 15, 19] {
        let mut sub = f.cdc.subscribe(Filter::all(), from).unwrap();
        let got: Vec<Lsn> = collect(&mut sub, 20).await.iter().map(|e| e.lsn).collect();
        assert_eq!(got, lsns[from as usize..], "from {from}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_subscriptions_get_heartbeats_with_the_resolved_lsn() {
    let f = fixture(CdcConfig { heartbeat: Duration::from_millis(100), ..CdcConfig::default() });
    let mut orders = f.cdc.subscribe(Filter::parse("", "orders").unwrap(), 0).unwrap();
    let first = orders.next().await.unwrap();
    assert_eq!((first.op, first.lsn), (ChangeOp::Heartbeat, 0));
    // Changes the filter drops still move the heartbeat's LSN and HLC.
    let mut last = 0;
    for i in 0..3 {
        last =
            f.commit(&[OpKind::Insert { collection: "users".into(), key: b(&i.to_string()), value: b("1") }]);
    }
    let beat = orders.next().await.unwrap();
    assert_eq!((beat.op, beat.lsn), (ChangeOp::Heartbeat, last));
    assert_eq!(beat.hlc, f.wal.read(last).unwrap().timestamp);
    let stats = f.cdc.stats();
    assert_eq!((stats.subscribers[0].lag_lsn, stats.subscribers[0].position), (0, last));
}

#[tokio::test]
async fn the_callback_form_gets_every_event_and_stops_when_dropped() {
    let f = fixture(CdcConfig::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = f
        .cdc
        .subscribe_with(Filter::parse("delete", "").unwrap(), 0, move |event| {
            let _ = tx.send(event);
        })
        .unwrap();
    f.commit(&[OpKind::Insert { collection: "c".into(), key: b("a"), value: b("1") }]);
    f.commit(&[OpKind::Delete { collection: "c".into(), key: b("a"), before: Some(b("1")) }]);
    let event = rx.recv().await.unwrap().unwrap();
    assert_eq!((event.op, event.lsn, event.before), (ChangeOp::Delete, 2, Some(b("1"))));
    assert_eq!(f.cdc.stats().subscribers.len(), 1);
    drop(handle);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(f.cdc.stats().subscribers.is_empty(), "dropping the handle ends the subscription");
    // Closing the stream ends subscriptions with Closed, after what is queued.
    let mut sub = f.cdc.subscribe(Filter::all(), 1).unwrap();
    f.cdc.close();
    assert_eq!(sub.next().await.unwrap().lsn, 2);
    assert_eq!(sub.next().await, Err(CdcError::Closed));
}

#[tokio::test]
async fn bad_positions_and_a_compacted_log_are_typed_errors() {
    let f = fixture(CdcConfig { max_depth: 2, ..CdcConfig::default() });
    for i in 0..2000 {
        f.commit(&[OpKind::Insert {
            collection: "c".into(),
            key: b(&i.to_string()),
            value: Bytes::from(vec![b'x'; 200]),
        }]);
    }
    assert_eq!(
        f.cdc.subscribe(Filter::all(), 2001).unwrap_err(),
        CdcError::BeyondLog { from: 2001, last: 2000 }
    );
    // A subscriber behind the queue when the log is compacted under it gets Gone.
    let mut behind = f.cdc.subscribe(Filter::all(), 0).unwrap();
    assert_eq!(behind.next().await.unwrap().lsn, 1);
    let oldest = f.wal.truncate_prefix(1500).unwrap();
    assert!(oldest > 1, "segments were removed");
    let mut err = None;
    for _ in 0..3000 {
        match behind.next().await {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let Some(CdcError::Gone { needed, oldest: reported }) = err else { panic!("expected Gone, got {err:?}") };
    assert_eq!(reported, f.wal.first_lsn());
    assert!(needed < reported);
    // Subscribing from a position the log no longer holds is refused at once.
    assert_eq!(
        f.cdc.subscribe(Filter::all(), 0).unwrap_err(),
        CdcError::Gone { needed: 1, oldest: f.wal.first_lsn() }
    );
    // A restart (installed snapshot) sends subscribers behind it to the log.
    f.cdc.restart_at(2000, f.hlc.now());
    let mut from_snapshot = f.cdc.subscribe(Filter::all(), 2000).unwrap();
    f.commit(&[OpKind::Insert { collection: "c".into(), key: b("new"), value: b("1") }]);
    assert_eq!(from_snapshot.next().await.unwrap().lsn, 2001);
    // Bad configs are refused, naming the value.
    let bad = CdcConfig { max_depth: 0, ..CdcConfig::default() };
    let err = CdcStream::new(bad, Arc::new(f.wal.clone()), 0, f.hlc.now()).unwrap_err();
    assert!(err.to_string().contains("max_depth = 0"), "{err}");
}

#[test]
fn events_decode_every_op_kind() {
    let f = fixture(CdcConfig::default());
    let lsn = f.commit(&[
        OpKind::Begin,
        OpKind::Insert { collection: "a".into(), key: b("1"), value: b("x") },
        OpKind::Upsert { collection: "a".into(), key: b("1"), value: b("y") },
        OpKind::Ddl { statement: "CREATE COLLECTION b".into(), schema_version: 2 },
        OpKind::Commit,
    ]);
    let events = themis_cdc::decode_entry(&f.wal.read(lsn).unwrap()).unwrap();
    let ops: Vec<ChangeOp> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Ddl]);
    assert_eq!(events.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events.iter().map(|e| e.entry_end).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(events[2].ddl.as_ref().unwrap().schema_version, 2);
    let by_op: HashMap<&str, &str> = ChangeOp::ALL.iter().map(|o| (o.name(), o.debezium())).collect();
    assert_eq!(by_op["insert"], "c");
    // A damaged payload is a typed error naming the LSN.
    let bad = themis_wal::Entry { payload: Bytes::from_static(&[9, 9]), ..f.wal.read(lsn).unwrap() };
    assert!(matches!(themis_cdc::decode_entry(&bad), Err(CdcError::Decode { lsn: l, .. }) if l == lsn));
}
