//! themis-clock hot paths beside their baselines:
//! - `Hlc::now` and `Hlc::update` against `uhlc` (DESIGN.md: faster, and `now` under 50 ns);
//! - vector clock increment + compare at 3, 8 and 64 nodes against `crdts::VClock`
//!   (DESIGN.md: under 100 ns at 8 nodes).
//!
//! Run: `cargo bench -p themis-benches --bench clock`.

use std::hint::black_box;
use std::time::SystemTime;

use crdts::{CmRDT, CvRDT};
use criterion::{BatchSize, BenchmarkId, Criterion};
use themis_benches::{Comparison, Target};
use themis_replication::clock::{Hlc, NodeId, VectorClock};

fn hlc(c: &mut Criterion) {
    let mut group = c.benchmark_group("hlc_now");
    let ours = Hlc::new(NodeId(1));
    group.bench_function("themis", |b| b.iter(|| black_box(ours.now())));
    let theirs = uhlc::HLC::default();
    group.bench_function("uhlc", |b| b.iter(|| black_box(theirs.new_timestamp())));
    group.finish();

    // A receive: merge a remote timestamp slightly ahead, as a follower does per message.
    let mut group = c.benchmark_group("hlc_update");
    let sender = Hlc::new(NodeId(2));
    let remote = sender.now();
    group.bench_function("themis", |b| b.iter(|| black_box(ours.update(black_box(remote)))));
    let uhlc_sender = uhlc::HLC::default();
    let uhlc_remote = uhlc_sender.new_timestamp();
    group.bench_function("uhlc", |b| {
        b.iter(|| black_box(theirs.update_with_timestamp(black_box(&uhlc_remote))));
    });
    group.finish();
}

/// Two clocks over `nodes` nodes that have seen a common history, as replicas do.
fn vector_pair(nodes: u64) -> (VectorClock, VectorClock) {
    let mut a = VectorClock::new();
    for node in 0..nodes {
        for _ in 0..=node % 3 {
            a.increment(NodeId(node)).unwrap();
        }
    }
    let b = a.clone();
    (a, b)
}

fn crdts_pair(nodes: u64) -> (crdts::VClock<u64>, crdts::VClock<u64>) {
    let mut a = crdts::VClock::new();
    for node in 0..nodes {
        for _ in 0..=node % 3 {
            a.apply(a.inc(node));
        }
    }
    let b = a.clone();
    (a, b)
}

fn vector(c: &mut Criterion) {
    let mut group = c.benchmark_group("vclock_increment_compare");
    for nodes in [3u64, 8, 64] {
        group.bench_with_input(BenchmarkId::new("themis", nodes), &nodes, |bench, &nodes| {
            let (mut a, b) = vector_pair(nodes);
            let mut node = 0;
            bench.iter(|| {
                node = (node + 1) % nodes;
                a.increment(NodeId(node)).unwrap();
                black_box(a.compare(black_box(&b)))
            });
        });
        group.bench_with_input(BenchmarkId::new("crdts", nodes), &nodes, |bench, &nodes| {
            let (mut a, b) = crdts_pair(nodes);
            let mut node = 0;
            bench.iter(|| {
                node = (node + 1) % nodes;
                a.apply(a.inc(node));
                black_box(a.partial_cmp(black_box(&b)))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("vclock_merge");
    for nodes in [8u64, 64] {
        group.bench_with_input(BenchmarkId::new("themis", nodes), &nodes, |bench, &nodes| {
            let (mut a, mut b) = vector_pair(nodes);
            b.increment(NodeId(0)).unwrap();
            bench.iter(|| a.merge(black_box(&b)).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("crdts", nodes), &nodes, |bench, &nodes| {
            let (mut a, mut b) = crdts_pair(nodes);
            b.apply(b.inc(0));
            // crdts merges an owned clock; the clone is made outside the timed section.
            bench.iter_batched(|| b.clone(), |b| a.merge(black_box(b)), BatchSize::SmallInput);
        });
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    hlc(&mut criterion);
    vector(&mut criterion);
    criterion.final_summary();
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "Hlc::now vs uhlc new_timestamp",
                ours: "hlc_now/themis",
                baseline: "hlc_now/uhlc",
                targets: &[Target::NotSlowerThan(1.0), Target::UnderNs(50.0)],
            },
            Comparison {
                what: "Hlc::update vs uhlc update_with_timestamp",
                ours: "hlc_update/themis",
                baseline: "hlc_update/uhlc",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "vclock increment+compare, 3 nodes",
                ours: "vclock_increment_compare/themis/3",
                baseline: "vclock_increment_compare/crdts/3",
                targets: &[Target::UnderNs(100.0)],
            },
            Comparison {
                what: "vclock increment+compare, 8 nodes",
                ours: "vclock_increment_compare/themis/8",
                baseline: "vclock_increment_compare/crdts/8",
                targets: &[Target::UnderNs(100.0)],
            },
            Comparison {
                what: "vclock increment+compare, 64 nodes",
                ours: "vclock_increment_compare/themis/64",
                baseline: "vclock_increment_compare/crdts/64",
                targets: &[],
            },
            Comparison {
                what: "vclock merge, 8 nodes",
                ours: "vclock_merge/themis/8",
                baseline: "vclock_merge/crdts/8",
                targets: &[],
            },
            Comparison {
                what: "vclock merge, 64 nodes",
                ours: "vclock_merge/themis/64",
                baseline: "vclock_merge/crdts/64",
                targets: &[],
            },
        ],
    );
}
