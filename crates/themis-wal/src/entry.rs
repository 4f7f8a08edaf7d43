//! Log entries: what a record holds.

use std::fmt;

use bytes::Bytes;
use themis_clock::Timestamp;

/// A log sequence number: dense, from 1. 0 means "before the first entry".
pub type Lsn = u64;

/// What an entry is for. An open set: the constants below are the kinds the replication
/// layers use; values from [`EntryKind::USER`] up are free for applications. 0 is never a
/// valid kind, so a zeroed record can never decode as one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKind(u8);

impl EntryKind {
    /// Application data (a document [`op`](crate::op) batch, for the node).
    pub const DATA: EntryKind = EntryKind(1);
    /// An empty entry a new Raft leader appends to commit earlier terms.
    pub const NO_OP: EntryKind = EntryKind(2);
    /// A cluster configuration change (membership, acknowledgement mode).
    pub const CONFIG: EntryKind = EntryKind(3);
    /// The first kind free for applications.
    pub const USER: u8 = 128;

    /// The kind with code `code`, or `None` for 0.
    #[must_use]
    pub const fn new(code: u8) -> Option<EntryKind> {
        if code == 0 { None } else { Some(EntryKind(code)) }
    }

    /// The on-disk code.
    #[must_use]
    pub const fn code(self) -> u8 {
        self.0
    }
}

impl fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EntryKind::DATA => f.write_str("Data"),
            EntryKind::NO_OP => f.write_str("NoOp"),
            EntryKind::CONFIG => f.write_str("Config"),
            EntryKind(code) => write!(f, "Kind({code})"),
        }
    }
}

/// An entry as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position in the log.
    pub lsn: Lsn,
    /// The Raft term it was proposed in; 0 outside Raft.
    pub term: u64,
    /// When it was created.
    pub timestamp: Timestamp,
    /// What it is for.
    pub kind: EntryKind,
    /// Its bytes. Reads share one buffer; no payload is copied.
    pub payload: Bytes,
}

impl Entry {
    /// The entry without its LSN, to append elsewhere (a follower appending what it
    /// received); the payload is shared, not copied.
    #[must_use]
    pub fn to_new(&self) -> NewEntry {
        NewEntry {
            term: self.term,
            timestamp: self.timestamp,
            kind: self.kind,
            payload: self.payload.clone(),
        }
    }
}

/// An entry to append: everything but the LSN, which the log assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The Raft term; 0 outside Raft.
    pub term: u64,
    /// When it was created (an HLC reading).
    pub timestamp: Timestamp,
    /// What it is for.
    pub kind: EntryKind,
    /// Its bytes.
    pub payload: Bytes,
}

impl NewEntry {
    /// A data entry outside Raft (term 0).
    #[must_use]
    pub fn data(timestamp: Timestamp, payload: impl Into<Bytes>) -> NewEntry {
        NewEntry { term: 0, timestamp, kind: EntryKind::DATA, payload: payload.into() }
    }
}

/// A contiguous, non-empty range of LSNs: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnRange {
    /// The first LSN of the range.
    pub first: Lsn,
    /// The last LSN of the range.
    pub last: Lsn,
}
