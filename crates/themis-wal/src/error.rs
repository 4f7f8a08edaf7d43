//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::Lsn;

/// Everything that can go wrong in `themis-wal`. Each variant names what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "fdatasync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record is corrupt before the tail of the log (or anywhere, under
    /// [`RecoveryMode::AbsoluteConsistency`](crate::RecoveryMode::AbsoluteConsistency)).
    #[error("corrupt WAL record in segment {segment} at offset {offset} (LSN {lsn:?}): {reason}")]
    Corrupt {
        /// Segment id.
        segment: u64,
        /// Byte offset of the record in the segment file.
        offset: u64,
        /// The LSN expected at that place, when known.
        lsn: Option<Lsn>,
        /// What is wrong.
        reason: String,
    },
    /// A segment file's header is invalid, or the segment does not follow its predecessor.
    #[error("WAL segment {}: {reason}", path.display())]
    Segment {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A record is larger than the configured maximum.
    #[error("WAL record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A batch is larger than the queue bound (which is also the largest single write, and
    /// so the most a crash can tear).
    #[error("WAL batch of {size} bytes exceeds the queue bound of {max} bytes")]
    BatchTooLarge {
        /// The encoded size.
        size: usize,
        /// The configured bound.
        max: usize,
    },
    /// An LSN outside the log was asked for.
    #[error("LSN {lsn} is not in the log (first {first}, last {last})")]
    OutOfRange {
        /// The LSN asked for.
        lsn: Lsn,
        /// The first LSN held (last + 1 when empty).
        first: Lsn,
        /// The last LSN held (0 when nothing was ever written).
        last: Lsn,
    },
    /// An LSN inside the log's range was skipped by
    /// [`RecoveryMode::SkipCorrupted`](crate::RecoveryMode::SkipCorrupted).
    #[error("LSN {lsn} was lost to corruption and skipped at recovery")]
    Skipped {
        /// The missing LSN.
        lsn: Lsn,
    },
    /// An append named a first LSN that is not the next one.
    #[error("append expected to start at LSN {expected} but the log's next LSN is {next}")]
    LsnMismatch {
        /// What the caller asked for.
        expected: Lsn,
        /// The log's next LSN.
        next: Lsn,
    },
    /// A truncation would remove entries below a retention hold, or outside the log.
    #[error("cannot truncate: {0}")]
    Truncate(String),
    /// The configuration is invalid.
    #[error("WAL configuration: {0}")]
    Config(String),
    /// The log was closed, or an earlier write failed and the log refuses further writes
    /// (after a failed fsync the page cache can no longer be trusted).
    #[error("WAL is closed: {0}")]
    Closed(String),
    /// A document operation could not be decoded.
    #[error(transparent)]
    Op(#[from] crate::op::OpError),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> WalError {
        let path = path.into();
        move |source| WalError::Io { op, path, source }
    }
}
