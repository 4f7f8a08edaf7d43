//! Dots and causal contexts: the bookkeeping that lets the observed-remove types tell
//! "removed" from "never seen" (Almeida, Shoker, Baquero, "Delta state replicated data
//! types", 2018, section 5).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use themis_clock::{NodeId, VectorClock};

use crate::error::CrdtError;

/// One event: the `counter`-th event of `node`. Each add or write is tagged with a fresh dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that made the event.
    pub node: NodeId,
    /// Its sequence number on that node, from 1.
    pub counter: u64,
}

/// The set of dots a replica has seen: a version vector for the contiguous prefix per node,
/// plus a "cloud" of dots seen out of order. Kept compact: a cloud dot never sits at or
/// directly after its node's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "ContextRepr", into = "ContextRepr")]
pub struct CausalContext {
    clock: VectorClock,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// An empty context.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the context has seen `dot`.
    #[must_use]
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.clock.get(dot.node) || self.cloud.contains(&dot)
    }

    /// The contiguous prefix seen per node.
    #[must_use]
    pub fn clock(&self) -> &VectorClock {
        &self.clock
    }

    /// The next dot of `node`. A replica only mints dots for itself, and its own dots are
    /// always contiguous, so the next one follows the prefix.
    pub(crate) fn next_dot(&self, node: NodeId) -> Result<Dot, CrdtError> {
        let counter = self.clock.get(node).checked_add(1).ok_or(CrdtError::CounterOverflow { node })?;
        Ok(Dot { node, counter })
    }

    /// Records `dot` as seen.
    pub(crate) fn insert(&mut self, dot: Dot) -> Result<(), CrdtError> {
        if self.contains(dot) {
            return Ok(());
        }
        if dot.counter == self.clock.get(dot.node) + 1 {
            self.clock.raise(dot.node, dot.counter)?;
            self.compact()
        } else {
            self.cloud.insert(dot);
            Ok(())
        }
    }

    /// Records every dot `other` has seen.
    pub(crate) fn merge(&mut self, other: &CausalContext) -> Result<(), CrdtError> {
        self.clock.merge(&other.clock)?;
        self.cloud.extend(other.cloud.iter().copied());
        self.compact()
    }

    /// Moves cloud dots that now extend a prefix into the version vector. The cloud is
    /// sorted by (node, counter), so one ascending pass sees each node's dots in order.
    fn compact(&mut self) -> Result<(), CrdtError> {
        let mut failure = None;
        let clock = &mut self.clock;
        self.cloud.retain(|dot| {
            let have = clock.get(dot.node);
            if dot.counter <= have {
                false
            } else if dot.counter == have + 1 {
                if let Err(err) = clock.raise(dot.node, dot.counter) {
                    failure = Some(err);
                    return true;
                }
                false
            } else {
                true
            }
        });
        failure.map_or(Ok(()), |err| Err(err.into()))
    }
}

/// What a replica had seen when it was read. An observed-remove needs one: it removes
/// exactly what the reader saw, so an add the reader did not see survives (add-wins).
///
/// Only a read creates one (`OrSet::read`, `OrMap::read`), or decoding one that a read
/// produced and a client sent back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadContext {
    pub(crate) seen: CausalContext,
}

impl ReadContext {
    /// The dots of `live` that the read saw: what an observed-remove deletes.
    pub(crate) fn observed(&self, live: &[Dot]) -> Vec<Dot> {
        live.iter().copied().filter(|d| self.seen.contains(*d)).collect()
    }
}

/// Applies an add of `dot` replacing `replaces` to one key's live dots (sorted): the
/// delta merge of `{key: [dot]}` with context `replaces + dot`. `seen` is the context
/// *before* the add is recorded; a dot already seen is a duplicate or was superseded, so
/// it is not re-inserted.
pub(crate) fn add_dot(live: &mut Vec<Dot>, seen: &CausalContext, dot: Dot, replaces: &[Dot]) {
    live.retain(|d| *d == dot || !replaces.contains(d));
    if !seen.contains(dot) {
        let at = live.partition_point(|d| *d < dot);
        live.insert(at, dot);
    }
}

/// The causal merge of one key's dots (the "dot store" join): a dot survives if both sides
/// have it, or if one side has it and the other has not seen it (so has not removed it).
pub(crate) fn merge_dots(
    ours: &[Dot],
    ours_seen: &CausalContext,
    theirs: &[Dot],
    theirs_seen: &CausalContext,
) -> Vec<Dot> {
    let mut out: Vec<Dot> = ours
        .iter()
        .copied()
        .filter(|d| theirs.contains(d) || !theirs_seen.contains(*d))
        .chain(theirs.iter().copied().filter(|d| !ours.contains(d) && !ours_seen.contains(*d)))
        .collect();
    out.sort_unstable();
    out
}

/// Checks that a decoded dot list is sorted, unique, and seen by its context.
pub(crate) fn check_dots(what: &'static str, dots: &[Dot], seen: &CausalContext) -> Result<(), CrdtError> {
    let invalid = |reason: String| CrdtError::InvalidState { what, reason };
    if !dots.windows(2).all(|w| w[0] < w[1]) {
        return Err(invalid(format!("dots {dots:?} are not strictly increasing")));
    }
    if let Some(dot) = dots.iter().find(|d| d.counter == 0 || !seen.contains(**d)) {
        return Err(invalid(format!("dot {dot:?} is zero or missing from the causal context")));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct ContextRepr {
    clock: VectorClock,
    cloud: Vec<Dot>,
}

impl TryFrom<ContextRepr> for CausalContext {
    type Error = CrdtError;

    fn try_from(repr: ContextRepr) -> Result<Self, CrdtError> {
        let invalid = |reason: String| CrdtError::InvalidState { what: "causal context", reason };
        if !repr.cloud.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("cloud dots are not strictly increasing".into()));
        }
        if let Some(dot) = repr.cloud.iter().find(|d| d.counter <= repr.clock.get(d.node) + 1) {
            return Err(invalid(format!("cloud dot {dot:?} belongs in the version vector (not compact)")));
        }
        Ok(CausalContext { clock: repr.clock, cloud: repr.cloud.into_iter().collect() })
    }
}

impl From<CausalContext> for ContextRepr {
    fn from(ctx: CausalContext) -> Self {
        ContextRepr { clock: ctx.clock, cloud: ctx.cloud.into_iter().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(node: u64, counter: u64) -> Dot {
        Dot { node: NodeId(node), counter }
    }

    #[test]
    fn out_of_order_dots_compact_into_the_prefix() {
        let mut ctx = CausalContext::new();
        ctx.insert(dot(1, 3)).unwrap();
        ctx.insert(dot(1, 2)).unwrap();
        assert!(ctx.contains(dot(1, 3)) && !ctx.contains(dot(1, 1)));
        ctx.insert(dot(1, 1)).unwrap();
        assert_eq!(ctx.clock().get(NodeId(1)), 3);
        assert!(ctx.cloud.is_empty());
    }

    #[test]
    fn non_compact_encodings_are_rejected() {
        let mut clock = VectorClock::new();
        clock.raise(NodeId(1), 2).unwrap();
        let repr = ContextRepr { clock, cloud: vec![dot(1, 3)] };
        let json = serde_json::to_string(&repr).unwrap();
        let err = serde_json::from_str::<CausalContext>(&json).unwrap_err().to_string();
        assert!(err.contains("not compact"), "{err}");
    }
}
