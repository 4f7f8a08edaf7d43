//! The Raft log as the core sees it: durable entries in [`Storage`], then entries not yet
//! handed to the driver for persisting (`unstable`), with the commit, apply and persist
//! marks.

use themis_wal::{Entry, Lsn};

use crate::error::{RaftError, StorageError};
use crate::storage::{Storage, limit_size};
use crate::types::Snapshot;

/// Entries and a snapshot the driver has not yet persisted.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot to install, received from the leader.
    snapshot: Option<Snapshot>,
    /// The LSN of `entries[0]`.
    offset: Lsn,
    /// Entries to persist, dense from `offset`.
    entries: Vec<Entry>,
    /// How many of `entries` were handed out in a `Ready` and await `advance`.
    in_progress: usize,
    /// Whether `snapshot` was handed out.
    snapshot_in_progress: bool,
}

impl Unstable {
    fn last_lsn(&self) -> Option<Lsn> {
        match self.entries.last() {
            Some(entry) => Some(entry.lsn),
            None => self.snapshot.as_ref().map(|s| s.meta.lsn),
        }
    }

    fn term(&self, lsn: Lsn) -> Option<u64> {
        if lsn >= self.offset
            && let Some(entry) = self.entries.get((lsn - self.offset) as usize)
        {
            return Some(entry.term);
        }
        self.snapshot.as_ref().filter(|s| s.meta.lsn == lsn).map(|s| s.meta.term)
    }

    /// Appends entries starting at `entries[0].lsn`, truncating whatever unstable entries
    /// were at or after it.
    fn truncate_and_append(&mut self, entries: &[Entry]) {
        let first = entries[0].lsn;
        let end = self.offset + self.entries.len() as Lsn;
        if first == end {
            self.entries.extend_from_slice(entries);
        } else if first <= self.offset {
            // Replaces everything unstable; storage drops its conflicting suffix when the
            // driver persists these.
            self.offset = first;
            self.entries = entries.to_vec();
            self.in_progress = 0;
        } else {
            self.entries.truncate((first - self.offset) as usize);
            self.in_progress = self.in_progress.min(self.entries.len());
            self.entries.extend_from_slice(entries);
        }
    }
}

/// The log: storage plus unstable entries, and the marks
/// `applied <= committed`, `persisted <= last_lsn`.
#[derive(Debug)]
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    unstable: Unstable,
    /// The highest LSN known committed.
    pub(crate) committed: Lsn,
    /// The highest LSN handed to the driver to apply.
    pub(crate) applied: Lsn,
    /// The highest LSN known durable in this node's storage with the current log's terms.
    pub(crate) persisted: Lsn,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(storage: S, applied: Lsn) -> Result<RaftLog<S>, RaftError> {
        let first = storage.first_lsn()?;
        let last = storage.last_lsn()?;
        let commit = storage.initial_state()?.hard_state.commit;
        if commit > last {
            return Err(RaftError::Entry {
                lsn: commit,
                reason: format!("the hard state's commit is past the last LSN {last} in storage"),
            });
        }
        let snapshot_lsn = first - 1;
        Ok(RaftLog {
            storage,
            unstable: Unstable { offset: last + 1, ..Unstable::default() },
            committed: commit.max(snapshot_lsn),
            applied: applied.clamp(snapshot_lsn, commit.max(snapshot_lsn)),
            persisted: last,
        })
    }

    pub(crate) fn first_lsn(&self) -> Result<Lsn, StorageError> {
        match &self.unstable.snapshot {
            Some(snapshot) => Ok(snapshot.meta.lsn + 1),
            None => self.storage.first_lsn(),
        }
    }

    pub(crate) fn last_lsn(&self) -> Result<Lsn, StorageError> {
        match self.unstable.last_lsn() {
            Some(lsn) => Ok(lsn),
            None => self.storage.last_lsn(),
        }
    }

    pub(crate) fn term(&self, lsn: Lsn) -> Result<u64, StorageError> {
        if lsn == 0 {
            return Ok(0);
        }
        if let Some(term) = self.unstable.term(lsn) {
            return Ok(term);
        }
        let snapshot_lsn = self.first_lsn()? - 1;
        if lsn < snapshot_lsn {
            return Err(StorageError::Compacted { lsn, snapshot_lsn });
        }
        let last = self.last_lsn()?;
        if lsn > last {
            return Err(StorageError::Unavailable { lsn, last_lsn: last });
        }
        self.storage.term(lsn)
    }

    pub(crate) fn last_term(&self) -> Result<u64, StorageError> {
        self.term(self.last_lsn()?)
    }

    pub(crate) fn match_term(&self, lsn: Lsn, term: u64) -> bool {
        self.term(lsn).is_ok_and(|t| t == term)
    }

    /// Whether a candidate whose log ends at (`last_lsn`, `last_term`) is at least as up to
    /// date as this log (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_lsn: Lsn, last_term: u64) -> Result<bool, StorageError> {
        let our_term = self.last_term()?;
        Ok(last_term > our_term || (last_term == our_term && last_lsn >= self.last_lsn()?))
    }

    /// Appends a leader's own entries; returns the new last LSN.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<Lsn, RaftError> {
        let Some(first) = entries.first() else { return Ok(self.last_lsn()?) };
        if first.lsn <= self.committed {
            return Err(RaftError::Entry {
                lsn: first.lsn,
                reason: format!("would overwrite committed entries (committed {})", self.committed),
            });
        }
        if first.lsn > self.last_lsn()? + 1 {
            return Err(RaftError::Entry { lsn: first.lsn, reason: "would leave a gap in the log".into() });
        }
        if first.lsn <= self.persisted {
            // The durable suffix from here is about to be replaced: it no longer counts.
            self.persisted = first.lsn - 1;
        }
        self.unstable.truncate_and_append(entries);
        Ok(self.last_lsn()?)
    }

    /// A follower's append (Raft §5.3): if the log holds (`prev_lsn`, `prev_term`), skips
    /// the entries it already has, truncates at the first conflict, appends the rest and
    /// returns the last LSN the leader's message vouches for. `None` if the log does not
    /// match at `prev_lsn`.
    pub(crate) fn maybe_append(
        &mut self,
        prev_lsn: Lsn,
        prev_term: u64,
        entries: &[Entry],
    ) -> Result<Option<Lsn>, RaftError> {
        if !self.match_term(prev_lsn, prev_term) {
            return Ok(None);
        }
        let last_new = prev_lsn + entries.len() as Lsn;
        for (i, entry) in entries.iter().enumerate() {
            if entry.lsn != prev_lsn + 1 + i as Lsn {
                return Err(RaftError::Entry {
                    lsn: entry.lsn,
                    reason: "append entries are not dense".into(),
                });
            }
        }
        let conflict = entries.iter().position(|e| !self.match_term(e.lsn, e.term));
        if let Some(at) = conflict {
            let lsn = entries[at].lsn;
            if lsn <= self.committed {
                // Log matching (Raft §5.3) makes this impossible with a correct leader.
                return Err(RaftError::Entry {
                    lsn,
                    reason: format!(
                        "a leader's entry conflicts with a committed one (committed {})",
                        self.committed
                    ),
                });
            }
            self.append(&entries[at..])?;
        }
        Ok(Some(last_new))
    }

    /// The largest LSN at or below `lsn` whose term is at most `term`: where a follower's
    /// log can still agree with a leader that refused at (`lsn`, `term`).
    pub(crate) fn find_conflict_by_term(&self, lsn: Lsn, term: u64) -> (Lsn, u64) {
        let mut at = lsn;
        loop {
            match self.term(at) {
                Ok(t) if t > term && at > 0 => at -= 1,
                Ok(t) => return (at, t),
                Err(_) => return (at, 0),
            }
        }
    }

    /// Entries `low..=last`, at most `max_bytes` after the first.
    pub(crate) fn entries(&self, low: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_lsn()?;
        if low > last {
            return Ok(Vec::new());
        }
        self.slice(low, last + 1, max_bytes)
    }

    /// Entries `low..high`, at most `max_bytes` after the first.
    pub(crate) fn slice(&self, low: Lsn, high: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        let first = self.first_lsn()?;
        if low < first {
            return Err(StorageError::Compacted { lsn: low, snapshot_lsn: first - 1 });
        }
        let mut out = Vec::new();
        let offset = self.unstable.offset;
        if low < offset {
            let stored = self.storage.entries(low, high.min(offset), max_bytes)?;
            let complete = stored.last().is_some_and(|e| e.lsn + 1 == high.min(offset));
            out = stored;
            if !complete || high <= offset {
                return Ok(out);
            }
        }
        if high > offset {
            let from = (low.max(offset) - offset) as usize;
            let to = ((high - offset) as usize).min(self.unstable.entries.len());
            if from < to {
                out.extend_from_slice(&self.unstable.entries[from..to]);
            }
        }
        let keep = limit_size(&out, max_bytes).len();
        out.truncate(keep);
        Ok(out)
    }

    /// Raises `committed` to `lsn` if `lsn` has `term` (a leader commits only entries of
    /// its own term by counting replicas, Raft §5.4.2). Returns whether it moved.
    pub(crate) fn maybe_commit(&mut self, lsn: Lsn, term: u64) -> bool {
        if lsn > self.committed && self.term(lsn).is_ok_and(|t| t == term) {
            self.committed = lsn;
            return true;
        }
        false
    }

    /// Raises `committed` (a follower learning it from its leader).
    pub(crate) fn commit_to(&mut self, lsn: Lsn) {
        if lsn > self.committed {
            self.committed = lsn;
        }
    }

    /// Unstable entries not yet handed out, marking them in progress.
    pub(crate) fn take_unstable_entries(&mut self) -> Vec<Entry> {
        let from = self.unstable.in_progress;
        self.unstable.in_progress = self.unstable.entries.len();
        self.unstable.entries[from..].to_vec()
    }

    pub(crate) fn has_unstable_entries(&self) -> bool {
        self.unstable.in_progress < self.unstable.entries.len()
    }

    pub(crate) fn take_unstable_snapshot(&mut self) -> Option<Snapshot> {
        if self.unstable.snapshot_in_progress {
            return None;
        }
        let snapshot = self.unstable.snapshot.clone()?;
        self.unstable.snapshot_in_progress = true;
        Some(snapshot)
    }

    pub(crate) fn has_unstable_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some() && !self.unstable.snapshot_in_progress
    }

    /// The driver persisted entries up to (`lsn`, `term`): drop them from unstable, if the
    /// log still holds that entry (it may have been overwritten meanwhile).
    pub(crate) fn stable_to(&mut self, lsn: Lsn, term: u64) {
        if self.unstable.term(lsn) != Some(term) || lsn < self.unstable.offset {
            return;
        }
        let count = (lsn + 1 - self.unstable.offset) as usize;
        self.unstable.entries.drain(..count);
        self.unstable.in_progress = self.unstable.in_progress.saturating_sub(count);
        self.unstable.offset = lsn + 1;
        self.persisted = self.persisted.max(lsn);
    }

    /// The driver installed the snapshot at `lsn`.
    pub(crate) fn stable_snapshot_to(&mut self, lsn: Lsn) {
        if self.unstable.snapshot.as_ref().is_some_and(|s| s.meta.lsn == lsn) {
            self.unstable.snapshot = None;
            self.unstable.snapshot_in_progress = false;
            self.persisted = self.persisted.max(lsn);
        }
    }

    /// Committed entries not yet applied (and durable here), at most `max_bytes`.
    pub(crate) fn next_committed_entries(&self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let high = self.committed.min(self.persisted);
        if self.applied >= high {
            return Ok(Vec::new());
        }
        self.slice(self.applied + 1, high + 1, max_bytes)
    }

    pub(crate) fn has_next_committed_entries(&self) -> bool {
        self.applied < self.committed.min(self.persisted)
    }

    pub(crate) fn applied_to(&mut self, lsn: Lsn) {
        if lsn > self.applied {
            self.applied = lsn.min(self.committed);
        }
    }

    /// Replaces the whole log with `snapshot` (a follower far behind).
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        let lsn = snapshot.meta.lsn;
        self.committed = lsn;
        self.applied = lsn;
        self.persisted = self.persisted.min(lsn.saturating_sub(1));
        self.unstable = Unstable { offset: lsn + 1, snapshot: Some(snapshot), ..Unstable::default() };
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use themis_clock::Timestamp;
    use themis_wal::EntryKind;

    use super::*;
    use crate::storage::MemStorage;

    fn entry(lsn: Lsn, term: u64) -> Entry {
        Entry {
            lsn,
            term,
            timestamp: Timestamp::ZERO,
            kind: EntryKind::DATA,
            payload: Bytes::from_static(b"x"),
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        let storage = MemStorage::default();
        let entries: Vec<_> = terms.iter().enumerate().map(|(i, t)| entry(i as Lsn + 1, *t)).collect();
        storage.wl().append(&entries).unwrap();
        RaftLog::new(storage, 0).unwrap()
    }

    #[test]
    fn maybe_append_truncates_at_the_first_conflict_only() {
        // Raft §5.3: delete the existing entry and all that follow it.
        let mut log = log_with(&[1, 1, 2, 2]);
        assert_eq!(log.maybe_append(1, 1, &[entry(2, 1), entry(3, 3)]).unwrap(), Some(3));
        assert_eq!(log.last_lsn().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 3);
        assert_eq!(log.persisted, 2);
        assert_eq!(log.maybe_append(3, 2, &[entry(4, 3)]).unwrap(), None, "prev term mismatch");
        // A stale, shorter append does not truncate what follows it.
        assert_eq!(log.maybe_append(1, 1, &[entry(2, 1)]).unwrap(), Some(2));
        assert_eq!(log.last_lsn().unwrap(), 3);
    }

    #[test]
    fn committed_entries_are_never_overwritten() {
        let mut log = log_with(&[1, 1]);
        log.commit_to(2);
        assert!(log.maybe_append(1, 1, &[entry(2, 2)]).is_err());
    }

    #[test]
    fn a_leader_commits_only_its_own_term_by_counting() {
        // Raft §5.4.2.
        let mut log = log_with(&[1, 2]);
        assert!(!log.maybe_commit(1, 2));
        assert!(log.maybe_commit(2, 2));
        assert_eq!(log.committed, 2);
    }

    #[test]
    fn slices_span_storage_and_unstable() {
        let mut log = log_with(&[1, 1]);
        log.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        let lsns: Vec<_> = log.entries(1, u64::MAX).unwrap().iter().map(|e| e.lsn).collect();
        assert_eq!(lsns, [1, 2, 3, 4]);
        assert_eq!(log.slice(2, 4, 1).unwrap().len(), 1);
        assert_eq!(log.take_unstable_entries().len(), 2);
        assert!(!log.has_unstable_entries());
        log.stable_to(4, 2);
        assert_eq!(log.persisted, 4);
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = log_with(&[1, 1, 3, 3, 3]);
        assert_eq!(log.find_conflict_by_term(5, 2), (2, 1));
        assert_eq!(log.find_conflict_by_term(5, 3), (5, 3));
    }
}
