//! Point-in-time recovery: the WAL's committed records and periodic base backups (the
//! store's snapshots) archived to an object store (a local directory, memory, S3),
//! compressed with zstd and encrypted with AES-256-GCM, each object listed in a
//! create-only manifest; and a restore to an LSN, an HLC timestamp, a wall-clock time or
//! the latest point, replayed into any [`themis_ship::StateMachine`] and verified on the
//! way (checksums, authentication tags, record CRCs, LSN continuity).
//!
//! ```
//! use std::sync::Arc;
//! use themis_clock::{Hlc, NodeId};
//! use themis_pitr::{Archive, Archiver, ArchiverConfig, Keyring, RestoreTarget, restore};
//! use themis_ship::{MemoryStateMachine, StateMachine};
//! use themis_wal::op::{Op, OpKind, encode_batch};
//! use themis_wal::{NewEntry, Wal, WalConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (wal, _) = Wal::open(dir.path().join("wal"), WalConfig::default())?;
//! let keyring = Arc::new(Keyring::new([42; 32]));
//! let archive = Archive::open("memory:///", std::iter::empty::<(&str, &str)>(), "prod", keyring)?;
//! let mut archiver = Archiver::start(archive.clone(), ArchiverConfig::default()).await?;
//!
//! // A base backup of the (empty) store at LSN 0, then the log.
//! archiver.base_backup(&MemoryStateMachine::new().snapshot()?, 0, Default::default()).await?;
//! let hlc = Hlc::new(NodeId(1));
//! for i in 0..10u32 {
//!     let op = Op { origin: NodeId(1), txn: 0, kind: OpKind::Upsert {
//!         collection: "c".into(), key: "k".into(), value: format!("{i}").into() }, stamp: None };
//!     wal.append(&[NewEntry::data(hlc.now(), encode_batch(&[op])?)])?;
//! }
//! archiver.step(&wal, wal.last_lsn(), true).await?;
//! assert_eq!(archiver.position(), 10);
//!
//! // The store as it was after LSN 4.
//! let restored = MemoryStateMachine::new();
//! let report = restore(&archive, "lsn:4".parse()?, &restored, 4, |_, _| {}).await?;
//! assert_eq!(report.restored_lsn, 4);
//! assert_eq!(restored.get("c", b"k").as_deref(), Some(&b"3"[..]));
//! # let _ = RestoreTarget::Latest;
//! # Ok(())
//! # }
//! ```
//!
//! The archive layout, object and manifest formats, and the restore algorithm are in
//! `docs/pitr.md`.

mod archive;
mod archiver;
mod error;
mod keys;
mod manifest;
mod object;
mod restore;
mod spec;

pub use archive::{Archive, Put, RetentionPolicy, RetentionReport, VerifyReport};
pub use archiver::{ArchiveLag, Archiver, ArchiverConfig};
pub use error::PitrError;
pub use keys::{KeyId, Keyring};
pub use manifest::{FORMAT, Manifest, ManifestEntry, base_object, entry_name, wal_object};
pub use object::{HEADER_LEN, Header, Kind, MAX_PAYLOAD, header, open, seal};
/// The object store crate the archive is built on, for callers that build a store.
pub use object_store;
pub use restore::{RestorePlan, RestoreReport, RestoreTarget, plan, restore, rfc3339_ms};
pub use spec::ArchiveSpec;
