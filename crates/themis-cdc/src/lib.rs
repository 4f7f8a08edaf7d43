//! Change data capture: committed log entries become [`ChangeEvent`]s (insert, update,
//! delete, DDL, with LSN, commit HLC, origin node and transaction), delivered in log order
//! to any number of filtered subscribers through a bounded queue that writers never wait
//! on. A subscriber that falls behind the queue reads the retained log from its position
//! and rejoins the queue when it has caught up, so it is neither dropped nor a brake on
//! writers, and sees every event exactly once. Idle subscribers receive heartbeats with
//! the LSN and HLC up to which everything has been delivered.
//!
//! ```
//! use std::sync::Arc;
//! use themis_cdc::{CdcConfig, CdcStream, ChangeOp, Filter};
//! use themis_clock::{Hlc, NodeId};
//! use themis_wal::op::{Op, OpKind, encode_batch};
//! use themis_wal::{NewEntry, Wal, WalConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (wal, _) = Wal::open(dir.path(), WalConfig::default())?;
//! let hlc = Hlc::new(NodeId(1));
//! let cdc = CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), 0, hlc.now())?;
//!
//! // A subscriber of inserts into the orders collections, from the start of the log.
//! let filter = Filter::parse("insert", "orders_*")?;
//! let mut orders = cdc.subscribe(filter, 0)?;
//!
//! // The commit path: append, then publish what committed (never waits on subscribers).
//! for (collection, id) in [("orders_eu", "o1"), ("users", "ada"), ("orders_us", "o2")] {
//!     let op = Op {
//!         origin: NodeId(1),
//!         txn: 0,
//!         kind: OpKind::Insert { collection: collection.into(), key: id.into(), value: "{}".into() },
//!         stamp: None,
//!     };
//!     let range = wal.append(&[NewEntry::data(hlc.now(), encode_batch(&[op])?)])?;
//!     cdc.publish(&[wal.read(range.first)?]);
//! }
//!
//! let first = orders.next().await?;
//! assert_eq!((first.op, first.collection.as_str(), first.lsn), (ChangeOp::Insert, "orders_eu", 1));
//! let second = orders.next().await?;
//! assert_eq!((second.collection.as_str(), second.lsn), ("orders_us", 3));
//!
//! // Resuming after the last LSN seen delivers exactly what follows it.
//! let mut resumed = cdc.subscribe(Filter::all(), first.lsn)?;
//! assert_eq!(resumed.next().await?.key_str(), "ada");
//! # Ok(())
//! # }
//! ```
//!
//! The event envelope, ordering and delivery guarantees are in `docs/cdc.md`.

mod error;
mod event;
mod filter;
mod queue;
mod source;
mod stream;
mod sync;

#[cfg(all(test, loom))]
mod loom_tests;

pub use error::CdcError;
pub use event::{ChangeEvent, ChangeOp, DdlChange, decode_entry};
pub use filter::{Filter, split_list};
pub use source::LogSource;
pub use stream::{CallbackHandle, CdcConfig, CdcStats, CdcStream, SubscriberStats, Subscription};
