//! How the core reads the durable log: the [`Storage`] trait, and [`MemStorage`] for tests
//! and the simulator. The driver's adapter over themis-wal implements the same trait.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use themis_wal::{Entry, Lsn};

use crate::error::{RaftError, StorageError};
use crate::types::{AckPolicy, ConfState, HardState, Snapshot};

/// What a node finds in its storage when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitialState {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// The membership as of the latest snapshot, or the bootstrap membership.
    pub conf_state: ConfState,
    /// The acknowledgement policy as of the latest snapshot, or the bootstrap policy.
    pub policy: AckPolicy,
}

/// The durable log, as the core reads it. The core never writes storage: the driver
/// persists what a `Ready` hands it, then calls `advance`.
///
/// LSNs `first_lsn()..=last_lsn()` are readable; `first_lsn() - 1` is the snapshot's LSN,
/// whose term `term` still answers.
pub trait Storage {
    /// The hard state and membership to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// Entries `low..high`, at least one if any, and beyond the first no more than
    /// `max_bytes` of payload.
    fn entries(&self, low: Lsn, high: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `lsn`; the snapshot's term at `first_lsn() - 1`.
    fn term(&self, lsn: Lsn) -> Result<u64, StorageError>;
    /// The first readable LSN.
    fn first_lsn(&self) -> Result<Lsn, StorageError>;
    /// The last LSN (the snapshot's when the log after it is empty).
    fn last_lsn(&self) -> Result<Lsn, StorageError>;
    /// The latest snapshot, to send to a follower that needs LSNs before `first_lsn()`.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// The contents of a [`MemStorage`].
#[derive(Debug, Clone, Default)]
pub struct MemStorageCore {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after the snapshot, in order.
    entries: Vec<Entry>,
}

impl MemStorageCore {
    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The hard state.
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The snapshot held.
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The entries after the snapshot.
    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn first_lsn(&self) -> Lsn {
        self.snapshot.meta.lsn + 1
    }

    fn last_lsn(&self) -> Lsn {
        self.snapshot.meta.lsn + self.entries.len() as Lsn
    }

    /// Appends `entries`, replacing any entries at or after the first one's LSN, as a
    /// follower does when the leader overwrites a conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), RaftError> {
        let Some(first) = entries.first() else { return Ok(()) };
        if first.lsn < self.first_lsn() {
            return Err(
                StorageError::Compacted { lsn: first.lsn, snapshot_lsn: self.snapshot.meta.lsn }.into()
            );
        }
        if first.lsn > self.last_lsn() + 1 {
            return Err(RaftError::Entry {
                lsn: first.lsn,
                reason: format!("would leave a gap after the last LSN {}", self.last_lsn()),
            });
        }
        for pair in entries.windows(2) {
            if pair[1].lsn != pair[0].lsn + 1 {
                return Err(RaftError::Entry { lsn: pair[1].lsn, reason: "entries are not dense".into() });
            }
        }
        let keep = (first.lsn - self.first_lsn()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Installs `snapshot`, dropping the entries it covers; entries after it that agree
    /// with it are kept.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let lsn = snapshot.meta.lsn;
        let keep_from = self.entries.iter().position(|e| e.lsn == lsn && e.term == snapshot.meta.term);
        self.entries = match keep_from {
            Some(at) => self.entries.split_off(at + 1),
            None => Vec::new(),
        };
        if self.hard_state.commit < lsn {
            self.hard_state.commit = lsn;
        }
        self.snapshot = snapshot;
    }

    /// Replaces the snapshot with `snapshot` (which the state machine took at or below the
    /// applied LSN) and drops the entries it covers: log compaction.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<(), RaftError> {
        let lsn = snapshot.meta.lsn;
        if lsn <= self.snapshot.meta.lsn {
            return Ok(());
        }
        if lsn > self.last_lsn() {
            return Err(StorageError::Unavailable { lsn, last_lsn: self.last_lsn() }.into());
        }
        let drop = (lsn - self.snapshot.meta.lsn) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }
}

/// An in-memory [`Storage`], shared by handle: the driver (or simulator) writes through
/// [`MemStorage::wl`] while the core reads through the trait.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    core: Arc<RwLock<MemStorageCore>>,
}

impl MemStorage {
    /// An empty log whose bootstrap membership is `conf_state`, acknowledging ASYNC.
    #[must_use]
    pub fn new(conf_state: ConfState) -> MemStorage {
        MemStorage::bootstrap(conf_state, AckPolicy::ASYNC)
    }

    /// An empty log whose bootstrap membership is `conf_state` and policy `policy`.
    #[must_use]
    pub fn bootstrap(conf_state: ConfState, policy: AckPolicy) -> MemStorage {
        let storage = MemStorage::default();
        storage.wl().snapshot.meta.conf_state = conf_state;
        storage.wl().snapshot.meta.policy = policy;
        storage
    }

    /// Reads the contents.
    pub fn rl(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        self.core.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the contents.
    pub fn wl(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.core.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let core = self.rl();
        Ok(InitialState {
            hard_state: core.hard_state,
            conf_state: core.snapshot.meta.conf_state.clone(),
            policy: core.snapshot.meta.policy,
        })
    }

    fn entries(&self, low: Lsn, high: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let core = self.rl();
        if low < core.first_lsn() {
            return Err(StorageError::Compacted { lsn: low, snapshot_lsn: core.snapshot.meta.lsn });
        }
        if high > core.last_lsn() + 1 {
            return Err(StorageError::Unavailable { lsn: high - 1, last_lsn: core.last_lsn() });
        }
        let offset = core.first_lsn();
        let slice = &core.entries[(low - offset) as usize..(high - offset) as usize];
        Ok(limit_size(slice, max_bytes).to_vec())
    }

    fn term(&self, lsn: Lsn) -> Result<u64, StorageError> {
        let core = self.rl();
        if lsn == core.snapshot.meta.lsn {
            return Ok(core.snapshot.meta.term);
        }
        if lsn < core.first_lsn() {
            return Err(StorageError::Compacted { lsn, snapshot_lsn: core.snapshot.meta.lsn });
        }
        if lsn > core.last_lsn() {
            return Err(StorageError::Unavailable { lsn, last_lsn: core.last_lsn() });
        }
        Ok(core.entries[(lsn - core.first_lsn()) as usize].term)
    }

    fn first_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(self.rl().first_lsn())
    }

    fn last_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(self.rl().last_lsn())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.rl().snapshot.clone())
    }
}

/// The longest prefix of `entries` whose payload fits `max_bytes`, and at least one entry.
#[must_use]
pub fn limit_size(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut total = 0u64;
    let mut count = 0;
    for entry in entries {
        total += entry.payload.len() as u64;
        if count > 0 && total > max_bytes {
            break;
        }
        count += 1;
    }
    &entries[..count]
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use themis_clock::Timestamp;
    use themis_wal::EntryKind;

    use super::*;

    pub(crate) fn entry(lsn: Lsn, term: u64) -> Entry {
        Entry {
            lsn,
            term,
            timestamp: Timestamp::ZERO,
            kind: EntryKind::DATA,
            payload: Bytes::from(vec![0; 10]),
        }
    }

    #[test]
    fn append_overwrites_a_conflicting_suffix_and_refuses_gaps() {
        let storage = MemStorage::default();
        storage.wl().append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        storage.wl().append(&[entry(2, 2)]).unwrap();
        assert_eq!(storage.last_lsn().unwrap(), 2);
        assert_eq!(storage.term(2).unwrap(), 2);
        assert!(storage.wl().append(&[entry(4, 2)]).is_err());
        assert!(storage.wl().append(&[entry(3, 2), entry(5, 2)]).is_err());
    }

    #[test]
    fn compaction_keeps_the_snapshot_term_readable() {
        let storage = MemStorage::default();
        storage.wl().append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.meta.lsn = 2;
        snapshot.meta.term = 1;
        storage.wl().compact(snapshot).unwrap();
        assert_eq!(storage.first_lsn().unwrap(), 3);
        assert_eq!(storage.term(2).unwrap(), 1);
        assert!(matches!(storage.term(1), Err(StorageError::Compacted { .. })));
        assert!(matches!(storage.entries(2, 4, u64::MAX), Err(StorageError::Compacted { .. })));
        assert_eq!(storage.entries(3, 4, u64::MAX).unwrap().len(), 1);
    }

    #[test]
    fn entries_are_limited_by_size_but_never_empty() {
        let storage = MemStorage::default();
        storage.wl().append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        assert_eq!(storage.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(storage.entries(1, 4, 20).unwrap().len(), 2);
        assert_eq!(storage.entries(1, 4, u64::MAX).unwrap().len(), 3);
    }
}
