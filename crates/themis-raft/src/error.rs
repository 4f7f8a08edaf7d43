//! The crate's errors.

use themis_clock::NodeId;
use themis_wal::Lsn;

/// Why a log read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The entry was compacted into a snapshot.
    #[error("LSN {lsn} was compacted; the log starts after LSN {snapshot_lsn}")]
    Compacted {
        /// The LSN asked for.
        lsn: Lsn,
        /// The last LSN the snapshot covers.
        snapshot_lsn: Lsn,
    },
    /// The entry is past the end of the log.
    #[error("LSN {lsn} is past the last LSN {last_lsn}")]
    Unavailable {
        /// The LSN asked for.
        lsn: Lsn,
        /// The log's last LSN.
        last_lsn: Lsn,
    },
    /// A snapshot is being built; ask again later.
    #[error("the snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The storage failed (an I/O error in the WAL adapter).
    #[error("storage failed: {0}")]
    Other(String),
}

/// Why a Raft call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
