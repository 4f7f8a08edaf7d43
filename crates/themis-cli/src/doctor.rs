//! `themis doctor`: `validate-wal`, a read-only check of every segment and record of a
//! WAL (or of one segment); and over the admin API, `check` (cluster health and whether
//! every replica holds the leader's data), `repair` (resync a replica's diverged key
//! ranges from the leader) and `analyze-lag` (lag history, insights, bottlenecks).

use std::path::{Path, PathBuf};

use themis_replication::wal::{CheckReport, WalConfig, check, segment};

/// The WAL directory for `dir`: the directory itself when it holds segments, else a node
/// data directory's `raft/wal` or a Raft storage directory's `wal`.
pub fn wal_dir(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let holds_segments = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|items| {
            items
                .flatten()
                .any(|i| i.file_name().to_str().is_some_and(|n| segment::parse_file_name(n).is_some()))
        })
    };
    for candidate in [dir.to_path_buf(), dir.join("raft").join("wal"), dir.join("wal")] {
        if holds_segments(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{}: no WAL segments here, in raft/wal or in wal (give a WAL directory or a node's data directory)",
        dir.display()
    ))
}

/// Checks the WAL for `dir` with the default record size limit.
pub fn validate(dir: &Path) -> Result<(PathBuf, CheckReport), String> {
    let wal = wal_dir(dir)?;
    let report = check(&wal, WalConfig::default().max_record_bytes).map_err(|e| e.to_string())?;
    Ok((wal, report))
}

/// The report as text: every problem on its own line, then a summary.
#[must_use]
pub fn render(wal: &Path, report: &CheckReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for problem in &report.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    for temp in &report.temp_files {
        let _ = writeln!(
            out,
            "note: {} is a temporary file (an interrupted segment creation, or the spare segment of a running node; removed at the next open)",
            temp.display()
        );
    }
    let range = if report.records == 0 {
        "no records".to_string()
    } else {
        format!("LSN {} to {}", report.first_lsn, report.last_lsn)
    };
    let verdict = if report.is_healthy() {
        "healthy"
    } else if report.opens_by_default() {
        "damaged: only a torn tail, which the next open truncates"
    } else {
        "damaged: the default recovery mode refuses to open it"
    };
    let _ = write!(
        out,
        "{}: {} segments, {} records ({range}), {} bytes: {verdict}",
        wal.display(),
        report.segments,
        report.records,
        report.bytes
    );
    out
}

/// [`validate`] of one segment (`themis doctor validate-wal --segment N`).
pub fn validate_segment(dir: &Path, segment: u64) -> Result<(PathBuf, CheckReport), String> {
    let wal = wal_dir(dir)?;
    let report = themis_replication::wal::check_segment(&wal, segment, WalConfig::default().max_record_bytes)
        .map_err(|e| e.to_string())?;
    Ok((wal, report))
}

/// A WAL check as JSON.
#[must_use]
pub fn report_json(wal: &Path, report: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "wal": wal.display().to_string(),
        "segments": report.segments,
        "records": report.records,
        "first_lsn": report.first_lsn,
        "last_lsn": report.last_lsn,
        "bytes": report.bytes,
        "healthy": report.is_healthy(),
        "opens_by_default": report.opens_by_default(),
        "temp_files": report.temp_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "problems": report.problems.iter().map(|p| serde_json::json!({
            "path": p.path.display().to_string(), "offset": p.offset, "lsn": p.lsn,
            "reason": p.reason, "torn_tail": p.torn_tail,
        })).collect::<Vec<_>>(),
    })
}

pub use health::{
    CheckOptions, ClusterReport, EXIT_DEGRADED, EXIT_DIVERGED, EXIT_HEALTHY, EXIT_UNAVAILABLE, NodeReport,
    RangeReport, RepairReport, analyze_lag, check_cluster, render_lag, repair,
};

mod health;
