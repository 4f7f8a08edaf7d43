//! Multi-value register.

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;

use crate::Crdt;
use crate::causal::{CausalContext, Dot, check_dots};
use crate::error::CrdtError;

/// A register that keeps every concurrent write: a write replaces the values its replica
/// has seen, and concurrent writes survive side by side as siblings (as Riak does) until a
/// later write that has seen them all replaces them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MvRepr<T>", into = "MvRepr<T>")]
#[serde(bound(serialize = "T: Clone + Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct MvRegister<T> {
    /// Sorted by dot.
    values: Vec<(Dot, T)>,
    seen: CausalContext,
}

/// A write to an MV-Register: its dot and value, and the dots it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvOp<T> {
    /// The write's own dot.
    pub dot: Dot,
    /// The written value.
    pub value: T,
    /// The dots of the values the writer had seen, which this write replaces.
    pub replaces: Vec<Dot>,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        MvRegister { values: Vec::new(), seen: CausalContext::new() }
    }
}

impl<T: Clone> MvRegister<T> {
    /// An empty register.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` on behalf of `node`, replacing every value seen here.
    pub fn write(&mut self, node: NodeId, value: T) -> Result<MvOp<T>, CrdtError> {
        let op = MvOp {
            dot: self.seen.next_dot(node)?,
            value,
            replaces: self.values.iter().map(|(d, _)| *d).collect(),
        };
        self.apply_op(op.clone())?;
        Ok(op)
    }

    /// The current values: one, or several concurrent siblings (empty before any write).
    #[must_use]
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> {
        self.values.iter().map(|(_, v)| v)
    }

    fn apply_op(&mut self, op: MvOp<T>) -> Result<(), CrdtError> {
        self.values.retain(|(d, _)| !op.replaces.contains(d));
        if !self.seen.contains(op.dot) {
            let at = self.values.partition_point(|(d, _)| *d < op.dot);
            self.values.insert(at, (op.dot, op.value));
        }
        self.seen.insert(op.dot)?;
        op.replaces.into_iter().try_for_each(|d| self.seen.insert(d))
    }
}

impl<T: Clone + PartialEq> Crdt for MvRegister<T> {
    type Op = MvOp<T>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let mut merged: Vec<(Dot, T)> = self
            .values
            .iter()
            .filter(|(d, _)| other.values.iter().any(|(o, _)| o == d) || !other.seen.contains(*d))
            .cloned()
            .collect();
        for (dot, value) in &other.values {
            if !self.values.iter().any(|(d, _)| d == dot) && !self.seen.contains(*dot) {
                merged.push((*dot, value.clone()));
            }
        }
        merged.sort_by_key(|(d, _)| *d);
        self.seen.merge(&other.seen)?;
        self.values = merged;
        Ok(())
    }

    fn apply(&mut self, op: MvOp<T>) -> Result<(), CrdtError> {
        self.apply_op(op)
    }
}

#[derive(Serialize, Deserialize)]
struct MvRepr<T> {
    values: Vec<(Dot, T)>,
    seen: CausalContext,
}

impl<T> TryFrom<MvRepr<T>> for MvRegister<T> {
    type Error = CrdtError;

    fn try_from(repr: MvRepr<T>) -> Result<Self, CrdtError> {
        let dots: Vec<Dot> = repr.values.iter().map(|(d, _)| *d).collect();
        check_dots("MV-Register", &dots, &repr.seen)?;
        Ok(MvRegister { values: repr.values, seen: repr.seen })
    }
}

impl<T> From<MvRegister<T>> for MvRepr<T> {
    fn from(reg: MvRegister<T>) -> Self {
        MvRepr { values: reg.values, seen: reg.seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_become_siblings_and_a_later_write_replaces_them() {
        let (mut a, mut b) = (MvRegister::new(), MvRegister::new());
        a.write(NodeId(1), "x").unwrap();
        b.write(NodeId(2), "y").unwrap();
        a.merge(&b).unwrap();
        let mut siblings: Vec<_> = a.values().copied().collect();
        siblings.sort_unstable();
        assert_eq!(siblings, ["x", "y"]);
        let op = a.write(NodeId(1), "z").unwrap();
        b.apply(op).unwrap();
        assert_eq!(b.values().copied().collect::<Vec<_>>(), ["z"]);
    }
}
