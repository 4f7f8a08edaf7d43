//! Deliberate bugs for the simulator's self-test (feature `mutation`). A test selects one
//! for its own thread; every other thread runs the correct rules.

use std::cell::Cell;

/// A broken rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A granted vote counts as two voters (breaks election safety, Raft §5.2).
    DoubleCountVote,
    /// The leader's lease lasts three election timeouts, past the voters' promise not to
    /// elect anyone else (breaks lease safety).
    LeaseOutlivesElection,
}

thread_local! {
    static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
}

/// Selects `mutation` for this thread (`None` restores the correct rules).
pub fn set(mutation: Option<Mutation>) {
    ACTIVE.with(|active| active.set(mutation));
}

pub(crate) fn active(mutation: Mutation) -> bool {
    ACTIVE.with(|active| active.get() == Some(mutation))
}
