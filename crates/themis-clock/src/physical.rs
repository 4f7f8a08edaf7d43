//! Physical time, injected through [`PhysicalClock`] so tests and the simulator control it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. It may jump backwards or stall; the [`Hlc`](crate::Hlc)
/// built on it stays strictly monotonic regardless.
pub trait PhysicalClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as the epoch; the HLC then runs on its counter.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        since_epoch.as_secs() * 1000 + u64::from(since_epoch.subsec_millis())
    }
}

/// A clock that only moves when told to. Clones share one reading, so a test can keep a
/// handle while an [`Hlc`](crate::Hlc) owns another.
///
/// ```
/// use themis_clock::{ManualClock, PhysicalClock};
///
/// let clock = ManualClock::new(1_000);
/// let handle = clock.clone();
/// handle.advance_ms(5);
/// assert_eq!(clock.now_ms(), 1_005);
/// handle.set_ms(10); // wall clocks can step backwards
/// assert_eq!(clock.now_ms(), 10);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `now_ms` milliseconds since the Unix epoch.
    #[must_use]
    pub fn new(now_ms: u64) -> Self {
        ManualClock { now_ms: Arc::new(AtomicU64::new(now_ms)) }
    }

    /// Sets the reading, forwards or backwards.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Moves the reading forwards, saturating at `u64::MAX`.
    pub fn advance_ms(&self, delta_ms: u64) {
        // fetch_update with Some never fails; the result is only the previous value.
        let _ = self
            .now_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| Some(now.saturating_add(delta_ms)));
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

impl<C: PhysicalClock + ?Sized> PhysicalClock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

impl<C: PhysicalClock + ?Sized> PhysicalClock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn manual_clock_saturates() {
        let clock = ManualClock::new(u64::MAX - 1);
        clock.advance_ms(10);
        assert_eq!(clock.now_ms(), u64::MAX);
    }
}
