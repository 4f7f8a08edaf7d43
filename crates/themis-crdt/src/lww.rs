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
///
/// [`Timestamp::ZERO`] is reserved for "never written" (an HLC never issues it), so a
/// write at it is refused with [`CrdtError::ZeroTimestamp`] rather than dropped, and merge
/// is a single comparison of timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LwwState<T>", bound(deserialize = "T: Deserialize<'de>"))]
pub struct LwwRegister<T> {
    /// `None` before the first write.
    value: Option<T>,
    /// The current value's timestamp; [`Timestamp::ZERO`] exactly when `value` is `None`.
    /// Kept outside the `Option` so that merge compares one integer and nothing else.
    timestamp: Timestamp,
}

/// The wire form of [`LwwRegister`], validated on decode.
#[derive(Deserialize)]
struct LwwState<T> {
    value: Option<T>,
    timestamp: Timestamp,
}

impl<T> TryFrom<LwwState<T>> for LwwRegister<T> {
    type Error = CrdtError;

    fn try_from(state: LwwState<T>) -> Result<Self, CrdtError> {
        if state.value.is_some() == (state.timestamp == Timestamp::ZERO) {
            return Err(CrdtError::InvalidState {
                what: "LWW-Register",
                reason: format!(
                    "a value must carry a non-zero timestamp and an empty register the zero one, \
                     found {} value at {}",
                    if state.value.is_some() { "a" } else { "no" },
                    state.timestamp
                ),
            });
        }
        Ok(LwwRegister { value: state.value, timestamp: state.timestamp })
    }
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
    ///
    /// # Errors
    /// [`CrdtError::ZeroTimestamp`] for a write at [`Timestamp::ZERO`], which an HLC never
    /// issues and which the register reserves for "never written".
    pub fn set(&mut self, value: T, timestamp: Timestamp) -> Result<LwwOp<T>, CrdtError> {
        let op = LwwOp { value, timestamp };
        self.write(&op)?;
        Ok(op)
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

    /// Applies a write if it is newer. Equal timestamps denote the same write (an HLC never
    /// issues one twice), so the current value stays, which keeps merge idempotent.
    fn write(&mut self, op: &LwwOp<T>) -> Result<(), CrdtError> {
        if op.timestamp == Timestamp::ZERO {
            return Err(CrdtError::ZeroTimestamp);
        }
        if op.timestamp > self.timestamp {
            self.value = Some(op.value.clone());
            self.timestamp = op.timestamp;
        }
        Ok(())
    }
}

impl<T: Clone + PartialEq> Crdt for LwwRegister<T> {
    type Op = LwwOp<T>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        // Compare first, clone only the winner. A newer timestamp is never ZERO, so `other`
        // holds a value whenever it wins (the invariant decode enforces). The winner's
        // value is assigned, not `clone_from`ed: `Option::clone_from` branches on both
        // sides' variants, which cost a merge stream a third of its time (benchmarks.md).
        if other.timestamp > self.timestamp {
            #[allow(clippy::assigning_clones, reason = "Option::clone_from branches on both variants")]
            {
                self.value = other.value.clone();
            }
            self.timestamp = other.timestamp;
        }
        Ok(())
    }

    fn apply(&mut self, op: LwwOp<T>) -> Result<(), CrdtError> {
        self.write(&op)
    }
}

#[cfg(test)]
mod tests {
    use themis_clock::NodeId;

    use super::*;

    fn at(ms: u64, node: u64) -> Timestamp {
        Timestamp::from_parts(ms, 0, NodeId(node)).unwrap()
    }

    #[test]
    fn newest_write_wins_and_node_breaks_ties() {
        let mut a = LwwRegister::new();
        a.set("old", at(5, 1)).unwrap();
        a.set("new", at(7, 1)).unwrap();
        a.set("stale", at(6, 9)).unwrap();
        assert_eq!(a.get(), Some(&"new"));
        let mut b = LwwRegister::new();
        b.set("tie-high-node", at(7, 2)).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.get(), Some(&"tie-high-node"));
        assert_eq!(a.timestamp(), Some(at(7, 2)));
    }

    #[test]
    fn a_write_at_zero_is_refused_not_dropped() {
        let mut r = LwwRegister::new();
        assert_eq!(r.set(1u8, Timestamp::ZERO), Err(CrdtError::ZeroTimestamp));
        assert_eq!(r.apply(LwwOp { value: 1u8, timestamp: Timestamp::ZERO }), Err(CrdtError::ZeroTimestamp));
        assert_eq!(r.get(), None);
    }

    #[test]
    fn merging_an_empty_register_changes_nothing() {
        let mut r = LwwRegister::new();
        r.set(3u8, at(1, 1)).unwrap();
        r.merge(&LwwRegister::new()).unwrap();
        assert_eq!(r.get(), Some(&3));
        let mut empty = LwwRegister::<u8>::new();
        empty.merge(&LwwRegister::new()).unwrap();
        assert_eq!(empty, LwwRegister::new());
    }

    #[test]
    fn decode_rejects_a_value_without_a_timestamp_and_a_timestamp_without_a_value() {
        let value_at_zero = postcard::to_allocvec(&(Some(1u8), Timestamp::ZERO)).unwrap();
        assert!(postcard::from_bytes::<LwwRegister<u8>>(&value_at_zero).is_err());
        let empty_at_five = postcard::to_allocvec(&(None::<u8>, at(5, 1))).unwrap();
        assert!(postcard::from_bytes::<LwwRegister<u8>>(&empty_at_five).is_err());
        let json = serde_json::json!({ "value": 1, "timestamp": Timestamp::ZERO }).to_string();
        let err = serde_json::from_str::<LwwRegister<u8>>(&json).unwrap_err().to_string();
        assert!(err.contains("non-zero timestamp"), "{err}");
        let mut good = LwwRegister::new();
        good.set(1u8, at(5, 1)).unwrap();
        let bytes = postcard::to_allocvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<LwwRegister<u8>>(&bytes).unwrap(), good);
    }
}
