//! themis-logical: slots decoding the log for 1, 4 and 16 slots in parallel beside the bare
//! op codec (`decode_entry` of the same entries on one thread: the per-core ceiling); the
//! latency to deliver a batch of 1,000 changes (read and encode as JSON) beside decoding
//! and parsing the same entries bare; a row predicate beside a plain `serde_json` field
//! lookup.
//!
//! `cargo bench -p themis-benches --bench logical`. The latency pass times
//! `THEMIS_BENCH_LOGICAL_BATCHES` (default 1,000) batches one at a time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use serde_json::Value;
use themis_benches::{Comparison, Target};
use themis_node::stats::percentile;
use themis_replication::cdc::{CdcConfig, CdcStream, decode_entry};
use themis_replication::clock::{Hlc, NodeId, Timestamp};
use themis_replication::logical::{
    LogicalConfig, LogicalReplicationManager, OutputPlugin, Predicate, SlotConfig,
};
use themis_replication::wal::op::{Op, OpKind, encode_batch};
use themis_replication::wal::{Entry, FsyncPolicy, NewEntry, Wal, WalConfig};

/// A 256-byte order of tenant `i % 4`, as the node logs an insert.
fn payload(i: u64) -> Bytes {
    let tenant = ["acme", "globex", "initech", "umbrella"][(i % 4) as usize];
    let pad = "x".repeat(180);
    let doc = format!(r#"{{"tenant":"{tenant}","region":"eu","n":{i},"pad":"{pad}"}}"#);
    let op = Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Insert {
            collection: "orders".into(),
            key: Bytes::from(format!("order-{i}")),
            value: Bytes::from(doc),
        },
        stamp: None,
    };
    encode_batch(&[op]).unwrap()
}

fn open_wal(dir: &std::path::Path) -> Wal {
    Wal::open(dir, WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() }).unwrap().0
}

fn fill(wal: &Wal, hlc: &Hlc, from: u64, count: u64) -> Vec<Entry> {
    let mut out = Vec::with_capacity(count as usize);
    for chunk in (from..from + count).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<NewEntry> = chunk.iter().map(|&i| NewEntry::data(hlc.now(), payload(i))).collect();
        let range = wal.append(&entries).unwrap();
        let mut next = range.first;
        while next <= range.last {
            let read = wal.read_range(next, 1 << 20).unwrap();
            next += read.len() as u64;
            out.extend(read);
        }
    }
    out
}

/// Criterion: `slots` slots, each reading every change of the log from the start in
/// batches of 1,000 on a task of its own, against decoding the same entries bare.
fn decode(c: &mut Criterion, wal: &Wal, entries: &[Entry]) {
    let count = entries.len() as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Nothing is published: every slot reads the WAL, as one that is behind does.
    let last = entries.last().unwrap().lsn;
    let cdc = CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), last, Timestamp::ZERO).unwrap();
    let mut group = c.benchmark_group("logical_decode");
    group.sample_size(10);
    for slots in [1u64, 4, 16] {
        group.throughput(Throughput::Elements(count * slots));
        group.bench_function(format!("slots_{slots}"), |b| {
            b.iter(|| {
                let dir = tempfile::tempdir().unwrap();
                let manager =
                    LogicalReplicationManager::open(dir.path(), cdc.clone(), None, LogicalConfig::default())
                        .unwrap();
                for s in 0..slots {
                    manager
                        .create_slot_at(SlotConfig::new(format!("s{s}"), OutputPlugin::Json), 0, None)
                        .unwrap();
                }
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..slots)
                        .map(|s| {
                            let manager = manager.clone();
                            tokio::spawn(async move {
                                let name = format!("s{s}");
                                let mut n = 0;
                                while n < count {
                                    let batch = manager
                                        .read_changes(&name, 1000, Duration::from_secs(1))
                                        .await
                                        .unwrap();
                                    n += batch.changes.len() as u64;
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
            });
        });
    }
    group.throughput(Throughput::Elements(count));
    group.bench_function("bare_decode", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in entries {
                for event in decode_entry(e).unwrap() {
                    let doc: Value = serde_json::from_slice(event.after.as_ref().unwrap()).unwrap();
                    n += usize::from(doc.is_object());
                }
            }
            assert_eq!(n as u64, count);
        });
    });
    group.finish();
}

/// Per-batch latency at the tip of the log: 1,000 entries are appended and published,
/// then one read returns them and the JSON plugin encodes them. Beside it, the bare
/// decode and parse of the same entries.
fn batch_latency(batches: usize) {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(&dir.path().join("wal"));
    let hlc = Hlc::new(NodeId(1));
    let cdc = CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), 0, hlc.now()).unwrap();
    let manager = LogicalReplicationManager::open(
        dir.path().join("slots"),
        cdc.clone(),
        None,
        LogicalConfig::default(),
    )
    .unwrap();
    let mut config = SlotConfig::new("acme", OutputPlugin::Json);
    config.predicate = Some("tenant in ['acme', 'globex', 'initech', 'umbrella'] && region == 'eu'".into());
    manager.create_slot(config, None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ours = Vec::with_capacity(batches);
    let mut bare = Vec::with_capacity(batches);
    let mut next = 1;
    for _ in 0..batches {
        let entries = fill(&wal, &hlc, next, 1000);
        next += 1000;
        cdc.publish(&entries);
        let t0 = Instant::now();
        let batch = runtime.block_on(manager.read_changes("acme", 1000, Duration::from_secs(1))).unwrap();
        let records = manager.encode("acme", &batch.changes).unwrap();
        ours.push(t0.elapsed());
        assert_eq!(records.len(), 1000);
        manager.advance_slot("acme", batch.confirm_lsn.unwrap()).unwrap();
        let t0 = Instant::now();
        let mut n = 0;
        for e in &entries {
            for event in decode_entry(e).unwrap() {
                let doc: Value = serde_json::from_slice(event.after.as_ref().unwrap()).unwrap();
                n += doc.to_string().len();
            }
        }
        bare.push(t0.elapsed());
        assert!(n > 0);
    }
    ours.sort_unstable();
    bare.sort_unstable();
    let p = |v: &[Duration], q| percentile(v, q);
    println!(
        "logical_batch/percentiles over {batches} batches of 1,000 changes (read with a predicate, encoded as JSON): \
         p50 {:?} p99 {:?} max {:?} (target p99 <= 5 ms: {}); bare decode + parse + print of the same entries: \
         p50 {:?} p99 {:?} max {:?}",
        p(&ours, 0.50),
        p(&ours, 0.99),
        ours.last().copied().unwrap_or_default(),
        if p(&ours, 0.99) <= Duration::from_millis(5) { "MET" } else { "MISSED" },
        p(&bare, 0.50),
        p(&bare, 0.99),
        bare.last().copied().unwrap_or_default(),
    );
}

/// Criterion: the predicate on a parsed document against the same test written as plain
/// `serde_json` lookups.
fn predicate(c: &mut Criterion) {
    let doc: Value = serde_json::from_str(
        r#"{"tenant":"acme","region":"us","n":42,"addr":{"city":"Oslo"},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    )
    .unwrap();
    let p =
        Predicate::parse("tenant == 'acme' && region != 'eu' && addr.city in ['Oslo', 'Bergen']").unwrap();
    let mut group = c.benchmark_group("logical_predicate");
    group.throughput(Throughput::Elements(1));
    group
        .bench_function("predicate", |b| b.iter(|| std::hint::black_box(p.eval(std::hint::black_box(&doc)))));
    group.bench_function("serde_json_lookup", |b| {
        b.iter(|| {
            let d = std::hint::black_box(&doc);
            let city = d.get("addr").and_then(|a| a.get("city")).and_then(Value::as_str);
            std::hint::black_box(
                d.get("tenant").and_then(Value::as_str) == Some("acme")
                    && d.get("region").and_then(Value::as_str) != Some("eu")
                    && matches!(city, Some("Oslo" | "Bergen")),
            )
        });
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let quick = std::env::args().any(|a| a == "--test");
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    let count: u64 = if quick { 2_000 } else { 50_000 };
    let entries = fill(&wal, &Hlc::new(NodeId(1)), 1, count);
    let mut c = Criterion::default().configure_from_args();
    predicate(&mut c);
    decode(&mut c, &wal, &entries);
    c.final_summary();
    if !quick {
        let batches =
            std::env::var("THEMIS_BENCH_LOGICAL_BATCHES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000);
        batch_latency(batches);
    }
    let per_iter = |slots: u64| (count * slots) as f64;
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "row predicate vs serde_json lookups",
                ours: "logical_predicate/predicate",
                baseline: "logical_predicate/serde_json_lookup",
                targets: &[Target::NotSlowerThan(0.5)],
            },
            Comparison {
                what: "1 slot decoding vs bare decode + parse",
                ours: "logical_decode/slots_1",
                baseline: "logical_decode/bare_decode",
                targets: &[Target::AtLeastPerSec {
                    per_iter: per_iter(1),
                    min_per_sec: 0.0,
                    unit: "changes",
                }],
            },
            Comparison {
                what: "4 slots decoding (4x the work)",
                ours: "logical_decode/slots_4",
                baseline: "logical_decode/bare_decode",
                targets: &[Target::AtLeastPerSec {
                    per_iter: per_iter(4),
                    min_per_sec: 0.0,
                    unit: "changes",
                }],
            },
            Comparison {
                what: "16 slots decoding (16x the work)",
                ours: "logical_decode/slots_16",
                baseline: "logical_decode/bare_decode",
                targets: &[Target::AtLeastPerSec {
                    per_iter: per_iter(16),
                    min_per_sec: 0.0,
                    unit: "changes",
                }],
            },
        ],
    );
}
