//! themis-cdc: enqueue from the commit path beside a bare bounded-channel send of the
//! same entry, with per-call latency percentiles for both; catch-up decoding from the WAL
//! beside a raw WAL read of the same range.
//!
//! `cargo bench -p themis-benches --bench cdc`. The percentile pass times each of
//! `THEMIS_BENCH_CDC_CALLS` (default 1,000,000) calls on its own.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use themis_benches::{Comparison, Target};
use themis_node::stats::percentile;
use themis_replication::cdc::{CdcConfig, CdcStream, ChangeOp, Filter};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::wal::op::{Op, OpKind, encode_batch};
use themis_replication::wal::{Entry, EntryKind, FsyncPolicy, NewEntry, Wal, WalConfig};

/// A committed entry as the node logs a 256-byte document write.
fn entry(lsn: u64) -> Entry {
    let op = Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Update {
            collection: "orders".into(),
            key: Bytes::from(format!("order-{}", lsn % 10_000)),
            value: Bytes::from(themis_node::stats::document(0, lsn, 256)),
            before: None,
        },
        stamp: None,
    };
    Entry {
        lsn,
        term: 1,
        timestamp: Timestamp::ZERO,
        kind: EntryKind::DATA,
        payload: encode_batch(&[op]).unwrap(),
    }
}

fn stream(wal: &Wal) -> CdcStream {
    CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), 0, Timestamp::ZERO).unwrap()
}

fn open_wal(dir: &std::path::Path) -> Wal {
    Wal::open(dir, WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() }).unwrap().0
}

/// Criterion: one publish (the queue full, so each also evicts) against one send into a
/// bounded channel that a thread drains.
fn enqueue(c: &mut Criterion, wal: &Wal) {
    let mut group = c.benchmark_group("cdc_enqueue");
    group.throughput(Throughput::Elements(1));
    let cdc = stream(wal);
    let _subscriber = cdc.subscribe(Filter::all(), 0).unwrap();
    let mut lsn = 0;
    group.bench_function("publish", |b| {
        b.iter(|| {
            lsn += 1;
            cdc.publish(&[entry_cached(lsn)]);
        });
    });
    let (tx, rx) = std::sync::mpsc::sync_channel::<Entry>(65_536);
    let drain = std::thread::spawn(move || while rx.recv().is_ok() {});
    let mut n = 0;
    group.bench_function("channel_send", |b| {
        b.iter(|| {
            n += 1;
            tx.send(entry_cached(n)).unwrap();
        });
    });
    drop(tx);
    drain.join().unwrap();
    group.finish();
}

/// The same entry with a new LSN: what the commit path hands over (the payload is shared).
fn entry_cached(lsn: u64) -> Entry {
    thread_local! {
        static TEMPLATE: Entry = entry(1);
    }
    TEMPLATE.with(|t| Entry { lsn, ..t.clone() })
}

/// Per-call latency of each, timed one call at a time.
fn percentiles(wal: &Wal) {
    let calls: usize =
        std::env::var("THEMIS_BENCH_CDC_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    // A queue deep enough that the subscriber below never falls behind it: this pass
    // measures the live path.
    let config = CdcConfig { max_depth: calls.max(1), ..CdcConfig::default() };
    let cdc = CdcStream::new(config, Arc::new(wal.clone()), 0, Timestamp::ZERO).unwrap();
    let mut subscriber = cdc.subscribe(Filter::all(), 0).unwrap();
    // A live subscriber reads alongside, as on a node.
    let reader_cdc = cdc.clone();
    let reader = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let mut n = 0u64;
            while let Ok(event) = subscriber.next().await {
                if event.op != ChangeOp::Heartbeat {
                    n += 1;
                }
            }
            n
        })
    });
    let mut ours = Vec::with_capacity(calls);
    for lsn in 1..=calls as u64 {
        let e = entry_cached(lsn);
        let t0 = Instant::now();
        cdc.publish(std::slice::from_ref(&e));
        ours.push(t0.elapsed());
    }
    reader_cdc.close();
    let read = reader.join().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Entry>(65_536);
    let drain = std::thread::spawn(move || while rx.recv().is_ok() {});
    let mut base = Vec::with_capacity(calls);
    for lsn in 1..=calls as u64 {
        let e = entry_cached(lsn);
        let t0 = Instant::now();
        tx.send(e).unwrap();
        base.push(t0.elapsed());
    }
    drop(tx);
    drain.join().unwrap();
    ours.sort_unstable();
    base.sort_unstable();
    let p = |v: &[Duration], q| percentile(v, q);
    println!(
        "cdc_enqueue/percentiles over {calls} calls (a subscriber reading {read} events alongside): publish p50 {:?} \
         p99 {:?} p999 {:?} max {:?} (target p99 < 10 µs: {}); bounded channel send p50 {:?} p99 {:?} p999 {:?} max {:?}",
        p(&ours, 0.50),
        p(&ours, 0.99),
        p(&ours, 0.999),
        ours.last().copied().unwrap_or_default(),
        if p(&ours, 0.99) < Duration::from_micros(10) { "MET" } else { "MISSED" },
        p(&base, 0.50),
        p(&base, 0.99),
        p(&base, 0.999),
        base.last().copied().unwrap_or_default(),
    );
}

/// Criterion: reading `count` entries through a subscription that is behind the queue
/// (so it reads the WAL and decodes each entry into an event) against reading the same
/// range raw.
fn catch_up(c: &mut Criterion, wal: &Wal, count: u64) {
    let bytes: usize = (1..=count).map(|l| wal.read(l).unwrap().payload.len()).sum();
    let mut group = c.benchmark_group("cdc_catch_up");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(10);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    group.bench_function("subscription", |b| {
        b.iter(|| {
            // The queue holds one entry past the range: everything is read from the WAL.
            let cdc = CdcStream::new(
                CdcConfig { max_depth: 1, ..CdcConfig::default() },
                Arc::new(wal.clone()),
                count,
                Timestamp::ZERO,
            )
            .unwrap();
            let mut sub = cdc.subscribe(Filter::all(), 0).unwrap();
            runtime.block_on(async {
                let mut n = 0;
                while n < count {
                    let event = sub.next().await.unwrap();
                    assert_eq!(event.op, ChangeOp::Update);
                    n += 1;
                }
            });
        });
    });
    group.bench_function("raw_wal_read", |b| {
        b.iter(|| {
            let mut next = 1;
            let mut n = 0;
            while next <= count {
                let entries = wal.read_range(next, 1 << 20).unwrap();
                next += entries.len() as u64;
                n += entries.len();
            }
            assert_eq!(n as u64, count);
        });
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let quick = std::env::args().any(|a| a == "--test");
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    let count: u64 = if quick { 1_000 } else { 100_000 };
    let hlc = themis_replication::clock::Hlc::new(NodeId(1));
    for chunk in (1..=count).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<NewEntry> =
            chunk.iter().map(|&l| NewEntry::data(hlc.now(), entry(l).payload)).collect();
        wal.append(&entries).unwrap();
    }
    let publish_dir = tempfile::tempdir().unwrap();
    let empty = open_wal(publish_dir.path());
    let mut c = Criterion::default().configure_from_args();
    enqueue(&mut c, &empty);
    catch_up(&mut c, &wal, count);
    c.final_summary();
    if !quick {
        percentiles(&empty);
    }
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "CDC enqueue (publish) vs bounded channel send",
                ours: "cdc_enqueue/publish",
                baseline: "cdc_enqueue/channel_send",
                targets: &[Target::UnderNs(10_000.0)],
            },
            Comparison {
                what: "CDC catch-up from the WAL vs raw WAL read",
                ours: "cdc_catch_up/subscription",
                baseline: "cdc_catch_up/raw_wal_read",
                targets: &[Target::AtLeastPerSec {
                    per_iter: count as f64,
                    min_per_sec: 0.0,
                    unit: "events",
                }],
            },
        ],
    );
}
