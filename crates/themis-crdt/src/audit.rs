//! The conflict audit trail: every resolved conflict leaves a record.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use themis_clock::{NodeId, Timestamp};

/// Losing values up to this size are kept verbatim in the record; larger ones by digest.
pub const LOSER_VALUE_INLINE_MAX_BYTES: usize = 256;

/// How a conflict ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The local version was kept; the remote one lost.
    LocalWon,
    /// The remote version was kept; the local one lost.
    RemoteWon,
    /// Both were merged into a new value; nothing lost.
    Merged,
    /// Both were kept as siblings; nothing lost.
    Siblings,
}

/// The losing value of a conflict, or its digest when large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LostValue {
    /// The value itself.
    Value(Vec<u8>),
    /// SHA-256 of a value larger than [`LOSER_VALUE_INLINE_MAX_BYTES`], and its length.
    Digest {
        /// The digest.
        sha256: [u8; 32],
        /// The value's length in bytes.
        len: usize,
    },
}

impl LostValue {
    /// The value inline if small, else its digest.
    #[must_use]
    pub fn of(value: &[u8]) -> Self {
        if value.len() <= LOSER_VALUE_INLINE_MAX_BYTES {
            LostValue::Value(value.to_vec())
        } else {
            LostValue::Digest { sha256: Sha256::digest(value).into(), len: value.len() }
        }
    }
}

/// One resolved conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The collection.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
    /// HLC timestamp of the local version.
    pub local_timestamp: Timestamp,
    /// HLC timestamp of the remote version.
    pub remote_timestamp: Timestamp,
    /// Node where the local version originated.
    pub local_origin: NodeId,
    /// Node where the remote version originated.
    pub remote_origin: NodeId,
    /// The strategy's configured name.
    pub strategy: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What lost, when something did.
    pub lost: Option<LostValue>,
}

/// Persists conflict records (to a file, a table, a topic). A failure withholds the
/// resolution, so no conflict is resolved without its record.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Stores one record durably, or says why not.
    fn persist(&self, record: &ConflictRecord) -> Result<(), String>;
}

/// The most recent conflict records in memory (bounded), plus an optional durable sink.
#[derive(Debug)]
pub struct AuditLog {
    recent: Mutex<Recent>,
    capacity: usize,
    sink: Option<Box<dyn AuditSink>>,
}

#[derive(Debug, Default)]
struct Recent {
    records: VecDeque<ConflictRecord>,
    total: u64,
}

impl AuditLog {
    /// A log keeping at most `capacity` records in memory (older ones are evicted and
    /// counted; a sink keeps them all).
    #[must_use]
    pub fn new(capacity: usize, sink: Option<Box<dyn AuditSink>>) -> Self {
        AuditLog { recent: Mutex::new(Recent::default()), capacity, sink }
    }

    /// Persists `record` to the sink (if any), then keeps it in memory.
    pub(crate) fn append(&self, record: ConflictRecord) -> Result<(), String> {
        if let Some(sink) = &self.sink {
            sink.persist(&record)?;
        }
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.total += 1;
        if self.capacity == 0 {
            return Ok(());
        }
        if recent.records.len() == self.capacity {
            recent.records.pop_front();
        }
        recent.records.push_back(record);
        Ok(())
    }

    /// The records in memory, oldest first.
    #[must_use]
    pub fn recent(&self) -> Vec<ConflictRecord> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .records
            .iter()
            .cloned()
            .collect()
    }

    /// Conflicts recorded since the log was created, including evicted ones.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).total
    }

    /// The in-memory bound.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
