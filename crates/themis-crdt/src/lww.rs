//! Last-writer-wins register.

use serde::{Deserialize, Serialize};
use themis_clock::Timestamp;

use crate::Crdt;
use crate::error::CrdtError;

/// A register that keeps the value with the greatest HLC timestamp.
///
/// Writes take a [`Timestamp`], never a raw integer, so the winner is decided by hybrid
/// time with the node id as tie-break: two distinct writes never tie, and every replica
/// picks the same winner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    /// `None` before the first write.
    value: Option<T>,
    /// The current value's timestamp; [`Timestamp::ZERO`] before the first write. Kept
    /// outside the `Option` so that merge compares one integer first.
    timestamp: Timestamp,
}

/// A write to an LWW-Register: the value and its timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwOp<T> {
    /// The written value.
    pub value: T,
    /// When it was written.
    pub timestamp: Timestamp,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister { value: None, timestamp: Timestamp::ZERO }
    }
}

impl<T: Clone> LwwRegister<T> {
    /// An empty register.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` at `timestamp` (it wins if newer than the current value) and returns
    /// the operation to ship.
    pub fn set(&mut self, value: T, timestamp: Timestamp) -> LwwOp<T> {
        let op = LwwOp { value, timestamp };
        self.write(&op);
        op
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The timestamp of the current value.
    #[must_use]
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.value.as_ref().map(|_| self.timestamp)
    }

    /// Whether a write at `timestamp` replaces the current value. Equal timestamps denote
    /// the same write (an HLC never issues one twice), so the current value stays, which
    /// keeps merge idempotent. A write at `Timestamp::ZERO` still fills an empty register.
    #[inline]
    fn wins(&self, timestamp: Timestamp) -> bool {
        timestamp > self.timestamp || self.value.is_none()
    }

    fn write(&mut self, op: &LwwOp<T>) {
        if self.wins(op.timestamp) {
            self.value = Some(op.value.clone());
            self.timestamp = op.timestamp;
        }
    }
}

impl<T: Clone + PartialEq> Crdt for LwwRegister<T> {
    type Op = LwwOp<T>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        // Compare first, clone only the winner.
        if let Some(value) = &other.value
            && self.wins(other.timestamp)
        {
            self.value = Some(value.clone());
            self.timestamp = other.timestamp;
        }
        Ok(())
    }

    fn apply(&mut self, op: LwwOp<T>) -> Result<(), CrdtError> {
        self.write(&op);
        Ok(())
    }
}
