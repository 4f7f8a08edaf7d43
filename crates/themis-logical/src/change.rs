//! What a slot delivers: a change with its documents parsed, filtered and transformed.

use bytes::Bytes;
use serde_json::Value;
use themis_cdc::{ChangeEvent, ChangeOp, DdlChange};
use themis_clock::{NodeId, Timestamp};
use themis_wal::Lsn;

/// One change as a slot delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalChange {
    /// What happened (`Snapshot` for initial-sync rows).
    pub op: ChangeOp,
    /// The collection (for DDL, the collection the statement names).
    pub collection: String,
    /// The document id (empty for DDL).
    pub key: String,
    /// The document before the change, where the writer logged one.
    pub before: Option<Value>,
    /// The document after the change (none for deletes and DDL).
    pub after: Option<Value>,
    /// The LSN of the entry that holds the change; snapshot rows carry the snapshot's LSN.
    pub lsn: Lsn,
    /// The change's place within its entry.
    pub index: u32,
    /// The entry's commit HLC timestamp.
    pub hlc: Timestamp,
    /// The node where the change was made.
    pub origin: NodeId,
    /// Its transaction (0: none).
    pub txn: u64,
    /// The collection's schema version when the change was made (0: never set).
    pub schema_version: u64,
    /// The statement, for DDL.
    pub ddl: Option<DdlChange>,
}

/// A document's bytes as JSON; bytes that are not JSON become a JSON string of their
/// (lossy) text, and the second value says so.
pub(crate) fn parse_doc(bytes: &Bytes) -> (Value, bool) {
    match serde_json::from_slice(bytes) {
        Ok(value) => (value, false),
        Err(_) => (Value::String(String::from_utf8_lossy(bytes).into_owned()), true),
    }
}

impl LogicalChange {
    /// The change an event carries, documents parsed; the second value counts documents
    /// that were not JSON.
    pub(crate) fn from_event(event: &ChangeEvent, collection: String, schema_version: u64) -> (Self, u32) {
        let mut non_json = 0;
        let mut parse = |bytes: &Option<Bytes>| {
            bytes.as_ref().map(|b| {
                let (value, raw) = parse_doc(b);
                non_json += u32::from(raw);
                value
            })
        };
        let before = parse(&event.before);
        let after = parse(&event.after);
        let change = LogicalChange {
            op: event.op,
            collection,
            key: event.key_str().into_owned(),
            before,
            after,
            lsn: event.lsn,
            index: event.index,
            hlc: event.hlc,
            origin: event.origin,
            txn: event.txn,
            schema_version,
            ddl: event.ddl.clone(),
        };
        (change, non_json)
    }
}
