//! Whole clusters under faults, in the deterministic simulator (themis-testkit).
//!
//! Seeds per cluster size: `THEMIS_SIM_SEEDS`, else 500 under `cargo xtask ci`
//! (`THEMIS_TEST_BUDGET=ci`), 5000 under `--full`, 40 for a plain `cargo test`.
//! `THEMIS_SIM_NODES` picks the sizes (default `3,5,7`); `THEMIS_SIM_SEED` replays one seed.
//! The seeds run are `start..start + N`, with `start` drawn afresh for every run and
//! printed (so each CI run explores seeds no earlier run did); `THEMIS_SIM_START` repeats a
//! run. `cargo xtask sim --seeds N --nodes K --start S` sets these.

use themis_testkit::sim::{SimReport, Violation, run_seed};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("THEMIS_SIM_SEED") {
        return vec![seed.parse().expect("THEMIS_SIM_SEED is a number")];
    }
    let budget = match std::env::var("THEMIS_TEST_BUDGET").as_deref() {
        Ok("ci") => 500,
        Ok("full") => 5000,
        _ => 40,
    };
    let count: u64 = std::env::var("THEMIS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(budget);
    let start = start();
    (start..start + count).collect()
}

/// The first seed: `THEMIS_SIM_START`, else drawn from the OS's randomness (below 10^9, so
/// a seed is easy to copy), printed either way.
fn start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let start = if let Ok(s) = std::env::var("THEMIS_SIM_START") {
            s.parse().expect("THEMIS_SIM_START is a number")
        } else {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish() % 1_000_000_000
        };
        eprintln!("simulation seeds start at {start} (THEMIS_SIM_START={start} runs the same seeds again)");
        start
    })
}

/// One seed; a slow one is reported, since the CI budget is per size.
fn timed(seed: u64, nodes: usize) -> Result<SimReport, Violation> {
    let started = std::time::Instant::now();
    let result = run_seed(seed, nodes);
    let elapsed = started.elapsed();
    if elapsed > std::time::Duration::from_secs(2) {
        eprintln!("  slow: seed {seed} with {nodes} nodes took {:.1} s", elapsed.as_secs_f64());
    }
    result
}

fn run_all(nodes: usize) -> Vec<SimReport> {
    let seeds = seeds();
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(4);
    let results: Vec<Result<SimReport, Violation>> = std::thread::scope(|scope| {
        let chunks: Vec<Vec<u64>> =
            (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || chunk.into_iter().map(|seed| timed(seed, nodes)).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("simulation thread")).collect()
    });
    let mut reports = Vec::new();
    for result in results {
        match result {
            Ok(report) => reports.push(report),
            Err(violation) => panic!("{violation}"),
        }
    }
    reports
}

fn summarize(nodes: usize, reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    eprintln!(
        "{nodes} nodes, {} seeds: {} steps, {} elections, {} crashes, {} partitions, {} pauses, {} writes, {} reads ({} lease), {} durable acks, {} config changes, {} snapshots",
        reports.len(),
        sum(|r| r.steps),
        sum(|r| r.elections),
        sum(|r| r.crashes),
        sum(|r| r.partitions),
        sum(|r| r.pauses),
        sum(|r| r.writes_completed),
        sum(|r| r.reads_completed),
        sum(|r| r.lease_reads),
        sum(|r| r.durable_acks),
        sum(|r| r.config_changes),
        sum(|r| r.snapshots_installed),
    );
    // The faults and the workload must really have happened, or the run proves nothing.
    assert!(
        sum(|r| r.crashes) > 0 && sum(|r| r.partitions) > 0 && sum(|r| r.pauses) > 0,
        "no faults injected"
    );
    assert!(
        sum(|r| r.writes_completed) > 0 && sum(|r| r.reads_completed) > 0,
        "no client operations completed"
    );
}

#[test]
fn clusters_under_faults_keep_every_invariant() {
    let sizes = std::env::var("THEMIS_SIM_NODES").unwrap_or_else(|_| "3,5,7".into());
    for size in sizes.split(',') {
        let nodes: usize = size.trim().parse().expect("THEMIS_SIM_NODES lists cluster sizes");
        let started = std::time::Instant::now();
        let reports = run_all(nodes);
        summarize(nodes, &reports);
        eprintln!("  in {:.1} s", started.elapsed().as_secs_f64());
    }
}
