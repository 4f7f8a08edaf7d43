//! Physical time, injected through [`PhysicalClock`] so tests and the simulator control it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. It may jump backwards or stall; the [`Hlc`](crate::Hlc)
/// built on it stays strictly monotonic regardless.
pub trait PhysicalClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock, read at millisecond precision.
///
/// Reading the real-time clock costs a `clock_gettime` call (about 25 ns in a VM), which
/// would dominate [`Hlc::now`](crate::Hlc::now). Since a reading only changes once per
/// millisecond, each thread caches it together with the instant of the next millisecond
/// boundary, measured on the CPU's monotonic time-stamp counter (`quanta`, a few ns), and
/// asks the operating system again only once that boundary has passed. The boundary is
/// computed from a monotonic reading taken just *before* the wall-clock one, so the cache
/// expires early rather than late: a reading is never behind the wall clock's millisecond,
/// except by the counter's drift against the wall clock over one millisecond (parts per
/// million). A wall-clock step is seen at the next boundary, within 1 ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

thread_local! {
    /// This thread's last reading: (instant it expires, ms since the Unix epoch).
    static CACHED_READING: Cell<Option<(quanta::Instant, u64)>> = const { Cell::new(None) };
}

impl PhysicalClock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        let monotonic = quanta::Instant::now();
        CACHED_READING.with(|cached| match cached.get() {
            Some((expires, now_ms)) if monotonic < expires => now_ms,
            _ => {
                let (now_ms, until_next_ms) = read_system_clock();
                cached.set(Some((monotonic + until_next_ms, now_ms)));
                now_ms
            }
        })
    }
}

/// The wall clock in ms since the Unix epoch, and the time left until it reads the next ms.
#[cold]
fn read_system_clock() -> (u64, Duration) {
    // A clock set before 1970 reads as the epoch; the HLC then runs on its counter.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let now_ms = since_epoch.as_secs() * 1000 + u64::from(since_epoch.subsec_millis());
    let until_next_ms = Duration::from_nanos(u64::from(1_000_000 - since_epoch.subsec_nanos() % 1_000_000));
    (now_ms, until_next_ms)
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

    /// The cached reading agrees with the operating system's clock: never behind the
    /// millisecond it read before, never ahead of the one it reads after.
    #[test]
    fn cached_system_clock_tracks_the_os_clock() {
        let os_ms = || read_system_clock().0;
        // At least 50 ms and at least 1,000 readings: a loaded machine that deschedules
        // this thread for the whole 50 ms still gets its readings.
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        let mut readings = 0u64;
        while readings < 1_000 || std::time::Instant::now() < deadline {
            let before = os_ms();
            let ours = SystemClock.now_ms();
            let after = os_ms();
            // A wall-clock step between the reads (NTP) would break this; it is rare enough
            // that a failure here deserves a look rather than a retry.
            assert!(before <= ours && ours <= after, "{before} <= {ours} <= {after}");
            readings += 1;
        }
    }

    #[test]
    fn manual_clock_saturates() {
        let clock = ManualClock::new(u64::MAX - 1);
        clock.advance_ms(10);
        assert_eq!(clock.now_ms(), u64::MAX);
    }
}
