//! A read-only check of a log directory: every segment header and every record, and how
//! the segments follow one another. Nothing is repaired or removed; what recovery would do
//! with each problem is reported beside it (`themis doctor validate-wal`).

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::entry::Lsn;
use crate::error::WalError;
use crate::segment::{self, OnBadRecord};

/// One problem found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset in it (0 for a problem with the whole file).
    pub offset: u64,
    /// The LSN expected there, when known.
    pub lsn: Option<Lsn>,
    /// What is wrong.
    pub reason: String,
    /// A torn tail of the last segment: the default recovery mode truncates it at open
    /// (the write it held was never acknowledged). Anything else stops a default open.
    pub torn_tail: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} offset {}", self.path.display(), self.offset)?;
        if let Some(lsn) = self.lsn {
            write!(f, " LSN {lsn}")?;
        }
        write!(f, ": {}", self.reason)?;
        if self.torn_tail {
            write!(f, " (torn tail: truncated at the next open)")?;
        }
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Segment files found.
    pub segments: usize,
    /// Valid records.
    pub records: u64,
    /// The first LSN held (0: empty).
    pub first_lsn: Lsn,
    /// The last LSN held (0: empty).
    pub last_lsn: Lsn,
    /// Bytes read.
    pub bytes: u64,
    /// Temporary files: an interrupted segment creation, the spare segment an open log
    /// fills in the background (`spare.wal.tmp`), or truncated segments kept for reuse
    /// (`recycle.*.wal.tmp`). The next open removes them.
    pub temp_files: Vec<PathBuf>,
    /// Every problem, in log order.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// No problem at all.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// The log opens under the default recovery mode (only a torn tail, if anything).
    #[must_use]
    pub fn opens_by_default(&self) -> bool {
        self.problems.iter().all(|p| p.torn_tail)
    }
}

/// Checks every segment in `dir` and every record in them, records up to `max_record`
/// bytes (the log's `max_record_bytes`). Reads only. An error means the directory itself
/// could not be listed or a file could not be read.
pub fn check(dir: impl AsRef<Path>, max_record: usize) -> Result<CheckReport, WalError> {
    check_inner(dir.as_ref(), max_record, None)
}

/// [`check`] of segment `id` alone: its header, its records, and whether it continues the
/// segment before it (which is read for that, not reported on). The report's counts are
/// this segment's; temporary files are not listed. A segment the directory does not hold
/// is a [`WalError::Segment`] naming it.
pub fn check_segment(dir: impl AsRef<Path>, id: u64, max_record: usize) -> Result<CheckReport, WalError> {
    check_inner(dir.as_ref(), max_record, Some(id))
}

fn check_inner(dir: &Path, max_record: usize, only: Option<u64>) -> Result<CheckReport, WalError> {
    let mut report = CheckReport::default();
    let (mut files, temp_files) = crate::recovery::files(dir)?;
    if let Some(only) = only {
        let Some(at) = files.iter().position(|(id, _)| *id == only) else {
            let held: Vec<String> = files.iter().map(|(id, _)| id.to_string()).collect();
            return Err(WalError::Segment {
                path: dir.join(segment::file_name(only)),
                reason: format!(
                    "no such segment (the directory holds {})",
                    if held.is_empty() { "none".to_string() } else { held.join(", ") }
                ),
            });
        };
        // The segment before it, read only to see where it should start.
        files = files.split_off(at.saturating_sub(1)).into_iter().take(if at == 0 { 1 } else { 2 }).collect();
    } else {
        report.temp_files = temp_files;
    }
    let total = files.len();
    report.segments = if only.is_some() { 1 } else { total };
    let reported = |id: u64| only.is_none_or(|o| o == id);
    let mut last_of_dir = None;
    if only.is_some() {
        last_of_dir = crate::recovery::files(dir)?.0.last().map(|(id, _)| *id);
    }
    // (segment id, the LSN after its last record) of the previous readable segment.
    let mut prev: Option<(u64, Lsn)> = None;
    for (i, (id, path)) in files.iter().enumerate() {
        let is_last = last_of_dir.map_or(i + 1 == total, |last| last == *id);
        let bytes = Bytes::from(fs::read(path).map_err(WalError::io("read", path))?);
        if !reported(*id) {
            // The segment before the one asked for: only where it ends matters.
            prev =
                segment::scan(&bytes, max_record, OnBadRecord::Skip).ok().map(|scan| (*id, scan.next_lsn()));
            continue;
        }
        report.bytes += bytes.len() as u64;
        let problem = |offset: u64, lsn: Option<Lsn>, reason: String, torn_tail: bool| Problem {
            path: path.clone(),
            offset,
            lsn,
            reason,
            torn_tail,
        };
        let scan = match segment::scan(&bytes, max_record, OnBadRecord::Skip) {
            Ok(scan) => scan,
            Err(reason) => {
                report.problems.push(problem(0, None, format!("unreadable segment header: {reason}"), false));
                prev = None;
                continue;
            }
        };
        if scan.header.id != *id {
            report.problems.push(problem(
                0,
                None,
                format!("the header says segment {} but the file name says {id}", scan.header.id),
                false,
            ));
        }
        if let Some((prev_id, expected)) = prev {
            if *id != prev_id + 1 {
                report.problems.push(problem(0, None, format!("segment {} is missing", prev_id + 1), false));
            } else if scan.header.first_lsn != expected {
                report.problems.push(problem(
                    0,
                    Some(expected),
                    format!(
                        "starts at LSN {} but segment {prev_id} ends before LSN {expected}",
                        scan.header.first_lsn
                    ),
                    false,
                ));
            }
        }
        for bad in &scan.skipped {
            let torn = is_last && bad.in_tail && bad.offset == scan.valid_len;
            report.problems.push(problem(bad.offset, Some(bad.lsn), bad.reason.clone(), torn));
        }
        let held = scan.offsets.iter().filter(|&&o| o != segment::SKIPPED).count() as u64;
        if held > 0 {
            if report.first_lsn == 0 {
                report.first_lsn = scan.header.first_lsn;
            }
            report.last_lsn = scan.next_lsn() - 1;
        }
        report.records += held;
        prev = Some((*id, scan.next_lsn()));
    }
    Ok(report)
}
