//! Observed-remove map of CRDT values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;

use crate::Crdt;
use crate::causal::{CausalContext, Dot, ReadContext, add_dot, check_dots, merge_dots};
use crate::error::CrdtError;

/// A map from keys to CRDT values with add-wins keys.
///
/// A key is present while it has live dots; updating a key adds a dot, removing it deletes
/// the dots its reader saw (an update the remover did not see keeps the key). A key's value
/// is merged by its own CRDT rules and is *retained* when the key is removed: merging
/// values independently of presence keeps `merge` a true join, and means no update is ever
/// lost. A key that is removed and later updated again therefore shows its whole history
/// (a counter continues from its total); use a fresh key when a reset is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OrMapRepr<K, V>", into = "OrMapRepr<K, V>")]
#[serde(bound(
    serialize = "K: Ord + Clone + Serialize, V: Clone + Serialize",
    deserialize = "K: Ord + Deserialize<'de>, V: Deserialize<'de>"
))]
pub struct OrMap<K: Ord, V> {
    /// Key to (live dots, value). Empty dots: the key is removed but its value retained.
    entries: BTreeMap<K, (Vec<Dot>, V)>,
    seen: CausalContext,
}

/// An OR-Map operation; like every op here, the delta of the change, so order and
/// duplicates do not matter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrMapOp<K, O> {
    /// `key` was updated with value operation `op`, under a new dot.
    Update {
        /// The key.
        key: K,
        /// The update's dot.
        dot: Dot,
        /// The key's earlier dots, superseded.
        replaces: Vec<Dot>,
        /// The operation on the value.
        op: O,
    },
    /// The dots of `key` the remover had seen were removed.
    Remove {
        /// The key.
        key: K,
        /// The removed dots.
        dots: Vec<Dot>,
    },
}

/// The wire form of [`OrMap`]: entries as a sequence, so that decoding sees (and rejects)
/// duplicate or unordered keys instead of letting a map silently keep the last one.
#[derive(Serialize, Deserialize)]
struct OrMapRepr<K, V> {
    entries: Vec<(K, (Vec<Dot>, V))>,
    seen: CausalContext,
}

impl<K: Ord, V> TryFrom<OrMapRepr<K, V>> for OrMap<K, V> {
    type Error = CrdtError;

    fn try_from(repr: OrMapRepr<K, V>) -> Result<Self, CrdtError> {
        if !repr.entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(CrdtError::InvalidState {
                what: "OR-Map",
                reason: "keys are not strictly increasing".into(),
            });
        }
        for (_, (dots, _)) in &repr.entries {
            check_dots("OR-Map", dots, &repr.seen)?;
        }
        Ok(OrMap { entries: repr.entries.into_iter().collect(), seen: repr.seen })
    }
}

impl<K: Ord, V> From<OrMap<K, V>> for OrMapRepr<K, V> {
    fn from(map: OrMap<K, V>) -> Self {
        OrMapRepr { entries: map.entries.into_iter().collect(), seen: map.seen }
    }
}

impl<K: Ord, V> Default for OrMap<K, V> {
    fn default() -> Self {
        OrMap { entries: BTreeMap::new(), seen: CausalContext::new() }
    }
}

impl<K: Ord + Clone, V: Crdt> OrMap<K, V> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates the value at `key` on behalf of `node`: `update` changes the value and
    /// returns the value's op, which is shipped inside the map's op.
    pub fn update(
        &mut self,
        node: NodeId,
        key: K,
        update: impl FnOnce(&mut V) -> Result<V::Op, CrdtError>,
    ) -> Result<OrMapOp<K, V::Op>, CrdtError> {
        let dot = self.seen.next_dot(node)?;
        let (live, value) = self.entries.entry(key.clone()).or_insert_with(|| (Vec::new(), V::default()));
        let op = update(value)?;
        let replaces = std::mem::replace(live, vec![dot]);
        self.seen.insert(dot)?;
        Ok(OrMapOp::Update { key, dot, replaces, op })
    }

    /// Removes the presence of `key` that `read` saw. `None` if there was nothing to remove.
    pub fn remove(&mut self, key: &K, read: &ReadContext) -> Result<Option<OrMapOp<K, V::Op>>, CrdtError> {
        let Some((live, _)) = self.entries.get(key) else { return Ok(None) };
        let dots = read.observed(live);
        if dots.is_empty() {
            return Ok(None);
        }
        let op = OrMapOp::Remove { key: key.clone(), dots };
        self.apply(op.clone())?;
        Ok(Some(op))
    }

    /// What this replica has seen, to pass to a later [`OrMap::remove`].
    #[must_use]
    pub fn read(&self) -> ReadContext {
        ReadContext { seen: self.seen.clone() }
    }

    /// The value at `key`, if the key is present.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).filter(|(live, _)| !live.is_empty()).map(|(_, v)| v)
    }

    /// The present keys and their values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().filter(|(_, (live, _))| !live.is_empty()).map(|(k, (_, v))| (k, v))
    }

    /// Number of present keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no key is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Ord + Clone, V: Crdt> Crdt for OrMap<K, V> {
    type Op = OrMapOp<K, V::Op>;

    fn merge(&mut self, other: &Self) -> Result<(), CrdtError> {
        for (key, (theirs, their_value)) in &other.entries {
            if let Some((live, value)) = self.entries.get_mut(key) {
                *live = merge_dots(live, &self.seen, theirs, &other.seen);
                value.merge(their_value)?;
            } else {
                let live = theirs.iter().copied().filter(|d| !self.seen.contains(*d)).collect();
                self.entries.insert(key.clone(), (live, their_value.clone()));
            }
        }
        for (key, (live, _)) in &mut self.entries {
            if !other.entries.contains_key(key) {
                live.retain(|d| !other.seen.contains(*d));
            }
        }
        self.seen.merge(&other.seen)
    }

    fn apply(&mut self, op: Self::Op) -> Result<(), CrdtError> {
        match op {
            OrMapOp::Update { key, dot, replaces, op } => {
                let (live, value) = self.entries.entry(key).or_insert_with(|| (Vec::new(), V::default()));
                add_dot(live, &self.seen, dot, &replaces);
                value.apply(op)?;
                self.seen.insert(dot)?;
                replaces.into_iter().try_for_each(|d| self.seen.insert(d))
            }
            OrMapOp::Remove { key, dots } => {
                if let Some((live, _)) = self.entries.get_mut(&key) {
                    live.retain(|d| !dots.contains(d));
                }
                dots.into_iter().try_for_each(|d| self.seen.insert(d))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GCounter;

    #[test]
    fn concurrent_update_keeps_a_removed_key_and_no_increment_is_lost() {
        let mut a: OrMap<&str, GCounter> = OrMap::new();
        a.update(NodeId(1), "likes", |c| c.increment(NodeId(1), 2)).unwrap();
        let mut b = a.clone();
        let read = b.read();
        b.remove(&"likes", &read).unwrap();
        assert!(b.get(&"likes").is_none());
        a.update(NodeId(1), "likes", |c| c.increment(NodeId(1), 3)).unwrap();
        b.merge(&a).unwrap();
        assert_eq!(b.get(&"likes").map(GCounter::value), Some(5));
    }

    #[test]
    fn decode_round_trips_and_rejects_duplicate_keys_and_unseen_dots() {
        let mut map: OrMap<String, GCounter> = OrMap::new();
        map.update(NodeId(1), "a".to_string(), |c| c.increment(NodeId(1), 1)).unwrap();
        map.update(NodeId(2), "b".to_string(), |c| c.increment(NodeId(2), 4)).unwrap();
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert_eq!(postcard::from_bytes::<OrMap<String, GCounter>>(&bytes).unwrap(), map);

        let repr = |map: &OrMap<String, GCounter>| OrMapRepr::from(map.clone());
        let mut duplicate = repr(&map);
        duplicate.entries[1].0 = "a".to_string();
        let err =
            postcard::from_bytes::<OrMap<String, GCounter>>(&postcard::to_allocvec(&duplicate).unwrap())
                .unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err}");
        assert!(
            OrMap::try_from(duplicate).unwrap_err().to_string().contains("keys are not strictly increasing")
        );

        let mut unseen = repr(&map);
        unseen.entries[0].1.0 = vec![Dot { node: NodeId(7), counter: 1 }];
        let err = OrMap::try_from(unseen).unwrap_err().to_string();
        assert!(err.contains("missing from the causal context"), "{err}");
    }
}
