//! Where a subscriber that fell behind the live queue reads: the retained log.

use themis_wal::{Entry, Lsn, Wal};

use crate::error::CdcError;

/// The log a [`CdcStream`](crate::CdcStream) falls back to. Implemented for
/// [`themis_wal::Wal`]; a store with another log implements it over its own.
pub trait LogSource: Send + Sync + 'static {
    /// The oldest LSN the log still holds.
    fn first_lsn(&self) -> Lsn;
    /// The newest LSN the log holds (committed or not).
    fn last_lsn(&self) -> Lsn;
    /// Entries from `from` on, in order, about `max_bytes` of them and at least one when
    /// `from` is held.
    fn read(&self, from: Lsn, max_bytes: usize) -> Result<Vec<Entry>, CdcError>;
}

impl LogSource for Wal {
    fn first_lsn(&self) -> Lsn {
        Wal::first_lsn(self)
    }

    fn last_lsn(&self) -> Lsn {
        Wal::last_lsn(self)
    }

    fn read(&self, from: Lsn, max_bytes: usize) -> Result<Vec<Entry>, CdcError> {
        self.read_range(from, max_bytes).map_err(|e| CdcError::Log { from, message: e.to_string() })
    }
}
