//! Observed-remove set (add-wins).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;

use crate::Crdt;
use crate::causal::{CausalContext, Dot, ReadContext, add_dot, check_dots, merge_dots};
use crate::error::CrdtError;

/// An add-wins observed-remove set.
///
/// Every add tags its element with a fresh dot; a remove deletes only the dots its reader
/// had seen, which it proves by passing the [`ReadContext`] a read returned. An add that
/// the remover had not seen, concurrent or later, keeps the element (add wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OrSetRepr<T>", into = "OrSetRepr<T>")]
#[serde(bound(serialize = "T: Ord + Clone + Serialize", deserialize = "T: Ord + Deserialize<'de>"))]
pub struct OrSet<T: Ord> {
    /// Element to its live dots (sorted, never empty).
    entries: BTreeMap<T, Vec<Dot>>,
    seen: CausalContext,
}

/// An OR-Set operation. Each is the delta-state of the change, so applying one is a
/// merge: duplicates and any delivery order converge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrSetOp<T> {
    /// `element` was added with `dot`, replacing the dots of it the adder had seen.
    Add {
        /// The element.
        element: T,
        /// The add's dot.
        dot: Dot,
        /// Earlier dots of the element, now superseded.
        replaces: Vec<Dot>,
    },
    /// The dots of `element` that the remover had seen were removed.
    Remove {
        /// The element.
        element: T,
        /// The removed dots.
        dots: Vec<Dot>,
    },
}

impl<T: Ord> Default for OrSet<T> {
    fn default() -> Self {
        OrSet { entries: BTreeMap::new(), seen: CausalContext::new() }
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` on behalf of `node`.
    pub fn add(&mut self, node: NodeId, element: T) -> Result<OrSetOp<T>, CrdtError> {
        let dot = self.seen.next_dot(node)?;
        let replaces = self.entries.get(&element).cloned().unwrap_or_default();
        let op = OrSetOp::Add { element, dot, replaces };
        self.apply_op(op.clone())?;
        Ok(op)
    }

    /// Removes the occurrences of `element` that `read` saw. Returns `None` if there were
    /// none (nothing to ship).
    pub fn remove(&mut self, element: &T, read: &ReadContext) -> Result<Option<OrSetOp<T>>, CrdtError> {
        let Some(live) = self.entries.get(element) else { return Ok(None) };
        let dots = read.observed(live);
        if dots.is_empty() {
            return Ok(None);
        }
        let op = OrSetOp::Remove { element: element.clone(), dots };
        self.apply_op(op.clone())?;
        Ok(Some(op))
    }

    /// What this replica has seen, to pass to a later [`OrSet::remove`].
    #[must_use]
    pub fn read(&self) -> ReadContext {
        ReadContext { seen: self.seen.clone() }
    }

    /// Whether `element` is in the set.
    #[must_use]
    pub fn contains(&self, element: &T) -> bool {
        self.entries.contains_key(element)
    }

    /// The elements, in order.
    #[must_use]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.entries.keys()
    }

    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies an op in O(log n). It touches only `element`'s entry because a dot tags
    /// exactly one element, so the delta's context names no other element's dots.
    fn apply_op(&mut self, op: OrSetOp<T>) -> Result<(), CrdtError> {
        match op {
            OrSetOp::Add { element, dot, replaces } => {
                let live = self.entries.entry(element.clone()).or_default();
                add_dot(live, &self.seen, dot, &replaces);
                if live.is_empty() {
                    // A stale add (its dot already seen and replaced): the element's last
                    // live dots were the ones it replaces.
                    self.entries.remove(&element);
                }
                self.seen.insert(dot)?;
                replaces.into_iter().try_for_each(|d| self.seen.insert(d))?;
            }
            OrSetOp::Remove { element, dots } => {
                if let Some(live) = self.entries.get_mut(&element) {
                    live.retain(|d| !dots.contains(d));
                    if live.is_empty() {
                        self.entries.remove(&element);
                    }
                }
                dots.into_iter().try_for_each(|d| self.seen.insert(d))?;
            }
        }
        Ok(())
    }
}

impl<T: Ord + Clone> Crdt for OrSet<T> {
    type Op = OrSetOp<T>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        let ours = std::mem::take(&mut self.entries);
        let mut merged = BTreeMap::new();
        for (element, theirs) in &other.entries {
            if !ours.contains_key(element) {
                let live: Vec<Dot> = theirs.iter().copied().filter(|d| !self.seen.contains(*d)).collect();
                if !live.is_empty() {
                    merged.insert(element.clone(), live);
                }
            }
        }
        for (element, live) in ours {
            let live = match other.entries.get(&element) {
                Some(theirs) => merge_dots(&live, &self.seen, theirs, &other.seen),
                None => live.into_iter().filter(|d| !other.seen.contains(*d)).collect(),
            };
            if !live.is_empty() {
                merged.insert(element, live);
            }
        }
        self.entries = merged;
        self.seen.merge(&other.seen)
    }

    fn apply(&mut self, op: OrSetOp<T>) -> Result<(), CrdtError> {
        self.apply_op(op)
    }
}

#[derive(Serialize, Deserialize)]
struct OrSetRepr<T> {
    entries: Vec<(T, Vec<Dot>)>,
    seen: CausalContext,
}

impl<T: Ord> TryFrom<OrSetRepr<T>> for OrSet<T> {
    type Error = CrdtError;

    fn try_from(repr: OrSetRepr<T>) -> Result<Self, CrdtError> {
        if !repr.entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(CrdtError::InvalidState {
                what: "OR-Set",
                reason: "elements are not strictly increasing".into(),
            });
        }
        for (_, dots) in &repr.entries {
            if dots.is_empty() {
                return Err(CrdtError::InvalidState {
                    what: "OR-Set",
                    reason: "an element has no dots".into(),
                });
            }
            check_dots("OR-Set", dots, &repr.seen)?;
        }
        Ok(OrSet { entries: repr.entries.into_iter().collect(), seen: repr.seen })
    }
}

impl<T: Ord + Clone> From<OrSet<T>> for OrSetRepr<T> {
    fn from(set: OrSet<T>) -> Self {
        OrSetRepr { entries: set.entries.into_iter().collect(), seen: set.seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrent_add_wins_over_a_remove() {
        let mut a = OrSet::new();
        a.add(NodeId(1), "x").unwrap();
        let mut b = a.clone();
        // b removes what it saw while a adds "x" again concurrently.
        let read = b.read();
        b.remove(&"x", &read).unwrap();
        assert!(!b.contains(&"x"));
        a.add(NodeId(1), "x").unwrap();
        a.merge(&b).unwrap();
        b.merge(&a).unwrap();
        assert!(a.contains(&"x") && b.contains(&"x"));
        assert_eq!(a, b);
    }

    #[test]
    fn a_remove_only_removes_what_its_read_saw() {
        let mut set = OrSet::new();
        set.add(NodeId(1), 7).unwrap();
        let stale = set.read();
        set.add(NodeId(1), 7).unwrap(); // a later add the reader did not see
        assert_eq!(set.remove(&7, &stale).unwrap(), None, "the seen dot was already replaced");
        assert!(set.contains(&7));
        let fresh = set.read();
        assert!(set.remove(&7, &fresh).unwrap().is_some());
        assert!(set.is_empty());
    }

    #[test]
    fn decoding_rejects_dots_outside_the_context() {
        let repr = OrSetRepr {
            entries: vec![(1u8, vec![Dot { node: NodeId(1), counter: 1 }])],
            seen: CausalContext::new(),
        };
        let json = serde_json::to_string(&repr).unwrap();
        let err = serde_json::from_str::<OrSet<u8>>(&json).unwrap_err().to_string();
        assert!(err.contains("missing from the causal context"), "{err}");
    }
}
