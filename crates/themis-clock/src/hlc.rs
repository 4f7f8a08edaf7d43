//! The hybrid logical clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ClockError;
use crate::physical::{PhysicalClock, SystemClock};
use crate::timestamp::{LOGICAL_BITS, MAX_PHYSICAL_MS, NodeId, Timestamp};

/// Default bound on how far a received timestamp may lead local physical time.
pub const DEFAULT_MAX_OFFSET: Duration = Duration::from_millis(500);
/// The largest maximum offset accepted. A larger one would let one bad peer push every
/// clock in the cluster a day into the future.
pub const MAX_OFFSET_LIMIT: Duration = Duration::from_hours(24);

/// A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
///
/// Issues timestamps that are strictly increasing on this node, follow physical time when
/// it moves forwards, and never move backwards when it does not. `now()` and `update()` take
/// `&self` and are lock-free: the whole clock state is one atomic word, advanced by
/// compare-and-swap, so one `Hlc` is shared by every thread of a node.
///
/// ```
/// use themis_clock::{Hlc, ManualClock, NodeId};
///
/// let wall = ManualClock::new(1_000);
/// let a = Hlc::with_clock(NodeId(1), wall.clone());
/// let b = Hlc::with_clock(NodeId(2), wall.clone());
///
/// let sent = a.now();
/// wall.set_ms(900); // b's wall clock is behind, or stepped back
/// let received = b.update(sent)?;
/// assert!(received > sent); // the receive happens after the send
/// assert!(b.now() > received); // and b keeps counting from there
/// # Ok::<(), themis_clock::ClockError>(())
/// ```
#[derive(Debug)]
pub struct Hlc<C = SystemClock> {
    /// The last issued time word (`physical_ms << 16 | logical`).
    last: AtomicU64,
    node: NodeId,
    max_offset_ms: u64,
    clock: C,
}

impl Hlc<SystemClock> {
    /// A clock for `node` on the system's wall clock, with the default maximum offset.
    #[must_use]
    pub fn new(node: NodeId) -> Self {
        Hlc::with_clock(node, SystemClock)
    }
}

impl<C: PhysicalClock> Hlc<C> {
    /// A clock for `node` on the given physical clock, with the default maximum offset.
    pub fn with_clock(node: NodeId, clock: C) -> Self {
        Hlc { last: AtomicU64::new(0), node, max_offset_ms: DEFAULT_MAX_OFFSET.as_millis() as u64, clock }
    }

    /// Sets the bound on how far a received timestamp may lead local physical time;
    /// zero or above [`MAX_OFFSET_LIMIT`] is an error.
    pub fn with_max_offset(mut self, max_offset: Duration) -> Result<Self, ClockError> {
        let got_ms = max_offset.as_millis();
        let limit_ms = MAX_OFFSET_LIMIT.as_millis() as u64;
        if got_ms == 0 || got_ms > u128::from(limit_ms) {
            return Err(ClockError::InvalidMaxOffset { got_ms, limit_ms });
        }
        self.max_offset_ms = got_ms as u64;
        Ok(self)
    }

    /// The node this clock stamps.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The configured maximum offset.
    #[must_use]
    pub fn max_offset(&self) -> Duration {
        Duration::from_millis(self.max_offset_ms)
    }

    /// The physical clock underneath.
    #[must_use]
    pub fn physical_clock(&self) -> &C {
        &self.clock
    }

    /// The most recently issued timestamp ([`Timestamp::ZERO`]'s time word before the first).
    #[must_use]
    pub fn last(&self) -> Timestamp {
        Timestamp::from_raw(self.last.load(Ordering::Relaxed), self.node)
    }

    /// A new timestamp for a local or send event, greater than every timestamp this clock
    /// issued or received before.
    #[inline]
    pub fn now(&self) -> Timestamp {
        let physical = physical_word(self.clock.now_ms());
        Timestamp::from_raw(self.advance(|last| physical.max(last.saturating_add(1))), self.node)
    }

    /// Merges a received timestamp and returns the timestamp of the receive event, which is
    /// greater than both `remote` and everything this clock issued before.
    ///
    /// A `remote` whose physical time leads local physical time by more than the maximum
    /// offset is refused with [`ClockError::Skew`] and leaves the clock unchanged.
    pub fn update(&self, remote: Timestamp) -> Result<Timestamp, ClockError> {
        let local_physical_ms = self.clock.now_ms();
        let ahead_ms = remote.physical_ms().saturating_sub(local_physical_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(ClockError::Skew {
                remote,
                local_physical_ms,
                ahead_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        let floor = physical_word(local_physical_ms).max(remote.raw_time().saturating_add(1));
        Ok(Timestamp::from_raw(self.advance(|last| floor.max(last.saturating_add(1))), self.node))
    }

    /// Atomically replaces the last time word with `next(last)` and returns the new word.
    ///
    /// Relaxed ordering is enough: the clock's only state is this one word, and every
    /// read-modify-write of a single atomic sees the latest value in its modification order,
    /// so no two calls can return the same word. The timestamp carries no other data that
    /// would need to be published with it.
    #[inline]
    fn advance(&self, next: impl Fn(u64) -> u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let new = next(last);
            match self.last.compare_exchange_weak(last, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return new,
                Err(current) => last = current,
            }
        }
    }
}

/// The time word of a physical reading with a zero counter. Readings past the 48-bit
/// range (after the year 10889) saturate; the counter then carries the clock forwards.
#[inline]
fn physical_word(physical_ms: u64) -> u64 {
    physical_ms.min(MAX_PHYSICAL_MS) << LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn follows_physical_time_with_a_zero_counter() {
        let wall = ManualClock::new(1_000);
        let hlc = Hlc::with_clock(NodeId(1), wall.clone());
        assert_eq!((hlc.now().physical_ms(), hlc.last().logical()), (1_000, 0));
        assert_eq!(hlc.now().logical(), 1);
        wall.advance_ms(1);
        let ts = hlc.now();
        assert_eq!((ts.physical_ms(), ts.logical(), ts.node()), (1_001, 0, NodeId(1)));
    }

    #[test]
    fn stays_monotonic_when_the_wall_clock_steps_back() {
        let wall = ManualClock::new(5_000);
        let hlc = Hlc::with_clock(NodeId(1), wall.clone());
        let before = hlc.now();
        wall.set_ms(10);
        let after = hlc.now();
        assert!(after > before);
        assert_eq!(after.physical_ms(), 5_000);
    }

    #[test]
    fn skew_beyond_the_bound_is_refused_and_changes_nothing() {
        let wall = ManualClock::new(10_000);
        let hlc = Hlc::with_clock(NodeId(1), wall).with_max_offset(Duration::from_millis(500)).unwrap();
        let first = hlc.now();
        let remote = Timestamp::from_parts(10_501, 0, NodeId(2)).unwrap();
        let err = hlc.update(remote).unwrap_err();
        assert_eq!(
            err,
            ClockError::Skew { remote, local_physical_ms: 10_000, ahead_ms: 501, max_offset_ms: 500 }
        );
        let message = err.to_string();
        assert!(message.contains("10501.0@2") && message.contains("10000 ms") && message.contains("500 ms"));
        assert_eq!(hlc.last(), first);

        // Exactly at the bound is accepted.
        let at_bound = Timestamp::from_parts(10_500, 9, NodeId(2)).unwrap();
        let received = hlc.update(at_bound).unwrap();
        assert_eq!((received.physical_ms(), received.logical()), (10_500, 10));
    }

    #[test]
    fn max_offset_is_validated() {
        let make = || Hlc::with_clock(NodeId(1), ManualClock::new(0));
        assert!(matches!(
            make().with_max_offset(Duration::ZERO),
            Err(ClockError::InvalidMaxOffset { got_ms: 0, .. })
        ));
        assert!(matches!(
            make().with_max_offset(Duration::from_micros(999)),
            Err(ClockError::InvalidMaxOffset { got_ms: 0, .. })
        ));
        assert!(make().with_max_offset(MAX_OFFSET_LIMIT + Duration::from_millis(1)).is_err());
        assert_eq!(make().with_max_offset(MAX_OFFSET_LIMIT).unwrap().max_offset(), MAX_OFFSET_LIMIT);
    }

    #[test]
    fn counter_overflow_carries_into_physical_time() {
        let wall = ManualClock::new(7);
        let hlc = Hlc::with_clock(NodeId(1), wall);
        let mut last = hlc.now();
        for _ in 0..=u16::MAX {
            let next = hlc.now();
            assert!(next > last);
            last = next;
        }
        assert_eq!((last.physical_ms(), last.logical()), (8, 0));
    }

    #[test]
    fn a_clock_beyond_48_bits_saturates_instead_of_wrapping() {
        let wall = ManualClock::new(u64::MAX);
        let hlc = Hlc::with_clock(NodeId(1), wall);
        let a = hlc.now();
        let b = hlc.now();
        assert_eq!(a.physical_ms(), MAX_PHYSICAL_MS);
        assert!(b > a);
    }
}
