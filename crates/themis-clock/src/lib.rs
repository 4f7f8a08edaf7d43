//! Time for a replicated system: hybrid logical clocks and vector clocks.
//!
//! Every timestamp in Themis replication is a [`Timestamp`] issued by an [`Hlc`]: physical
//! milliseconds plus a logical counter, tie-broken by node id, so timestamps are totally
//! ordered across the cluster, stay close to wall-clock time, and respect causality
//! (a message is received after it was sent). Physical time comes through the
//! [`PhysicalClock`] trait, so tests and the simulator run on a [`ManualClock`].
//!
//! [`VectorClock`] tracks causality exactly where it matters more than a total order:
//! detecting concurrent writes between replicas.
//!
//! ```
//! use std::time::Duration;
//! use themis_clock::{CausalOrder, ClockError, Hlc, ManualClock, NodeId, VectorClock};
//!
//! // Two nodes share a simulated wall clock.
//! let wall = ManualClock::new(1_700_000_000_000);
//! let leader = Hlc::with_clock(NodeId(1), wall.clone());
//! let follower = Hlc::with_clock(NodeId(2), wall.clone()).with_max_offset(Duration::from_millis(500))?;
//!
//! // Stamp a write on the leader and ship it; the follower's receive is ordered after it.
//! let write = leader.now();
//! let applied = follower.update(write)?;
//! assert!(applied > write);
//!
//! // A peer whose clock runs far ahead is refused instead of dragging ours along.
//! let rogue = themis_clock::Timestamp::from_parts(1_700_000_001_000, 0, NodeId(3))?;
//! assert!(matches!(follower.update(rogue), Err(ClockError::Skew { ahead_ms: 1_000, .. })));
//!
//! // Vector clocks tell concurrent updates apart.
//! let (mut a, mut b) = (VectorClock::new(), VectorClock::new());
//! a.increment(NodeId(1))?;
//! b.increment(NodeId(2))?;
//! assert_eq!(a.compare(&b), CausalOrder::Concurrent);
//! # Ok::<(), ClockError>(())
//! ```

mod error;
mod hlc;
mod physical;
mod timestamp;
mod vector;

pub use error::ClockError;
pub use hlc::{DEFAULT_MAX_OFFSET, Hlc, MAX_OFFSET_LIMIT};
pub use physical::{ManualClock, PhysicalClock, SystemClock};
pub use timestamp::{LOGICAL_BITS, MAX_PHYSICAL_MS, NodeId, Timestamp};
pub use vector::{CausalOrder, DEFAULT_MAX_ENTRIES, VectorClock};
