//! Opening a log directory: scan every segment, rebuild the index, and deal with damage as
//! the [`RecoveryMode`] says.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::entry::Lsn;
use crate::error::WalError;
use crate::segment::{self, BadRecord, OnBadRecord, SKIPPED, SegmentScan};

/// What recovery does with a record that fails its checks. RocksDB's four modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail (damage in the last segment within the last write's reach, or zeros to
    /// the end) is truncated and reported; damage anywhere else is [`WalError::Corrupt`].
    #[default]
    TolerateCorruptedTail,
    /// Any damage, torn tail included, is [`WalError::Corrupt`]; nothing is changed.
    AbsoluteConsistency,
    /// Recover to the last valid record before the first damage, wherever it is:
    /// everything after it is truncated (later segments deleted) and reported.
    PointInTime,
    /// Skip every damaged record, report each, and keep the valid records after it; the
    /// skipped LSNs read as [`WalError::Skipped`]. Only on explicit request.
    SkipCorrupted,
}

/// Bytes recovery removed from the end of a segment, or a whole segment it deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub path: PathBuf,
    /// Where it now ends (0: the file was deleted).
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// The first LSN removed.
    pub lsn: Lsn,
    /// Why.
    pub reason: String,
}

/// A damaged record skipped under [`RecoveryMode::SkipCorrupted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The segment file.
    pub path: PathBuf,
    /// The damage.
    pub record: BadRecord,
}

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Entries held after recovery.
    pub entries: u64,
    /// The last LSN (0: empty).
    pub last_lsn: Lsn,
    /// Bytes of segment data scanned.
    pub bytes_scanned: u64,
    /// Torn tails and point-in-time cuts.
    pub truncated: Vec<Truncation>,
    /// Records skipped.
    pub skipped: Vec<Skip>,
    /// Leftover temporary files (an interrupted segment creation, or a spare segment a
    /// crashed process was filling), removed.
    pub removed_temp_files: Vec<PathBuf>,
}

/// A recovered segment, ready for the index.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) scan: SegmentScan,
}

fn corrupt(id: u64, bad: &BadRecord) -> WalError {
    WalError::Corrupt { segment: id, offset: bad.offset, lsn: Some(bad.lsn), reason: bad.reason.clone() }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(WalError::io("fsync directory", dir))
}

fn cut(path: &Path, offset: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(WalError::io("open", path))?;
    file.set_len(offset).map_err(WalError::io("truncate", path))?;
    file.sync_all().map_err(WalError::io("fsync", path))
}

/// Segment files by id.
pub(crate) type Segments = Vec<(u64, PathBuf)>;

/// The segment files of `dir` by id, and its temporary files (`*.wal.tmp`: an interrupted
/// segment creation, or a spare segment). Reads only.
pub(crate) fn files(dir: &Path) -> Result<(Segments, Vec<PathBuf>), WalError> {
    let (mut segments, mut temps) = (Vec::new(), Vec::new());
    for item in fs::read_dir(dir).map_err(WalError::io("read directory", dir))? {
        let item = item.map_err(WalError::io("read directory", dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment::parse_file_name(name) {
            segments.push((id, item.path()));
        } else if name.ends_with(".wal.tmp") {
            temps.push(item.path());
        }
    }
    segments.sort_unstable();
    Ok((segments, temps))
}

/// Lists the segment files of `dir` by id, removing leftover temporary files.
pub(crate) fn list(dir: &Path, report: &mut RecoveryReport) -> Result<Segments, WalError> {
    let (segments, temps) = files(dir)?;
    for temp in temps {
        fs::remove_file(&temp).map_err(WalError::io("remove", &temp))?;
        report.removed_temp_files.push(temp);
    }
    Ok(segments)
}

/// Scans and repairs the log in `dir`.
pub(crate) fn recover(
    dir: &Path,
    mode: RecoveryMode,
    max_record: usize,
) -> Result<(Vec<Recovered>, RecoveryReport), WalError> {
    let mut report = RecoveryReport::default();
    let listed = list(dir, &mut report)?;
    let on_bad = if mode == RecoveryMode::SkipCorrupted { OnBadRecord::Skip } else { OnBadRecord::Stop };
    let mut out: Vec<Recovered> = Vec::with_capacity(listed.len());
    let mut changed_dir = !report.removed_temp_files.is_empty();
    let count = listed.len();
    let mut listed = listed.into_iter().enumerate();
    while let Some((i, (id, path))) = listed.next() {
        let bytes = Bytes::from(fs::read(&path).map_err(WalError::io("read", &path))?);
        report.bytes_scanned += bytes.len() as u64;
        let segment_error = |reason: String| WalError::Segment { path: path.clone(), reason };
        let mut scan = segment::scan(&bytes, max_record, on_bad).map_err(segment_error)?;
        if scan.header.id != id {
            return Err(segment_error(format!(
                "header says segment {} but the file name says {id}",
                scan.header.id
            )));
        }
        if let Some(prev) = out.last_mut() {
            let expected = prev.scan.next_lsn();
            if id != prev.id + 1 {
                return Err(segment_error(format!(
                    "segment {} is missing (previous is {})",
                    prev.id + 1,
                    prev.id
                )));
            }
            let lost = scan.header.first_lsn.checked_sub(expected);
            // A skip at the end of the valid bytes is one that found no valid record after it.
            let tail_lost = prev.scan.skipped.last().filter(|s| s.offset == prev.scan.valid_len);
            match (lost, tail_lost) {
                (Some(0), _) => {}
                // A skipped region ran to the end of the previous segment: the LSNs it held
                // are lost, bounded by its size.
                (Some(n), Some(skip)) if n <= skip.len / crate::record::RECORD_HEADER_LEN as u64 + 1 => {
                    prev.scan.offsets.resize(prev.scan.offsets.len() + n as usize, SKIPPED);
                }
                _ => {
                    return Err(segment_error(format!(
                        "first LSN {} does not follow segment {} which ends before LSN {expected}",
                        scan.header.first_lsn, prev.id
                    )));
                }
            }
        }
        let is_last = i + 1 == count;
        for record in &scan.skipped {
            report.skipped.push(Skip { path: path.clone(), record: record.clone() });
        }
        if let Some(bad) = scan.skipped.last().filter(|b| b.offset == scan.valid_len) {
            // Skipping ran to the end of the file: drop those bytes so appends follow the
            // last valid record.
            if is_last {
                cut(&path, bad.offset)?;
            }
        }
        let mut stop_here = false;
        if let Some(bad) = scan.stopped.clone() {
            let torn = is_last && bad.in_tail;
            match mode {
                RecoveryMode::TolerateCorruptedTail if torn => {}
                RecoveryMode::PointInTime => stop_here = true,
                _ => return Err(corrupt(id, &bad)),
            }
            cut(&path, bad.offset)?;
            report.truncated.push(Truncation {
                path: path.clone(),
                offset: bad.offset,
                bytes: bytes.len() as u64 - bad.offset,
                lsn: bad.lsn,
                reason: if torn { format!("torn tail: {}", bad.reason) } else { bad.reason.clone() },
            });
            scan.valid_len = bad.offset;
        }
        let file = Arc::new(File::open(&path).map_err(WalError::io("open", &path))?);
        out.push(Recovered { id, path, file, scan });
        if stop_here {
            // Point in time: everything after the first damage goes, newest first so that
            // a crash midway leaves a log that still ends cleanly.
            let later: Vec<_> = listed.by_ref().map(|(_, seg)| seg).collect();
            for (_, path) in later.iter().rev() {
                let len = fs::metadata(path).map_err(WalError::io("stat", path))?.len();
                fs::remove_file(path).map_err(WalError::io("remove", path))?;
                report.truncated.push(Truncation {
                    path: path.clone(),
                    offset: 0,
                    bytes: len,
                    lsn: out.last().map_or(0, |r| r.scan.next_lsn()),
                    reason: "deleted: follows the point-in-time recovery cut".into(),
                });
                changed_dir = true;
            }
        }
    }
    if changed_dir {
        fsync_dir(dir)?;
    }
    report.segments = out.len();
    report.entries =
        out.iter().map(|r| r.scan.offsets.iter().filter(|&&o| o != SKIPPED).count() as u64).sum();
    report.last_lsn = out.last().map_or(0, |r| r.scan.next_lsn() - 1);
    Ok((out, report))
}
