//! Conflict-free replicated data types, and conflict resolution that never silently loses
//! a write.
//!
//! Every type offers a state-based [`Crdt::merge`] and an operation-based [`Crdt::apply`].
//! An operation is the delta-state of one change, so applying operations is as forgiving
//! as merging states: replicas that receive the same operations, in any order and with
//! duplicates, converge. Property tests check the laws for every type.
//!
//! The type system rules out the common mistakes: an [`LwwRegister`] takes HLC
//! [`Timestamp`](themis_clock::Timestamp)s, not integers; an [`OrSet`] remove needs the
//! [`ReadContext`] a read returned; `merge` only accepts the same type.
//!
//! ```
//! use themis_clock::NodeId;
//! use themis_crdt::{Crdt, GCounter, OrSet};
//!
//! // Two replicas count independently and converge by merging.
//! let (mut a, mut b) = (GCounter::new(), GCounter::new());
//! a.increment(NodeId(1), 3)?;
//! let op = b.increment(NodeId(2), 4)?;
//! a.apply(op)?; // or a.merge(&b)
//! assert_eq!(a.value(), 7);
//!
//! // An observed-remove set: the remove needs what a read saw, so a concurrent add wins.
//! let mut left = OrSet::new();
//! left.add(NodeId(1), "apple")?;
//! let mut right = left.clone();
//! let seen = right.read();
//! right.remove(&"apple", &seen)?;
//! left.add(NodeId(1), "apple")?; // concurrent re-add
//! right.merge(&left)?;
//! assert!(right.contains(&"apple"));
//! # Ok::<(), themis_crdt::CrdtError>(())
//! ```
//!
//! [`ConflictResolver`] picks a strategy per collection (last-writer-wins, first-writer-wins,
//! CRDT merge, keep-both siblings, or a custom resolver) and appends a [`ConflictRecord`] for
//! every conflict to a bounded [`AuditLog`] with an optional durable [`AuditSink`].

mod audit;
mod causal;
mod counter;
mod error;
mod lww;
mod mvreg;
mod ormap;
mod orset;
mod resolver;

pub use audit::{AuditLog, AuditSink, ConflictRecord, LOSER_VALUE_INLINE_MAX_BYTES, LostValue, Outcome};
pub use causal::{CausalContext, Dot, ReadContext};
pub use counter::{GCounter, GCounterOp, PnCounter, PnCounterOp};
pub use error::CrdtError;
pub use lww::{LwwOp, LwwRegister};
pub use mvreg::{MvOp, MvRegister};
pub use ormap::{OrMap, OrMapOp};
pub use orset::{OrSet, OrSetOp};
pub use resolver::{
    ConflictResolver, CrdtKind, CustomResolver, Resolution, ResolverConfig, Strategy, StrategyConfig, Version,
};

/// A conflict-free replicated data type.
///
/// Laws (checked by property tests for every implementation): `merge` is commutative,
/// associative and idempotent; applying the same operations in any order, with
/// duplicates, gives equal states.
pub trait Crdt: Clone + PartialEq + Default {
    /// An operation: the delta of one change, shipped to other replicas.
    type Op: Clone;

    /// Merges another replica's state into this one.
    fn merge(&mut self, other: &Self) -> Result<(), CrdtError>;

    /// Applies an operation from any replica (including this one, again).
    fn apply(&mut self, op: Self::Op) -> Result<(), CrdtError>;
}
