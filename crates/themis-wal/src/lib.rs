//! A durable, segmented write-ahead log: the bottom of the Themis stack. Raft's log, the
//! shipper's source, and the input of change data capture and point-in-time recovery.
//!
//! Entries get dense LSNs from 1. Appends from many threads and tasks are group-committed:
//! one `write` and one `fdatasync` cover everything queued, and each writer returns when
//! its entries are durable. Opening a directory recovers it: a torn tail is truncated and
//! reported, corruption before it is an error that names the segment, offset and LSN.
//!
//! ```
//! use themis_clock::{Hlc, NodeId};
//! use themis_wal::{NewEntry, Wal, WalConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let hlc = Hlc::new(NodeId(1));
//! let (wal, report) = Wal::open(dir.path(), WalConfig::default())?;
//! assert_eq!(report.last_lsn, 0);
//!
//! // Durable when `append` returns (FsyncPolicy::Always, the default).
//! let range = wal.append(&[
//!     NewEntry::data(hlc.now(), &b"first"[..]),
//!     NewEntry::data(hlc.now(), &b"second"[..]),
//! ])?;
//! assert_eq!((range.first, range.last), (1, 2));
//! assert_eq!(&wal.read(2)?.payload[..], b"second");
//!
//! // Raft drops a conflicting suffix; a reopened log holds exactly what is left.
//! wal.truncate_suffix(1)?;
//! wal.close()?;
//! drop(wal);
//! let (wal, report) = Wal::open(dir.path(), WalConfig::default())?;
//! assert_eq!(report.last_lsn, 1);
//! let payloads: Vec<_> = wal.reader(1, 1 << 20).map(|e| e.map(|e| e.payload)).collect::<Result<_, _>>()?;
//! assert_eq!(payloads, [&b"first"[..]]);
//! # Ok(())
//! # }
//! ```
//!
//! The byte layouts and the crash analysis are in `docs/wal-format.md`.

mod check;
mod commit;
mod entry;
mod error;
pub mod op;
pub mod record;
mod recovery;
pub mod segment;
mod sync;
mod wal;

#[cfg(all(test, loom))]
mod loom_tests;

pub use check::{CheckReport, Problem, check, check_segment};
pub use commit::Progress;
pub use entry::{Entry, EntryKind, Lsn, LsnRange, NewEntry};
pub use error::WalError;
pub use recovery::{RecoveryMode, RecoveryReport, Skip, Truncation};
pub use wal::{ClockFn, FsyncPolicy, MAX_RESTART_LSN, RawRecords, SyncObserver, Wal, WalConfig, WalReader};
