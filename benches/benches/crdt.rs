//! themis-crdt merges beside the `crdts` crate (rust-crdt) in the same run.
//! DESIGN.md: G-Counter and LWW-Register merge faster than `crdts` and under 100 ns.
//!
//! Run: `cargo bench -p themis-benches --bench crdt`.

use std::hint::black_box;
use std::time::SystemTime;

use crdts::{CmRDT, CvRDT};
use criterion::{BatchSize, BenchmarkId, Criterion};
use themis_benches::{Comparison, Target};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::crdt::{Crdt, GCounter, LwwRegister, OrSet};

const NODES: u64 = 8;
const ELEMENTS: u32 = 1_000;
/// Replica states merged per iteration in the LWW stream case.
const STREAM: u64 = 1_024;

/// Two G-Counters over 8 nodes where `b` is ahead on one node, as after a remote increment.
fn g_counters() -> (GCounter, GCounter) {
    let mut a = GCounter::new();
    for node in 0..NODES {
        a.increment(NodeId(node), node + 1).unwrap();
    }
    let mut b = a.clone();
    b.increment(NodeId(3), 5).unwrap();
    (a, b)
}

fn crdts_g_counters() -> (crdts::GCounter<u64>, crdts::GCounter<u64>) {
    let mut a = crdts::GCounter::new();
    for node in 0..NODES {
        a.apply(a.inc_many(node, node + 1));
    }
    let mut b = a.clone();
    b.apply(b.inc_many(3, 5));
    (a, b)
}

fn counters(c: &mut Criterion) {
    let mut group = c.benchmark_group("g_counter_merge");
    let (mut a, b) = g_counters();
    group.bench_function("themis", |bench| bench.iter(|| a.merge(black_box(&b)).unwrap()));
    // crdts merges an owned value; clone outside the timed section.
    let (mut ca, cb) = crdts_g_counters();
    group.bench_function("crdts", |bench| {
        bench.iter_batched(|| cb.clone(), |cb| ca.merge(black_box(cb)), BatchSize::SmallInput);
    });
    group.finish();
}

fn registers(c: &mut Criterion) {
    let mut group = c.benchmark_group("lww_merge");
    let at = |ms| Timestamp::from_parts(ms, 0, NodeId(1)).unwrap();
    let mut ours = LwwRegister::new();
    ours.set(1u64, at(10)).unwrap();
    let mut newer = LwwRegister::new();
    newer.set(2u64, at(20)).unwrap();
    // Each side in its natural form: ours merges by reference, crdts consumes the other
    // register, so it gets a copy (two words, free for `u64`) per call.
    group.bench_function("themis", |bench| bench.iter(|| ours.merge(black_box(&newer)).unwrap()));
    let mut theirs = crdts::LWWReg { val: 1u64, marker: 10u64 };
    let their_newer = crdts::LWWReg { val: 2u64, marker: 20u64 };
    group.bench_function("crdts", |bench| bench.iter(|| theirs.merge(black_box(their_newer.clone()))));
    // crdts documents that a marker "must grow monotonically *and* must be globally
    // unique"; between nodes a bare `u64` is neither, so its LWWReg as a replicated system
    // uses it carries the writer's identity in the marker. `crdts_hlc` is that register
    // with our HLC timestamp (time word, then node id) as its marker: the same key ours
    // compares, so the same work and the same convergence on equal times.
    let mut theirs_hlc = crdts::LWWReg { val: 1u64, marker: at(10) };
    let their_newer_hlc = crdts::LWWReg { val: 2u64, marker: at(20) };
    group.bench_function("crdts_hlc", |bench| {
        bench.iter(|| theirs_hlc.merge(black_box(their_newer_hlc.clone())));
    });
    group.finish();

    // The case above merges a register with itself (equal timestamps) after the first
    // call, so it times the comparison alone. Here a fresh register takes a stream of
    // replica states, every other one newer (its value replaces the register's) and the
    // rest older: the work of anti-entropy. Per element: total / STREAM.
    let mut group = c.benchmark_group("lww_merge_stream");
    group.throughput(criterion::Throughput::Elements(STREAM));
    let stamp = |i: u64| if i.is_multiple_of(2) { 10_000 + i } else { 1 + i };
    let ours_stream: Vec<LwwRegister<u64>> = (0..STREAM)
        .map(|i| {
            let mut r = LwwRegister::new();
            r.set(i, at(stamp(i))).unwrap();
            r
        })
        .collect();
    let their_stream: Vec<crdts::LWWReg<u64, u64>> =
        (0..STREAM).map(|i| crdts::LWWReg { val: i, marker: stamp(i) }).collect();
    let their_hlc_stream: Vec<crdts::LWWReg<u64, Timestamp>> =
        (0..STREAM).map(|i| crdts::LWWReg { val: i, marker: at(stamp(i)) }).collect();
    group.bench_function("themis", |bench| {
        bench.iter(|| {
            let mut r = LwwRegister::new();
            for other in black_box(&ours_stream) {
                r.merge(other).unwrap();
            }
            r
        });
    });
    crdts_stream(&mut group, "crdts", &their_stream);
    crdts_stream(&mut group, "crdts_hlc", &their_hlc_stream);
    group.finish();

    // Anti-entropy between converged replicas: every state in the stream equals the
    // register's, so each merge is one comparison that changes nothing. The single-call
    // case above times that too, but at one cycle per call its figure follows code layout
    // (crdts's unchanged merge measured 242 ps in one build and 490 ps in another); over
    // 1,024 states per iteration the loop is the merge.
    let mut group = c.benchmark_group("lww_merge_converged");
    group.throughput(criterion::Throughput::Elements(STREAM));
    let ours_held = ours_stream[0].clone();
    let ours_equal: Vec<LwwRegister<u64>> = (0..STREAM).map(|_| ours_held.clone()).collect();
    group.bench_function("themis", |bench| {
        let mut r = ours_held.clone();
        bench.iter(|| {
            for other in black_box(&ours_equal) {
                r.merge(other).unwrap();
            }
            black_box(&r);
        });
    });
    crdts_converged(&mut group, "crdts", &their_stream[0]);
    crdts_converged(&mut group, "crdts_hlc", &their_hlc_stream[0]);
    group.finish();
}

/// crdts's side of the stream case, for either marker: a fresh (default) register takes
/// every state. crdts consumes each state, so it gets a copy (a few words) per merge.
fn crdts_stream<M: Ord + Clone + Default>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    stream: &[crdts::LWWReg<u64, M>],
) {
    group.bench_function(name, |bench| {
        bench.iter(|| {
            let mut r = crdts::LWWReg::<u64, M>::default();
            for other in black_box(stream) {
                r.merge(other.clone());
            }
            r
        });
    });
}

/// crdts's side of the converged case, for either marker: `STREAM` copies of `held`
/// merged into a register that already holds it.
fn crdts_converged<M: Ord + Clone>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    held: &crdts::LWWReg<u64, M>,
) {
    let equal: Vec<crdts::LWWReg<u64, M>> = (0..STREAM).map(|_| held.clone()).collect();
    group.bench_function(name, |bench| {
        let mut r = held.clone();
        bench.iter(|| {
            for other in black_box(&equal) {
                r.merge(other.clone());
            }
            black_box(&r);
        });
    });
}

fn or_sets(c: &mut Criterion) {
    // A set of 1,000 elements added across 8 nodes, and a replica that added one more.
    let mut base = OrSet::new();
    for e in 0..ELEMENTS {
        base.add(NodeId(u64::from(e) % NODES), e).unwrap();
    }
    let mut ahead = base.clone();
    ahead.add(NodeId(1), ELEMENTS).unwrap();

    let mut crdts_base: crdts::Orswot<u32, u64> = crdts::Orswot::new();
    for e in 0..ELEMENTS {
        let ctx = crdts_base.read_ctx().derive_add_ctx(u64::from(e) % NODES);
        crdts_base.apply(crdts_base.add(e, ctx));
    }
    let mut crdts_ahead = crdts_base.clone();
    let ctx = crdts_ahead.read_ctx().derive_add_ctx(1);
    crdts_ahead.apply(crdts_ahead.add(ELEMENTS, ctx));

    let mut group = c.benchmark_group("or_set_add");
    group.bench_with_input(BenchmarkId::new("themis", ELEMENTS), &(), |bench, ()| {
        bench.iter_batched_ref(
            || base.clone(),
            |set| black_box(set.add(NodeId(2), ELEMENTS + 1).unwrap()),
            BatchSize::SmallInput,
        );
    });
    group.bench_with_input(BenchmarkId::new("crdts", ELEMENTS), &(), |bench, ()| {
        bench.iter_batched_ref(
            || crdts_base.clone(),
            |set| {
                let ctx = set.read_ctx().derive_add_ctx(2);
                let op = set.add(ELEMENTS + 1, ctx);
                set.apply(black_box(op));
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let mut group = c.benchmark_group("or_set_merge");
    group.bench_with_input(BenchmarkId::new("themis", ELEMENTS), &(), |bench, ()| {
        bench.iter_batched_ref(
            || base.clone(),
            |set| set.merge(black_box(&ahead)).unwrap(),
            BatchSize::SmallInput,
        );
    });
    group.bench_with_input(BenchmarkId::new("crdts", ELEMENTS), &(), |bench, ()| {
        bench.iter_batched_ref(
            || (crdts_base.clone(), crdts_ahead.clone()),
            |(set, other)| set.merge(black_box(std::mem::take(other))),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    counters(&mut criterion);
    registers(&mut criterion);
    or_sets(&mut criterion);
    criterion.final_summary();
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "G-Counter merge, 8 nodes",
                ours: "g_counter_merge/themis",
                baseline: "g_counter_merge/crdts",
                targets: &[Target::NotSlowerThan(1.0), Target::UnderNs(100.0)],
            },
            Comparison {
                what: "LWW-Register merge",
                ours: "lww_merge/themis",
                baseline: "lww_merge/crdts",
                targets: &[Target::NotSlowerThan(1.0), Target::UnderNs(100.0)],
            },
            Comparison {
                what: "LWW-Register merge, crdts keyed by HLC",
                ours: "lww_merge/themis",
                baseline: "lww_merge/crdts_hlc",
                targets: &[Target::NotSlowerThan(1.0), Target::UnderNs(100.0)],
            },
            Comparison {
                what: "LWW-Register merge, stream of 1,024 states (per state: / 1,024)",
                ours: "lww_merge_stream/themis",
                baseline: "lww_merge_stream/crdts",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "LWW-Register merge, stream of 1,024 states (per state), crdts keyed by HLC",
                ours: "lww_merge_stream/themis",
                baseline: "lww_merge_stream/crdts_hlc",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "LWW-Register merge, 1,024 equal states (per state: / 1,024)",
                ours: "lww_merge_converged/themis",
                baseline: "lww_merge_converged/crdts",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "LWW-Register merge, 1,024 equal states (per state), crdts keyed by HLC",
                ours: "lww_merge_converged/themis",
                baseline: "lww_merge_converged/crdts_hlc",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "OR-Set add, 1,000 elements",
                ours: "or_set_add/themis/1000",
                baseline: "or_set_add/crdts/1000",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "OR-Set merge, 1,000 elements",
                ours: "or_set_merge/themis/1000",
                baseline: "or_set_merge/crdts/1000",
                targets: &[Target::NotSlowerThan(1.0)],
            },
        ],
    );
}
