//! Where a read goes: the region for a level (`select_read_region`) and, on the client, a
//! router that spreads reads over replicas by a strategy and takes failing replicas out.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::GeoError;
use crate::level::ConsistencyLevel;

/// A region as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionView {
    /// Its name.
    pub name: String,
    /// Whether it has a healthy replica.
    pub healthy: bool,
    /// Round trip from the caller, in ms.
    pub rtt_ms: u64,
    /// Its freshest replica's lag, in ms.
    pub lag_ms: u64,
    /// Whether the leader is there.
    pub has_leader: bool,
}

/// The region a read at `level` should go to: the leader's for STRONG; for BOUNDED the
/// nearest healthy region within `max_staleness_ms` (else the leader's); for SESSION,
/// PREFIX and EVENTUAL the nearest healthy region (`local` first when healthy and at the
/// same distance). `None` when no region can serve.
#[must_use]
pub fn select_read_region<'a>(
    level: ConsistencyLevel,
    local: &str,
    regions: &'a [RegionView],
    max_staleness_ms: u64,
) -> Option<&'a str> {
    let leader = || regions.iter().find(|r| r.has_leader && r.healthy).map(|r| r.name.as_str());
    let nearest = |ok: &dyn Fn(&RegionView) -> bool| {
        regions
            .iter()
            .filter(|r| r.healthy && ok(r))
            .min_by_key(|r| (r.rtt_ms, r.name != local, r.lag_ms))
            .map(|r| r.name.as_str())
    };
    match level {
        ConsistencyLevel::Strong => leader(),
        ConsistencyLevel::BoundedStaleness => {
            nearest(&|r| r.has_leader || r.lag_ms <= max_staleness_ms).or_else(leader)
        }
        ConsistencyLevel::Session | ConsistencyLevel::ConsistentPrefix | ConsistencyLevel::Eventual => {
            nearest(&|_| true)
        }
    }
}

/// How a router picks among the replicas that may serve a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest reads in flight.
    LeastConnections,
    /// The one with the lowest smoothed round trip (EWMA).
    LatencyBased,
    /// Any, uniformly.
    Random,
    /// Two at random, then the one with fewer reads in flight (Mitzenmacher).
    PowerOfTwoChoices,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] = [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::LatencyBased,
        Strategy::Random,
        Strategy::PowerOfTwoChoices,
    ];

    /// Its name as flags spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConnections => "least-connections",
            Strategy::LatencyBased => "latency",
            Strategy::Random => "random",
            Strategy::PowerOfTwoChoices => "p2c",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<Self, GeoError> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" | "rr" => Strategy::RoundRobin,
            "least-connections" | "least-conn" => Strategy::LeastConnections,
            "latency" | "latency-based" | "ewma" => Strategy::LatencyBased,
            "random" => Strategy::Random,
            "p2c" | "power-of-two" | "power-of-two-choices" => Strategy::PowerOfTwoChoices,
            _ => {
                return Err(GeoError::Unknown {
                    what: "strategy",
                    given: s.chars().take(64).collect(),
                    expected: "round-robin, least-connections, latency, random, p2c",
                });
            }
        })
    }
}

/// Health-check settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that take a replica out.
    pub failures_to_eject: u32,
    /// How long the first ejection lasts; each further one in a row doubles it...
    pub eject_for: Duration,
    /// ... up to this.
    pub max_eject_for: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failures_to_eject: 3,
            eject_for: Duration::from_millis(500),
            max_eject_for: Duration::from_secs(30),
        }
    }
}

/// One replica's live state; every field is an atomic so picking takes no lock.
#[derive(Debug, Default)]
struct Slot {
    in_flight: AtomicU32,
    /// Smoothed RTT in µs, 0 until measured.
    ewma_us: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Unix ms before which the replica is out (0: in).
    out_until_ms: AtomicU64,
    picks: AtomicU64,
}

/// Spreads reads over replicas (the client's read router).
///
/// `T` is what the caller keeps per replica (an address, a connection pool). Picking
/// costs a pass over the replicas and no allocation, lock or system call.
#[derive(Debug)]
pub struct Router<T> {
    replicas: Vec<(T, Slot)>,
    strategy: Strategy,
    policy: HealthPolicy,
    next: AtomicUsize,
    rng: AtomicU64,
}

/// A replica picked for a read; reading through it counts as one in flight until it is
/// dropped or reported.
#[derive(Debug)]
#[must_use = "a pick counts a read in flight until it is reported or dropped"]
pub struct Pick<'a, T> {
    router: &'a Router<T>,
    index: usize,
    done: bool,
}

impl<T> Pick<'_, T> {
    /// The replica's index.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// What the caller keeps for it.
    #[must_use]
    pub fn replica(&self) -> &T {
        &self.router.replicas[self.index].0
    }

    /// The read succeeded after `rtt`: the replica's latency estimate moves toward it and
    /// its failure count resets.
    pub fn succeeded(mut self, rtt: Duration) {
        self.router.report_success(self.index, rtt);
        self.finish();
    }

    /// The read failed (connection refused, timeout): enough failures in a row take the
    /// replica out for a while (`now_ms` is the caller's clock).
    pub fn failed(mut self, now_ms: u64) {
        self.router.report_failure(self.index, now_ms);
        self.finish();
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.router.replicas[self.index].1.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> Drop for Pick<'_, T> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A replica's state, for status pages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHealth {
    /// Reads in flight.
    pub in_flight: u32,
    /// Smoothed round trip in µs (0: not measured yet).
    pub ewma_rtt_us: u64,
    /// Failures in a row.
    pub failures: u32,
    /// Out until this Unix ms (0: in).
    pub out_until_ms: u64,
    /// Times picked.
    pub picks: u64,
}

/// The EWMA weight of a new RTT sample, as a shift: new = old + (sample - old) / 2^3.
const EWMA_SHIFT: u32 = 3;

impl<T> Router<T> {
    /// A router over `replicas`; `seed` makes the random strategies repeatable.
    #[must_use]
    pub fn new(replicas: Vec<T>, strategy: Strategy, policy: HealthPolicy, seed: u64) -> Router<T> {
        Router {
            replicas: replicas.into_iter().map(|r| (r, Slot::default())).collect(),
            strategy,
            policy,
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
        }
    }

    /// The strategy.
    #[must_use]
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The replicas, in order.
    pub fn replicas(&self) -> impl Iterator<Item = &T> {
        self.replicas.iter().map(|(r, _)| r)
    }

    /// A replica's state.
    #[must_use]
    pub fn health(&self, index: usize) -> Option<ReplicaHealth> {
        self.replicas.get(index).map(|(_, s)| ReplicaHealth {
            in_flight: s.in_flight.load(Ordering::Relaxed),
            ewma_rtt_us: s.ewma_us.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            out_until_ms: s.out_until_ms.load(Ordering::Relaxed),
            picks: s.picks.load(Ordering::Relaxed),
        })
    }

    /// Picks a replica that `eligible` accepts and that is in (not taken out at
    /// `now_ms`). If every eligible replica is out, the one that comes back first is
    /// tried rather than failing the read. `None` when nothing is eligible.
    pub fn pick(&self, now_ms: u64, eligible: impl Fn(&T) -> bool) -> Option<Pick<'_, T>> {
        let usable = |i: usize| {
            let (r, s) = &self.replicas[i];
            eligible(r) && s.out_until_ms.load(Ordering::Relaxed) <= now_ms
        };
        let index = self.choose(&usable).or_else(|| {
            // Everything eligible is out: try the one that returns soonest.
            (0..self.replicas.len())
                .filter(|&i| eligible(&self.replicas[i].0))
                .min_by_key(|&i| self.replicas[i].1.out_until_ms.load(Ordering::Relaxed))
        })?;
        let slot = &self.replicas[index].1;
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        slot.picks.fetch_add(1, Ordering::Relaxed);
        Some(Pick { router: self, index, done: false })
    }

    fn choose(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let slot = |i: usize| &self.replicas[i].1;
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Strategy::LeastConnections => {
                // Ties rotate, so equal replicas share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| slot(i).in_flight.load(Ordering::Relaxed))
            }
            Strategy::LatencyBased => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).filter(|&i| usable(i)).min_by_key(|&i| {
                    // Unmeasured replicas go first, so each gets measured.
                    slot(i).ewma_us.load(Ordering::Relaxed)
                })
            }
            Strategy::Random => self.sample(n, usable, 1).0,
            Strategy::PowerOfTwoChoices => match self.sample(n, usable, 2) {
                (Some(a), Some(b)) => {
                    let load = |i: usize| {
                        (slot(i).in_flight.load(Ordering::Relaxed), slot(i).ewma_us.load(Ordering::Relaxed))
                    };
                    Some(if load(b) < load(a) { b } else { a })
                }
                (one, _) => one,
            },
        }
    }

    /// Up to two distinct usable indexes, uniformly (reservoir sampling; no allocation).
    fn sample(
        &self,
        n: usize,
        usable: &dyn Fn(usize) -> bool,
        want: usize,
    ) -> (Option<usize>, Option<usize>) {
        let (mut a, mut b) = (None, None);
        let mut seen = 0u64;
        for i in (0..n).filter(|&i| usable(i)) {
            seen += 1;
            if seen <= want as u64 {
                if a.is_none() {
                    a = Some(i);
                } else {
                    b = Some(i);
                }
                continue;
            }
            let r = self.random() % seen;
            if r < want as u64 {
                if r == 0 {
                    a = Some(i);
                } else {
                    b = Some(i);
                }
            }
        }
        // Random order between the two, so the first is not biased to lower indexes.
        if want == 2 && b.is_some() && self.random() & 1 == 1 {
            std::mem::swap(&mut a, &mut b);
        }
        (a, b)
    }

    /// `SplitMix64` over an atomic counter: repeatable from the seed, lock-free.
    fn random(&self) -> u64 {
        let mut z =
            self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn report_success(&self, index: usize, rtt: Duration) {
        let s = &self.replicas[index].1;
        s.failures.store(0, Ordering::Relaxed);
        s.ejections.store(0, Ordering::Relaxed);
        s.out_until_ms.store(0, Ordering::Relaxed);
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = s.ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 {
                sample
            } else if sample >= old {
                old + ((sample - old) >> EWMA_SHIFT)
            } else {
                old - ((old - sample) >> EWMA_SHIFT)
            })
        });
    }

    fn report_failure(&self, index: usize, now_ms: u64) {
        let s = &self.replicas[index].1;
        let failures = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.policy.failures_to_eject {
            let ejections = s.ejections.fetch_add(1, Ordering::Relaxed);
            let factor = 1u32 << ejections.min(16);
            let out_for = self.policy.eject_for.saturating_mul(factor).min(self.policy.max_eject_for);
            s.out_until_ms.store(
                now_ms + u64::try_from(out_for.as_millis()).unwrap_or(u64::MAX / 2),
                Ordering::Relaxed,
            );
            // The next failure after it comes back ejects it again at once.
            s.failures.store(self.policy.failures_to_eject - 1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(strategy: Strategy, n: usize) -> Router<usize> {
        Router::new((0..n).collect(), strategy, HealthPolicy::default(), 7)
    }

    fn counts(r: &Router<usize>, picks: usize) -> Vec<u64> {
        for _ in 0..picks {
            drop(r.pick(0, |_| true).unwrap());
        }
        (0..r.replicas.len()).map(|i| r.health(i).unwrap().picks).collect()
    }

    #[test]
    fn round_robin_and_least_connections_spread_evenly() {
        assert_eq!(counts(&router(Strategy::RoundRobin, 4), 400), [100; 4]);
        assert_eq!(counts(&router(Strategy::LeastConnections, 4), 400), [100; 4]);
    }

    #[test]
    fn random_strategies_are_roughly_uniform_and_repeatable() {
        for strategy in [Strategy::Random, Strategy::PowerOfTwoChoices] {
            let c = counts(&router(strategy, 4), 40_000);
            for &k in &c {
                assert!((9_000..=11_000).contains(&k), "{strategy}: {c:?}");
            }
            assert_eq!(c, counts(&router(strategy, 4), 40_000), "same seed, same picks");
        }
    }

    #[test]
    fn least_connections_and_p2c_avoid_a_busy_replica() {
        for strategy in [Strategy::LeastConnections, Strategy::PowerOfTwoChoices] {
            let r = router(strategy, 3);
            let held: Vec<_> = (0..10).map(|_| r.pick(0, |&i| i == 0).unwrap()).collect();
            for _ in 0..300 {
                drop(r.pick(0, |_| true).unwrap());
            }
            let busy = r.health(0).unwrap().picks - 10;
            assert!(busy < 60, "{strategy}: replica 0 with 10 in flight got {busy} of 300");
            drop(held);
            assert_eq!(r.health(0).unwrap().in_flight, 0);
        }
    }

    #[test]
    fn latency_based_prefers_the_fastest_after_measuring_each() {
        let r = router(Strategy::LatencyBased, 3);
        for (i, ms) in [(0, 50), (1, 5), (2, 20)] {
            let p = r.pick(0, |&x| x == i).unwrap();
            p.succeeded(Duration::from_millis(ms));
        }
        for _ in 0..10 {
            assert_eq!(r.pick(0, |_| true).unwrap().index(), 1);
        }
        // The EWMA follows a slowdown.
        for _ in 0..40 {
            r.pick(0, |&x| x == 1).unwrap().succeeded(Duration::from_millis(100));
        }
        assert_eq!(r.pick(0, |_| true).unwrap().index(), 2);
    }

    #[test]
    fn failing_replicas_are_taken_out_and_come_back() {
        for strategy in Strategy::ALL {
            let r = router(strategy, 3);
            for _ in 0..3 {
                r.pick(1_000, |&i| i == 2).unwrap().failed(1_000);
            }
            assert_eq!(r.health(2).unwrap().out_until_ms, 1_500, "{strategy}");
            for _ in 0..50 {
                assert_ne!(r.pick(1_100, |_| true).unwrap().index(), 2, "{strategy}");
            }
            // Back after its time out; one more failure ejects it again, for twice as long.
            let back = r.pick(1_500, |&i| i == 2).unwrap();
            back.failed(1_500);
            assert_eq!(r.health(2).unwrap().out_until_ms, 2_500, "{strategy}");
            // A success brings it fully back.
            r.pick(2_500, |&i| i == 2).unwrap().succeeded(Duration::from_millis(1));
            assert_eq!(r.health(2).unwrap().failures, 0);
            assert_eq!(r.health(2).unwrap().out_until_ms, 0);
            // With everything eligible out, the soonest back is still tried.
            let solo = router(strategy, 1);
            for _ in 0..3 {
                solo.pick(0, |_| true).unwrap().failed(0);
            }
            assert_eq!(solo.pick(10, |_| true).unwrap().index(), 0);
            assert!(solo.pick(10, |_| false).is_none());
        }
    }

    #[test]
    fn strategies_parse_and_bad_names_are_refused() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        assert!(
            "fastest".parse::<Strategy>().unwrap_err().to_string().contains("round-robin, least-connections")
        );
    }

    #[test]
    fn regions_by_level() {
        let view = |name: &str, healthy, rtt_ms, lag_ms, has_leader| RegionView {
            name: name.into(),
            healthy,
            rtt_ms,
            lag_ms,
            has_leader,
        };
        let regions = [
            view("us-east", true, 60, 0, true),
            view("eu-west", true, 1, 300, false),
            view("ap-south", true, 120, 20, false),
        ];
        let pick = |level, bound| select_read_region(level, "eu-west", &regions, bound);
        assert_eq!(pick(ConsistencyLevel::Strong, 0), Some("us-east"));
        assert_eq!(pick(ConsistencyLevel::Eventual, 0), Some("eu-west"));
        assert_eq!(pick(ConsistencyLevel::Session, 0), Some("eu-west"));
        assert_eq!(pick(ConsistencyLevel::ConsistentPrefix, 0), Some("eu-west"));
        assert_eq!(pick(ConsistencyLevel::BoundedStaleness, 1_000), Some("eu-west"));
        assert_eq!(
            pick(ConsistencyLevel::BoundedStaleness, 100),
            Some("us-east"),
            "eu is too stale; us is nearer than ap"
        );
        assert_eq!(pick(ConsistencyLevel::BoundedStaleness, 10), Some("us-east"));
        let down = [view("us-east", false, 60, 0, true), view("eu-west", true, 1, 300, false)];
        assert_eq!(select_read_region(ConsistencyLevel::Strong, "eu-west", &down, 0), None);
        assert_eq!(select_read_region(ConsistencyLevel::BoundedStaleness, "eu-west", &down, 10), None);
        assert_eq!(select_read_region(ConsistencyLevel::Eventual, "eu-west", &down, 0), Some("eu-west"));
    }
}
