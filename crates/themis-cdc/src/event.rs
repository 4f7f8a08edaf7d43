//! Change events: what a committed log entry means to a consumer.

use std::fmt;

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_wal::op::{Op, OpKind, Stamp, decode_batch};
use themis_wal::{Entry, EntryKind, Lsn};

use crate::error::CdcError;

/// What a [`ChangeEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// A document was created.
    Insert,
    /// A document was replaced.
    Update,
    /// A document was removed.
    Delete,
    /// A schema change.
    Ddl,
    /// A document as it stood when a snapshot was read (initial sync).
    Snapshot,
    /// Nothing changed: everything up to the event's LSN has been delivered.
    Heartbeat,
}

impl ChangeOp {
    /// Every op, in the order of [`ChangeOp::bit`].
    pub const ALL: [ChangeOp; 6] = [
        ChangeOp::Insert,
        ChangeOp::Update,
        ChangeOp::Delete,
        ChangeOp::Ddl,
        ChangeOp::Snapshot,
        ChangeOp::Heartbeat,
    ];

    /// Its name in filters, URLs and JSON (`insert`, `update`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Ddl => "ddl",
            ChangeOp::Snapshot => "snapshot",
            ChangeOp::Heartbeat => "heartbeat",
        }
    }

    /// Debezium's one-letter code: `c`, `u`, `d`, `t` (schema change; Debezium's
    /// truncate letter, the nearest it has), `r` (read, for snapshots); heartbeats have none
    /// and use `h`.
    #[must_use]
    pub const fn debezium(self) -> &'static str {
        match self {
            ChangeOp::Insert => "c",
            ChangeOp::Update => "u",
            ChangeOp::Delete => "d",
            ChangeOp::Ddl => "t",
            ChangeOp::Snapshot => "r",
            ChangeOp::Heartbeat => "h",
        }
    }

    /// Its bit in an op set.
    #[must_use]
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ChangeOp {
    type Err = CdcError;

    fn from_str(s: &str) -> Result<ChangeOp, CdcError> {
        ChangeOp::ALL.into_iter().find(|op| op.name() == s).ok_or_else(|| CdcError::UnknownOp(s.to_string()))
    }
}

/// A schema change carried by a [`ChangeOp::Ddl`] event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlChange {
    /// The statement.
    pub statement: String,
    /// The schema version it produces.
    pub schema_version: u64,
}

/// One change, as every consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// What happened.
    pub op: ChangeOp,
    /// The collection (empty for DDL and heartbeats).
    pub collection: String,
    /// The document id (empty for DDL and heartbeats).
    pub key: Bytes,
    /// The document before the change, where the writer logged a before-image.
    pub before: Option<Bytes>,
    /// The document after the change (none for deletes).
    pub after: Option<Bytes>,
    /// The LSN of the entry that holds the change. A heartbeat's LSN is the one up to
    /// which everything has been delivered.
    pub lsn: Lsn,
    /// The change's place within its entry (an entry holds a batch of ops).
    pub index: u32,
    /// The entry's commit HLC timestamp.
    pub hlc: Timestamp,
    /// The node where the change was made.
    pub origin: NodeId,
    /// Its transaction (0: none).
    pub txn: u64,
    /// The schema change, for DDL events.
    pub ddl: Option<DdlChange>,
    /// Where the change was first made, when clusters replicate to each other
    /// (active-active): the op's stamp, as written.
    pub stamp: Option<Stamp>,
    /// Whether this is the last event of its entry that the subscriber receives:
    /// resuming after its LSN then loses nothing (an entry can hold several changes, and
    /// resuming after an LSN skips the rest of that entry). Heartbeats are always ends.
    pub entry_end: bool,
}

impl ChangeEvent {
    /// A heartbeat: everything up to `lsn` (committed at `hlc`) has been delivered.
    #[must_use]
    pub fn heartbeat(lsn: Lsn, hlc: Timestamp) -> ChangeEvent {
        ChangeEvent {
            op: ChangeOp::Heartbeat,
            collection: String::new(),
            key: Bytes::new(),
            before: None,
            after: None,
            lsn,
            index: 0,
            hlc,
            origin: hlc.node(),
            txn: 0,
            ddl: None,
            stamp: None,
            entry_end: true,
        }
    }

    /// The document id as text (ids the node writes are UTF-8; others are shown lossily).
    #[must_use]
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// The events a committed entry holds, in its order (the last marked
/// [`ChangeEvent::entry_end`]). Entries that are not data (Raft's
/// no-ops and configuration changes) hold none. `Upsert` ops, whose writer did not say
/// whether the document existed, are reported as updates; the node logs inserts and
/// updates as such.
pub fn decode_entry(entry: &Entry) -> Result<Vec<ChangeEvent>, CdcError> {
    if entry.kind != EntryKind::DATA {
        return Ok(Vec::new());
    }
    let ops = decode_batch(&entry.payload).map_err(|source| CdcError::Decode { lsn: entry.lsn, source })?;
    let mut events = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        if let Some(event) = event_of(entry, index as u32, op) {
            events.push(event);
        }
    }
    if let Some(last) = events.last_mut() {
        last.entry_end = true;
    }
    Ok(events)
}

fn event_of(entry: &Entry, index: u32, op: Op) -> Option<ChangeEvent> {
    let origin = if op.origin == NodeId(0) { entry.timestamp.node() } else { op.origin };
    let event = |op_: ChangeOp, collection: String, key: Bytes, before, after, ddl| ChangeEvent {
        op: op_,
        collection,
        key,
        before,
        after,
        lsn: entry.lsn,
        index,
        hlc: entry.timestamp,
        origin,
        txn: op.txn,
        ddl,
        stamp: op.stamp.clone(),
        entry_end: false,
    };
    Some(match op.kind {
        OpKind::Insert { collection, key, value } => {
            event(ChangeOp::Insert, collection, key, None, Some(value), None)
        }
        OpKind::Update { collection, key, value, before } => {
            event(ChangeOp::Update, collection, key, before, Some(value), None)
        }
        OpKind::Upsert { collection, key, value } => {
            event(ChangeOp::Update, collection, key, None, Some(value), None)
        }
        OpKind::Delete { collection, key, before } => {
            event(ChangeOp::Delete, collection, key, before, None, None)
        }
        OpKind::Ddl { statement, schema_version } => event(
            ChangeOp::Ddl,
            String::new(),
            Bytes::new(),
            None,
            None,
            Some(DdlChange { statement, schema_version }),
        ),
        // Transaction markers carry no change; the txn id is on each change.
        OpKind::Begin | OpKind::Commit => return None,
    })
}
