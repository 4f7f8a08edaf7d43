//! Reconnect timing shared by every long-lived link (WAL streams, message links):
//! exponential backoff with seeded jitter, and the checks on the timing settings.

use std::time::Duration;

use crate::error::ShipError;

/// Exponential backoff: each delay doubles up to a cap, and is jittered by ±25% from a
/// seeded RNG so peers that failed together do not retry together, and a test replays.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { initial, max, next: initial, rng: fastrand::Rng::with_seed(seed) }
    }

    /// Starts over from the initial delay (after a connection that made progress).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next.mul_f64(0.75 + self.rng.f64() * 0.5);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Checks the liveness and reconnect settings of a link; the message names the setting
/// and the value.
pub(crate) fn check_timing(
    heartbeat_interval: Duration,
    peer_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
) -> Result<(), ShipError> {
    if heartbeat_interval.is_zero() || heartbeat_interval >= peer_timeout {
        return Err(ShipError::Config(format!(
            "heartbeat_interval = {heartbeat_interval:?}: must be above zero and below peer_timeout ({peer_timeout:?})"
        )));
    }
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        return Err(ShipError::Config(format!(
            "backoff_initial = {backoff_initial:?}: must be above zero and at most backoff_max ({backoff_max:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(350), 7);
        for nominal in [100.0, 200.0, 350.0, 350.0] {
            let delay = backoff.next_delay().as_secs_f64() * 1000.0;
            assert!((nominal * 0.75..=nominal * 1.25).contains(&delay), "{delay} ms around {nominal} ms");
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= ms(75) && delay <= ms(125), "{delay:?}");
        let replay: Vec<_> = (0..5).map(|_| Backoff::new(ms(10), ms(100), 3).next_delay()).collect();
        assert!(replay.windows(2).all(|w| w[0] == w[1]), "same seed, same jitter");
    }

    #[test]
    fn bad_timing_is_named() {
        let s = Duration::from_secs;
        let err = check_timing(s(2), s(1), s(1), s(2)).unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval = 2s"), "{err}");
        let err = check_timing(s(1), s(2), s(3), s(2)).unwrap_err();
        assert!(err.to_string().contains("backoff_initial = 3s"), "{err}");
        check_timing(s(1), s(2), s(1), s(2)).unwrap();
    }
}
