//! Grow-only and positive-negative counters.

use serde::{Deserialize, Serialize};
use themis_clock::{NodeId, VectorClock};

use crate::Crdt;
use crate::error::CrdtError;

/// A grow-only counter: one monotone count per node; the value is their sum.
///
/// The state is exactly a vector clock (pointwise maximum on merge), so it is one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GCounter {
    counts: VectorClock,
}

/// A G-Counter operation: node `node` has counted to `count`. Applying it raises the node's
/// count to at least `count`, so duplicates and reordering are harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounterOp {
    /// The counting node.
    pub node: NodeId,
    /// Its count after the increment.
    pub count: u64,
}

impl GCounter {
    /// A zero counter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `node` and returns the operation to ship.
    pub fn increment(&mut self, node: NodeId, by: u64) -> Result<GCounterOp, CrdtError> {
        let count = self.counts.get(node).checked_add(by).ok_or(CrdtError::CounterOverflow { node })?;
        self.counts.raise(node, count)?;
        Ok(GCounterOp { node, count })
    }

    /// The total, over every node.
    #[must_use]
    pub fn value(&self) -> u128 {
        self.counts.iter().map(|(_, c)| u128::from(c)).sum()
    }

    /// The count contributed by `node`.
    #[must_use]
    pub fn count_of(&self, node: NodeId) -> u64 {
        self.counts.get(node)
    }
}

impl Crdt for GCounter {
    type Op = GCounterOp;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        Ok(self.counts.merge(&other.counts)?)
    }

    fn apply(&mut self, op: GCounterOp) -> Result<(), CrdtError> {
        self.counts.raise(op.node, op.count)?;
        Ok(())
    }
}

/// A counter that goes up and down: two G-Counters, increments and decrements.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PnCounter {
    increments: GCounter,
    decrements: GCounter,
}

/// A PN-Counter operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PnCounterOp {
    /// The node's increment total.
    Increment(GCounterOp),
    /// The node's decrement total.
    Decrement(GCounterOp),
}

impl PnCounter {
    /// A zero counter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `node`.
    pub fn increment(&mut self, node: NodeId, by: u64) -> Result<PnCounterOp, CrdtError> {
        self.increments.increment(node, by).map(PnCounterOp::Increment)
    }

    /// Subtracts `by` on behalf of `node`.
    pub fn decrement(&mut self, node: NodeId, by: u64) -> Result<PnCounterOp, CrdtError> {
        self.decrements.increment(node, by).map(PnCounterOp::Decrement)
    }

    /// Increments minus decrements. Each side is a sum of at most 2^32 u64 counts (the
    /// vector clock bound), far inside i128.
    #[must_use]
    pub fn value(&self) -> i128 {
        self.increments.value().cast_signed() - self.decrements.value().cast_signed()
    }
}

impl Crdt for PnCounter {
    type Op = PnCounterOp;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        self.increments.merge(&other.increments)?;
        self.decrements.merge(&other.decrements)
    }

    fn apply(&mut self, op: PnCounterOp) -> Result<(), CrdtError> {
        match op {
            PnCounterOp::Increment(op) => self.increments.apply(op),
            PnCounterOp::Decrement(op) => self.decrements.apply(op),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_overflow_is_an_error() {
        let (mut a, mut b) = (PnCounter::new(), PnCounter::new());
        a.increment(NodeId(1), 5).unwrap();
        b.decrement(NodeId(2), 7).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.value(), -2);

        let mut g = GCounter::new();
        g.increment(NodeId(1), u64::MAX).unwrap();
        assert_eq!(g.increment(NodeId(1), 1), Err(CrdtError::CounterOverflow { node: NodeId(1) }));
        g.increment(NodeId(2), u64::MAX).unwrap();
        assert_eq!(g.value(), 2 * u128::from(u64::MAX));
    }
}
