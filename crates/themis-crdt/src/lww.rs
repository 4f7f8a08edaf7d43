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
    current: Option<(T, Timestamp)>,
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
        LwwRegister { current: None }
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
        self.current.as_ref().map(|(v, _)| v)
    }

    /// The timestamp of the current value.
    #[must_use]
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.current.as_ref().map(|&(_, ts)| ts)
    }

    fn write(&mut self, op: &LwwOp<T>) {
        // Equal timestamps denote the same write (an HLC never issues one twice), so
        // keeping the current value is correct and keeps merge idempotent.
        if self.timestamp().is_none_or(|ts| op.timestamp > ts) {
            self.current = Some((op.value.clone(), op.timestamp));
        }
    }
}

impl<T: Clone + PartialEq> Crdt for LwwRegister<T> {
    type Op = LwwOp<T>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        if let Some((value, timestamp)) = &other.current {
            self.write(&LwwOp { value: value.clone(), timestamp: *timestamp });
        }
        Ok(())
    }

    fn apply(&mut self, op: LwwOp<T>) -> Result<(), CrdtError> {
        self.write(&op);
        Ok(())
    }
}
