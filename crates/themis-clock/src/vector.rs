//! Vector clocks: causality between replicas without physical time.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::ClockError;
use crate::timestamp::NodeId;

/// Default bound on the number of nodes a [`VectorClock`] tracks.
pub const DEFAULT_MAX_ENTRIES: usize = 256;

/// How two vector clocks relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CausalOrder {
    /// The left clock happened before the right one.
    Before,
    /// The left clock happened after the right one.
    After,
    /// Both clocks saw exactly the same events.
    Equal,
    /// Neither saw all of the other's events.
    Concurrent,
}

/// A vector clock: one event counter per node.
///
/// Stored as a vector of `(node, counter)` pairs sorted by node, holding only non-zero
/// counters, so a clock over a few nodes is a few words and comparison is one linear merge
/// walk without hashing. The number of entries is bounded; growing past the bound is an
/// error, never an allocation without limit.
///
/// ```
/// use themis_clock::{CausalOrder, NodeId, VectorClock};
///
/// let mut a = VectorClock::new();
/// a.increment(NodeId(1))?;
/// let mut b = a.clone();
/// b.increment(NodeId(2))?;
/// assert_eq!(a.compare(&b), CausalOrder::Before);
///
/// a.increment(NodeId(1))?;
/// assert_eq!(a.compare(&b), CausalOrder::Concurrent);
///
/// a.merge(&b)?;
/// assert_eq!(a.compare(&b), CausalOrder::After);
/// assert_eq!((a.get(NodeId(1)), a.get(NodeId(2))), (2, 1));
/// # Ok::<(), themis_clock::ClockError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub struct VectorClock {
    entries: Vec<(NodeId, u64)>,
    max_entries: usize,
}

impl VectorClock {
    /// An empty clock holding at most [`DEFAULT_MAX_ENTRIES`] nodes.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// An empty clock holding at most `max_entries` nodes.
    #[must_use]
    pub fn with_max_entries(max_entries: usize) -> Self {
        VectorClock { entries: Vec::new(), max_entries }
    }

    /// The configured bound on entries.
    #[must_use]
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Number of nodes with a non-zero counter.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node has a non-zero counter.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter of `node`; zero when the clock has not seen it.
    #[must_use]
    pub fn get(&self, node: NodeId) -> u64 {
        match self.entries.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(at) => self.entries[at].1,
            Err(_) => 0,
        }
    }

    /// The `(node, counter)` pairs in node order.
    #[must_use]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Records an event on `node` and returns its new counter.
    pub fn increment(&mut self, node: NodeId) -> Result<u64, ClockError> {
        match self.entries.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(at) => {
                let counter = &mut self.entries[at].1;
                *counter = counter.checked_add(1).ok_or(ClockError::CounterOverflow { node })?;
                Ok(*counter)
            }
            Err(at) => {
                if self.entries.len() >= self.max_entries {
                    return Err(ClockError::TooManyEntries {
                        max_entries: self.max_entries,
                        attempted: self.entries.len() + 1,
                    });
                }
                self.entries.insert(at, (node, 1));
                Ok(1)
            }
        }
    }

    /// Raises the counter of `node` to at least `counter` (a no-op if it is already there)
    /// and returns the counter after the call. This is a one-entry [`merge`](Self::merge).
    pub fn raise(&mut self, node: NodeId, counter: u64) -> Result<u64, ClockError> {
        match self.entries.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(at) => {
                let current = &mut self.entries[at].1;
                *current = (*current).max(counter);
                Ok(*current)
            }
            Err(_) if counter == 0 => Ok(0),
            Err(at) => {
                if self.entries.len() >= self.max_entries {
                    return Err(ClockError::TooManyEntries {
                        max_entries: self.max_entries,
                        attempted: self.entries.len() + 1,
                    });
                }
                self.entries.insert(at, (node, counter));
                Ok(counter)
            }
        }
    }

    /// Takes the pointwise maximum with `other`. If the result would exceed this clock's
    /// bound, returns [`ClockError::TooManyEntries`] and leaves the clock unchanged.
    pub fn merge(&mut self, other: &VectorClock) -> Result<(), ClockError> {
        // Fast path: other's nodes are a subset of ours, so the result has our shape.
        if self.merge_in_place(other) {
            return Ok(());
        }
        let mut merged = Vec::with_capacity(self.entries.len() + other.entries.len());
        let (mut left, mut right) = (self.entries.iter().peekable(), other.entries.iter().peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(&&(ln, lc)), Some(&&(rn, rc))) => match ln.cmp(&rn) {
                    Ordering::Less => {
                        left.next();
                        (ln, lc)
                    }
                    Ordering::Greater => {
                        right.next();
                        (rn, rc)
                    }
                    Ordering::Equal => {
                        left.next();
                        right.next();
                        (ln, lc.max(rc))
                    }
                },
                (Some(&&entry), None) => {
                    left.next();
                    entry
                }
                (None, Some(&&entry)) => {
                    right.next();
                    entry
                }
                (None, None) => break,
            };
            merged.push(next);
        }
        if merged.len() > self.max_entries {
            return Err(ClockError::TooManyEntries {
                max_entries: self.max_entries,
                attempted: merged.len(),
            });
        }
        self.entries = merged;
        Ok(())
    }

    /// Merges without allocating when every node of `other` is already present.
    /// Returns false, having changed nothing, otherwise.
    fn merge_in_place(&mut self, other: &VectorClock) -> bool {
        if other.entries.len() > self.entries.len() {
            return false;
        }
        let mut mine = self.entries.iter();
        let covered = other.entries.iter().all(|&(node, _)| mine.any(|&(n, _)| n == node));
        if !covered {
            return false;
        }
        let mut mine = self.entries.iter_mut();
        for &(node, counter) in &other.entries {
            // Every node of `other` was found above, in order, so this finds it again.
            if let Some(entry) = mine.find(|(n, _)| *n == node) {
                entry.1 = entry.1.max(counter);
            }
        }
        true
    }

    /// How this clock relates to `other`.
    #[must_use]
    pub fn compare(&self, other: &VectorClock) -> CausalOrder {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() && j < b.len() {
            let ((an, ac), (bn, bc)) = (a[i], b[j]);
            match an.cmp(&bn) {
                // A node only `self` has a (non-zero) counter for.
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match ac.cmp(&bc) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return CausalOrder::Concurrent;
            }
        }
        greater |= i < a.len();
        less |= j < b.len();
        match (less, greater) {
            (false, false) => CausalOrder::Equal,
            (true, false) => CausalOrder::Before,
            (false, true) => CausalOrder::After,
            (true, true) => CausalOrder::Concurrent,
        }
    }
}

impl Default for VectorClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Clocks are equal when they record the same events; the configured bound is not part
/// of a clock's value.
impl PartialEq for VectorClock {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for VectorClock {}

/// The causal partial order: `None` for concurrent clocks.
impl PartialOrd for VectorClock {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            CausalOrder::Before => Some(Ordering::Less),
            CausalOrder::After => Some(Ordering::Greater),
            CausalOrder::Equal => Some(Ordering::Equal),
            CausalOrder::Concurrent => None,
        }
    }
}

/// The serialized form. Decoding checks every invariant the in-memory form relies on.
#[derive(Serialize, Deserialize)]
struct Repr {
    max_entries: u32,
    entries: Vec<(NodeId, u64)>,
}

impl TryFrom<Repr> for VectorClock {
    type Error = ClockError;

    fn try_from(repr: Repr) -> Result<Self, ClockError> {
        let max_entries = repr.max_entries as usize;
        if repr.entries.len() > max_entries {
            return Err(ClockError::TooManyEntries { max_entries, attempted: repr.entries.len() });
        }
        for (at, pair) in repr.entries.windows(2).enumerate() {
            if pair[0].0 >= pair[1].0 {
                return Err(ClockError::InvalidVectorClock {
                    reason: format!(
                        "entry {} (node {}) does not follow node {} in strictly increasing order",
                        at + 1,
                        pair[1].0,
                        pair[0].0
                    ),
                });
            }
        }
        if let Some((at, (node, _))) = repr.entries.iter().enumerate().find(|(_, (_, counter))| *counter == 0)
        {
            return Err(ClockError::InvalidVectorClock {
                reason: format!("entry {at} (node {node}) has a zero counter, which is stored as absence"),
            });
        }
        Ok(VectorClock { entries: repr.entries, max_entries })
    }
}

impl From<VectorClock> for Repr {
    fn from(clock: VectorClock) -> Self {
        Repr { max_entries: u32::try_from(clock.max_entries).unwrap_or(u32::MAX), entries: clock.entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(entries: &[(u64, u64)]) -> VectorClock {
        let mut clock = VectorClock::new();
        for &(node, count) in entries {
            for _ in 0..count {
                clock.increment(NodeId(node)).unwrap();
            }
        }
        clock
    }

    #[test]
    fn compare_covers_every_relation() {
        let a = clock(&[(1, 1), (2, 1)]);
        assert_eq!(a.compare(&a.clone()), CausalOrder::Equal);
        assert_eq!(a.compare(&clock(&[(1, 1), (2, 2)])), CausalOrder::Before);
        assert_eq!(a.compare(&clock(&[(1, 1)])), CausalOrder::After);
        assert_eq!(a.compare(&clock(&[(1, 1), (2, 1), (3, 1)])), CausalOrder::Before);
        assert_eq!(a.compare(&clock(&[(2, 2)])), CausalOrder::Concurrent);
        assert_eq!(a.compare(&clock(&[(0, 1), (1, 1)])), CausalOrder::Concurrent);
        assert_eq!(VectorClock::new().compare(&VectorClock::new()), CausalOrder::Equal);
        assert_eq!(a.partial_cmp(&clock(&[(3, 1)])), None);
    }

    #[test]
    fn increment_beyond_the_bound_fails_and_keeps_the_clock() {
        let mut c = VectorClock::with_max_entries(2);
        c.increment(NodeId(1)).unwrap();
        c.increment(NodeId(2)).unwrap();
        assert_eq!(c.increment(NodeId(2)).unwrap(), 2);
        assert_eq!(c.increment(NodeId(3)), Err(ClockError::TooManyEntries { max_entries: 2, attempted: 3 }));
        assert_eq!(c, clock(&[(1, 1), (2, 2)]));
    }

    #[test]
    fn raise_only_moves_forwards_and_respects_the_bound() {
        let mut c = VectorClock::with_max_entries(1);
        assert_eq!(c.raise(NodeId(1), 0), Ok(0));
        assert!(c.is_empty(), "a zero counter is absence");
        assert_eq!(c.raise(NodeId(1), 5), Ok(5));
        assert_eq!(c.raise(NodeId(1), 3), Ok(5));
        assert_eq!(c.raise(NodeId(2), 1), Err(ClockError::TooManyEntries { max_entries: 1, attempted: 2 }));
        assert_eq!(c, clock(&[(1, 5)]));
    }

    #[test]
    fn merge_beyond_the_bound_fails_and_keeps_the_clock() {
        let mut small = VectorClock::with_max_entries(2);
        small.increment(NodeId(1)).unwrap();
        let before = small.clone();
        let err = small.merge(&clock(&[(2, 1), (3, 1)])).unwrap_err();
        assert_eq!(err, ClockError::TooManyEntries { max_entries: 2, attempted: 3 });
        assert_eq!(small, before);
    }

    #[test]
    fn merge_in_place_and_with_new_nodes_agree() {
        let mut a = clock(&[(1, 3), (2, 1), (5, 2)]);
        a.merge(&clock(&[(2, 4), (5, 1)])).unwrap();
        assert_eq!(a, clock(&[(1, 3), (2, 4), (5, 2)]));
        a.merge(&clock(&[(0, 1), (3, 2), (9, 9)])).unwrap();
        assert_eq!(a, clock(&[(0, 1), (1, 3), (2, 4), (3, 2), (5, 2), (9, 9)]));
    }

    #[test]
    fn counter_overflow_is_an_error() {
        let mut c: VectorClock = postcard::from_bytes(
            &postcard::to_stdvec(&Repr { max_entries: 4, entries: vec![(NodeId(1), u64::MAX)] }).unwrap(),
        )
        .unwrap();
        assert_eq!(c.increment(NodeId(1)), Err(ClockError::CounterOverflow { node: NodeId(1) }));
        assert_eq!(c.get(NodeId(1)), u64::MAX);
    }

    #[test]
    fn decoding_rejects_broken_invariants() {
        let repr = |max_entries, entries: Vec<(u64, u64)>| Repr {
            max_entries,
            entries: entries.into_iter().map(|(n, c)| (NodeId(n), c)).collect(),
        };
        let valid = repr(4, vec![(1, 1), (2, 5)]);
        assert!(postcard::from_bytes::<VectorClock>(&postcard::to_stdvec(&valid).unwrap()).is_ok());
        for (max, entries, expected) in [
            (1, vec![(1, 1), (2, 1)], "above its maximum of 1"),
            (4, vec![(2, 1), (1, 1)], "entry 1 (node 1) does not follow node 2"),
            (4, vec![(1, 1), (1, 2)], "does not follow node 1"),
            (4, vec![(1, 1), (2, 0)], "entry 1 (node 2) has a zero counter"),
        ] {
            let bad = repr(max, entries);
            // postcard reports a bare "deserialization error"; the typed reason is what a
            // self-describing format (and `TryFrom`) carries.
            assert!(postcard::from_bytes::<VectorClock>(&postcard::to_stdvec(&bad).unwrap()).is_err());
            let json = serde_json::to_string(&bad).unwrap();
            let err = serde_json::from_str::<VectorClock>(&json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let truncated = postcard::to_stdvec(&clock(&[(1, 1), (2, 1)])).unwrap();
        assert!(postcard::from_bytes::<VectorClock>(&truncated[..truncated.len() - 1]).is_err());
    }

    #[test]
    fn encoding_is_compact() {
        let c = clock(&[(1, 3), (2, 200), (3, 1)]);
        let bytes = postcard::to_stdvec(&c).unwrap();
        // max_entries varint (2) + length (1) + three pairs of small varints (2 + 3 + 2).
        assert_eq!(bytes.len(), 10);
        assert_eq!(postcard::from_bytes::<VectorClock>(&bytes).unwrap(), c);
    }
}
