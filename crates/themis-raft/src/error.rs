//! The crate's errors.

use themis_clock::NodeId;
use themis_wal::Lsn;

/// Why a log read or write failed. The WAL's and the file system's errors keep their
/// source (`std::error::Error::source`), so a caller can tell a full disk from a
/// corrupt record.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StorageError {
    /// The entry was compacted into a snapshot.
    Compacted {
        /// The LSN asked for.
        lsn: Lsn,
        /// The last LSN the snapshot covers.
        snapshot_lsn: Lsn,
    },
    /// The entry is past the end of the log.
    Unavailable {
        /// The LSN asked for.
        lsn: Lsn,
        /// The log's last LSN.
        last_lsn: Lsn,
    },
    /// A snapshot is being built; ask again later.
    SnapshotTemporarilyUnavailable,
    /// The write-ahead log failed.
    Wal(std::sync::Arc<themis_wal::WalError>),
    /// A file beside the log (the hard state, a snapshot) could not be read or written.
    Io {
        /// What was being done (`read`, `fsync`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::sync::Arc<std::io::Error>,
    },
    /// Stored state is not valid (a damaged hard-state or snapshot file, snapshot data
    /// that does not decode); the message names what and where.
    Other(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Compacted { lsn, snapshot_lsn } => {
                write!(f, "LSN {lsn} was compacted; the log starts after LSN {snapshot_lsn}")
            }
            StorageError::Unavailable { lsn, last_lsn } => {
                write!(f, "LSN {lsn} is past the last LSN {last_lsn}")
            }
            StorageError::SnapshotTemporarilyUnavailable => {
                write!(f, "the snapshot is temporarily unavailable")
            }
            StorageError::Wal(err) => write!(f, "WAL: {err}"),
            StorageError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            StorageError::Other(what) => write!(f, "storage failed: {what}"),
        }
    }
}

/// The source is the WAL's or the operating system's own error (not the `Arc` that lets
/// this error be cloned), so `downcast_ref::<WalError>()` finds it.
impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Wal(err) => Some(err.as_ref()),
            StorageError::Io { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<themis_wal::WalError> for StorageError {
    fn from(err: themis_wal::WalError) -> Self {
        StorageError::Wal(std::sync::Arc::new(err))
    }
}

/// Equal when of the same kind with the same fields; WAL and I/O errors compare by their
/// message, as their sources do not compare.
impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        use StorageError::{Compacted, Io, Other, SnapshotTemporarilyUnavailable, Unavailable, Wal};
        match (self, other) {
            (Compacted { lsn: a, snapshot_lsn: b }, Compacted { lsn: c, snapshot_lsn: d })
            | (Unavailable { lsn: a, last_lsn: b }, Unavailable { lsn: c, last_lsn: d }) => a == c && b == d,
            (SnapshotTemporarilyUnavailable, SnapshotTemporarilyUnavailable) => true,
            (Wal(a), Wal(b)) => a.to_string() == b.to_string(),
            (Io { op, path, source }, Io { op: other_op, path: other_path, source: other_source }) => {
                op == other_op && path == other_path && source.kind() == other_source.kind()
            }
            (Other(a), Other(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for StorageError {}

/// Why a Raft call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// A configuration value is invalid.
    #[error("invalid raft config: {key} = {value}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An acknowledgement policy is invalid for the membership.
    #[error("invalid replication mode: {reason}")]
    Mode {
        /// What is wrong.
        reason: String,
    },
    /// A membership change is invalid.
    #[error("invalid membership change: {reason}")]
    Membership {
        /// What is wrong.
        reason: String,
    },
    /// Only the leader accepts this; the leader is named when known.
    #[error("node {node} is not the leader (leader: {})", leader.map_or_else(|| "unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        /// This node.
        node: NodeId,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; proposals wait until it ends.
    #[error("a leadership transfer to node {to} is in progress")]
    TransferInProgress {
        /// The transferee.
        to: NodeId,
    },
    /// A configuration change is already in the log and not yet committed.
    #[error("configuration change at LSN {lsn} is not yet committed; one change at a time")]
    ConfigChangePending {
        /// The pending change's LSN.
        lsn: Lsn,
    },
    /// A proposal exceeds the uncommitted-bytes bound.
    #[error("proposal of {bytes} bytes would exceed the {max} bytes of uncommitted log")]
    ProposalDropped {
        /// The proposal's size.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// Too many reads wait for a heartbeat round or for the term's first commit.
    #[error("{max} reads are already waiting; try again once they are answered")]
    ReadsQueued {
        /// The bound.
        max: usize,
    },
    /// A log entry could not be decoded (a corrupt configuration entry).
    #[error("entry at LSN {lsn}: {reason}")]
    Entry {
        /// Where.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// A message was addressed to another node or is malformed.
    #[error("message from node {from}: {reason}")]
    Message {
        /// The sender.
        from: NodeId,
        /// What is wrong.
        reason: String,
    },
    /// Bytes from the network are not a valid message.
    #[error("invalid message bytes at offset {offset}: {reason}")]
    Wire {
        /// Where in the message.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// `ready` was called again before `advance` settled the previous one.
    #[error("ready called while the previous ready is not yet advanced")]
    ReadyOutstanding,
    /// `advance` was called without a matching `ready`.
    #[error("advance called without an outstanding ready")]
    NoReady,
    /// The log storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
