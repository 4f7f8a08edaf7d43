//! Shared harness for the criterion benches: each bench measures a Themis hot path and
//! its baseline in the same run, then prints their ratio against the DESIGN.md target.
//!
//! Absolute times drift on shared machines; a ratio measured in one run does not. The
//! figures come from criterion's own estimates (`estimates.json`), read back after the
//! groups ran, and only if they were written by this run.
//!
//! ```no_run
//! use themis_benches::{Comparison, Target};
//!
//! let started = std::time::SystemTime::now();
//! // ... run criterion groups "hlc/themis" and "hlc/uhlc" ...
//! themis_benches::report(started, &[Comparison {
//!     what: "HLC now()",
//!     ours: "hlc_now/themis",
//!     baseline: "hlc_now/uhlc",
//!     targets: &[Target::NotSlowerThan(1.0), Target::UnderNs(50.0)],
//! }]);
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A pass/fail bar for one comparison.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Ours must reach at least this fraction of the baseline's speed
    /// (1.0 = at least as fast; 0.7 = at least 70 % of it).
    NotSlowerThan(f64),
    /// Ours must take less than this many nanoseconds per iteration.
    UnderNs(f64),
    /// Ours must process at least `min_per_sec` items per second, where one iteration
    /// processes `per_iter` of them (records, bytes).
    AtLeastPerSec {
        /// Items one iteration processes.
        per_iter: f64,
        /// The bar, in items per second.
        min_per_sec: f64,
        /// What the items are, for the report ("records", "B").
        unit: &'static str,
    },
}

/// One of ours-versus-baseline pair of criterion benchmark ids (`group/function[/param]`).
#[derive(Debug, Clone, Copy)]
pub struct Comparison<'a> {
    /// What is compared, for the report.
    pub what: &'a str,
    /// Benchmark id of the Themis implementation.
    pub ours: &'a str,
    /// Benchmark id of the baseline.
    pub baseline: &'a str,
    /// Bars to check; may be empty when the ratio is informational.
    pub targets: &'a [Target],
}

/// Prints one line per comparison: both times, the speed ratio, and each target's verdict.
/// Comparisons not measured since `started` (filtered out, or `--test` mode) say so.
pub fn report(started: SystemTime, comparisons: &[Comparison<'_>]) {
    let dir = criterion_dir();
    println!("\nratios (baseline time / our time; above 1 means ours is faster):");
    for c in comparisons {
        let (Some(ours), Some(base)) =
            (estimate_ns(&dir, c.ours, started), estimate_ns(&dir, c.baseline, started))
        else {
            println!("  {:<44} not measured in this run", c.what);
            continue;
        };
        let ratio = base / ours;
        let verdicts: Vec<String> = c
            .targets
            .iter()
            .map(|t| match *t {
                Target::NotSlowerThan(min) => {
                    format!("ratio >= {min:.2}: {}", if ratio >= min { "MET" } else { "MISSED" })
                }
                Target::UnderNs(max) => format!("< {max} ns: {}", if ours < max { "MET" } else { "MISSED" }),
                Target::AtLeastPerSec { per_iter, min_per_sec, unit } => {
                    let rate = per_iter / (ours / 1e9);
                    format!(
                        "{} {unit}/s >= {}: {}",
                        human_rate(rate),
                        human_rate(min_per_sec),
                        if rate >= min_per_sec { "MET" } else { "MISSED" }
                    )
                }
            })
            .collect();
        println!(
            "  {:<44} ours {:>10} baseline {:>10} ratio {:>6.2}x  {}",
            c.what,
            human_ns(ours),
            human_ns(base),
            ratio,
            verdicts.join("; ")
        );
    }
}

/// Where criterion writes its results, resolved the way criterion resolves it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    target.join("criterion")
}

/// The typical time per iteration, in ns, of benchmark `id`: criterion's slope estimate when
/// it has one (linear sampling), else its mean. `None` if absent or older than `started`.
fn estimate_ns(dir: &Path, id: &str, started: SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new/estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < started {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let pick = |key: &str| json.get(key)?.get("point_estimate")?.as_f64();
    pick("slope").or_else(|| pick("mean"))
}

fn human_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

fn human_rate(rate: f64) -> String {
    if rate >= 1e9 {
        format!("{:.2} G", rate / 1e9)
    } else if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat` (0 where it
/// cannot be read).
#[must_use]
pub fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// How long each phase of a load bench runs, in seconds: `quick` under
/// `cargo bench -- --test` (CI's bench build check), else `THEMIS_BENCH_SECS` or `default`.
#[must_use]
pub fn bench_secs(quick: f64, default: f64) -> f64 {
    if std::env::args().any(|a| a == "--test") {
        return quick;
    }
    std::env::var("THEMIS_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
