//! The crate's one error type.

use std::path::PathBuf;

use themis_cdc::CdcError;
use themis_wal::Lsn;

/// Why a slot operation, a filter, a transform or an encoding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogicalError {
    /// A slot name is not 1 to 63 of `a-z`, `0-9` and `_` (PostgreSQL's rule; names are
    /// file names).
    #[error("slot name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `create_slot` with a name that is taken.
    #[error("slot {0:?} already exists")]
    SlotExists(String),
    /// No slot has that name.
    #[error("no slot named {0:?}")]
    NoSlot(String),
    /// Another reader is reading the slot (one reader at a time, as PostgreSQL's active
    /// slots).
    #[error("slot {0:?} is being read by another consumer")]
    Busy(String),
    /// The slot is paused: it holds its WAL and delivers nothing until resumed.
    #[error("slot {0:?} is paused")]
    Paused(String),
    /// The slot's WAL was released because holding it would have exceeded
    /// `max_slot_wal_keep_size`; its changes after `confirmed` are gone. Drop the slot and
    /// create it again (with an initial sync) to go on.
    #[error(
        "slot {slot:?} is lost: holding its WAL from LSN {needed} would have exceeded max_slot_wal_keep_size \
         ({held_bytes} bytes held, limit {limit_bytes})"
    )]
    Lost {
        /// The slot.
        slot: String,
        /// The first LSN it still needed.
        needed: Lsn,
        /// WAL bytes the hold would have kept.
        held_bytes: u64,
        /// The configured bound.
        limit_bytes: u64,
    },
    /// `advance_slot` past the end of the log.
    #[error("slot {slot:?}: cannot advance to LSN {lsn}, the log ends at LSN {last}")]
    AdvanceBeyond {
        /// The slot.
        slot: String,
        /// What was asked for.
        lsn: Lsn,
        /// The log's last LSN.
        last: Lsn,
    },
    /// A row predicate does not parse.
    #[error("row predicate {predicate:?}: {message} at column {column}")]
    Predicate {
        /// The predicate as given.
        predicate: String,
        /// The 1-based character column of the problem.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A slot's configuration is invalid (the field and why).
    #[error("slot config: {0}")]
    Config(String),
    /// A transform could not be applied to a change.
    #[error("slot {slot:?}: transform failed on {collection}/{key} at LSN {lsn}: {message}")]
    Transform {
        /// The slot.
        slot: String,
        /// The change's collection.
        collection: String,
        /// The change's document id.
        key: String,
        /// The change's LSN.
        lsn: Lsn,
        /// Why.
        message: String,
    },
    /// An output plugin name that is not one of `json`, `json-txn`, `protobuf`, `avro`.
    #[error("unknown output plugin {0:?}; expected json, json-txn, protobuf or avro")]
    UnknownPlugin(String),
    /// An output plugin could not encode a change.
    #[error("{plugin} plugin: {message}")]
    Encode {
        /// The plugin.
        plugin: &'static str,
        /// Why.
        message: String,
    },
    /// A DDL statement that is not one the store knows.
    #[error("DDL statement {statement:?}: {message}")]
    Ddl {
        /// The statement as given.
        statement: String,
        /// What is wrong.
        message: String,
    },
    /// The initial sync's snapshot source failed, or none can be opened.
    #[error("slot {slot:?}: initial sync: {message}")]
    Snapshot {
        /// The slot.
        slot: String,
        /// Why.
        message: String,
    },
    /// Reading the change stream failed.
    #[error("slot {slot:?}: {source}")]
    Cdc {
        /// The slot.
        slot: String,
        /// The stream's error.
        source: CdcError,
    },
    /// A slot state file could not be written or read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A slot state file is damaged (its checksum, header or JSON); the slot is not
    /// loaded rather than guessed at.
    #[error("slot state file {}: {message}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The manager was closed.
    #[error("the logical replication manager was closed")]
    Closed,
}

impl LogicalError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LogicalError {
        let path = path.into();
        move |source| LogicalError::Io { op, path, source }
    }
}
