//! themis-geo's per-read work beside its baselines in the same run.
//! Issue #25: a routing decision per request under 1 µs.
//!
//! - `route/<strategy>`: one `Router::pick` over 8 replicas (one taken out), the pick
//!   dropped at once, against `route/bare`: a bare round-robin counter over the same 8
//!   with the same eligibility test (the floor any router pays).
//! - `session_token/decode`: parse and verify a token (HMAC-SHA256), against
//!   `session_token/hmac`: the HMAC alone over the same bytes.
//! - `plan_read/*`: the per-read decision for each level.
//!
//! Run: `cargo bench -p themis-benches --bench geo`.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use criterion::Criterion;
use themis_benches::{Comparison, Target};
use themis_replication::geo::{
    HealthPolicy, ReadConsistency, ReplicaState, Router, SessionToken, Strategy, TokenCodec, plan_read,
};

const REPLICAS: usize = 8;

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for strategy in Strategy::ALL {
        let router = Router::new((0..REPLICAS).collect::<Vec<usize>>(), strategy, HealthPolicy::default(), 1);
        // Latency EWMAs measured for every replica, one replica out (failed 3 times).
        for i in 0..REPLICAS {
            let pick = router.pick(0, |&r| r == i).unwrap();
            pick.succeeded(std::time::Duration::from_micros(100 + 10 * i as u64));
        }
        for _ in 0..3 {
            router.pick(0, |&r| r == 5).unwrap().failed(0);
        }
        group.bench_function(strategy.as_str(), |b| {
            b.iter(|| {
                let pick = router.pick(black_box(100), |&r| r != 7).unwrap();
                black_box(pick.index())
            });
        });
    }
    let next = AtomicUsize::new(0);
    let out = [false, false, false, false, false, true, false, false];
    group.bench_function("bare", |b| {
        b.iter(|| {
            let start = next.fetch_add(1, Ordering::Relaxed);
            let chosen = (0..REPLICAS).map(|k| (start + k) % REPLICAS).find(|&i| i != 7 && !out[i]);
            black_box(chosen)
        });
    });
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_token");
    let codec = TokenCodec::new("prod", Some(b"a secret of 16+ bytes")).unwrap();
    let token =
        SessionToken { term: 7, lsn: 123_456_789, region: "eu-west-1".into(), issued_ms: 1_780_000_000_000 };
    let text = codec.encode(&token);
    group.bench_function("decode", |b| b.iter(|| codec.decode(black_box(&text)).unwrap()));
    group.bench_function("encode", |b| b.iter(|| codec.encode(black_box(&token))));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"prod\0a secret of 16+ bytes");
    let signed = text.rsplit_once('.').unwrap().0.to_owned();
    group.bench_function("hmac", |b| b.iter(|| ring::hmac::sign(&key, black_box(signed.as_bytes()))));
    group.finish();
}

fn planning(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_read");
    let state = ReplicaState {
        applied_lsn: 100,
        commit_lsn: 100,
        safe_ms: 9_900,
        now_ms: 10_000,
        ..Default::default()
    };
    let token = SessionToken { term: 1, lsn: 90, region: "r".into(), issued_ms: 0 };
    for (name, level) in [
        ("bounded", ReadConsistency::BoundedStaleness { max_staleness_ms: 500, max_versions: Some(10) }),
        ("session", ReadConsistency::Session(Some(token))),
        ("eventual", ReadConsistency::Eventual),
    ] {
        group.bench_function(name, |b| b.iter(|| plan_read(black_box(&level), black_box(&state), false)));
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    routing(&mut criterion);
    tokens(&mut criterion);
    planning(&mut criterion);
    criterion.final_summary();
    let comparisons: Vec<Comparison<'_>> = Strategy::ALL
        .iter()
        .map(|s| Comparison {
            what: match s {
                Strategy::RoundRobin => "route: round-robin, 8 replicas",
                Strategy::LeastConnections => "route: least-connections, 8 replicas",
                Strategy::LatencyBased => "route: latency EWMA, 8 replicas",
                Strategy::Random => "route: random, 8 replicas",
                Strategy::PowerOfTwoChoices => "route: power-of-two-choices, 8 replicas",
            },
            ours: match s {
                Strategy::RoundRobin => "route/round-robin",
                Strategy::LeastConnections => "route/least-connections",
                Strategy::LatencyBased => "route/latency",
                Strategy::Random => "route/random",
                Strategy::PowerOfTwoChoices => "route/p2c",
            },
            baseline: "route/bare",
            targets: &[Target::UnderNs(1_000.0)],
        })
        .chain([Comparison {
            what: "session token decode (parse + HMAC check)",
            ours: "session_token/decode",
            baseline: "session_token/hmac",
            targets: &[],
        }])
        .collect();
    themis_benches::report(started, &comparisons);
}
