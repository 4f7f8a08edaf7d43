//! Logical replication: durable replication slots over the CDC stream.
//!
//! A slot is a named consumer position that survives restarts (a state file per slot,
//! replaced crash-safely) and, in a replicated store, failover (its record travels
//! through the log). It holds the WAL it still needs, bounded by
//! `max_slot_wal_keep_size`, and delivers the changes its filter selects: collections
//! included and excluded by pattern, a row predicate over the JSON document, DDL unless
//! turned off, rewritten by a transform, encoded by an output plugin (JSON, JSON per
//! transaction, Protobuf, Avro). A slot created with an initial sync first delivers a
//! snapshot of the matching documents, then the log after it, without duplicates.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use themis_cdc::{CdcConfig, CdcStream};
//! use themis_clock::{Hlc, NodeId};
//! use themis_logical::{LogicalConfig, LogicalReplicationManager, OutputPlugin, SlotConfig};
//! use themis_wal::op::{Op, OpKind, encode_batch};
//! use themis_wal::{NewEntry, Wal, WalConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (wal, _) = Wal::open(dir.path().join("wal"), WalConfig::default())?;
//! let hlc = Hlc::new(NodeId(1));
//! let cdc = CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), 0, hlc.now())?;
//! let slots = LogicalReplicationManager::open(
//!     dir.path().join("wal/logical_slots"),
//!     cdc.clone(),
//!     Some(wal.clone()),
//!     LogicalConfig::default(),
//! )?;
//!
//! // One slot per tenant: only acme's orders outside the EU.
//! let mut config = SlotConfig::new("tenant_acme", OutputPlugin::Json);
//! config.include = vec!["orders".into()];
//! config.predicate = Some("tenant == 'acme' && region != 'eu'".into());
//! slots.create_slot(config, None)?;
//!
//! for (id, doc) in [("o1", r#"{"tenant":"acme","region":"us"}"#), ("o2", r#"{"tenant":"globex"}"#)] {
//!     let kind = OpKind::Insert { collection: "orders".into(), key: id.into(), value: doc.into() };
//!     let op = Op { origin: NodeId(1), txn: 0, kind, stamp: None };
//!     let range = wal.append(&[NewEntry::data(hlc.now(), encode_batch(&[op])?)])?;
//!     cdc.publish(&[wal.read(range.first)?]);
//! }
//!
//! let batch = slots.read_changes("tenant_acme", 100, Duration::from_secs(1)).await?;
//! assert_eq!(batch.changes.len(), 1);
//! assert_eq!(batch.changes[0].key, "o1");
//! let records = slots.encode("tenant_acme", &batch.changes)?;
//! assert!(std::str::from_utf8(&records[0])?.starts_with(r#"{"action":"I","collection":"orders","id":"o1""#));
//!
//! // Confirm what was applied: the slot releases the WAL before it and, after a
//! // restart, resumes after it.
//! let info = slots.advance_slot("tenant_acme", batch.confirm_lsn.unwrap())?;
//! assert_eq!(info.record.confirmed_flush_lsn, 2);
//! # Ok(())
//! # }
//! ```
//!
//! The state file format, retention rules and plugin formats are in `docs/logical.md`.

mod change;
mod ddl;
mod error;
mod manager;
pub mod persist;
mod plugin;
mod predicate;
mod slot;
mod transform;

pub use change::LogicalChange;
pub use ddl::{Catalog, DDL_HISTORY, DdlRecord, DdlStatement};
pub use error::LogicalError;
pub use manager::{
    ChangeBatch, LogicalConfig, LogicalReplicationManager, LogicalStats, SnapshotDoc, SnapshotProvider,
    SnapshotSource,
};
pub use plugin::{
    AVRO_SCHEMA, AVRO_SCHEMA_ID, ChangeMessage, OutputPlugin, PROTO_SCHEMA, avro_schema, json_change,
};
pub use predicate::{MAX_DEPTH, MAX_PREDICATE_LEN, Predicate};
pub use slot::{
    INTERNAL_PREFIX, MAX_SLOT_NAME, SlotConfig, SlotFilter, SlotInfo, SlotRecord, SlotState, SlotStats,
    WalStatus, check_slot_name,
};
pub use transform::{Step, Transform, TransformHook};
