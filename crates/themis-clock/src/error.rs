//! The crate's one error type.

use crate::{NodeId, Timestamp};

/// Everything that can go wrong in `themis-clock`.
///
/// Each variant names the offending value and the limit it broke, so a log line is enough
/// to tell what happened without a debugger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// A received timestamp is further ahead of local physical time than the configured
    /// maximum offset. Accepting it would drag this node's clock into the future.
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of local physical time \
         {local_physical_ms} ms, beyond the maximum clock offset of {max_offset_ms} ms"
    )]
    Skew {
        /// The timestamp that was received.
        remote: Timestamp,
        /// Local physical time (ms since the Unix epoch) when it was received.
        local_physical_ms: u64,
        /// How far ahead the remote physical time was.
        ahead_ms: u64,
        /// The configured bound.
        max_offset_ms: u64,
    },
    /// The maximum clock offset given to [`Hlc::with_max_offset`](crate::Hlc::with_max_offset)
    /// is zero or larger than the supported bound.
    #[error("maximum clock offset must be between 1 ms and {limit_ms} ms, got {got_ms} ms")]
    InvalidMaxOffset {
        /// The offset that was given, in milliseconds.
        got_ms: u128,
        /// The largest offset accepted, in milliseconds.
        limit_ms: u64,
    },
    /// A physical time does not fit the 48-bit physical field of a [`Timestamp`].
    #[error("physical time {physical_ms} ms is above the largest representable {limit_ms} ms")]
    PhysicalOutOfRange {
        /// The physical time that was given.
        physical_ms: u64,
        /// The largest physical time a timestamp can hold.
        limit_ms: u64,
    },
    /// A string is not a timestamp in the `physical_ms.logical@node` form.
    #[error("invalid timestamp {input:?}: {reason}")]
    ParseTimestamp {
        /// The rejected input (cut to 64 characters).
        input: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A string is not a decimal node id.
    #[error("invalid node id {input:?}: {reason}")]
    ParseNodeId {
        /// The rejected input (cut to 64 characters).
        input: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// An encoded timestamp has the wrong length.
    #[error("an encoded timestamp is {expected} bytes, got {found}")]
    EncodedLength {
        /// The length of a valid encoding.
        expected: usize,
        /// The length that was given.
        found: usize,
    },
    /// A vector clock would grow past its configured maximum number of entries.
    #[error("vector clock would hold {attempted} entries, above its maximum of {max_entries}")]
    TooManyEntries {
        /// The configured maximum.
        max_entries: usize,
        /// The number of entries the operation would have produced.
        attempted: usize,
    },
    /// A vector clock counter would pass `u64::MAX`.
    #[error("vector clock counter of node {node} would overflow")]
    CounterOverflow {
        /// The node whose counter is saturated.
        node: NodeId,
    },
    /// A decoded vector clock breaks an invariant of the representation.
    #[error("invalid vector clock: {reason}")]
    InvalidVectorClock {
        /// Which invariant was broken, and where.
        reason: String,
    },
}

/// Cuts untrusted input before it is copied into an error, so a huge bad string does
/// not become a huge log line.
pub(crate) fn excerpt(input: &str) -> String {
    const LIMIT: usize = 64;
    match input.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}
