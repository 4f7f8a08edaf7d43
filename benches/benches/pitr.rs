//! themis-pitr: archiving committed WAL (seal: zstd + AES-256-GCM, put into an in-memory
//! object store) beside bare zstd compression of the same bytes; a full restore (fetch,
//! verify, decrypt, decompress, decode, apply into the node's document store) beside
//! fetching and opening the same objects only (the read-plus-decompress ceiling).
//!
//! `cargo bench -p themis-benches --bench pitr`.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use themis_benches::{Comparison, Target};
use themis_node::DocStore;
use themis_replication::clock::{Hlc, NodeId, Timestamp};
use themis_replication::pitr::{Archive, Archiver, ArchiverConfig, Keyring, RestoreTarget, restore};
use themis_replication::ship::StateMachine;
use themis_replication::wal::op::{Op, OpKind, encode_batch};
use themis_replication::wal::{FsyncPolicy, NewEntry, Wal, WalConfig};

/// An insert of a 256-byte document into one of 10,000 keys, as the node logs it.
fn payload(i: u64) -> Bytes {
    let op = Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Upsert {
            collection: "orders".into(),
            key: Bytes::from(format!("order-{}", i % 10_000)),
            value: Bytes::from(themis_node::stats::document(0, i, 256)),
        },
        stamp: None,
    };
    encode_batch(&[op]).unwrap()
}

fn memory_archive() -> Archive {
    let store = Arc::new(object_store_memory());
    Archive::with_store(store, "bench".into(), "bench", Arc::new(Keyring::new([9; 32])))
}

fn object_store_memory() -> themis_replication::pitr::object_store::memory::InMemory {
    themis_replication::pitr::object_store::memory::InMemory::new()
}

#[allow(clippy::too_many_lines, reason = "setup, two groups and the report, in order")]
fn main() {
    let started = SystemTime::now();
    let quick = std::env::args().any(|a| a == "--test");
    let count: u64 = if quick { 2_000 } else { 100_000 };
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) =
        Wal::open(dir.path(), WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() }).unwrap();
    let hlc = Hlc::new(NodeId(1));
    for chunk in (1..=count).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<NewEntry> = chunk.iter().map(|&i| NewEntry::data(hlc.now(), payload(i))).collect();
        wal.append(&entries).unwrap();
    }
    let wal_bytes: usize = {
        let mut next = 1;
        let mut total = 0;
        while next <= count {
            let raw = wal.read_raw_upto(next, count, 4 << 20).unwrap();
            next = raw.range.last + 1;
            total += raw.bytes.len();
        }
        total
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = ArchiverConfig { chunk_bytes: 4 << 20, ..ArchiverConfig::default() };
    let empty = DocStore::new().snapshot().unwrap();
    let mut c = Criterion::default().configure_from_args();

    let mut group = c.benchmark_group("pitr_archive");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(wal_bytes as u64));
    group.bench_function("archive", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let archive = memory_archive();
                let mut archiver = Archiver::start(archive, config).await.unwrap();
                archiver.base_backup(&empty, 0, Timestamp::ZERO).await.unwrap();
                archiver.step(&wal, count, true).await.unwrap();
                assert_eq!(archiver.position(), count);
            });
        });
    });
    group.bench_function("zstd_compress", |b| {
        b.iter(|| {
            let mut next = 1;
            while next <= count {
                let raw = wal.read_raw_upto(next, count, 4 << 20).unwrap();
                next = raw.range.last + 1;
                std::hint::black_box(zstd::bulk::compress(&raw.bytes, 3).unwrap());
            }
        });
    });
    group.finish();

    // One archive for the restore group.
    let archive = memory_archive();
    runtime.block_on(async {
        let mut archiver = Archiver::start(archive.clone(), config).await.unwrap();
        archiver.base_backup(&empty, 0, Timestamp::ZERO).await.unwrap();
        archiver.step(&wal, count, true).await.unwrap();
    });
    let manifest = runtime.block_on(archive.manifest()).unwrap();
    let mut group = c.benchmark_group("pitr_replay");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(wal_bytes as u64));
    group.bench_function("restore", |b| {
        b.iter(|| {
            let store = DocStore::new();
            let report =
                runtime.block_on(restore(&archive, RestoreTarget::Latest, &store, 4, |_, _| {})).unwrap();
            assert_eq!(report.restored_lsn, count);
        });
    });
    // The apply ceiling: the same records, already in memory, decoded and applied.
    let raw: Vec<Bytes> = {
        let mut out = Vec::new();
        let mut next = 1;
        while next <= count {
            let r = wal.read_raw_upto(next, count, 4 << 20).unwrap();
            next = r.range.last + 1;
            out.push(r.bytes);
        }
        out
    };
    group.bench_function("decode_apply", |b| {
        b.iter(|| {
            let store = DocStore::new();
            for bytes in &raw {
                let mut offset = 0;
                while offset < bytes.len() {
                    let (e, len) =
                        themis_replication::wal::record::decode(bytes, offset, bytes.len()).unwrap();
                    offset += len;
                    let ops = themis_replication::wal::op::decode_batch(&e.payload).unwrap();
                    store.apply(e.lsn, &ops).unwrap();
                }
            }
        });
    });
    group.bench_function("fetch_decompress", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for entry in &manifest.wal {
                    std::hint::black_box(archive.fetch(entry, 0).await.unwrap());
                }
            });
        });
    });
    group.finish();
    c.final_summary();
    println!("WAL: {count} entries, {:.1} MiB of records", wal_bytes as f64 / f64::from(1u32 << 20));
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "archive (seal + put) vs zstd compress",
                ours: "pitr_archive/archive",
                baseline: "pitr_archive/zstd_compress",
                targets: &[Target::AtLeastPerSec { per_iter: wal_bytes as f64, min_per_sec: 0.0, unit: "B" }],
            },
            Comparison {
                what: "restore vs decode + apply from memory",
                ours: "pitr_replay/restore",
                baseline: "pitr_replay/decode_apply",
                targets: &[],
            },
            Comparison {
                what: "restore (verify + apply) vs fetch + decompress",
                ours: "pitr_replay/restore",
                baseline: "pitr_replay/fetch_decompress",
                targets: &[
                    Target::NotSlowerThan(0.8),
                    Target::AtLeastPerSec { per_iter: wal_bytes as f64, min_per_sec: 200e6, unit: "B" },
                ],
            },
        ],
    );
}
