//! The crate's one error type.

use themis_clock::{ClockError, NodeId};

/// Everything that can go wrong in `themis-crdt`. Messages name the value and where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// A bound of the underlying clock was hit (too many nodes in a context or counter).
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A counter would pass its integer range.
    #[error("counter of node {node} would overflow")]
    CounterOverflow {
        /// The node whose counter is saturated.
        node: NodeId,
    },
    /// A register write carried [`themis_clock::Timestamp::ZERO`], which an HLC never issues
    /// and which an LWW-Register reserves for "never written".
    #[error("an LWW-Register write needs a non-zero HLC timestamp (got Timestamp::ZERO)")]
    ZeroTimestamp,
    /// Decoded CRDT state breaks an invariant of its type.
    #[error("invalid {what}: {reason}")]
    InvalidState {
        /// The type being decoded.
        what: &'static str,
        /// Which invariant was broken.
        reason: String,
    },
    /// The resolver configuration is invalid.
    #[error("conflict resolver configuration: {0}")]
    Config(String),
    /// A stored value could not be decoded as the CRDT type its collection declares.
    #[error(
        "collection {collection:?}, key {key:?}: the {side} value is not a valid {kind} encoding ({reason})"
    )]
    Decode {
        /// The collection.
        collection: String,
        /// The key, rendered for humans.
        key: String,
        /// "local" or "remote".
        side: &'static str,
        /// The declared CRDT type.
        kind: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A custom resolver failed.
    #[error("collection {collection:?}: custom resolver {resolver:?} failed: {reason}")]
    Custom {
        /// The collection.
        collection: String,
        /// The resolver's registered name.
        resolver: String,
        /// What it reported.
        reason: String,
    },
    /// The audit sink could not persist a conflict record; the resolution is withheld so
    /// that no conflict goes unrecorded.
    #[error("audit sink failed to persist the conflict on {collection:?}/{key:?}: {reason}")]
    Audit {
        /// The collection.
        collection: String,
        /// The key, rendered for humans.
        key: String,
        /// What the sink reported.
        reason: String,
    },
}
