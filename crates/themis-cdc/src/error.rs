//! The crate's one error type.

use themis_wal::Lsn;
use themis_wal::op::OpError;

/// Why a subscription, filter or read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// The log no longer holds the entries a subscriber needs: they were compacted away
    /// (after a snapshot) before it read them. Logical slots hold the log for this.
    #[error("the log no longer holds LSN {needed}: its oldest entry is LSN {oldest}")]
    Gone {
        /// The first LSN the subscriber still needs.
        needed: Lsn,
        /// The oldest LSN the log holds.
        oldest: Lsn,
    },
    /// A subscription asked to resume after an LSN the log has not reached.
    #[error("from_lsn {from} is beyond the end of the log (last LSN {last})")]
    BeyondLog {
        /// What was asked for.
        from: Lsn,
        /// The log's last LSN.
        last: Lsn,
    },
    /// A collection pattern does not parse.
    #[error("collection pattern {pattern:?}: {reason} at position {position}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// The character position (0-based) of the problem.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An op name that is not one of `insert`, `update`, `delete`, `ddl`, `snapshot`,
    /// `heartbeat`.
    #[error("unknown op {0:?}; expected insert, update, delete, ddl, snapshot or heartbeat")]
    UnknownOp(String),
    /// A configuration value is out of range.
    #[error("cdc config: {0}")]
    Config(String),
    /// A committed entry's payload is not a valid op batch.
    #[error("the entry at LSN {lsn} does not decode: {source}")]
    Decode {
        /// The entry.
        lsn: Lsn,
        /// Why.
        source: OpError,
    },
    /// Reading the log failed.
    #[error("reading the log from LSN {from}: {message}")]
    Log {
        /// Where the read started.
        from: Lsn,
        /// The log's error.
        message: String,
    },
    /// The stream was closed (the node is stopping).
    #[error("the change stream was closed")]
    Closed,
}
