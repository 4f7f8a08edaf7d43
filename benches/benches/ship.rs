//! themis-ship: frame + codec beside the codec crates called directly; WAL shipping over
//! loopback TLS; parallel apply beside serial apply.
//!
//! `cargo bench -p themis-benches --bench ship`. `THEMIS_BENCH_SHIP_MIB` sizes the
//! shipped WAL (default 256 MiB).
//!
//! Every input is deterministic JSON documents (users with names, emails, tags and
//! counters), encoded as WAL records: what a document store replicates, neither random
//! nor zeroed bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use themis_benches::{Comparison, Target};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::ship::apply::{
    Applier, ApplyError, Change, MemoryStateMachine, ParallelApplier, ParallelConfig, SerialApplier,
    StateMachine,
};
use themis_replication::ship::frame::{self, FrameKind};
use themis_replication::ship::ship::{ShipConfig, ShipStatus, WalReceiver, WalShipper};
use themis_replication::ship::tls::{TlsConfig, generate_ca, issue_node_cert};
use themis_replication::ship::transport::{Members, Security, Transport, TransportConfig};
use themis_replication::ship::{Codec, CodecChoice, Compressor, Decompressor};
use themis_replication::wal::op::{Op, OpKind};
use themis_replication::wal::{FsyncPolicy, Lsn, NewEntry, Wal, WalConfig, record};

/// A user document, the same for the same `i`.
fn document(i: u64) -> String {
    const FIRST: [&str; 8] = ["ada", "grace", "edsger", "barbara", "leslie", "donald", "frances", "ken"];
    const TAGS: [&str; 6] = ["admin", "beta", "eu-west", "us-east", "trial", "enterprise"];
    let name = FIRST[(i % 8) as usize];
    format!(
        "{{\"_id\":\"user:{i:08}\",\"name\":\"{name} {}\",\"email\":\"{name}.{i}@example.com\",\"age\":{},\"active\":{},\"tags\":[\"{}\",\"{}\"],\"visits\":{},\"address\":{{\"city\":\"city-{}\",\"zip\":\"{:05}\"}}}}",
        i * 7919 % 10_007,
        18 + i % 60,
        !i.is_multiple_of(3),
        TAGS[(i % 6) as usize],
        TAGS[((i / 6) % 6) as usize],
        i * 31 % 100_000,
        i % 500,
        i * 13 % 100_000
    )
}

fn entry(i: u64) -> NewEntry {
    NewEntry::data(
        Timestamp::from_parts(1_700_000_000_000 + i, 0, NodeId(1)).expect("valid"),
        Bytes::from(document(i)),
    )
}

/// `bytes` of WAL records holding documents.
fn records(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 1024);
    let mut i = 1;
    while out.len() < bytes {
        record::encode(&mut out, i, &entry(i));
        i += 1;
    }
    out
}

fn codecs(c: &mut Criterion, comparisons: &mut Vec<(String, String, String)>) {
    let input = records(1 << 20);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(input.len() as u64));
    for (name, codec) in [
        ("lz4", Codec::Lz4),
        ("zstd1", Codec::Zstd { level: 1 }),
        ("zstd3", Codec::Zstd { level: 3 }),
        ("snappy", Codec::Snappy),
    ] {
        // Ours: compress into a frame and decode the frame back (CRC both ways).
        let mut compressor = Compressor::new(CodecChoice::Fixed(codec)).expect("valid codec");
        let mut decompressor = Decompressor::new();
        let mut scratch = Vec::new();
        group.bench_function(BenchmarkId::new("themis", name), |b| {
            b.iter(|| {
                let bytes = frame::encode(FrameKind::Entries, &input, &mut compressor, &mut scratch);
                let (frame, _) =
                    frame::decode(&bytes, 64 << 20, &mut decompressor).expect("valid").expect("whole");
                assert_eq!(frame.payload.len(), input.len());
            });
        });
        // Baseline: the codec crate called directly, with reused contexts and buffers.
        let mut out = vec![0u8; input.len() * 2 + 1024];
        let mut back = vec![0u8; input.len()];
        let mut zc = zstd::bulk::Compressor::new(match codec {
            Codec::Zstd { level } => level,
            _ => 1,
        })
        .expect("zstd");
        let mut zd = zstd::bulk::Decompressor::new().expect("zstd");
        let mut se = snap::raw::Encoder::new();
        let mut sd = snap::raw::Decoder::new();
        group.bench_function(BenchmarkId::new("direct", name), |b| {
            b.iter(|| {
                let n = match codec {
                    Codec::Lz4 => {
                        let n = lz4_flex::block::compress_into(&input, &mut out).expect("fits");
                        lz4_flex::block::decompress_into(&out[..n], &mut back).expect("valid")
                    }
                    Codec::Zstd { .. } => {
                        let n = zc.compress_to_buffer(&input, &mut out).expect("fits");
                        zd.decompress_to_buffer(&out[..n], &mut back).expect("valid")
                    }
                    Codec::Snappy => {
                        let n = se.compress(&input, &mut out).expect("fits");
                        sd.decompress(&out[..n], &mut back).expect("valid")
                    }
                    Codec::None => unreachable!(),
                };
                assert_eq!(n, input.len());
            });
        });
        if codec == Codec::Lz4 {
            // Compression alone, on one core: what one shipping connection's sender can do
            // at most with LZ4 on this data, before reading, checking, TLS and the follower.
            group.bench_function("direct_compress_only/lz4", |b| {
                b.iter(|| lz4_flex::block::compress_into(&input, &mut out).expect("fits"));
            });
        }
        let mut once = Vec::new();
        let ratio = {
            let mut c = Compressor::new(CodecChoice::Fixed(codec)).expect("valid");
            c.compress(&input, &mut once);
            once.len() as f64 / input.len() as f64
        };
        println!(
            "codec {name}: compressed to {:.1}% of {} bytes of JSON records",
            ratio * 100.0,
            input.len()
        );
        comparisons.push((
            format!("frame + {name} round trip, 1 MiB"),
            format!("codec/themis/{name}"),
            format!("codec/direct/{name}"),
        ));
    }
    group.finish();
}

struct Pki {
    ca: themis_replication::ship::tls::CertPem,
}

impl Pki {
    fn transport(&self, node: u64) -> Transport {
        let cert = issue_node_cert(&self.ca, NodeId(node), &[]).expect("cert");
        let tls = TlsConfig::from_pem(&self.ca.cert, &cert.cert, &cert.key).expect("tls");
        Transport::new(
            TransportConfig::new("bench", NodeId(node), Security::Tls(tls)),
            Members::new([NodeId(1), NodeId(2)]),
        )
        .expect("transport")
    }
}

/// Ships the whole `leader` log to a fresh follower over loopback TLS; returns the time.
async fn ship_once(pki: &Pki, leader: &Wal, codec: Codec) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let follower_config = WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() };
    let (follower, _) = Wal::open(dir.path(), follower_config).expect("follower wal");
    let listener = pki.transport(2).bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ShipConfig { codec: CodecChoice::Fixed(codec), ..ShipConfig::default() };
    let receiver = WalReceiver::new(follower.clone(), config.clone()).expect("receiver");
    let server =
        tokio::spawn(async move { receiver.serve(listener.accept().await?.handshake().await?).await });
    let shipper = WalShipper::new(leader.clone(), pki.transport(1), config).expect("shipper");
    let (status, mut watch) = tokio::sync::watch::channel(ShipStatus::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let last = leader.last_lsn();
    let start = Instant::now();
    let run = tokio::spawn(async move { shipper.stream(NodeId(2), addr, &status, stop_rx).await });
    watch.wait_for(|s| s.acked_lsn >= last).await.expect("shipper alive");
    let elapsed = start.elapsed();
    stop.send(true).expect("stop");
    run.await.expect("join").expect("stream");
    server.abort();
    elapsed
}

/// The baseline: the same bytes over a bare rustls connection on loopback, read and
/// dropped by the other side (no framing, no compression, no WAL).
async fn raw_tls_once(pki: &Pki, bytes: &Bytes) -> Duration {
    let server_t = pki.transport(2);
    let client_t = pki.transport(1);
    let listener = server_t.bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The transport's handshake sets up TLS; after it, raw bytes flow through its writer.
    let expected = bytes.len();
    let server = tokio::spawn(async move {
        let mut conn = listener
            .accept()
            .await
            .expect("accept")
            .handshake()
            .await
            .expect("hs")
            .welcome(&[])
            .await
            .expect("welcome");
        let mut got = 0;
        while got < expected {
            let frame = conn.reader.recv().await.expect("frame");
            got += frame.payload.len();
        }
        conn.writer.send(&frame::encode_plain(FrameKind::Ack, &[0; 8])).await.expect("ack");
    });
    let (mut conn, _) = client_t
        .connect(addr, NodeId(2), themis_replication::ship::transport::Purpose::Ship, Bytes::new())
        .await
        .expect("connect");
    let start = Instant::now();
    for chunk in bytes.chunks(1 << 20) {
        conn.writer.write(&frame::encode_plain(FrameKind::Segment, chunk)).await.expect("write");
    }
    conn.writer.flush().await.expect("flush");
    conn.reader.recv().await.expect("ack");
    let elapsed = start.elapsed();
    server.await.expect("server");
    elapsed
}

fn shipping(c: &mut Criterion, comparisons: &mut Vec<(String, String, String)>, wal_bytes: &mut u64) {
    let mib: usize = std::env::var("THEMIS_BENCH_SHIP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let (leader, _) =
        Wal::open(dir.path(), WalConfig { fsync: FsyncPolicy::Never, ..WalConfig::default() }).expect("wal");
    let mut i = 0;
    let target = (mib as u64) << 20;
    let mut written = 0u64;
    while written < target {
        let batch: Vec<NewEntry> = (i..i + 1000).map(entry).collect();
        written += batch.iter().map(|e| record::encoded_len(e.payload.len()) as u64).sum::<u64>();
        leader.append(&batch).expect("append");
        i += 1000;
    }
    *wal_bytes = written;
    // Every record of the log, back to back: the baseline sends exactly these bytes.
    let mut raw = Vec::with_capacity(written as usize);
    let mut next = 1;
    while next <= leader.last_lsn() {
        let part = leader.read_raw(next, 64 << 20).expect("read");
        raw.extend_from_slice(&part.bytes);
        next = part.range.last + 1;
    }
    let raw = Bytes::from(raw);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let pki = Pki { ca: generate_ca("bench").expect("ca") };
    let mut group = c.benchmark_group("ship");
    group.sample_size(10).throughput(Throughput::Bytes(written));
    for (name, codec) in [
        ("lz4", Codec::Lz4),
        ("zstd1", Codec::Zstd { level: 1 }),
        ("zstd3", Codec::Zstd { level: 3 }),
        ("none", Codec::None),
    ] {
        group.bench_function(BenchmarkId::new("tls_wal", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(ship_once(&pki, &leader, codec))).sum());
        });
    }
    group.bench_function("raw_tls", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(raw_tls_once(&pki, &raw))).sum());
    });
    group.finish();
    println!("shipped WAL: {written} bytes of records");
    for name in ["lz4", "zstd1", "zstd3", "none"] {
        comparisons.push((
            format!("TLS WAL shipping, {name}"),
            format!("ship/tls_wal/{name}"),
            "ship/raw_tls".to_owned(),
        ));
    }
}

/// A state machine whose apply costs CPU (parsing the document, as a store validating
/// JSON does) or waits on I/O, on top of the in-memory store.
struct Costly {
    inner: MemoryStateMachine,
    parse_rounds: u32,
    io_wait: Duration,
}

impl StateMachine for Costly {
    type Op = Op;

    fn apply(&self, lsn: Lsn, ops: &[Op]) -> Result<Vec<Change>, ApplyError> {
        for op in ops {
            if let OpKind::Upsert { value, .. } = &op.kind {
                for _ in 0..self.parse_rounds {
                    let doc: serde_json::Value = serde_json::from_slice(value)
                        .map_err(|e| ApplyError::StateMachine { lsn, reason: e.to_string() })?;
                    std::hint::black_box(doc);
                }
            }
        }
        if !self.io_wait.is_zero() {
            std::thread::sleep(self.io_wait);
        }
        self.inner.apply(lsn, ops)
    }
    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        self.inner.snapshot()
    }
    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError> {
        self.inner.restore(snapshot)
    }
}

/// `n` entries from LSN `first`, one upsert each.
fn workload(first: Lsn, n: u64) -> Vec<(Lsn, Vec<Op>)> {
    (first..first + n)
        .map(|lsn| {
            // 10,000 keys drawn by a fixed permutation: some keys repeat, so dependencies occur.
            let key = lsn * 7919 % 10_000;
            let op = Op {
                origin: NodeId(1),
                txn: 0,
                kind: OpKind::Upsert {
                    collection: "users".into(),
                    key: Bytes::from(format!("user:{key:08}")),
                    value: Bytes::from(document(lsn)),
                },
                stamp: None,
            };
            (lsn, vec![op])
        })
        .collect()
}

fn run_apply(applier: &mut dyn Applier<Op = Op>, work: Vec<(Lsn, Vec<Op>)>) -> Duration {
    let start = Instant::now();
    for (lsn, ops) in work {
        applier.submit(lsn, ops).expect("apply");
    }
    applier.sync().expect("sync");
    // A follower hands the changes to change data capture; here they are dropped, untimed.
    let elapsed = start.elapsed();
    drop(applier.take_changes());
    elapsed
}

fn apply(c: &mut Criterion, comparisons: &mut Vec<(String, String, String)>) {
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    let cases = [
        ("cpu", 2000u64, 12u32, Duration::ZERO, 2usize),
        ("io_100us", 1000, 0, Duration::from_micros(100), 8),
    ];
    for (name, n, parse_rounds, io_wait, workers) in cases {
        group.throughput(Throughput::Elements(n));
        // Each applier lives for the whole benchmark, as a follower's does, and every
        // iteration applies the next `n` entries of one log (the store skips LSNs it has
        // seen, so a repeated range would measure nothing). Building the entries is untimed.
        let timed = |applier: &mut dyn Applier<Op = Op>, next: &mut Lsn, iters: u64| -> Duration {
            (0..iters)
                .map(|_| {
                    let work = workload(*next, n);
                    *next += n;
                    run_apply(applier, work)
                })
                .sum()
        };
        group.bench_function(BenchmarkId::new("serial", name), |b| {
            let machine = Arc::new(Costly { inner: MemoryStateMachine::new(), parse_rounds, io_wait });
            let mut applier = SerialApplier::new(machine);
            let mut next = 1;
            b.iter_custom(|iters| timed(&mut applier, &mut next, iters));
        });
        // The machine's ceiling for the CPU-bound case: `workers` serial appliers in as many
        // threads, each on its own store and its own share of the entries, sharing nothing
        // but the process (allocator, caches, memory bandwidth). No scheduler can beat it;
        // starting its threads (tens of µs) is timed, a fraction of a percent in its favour
        // of ours.
        if io_wait.is_zero() {
            group.bench_function(BenchmarkId::new(format!("independent{workers}"), name), |b| {
                let share = n / workers as u64;
                let mut appliers: Vec<(SerialApplier<Costly>, Lsn)> = (0..workers)
                    .map(|_| {
                        let machine =
                            Arc::new(Costly { inner: MemoryStateMachine::new(), parse_rounds, io_wait });
                        (SerialApplier::new(machine), 1)
                    })
                    .collect();
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let work: Vec<_> = appliers
                            .iter_mut()
                            .map(|(_, next)| {
                                let work = workload(*next, share);
                                *next += share;
                                work
                            })
                            .collect();
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for ((applier, _), work) in appliers.iter_mut().zip(work) {
                                s.spawn(move || run_apply(applier, work));
                            }
                        });
                        total += start.elapsed();
                    }
                    total
                });
            });
            comparisons.push((
                format!("parallel apply, {workers} workers, {name}, against its ceiling"),
                format!("apply/parallel{workers}/{name}"),
                format!("apply/independent{workers}/{name}"),
            ));
        }
        group.bench_function(BenchmarkId::new(format!("parallel{workers}"), name), |b| {
            let machine = Arc::new(Costly { inner: MemoryStateMachine::new(), parse_rounds, io_wait });
            let mut applier = ParallelApplier::new(&machine, ParallelConfig { workers, max_pending: 4096 })
                .expect("applier");
            let mut next = 1;
            b.iter_custom(|iters| timed(&mut applier, &mut next, iters));
        });
        comparisons.push((
            format!("parallel apply, {workers} workers, {name}"),
            format!("apply/parallel{workers}/{name}"),
            format!("apply/serial/{name}"),
        ));
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    let mut comparisons = Vec::new();
    let mut wal_bytes = 0;
    codecs(&mut c, &mut comparisons);
    apply(&mut c, &mut comparisons);
    shipping(&mut c, &mut comparisons, &mut wal_bytes);
    c.final_summary();
    let codec_target = [Target::NotSlowerThan(0.9)];
    let lz4_target = [Target::AtLeastPerSec { per_iter: wal_bytes as f64, min_per_sec: 1e9, unit: "B" }];
    let none: [Target; 0] = [];
    let cpu_target = [Target::NotSlowerThan(1.8)];
    let io_target = [Target::NotSlowerThan(6.0)];
    let report: Vec<Comparison<'_>> = comparisons
        .iter()
        .map(|(what, ours, base)| Comparison {
            what,
            ours,
            baseline: base,
            targets: if ours.starts_with("codec/") {
                &codec_target
            } else if ours == "ship/tls_wal/lz4" {
                &lz4_target
            } else if base.starts_with("apply/independent") {
                &none
            } else if ours.starts_with("apply/parallel2") {
                &cpu_target
            } else if ours.starts_with("apply/parallel8") {
                &io_target
            } else {
                &none
            },
        })
        .collect();
    themis_benches::report(started, &report);
}
