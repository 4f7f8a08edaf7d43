//! How far behind each replica and region is, now and over a window.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;

/// Samples a replica's history keeps by default (an hour at one per second).
pub const DEFAULT_HISTORY: usize = 3_600;

/// One observation of a replica's lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSample {
    /// When, in Unix ms.
    pub at_ms: u64,
    /// LSNs behind the leader's last.
    pub lag_lsns: u64,
    /// How old the oldest entry it lacks is, in ms (0 when caught up).
    pub lag_ms: u64,
}

/// Lag over a window, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LagStats {
    /// Samples in the window.
    pub samples: usize,
    /// Mean.
    pub avg_ms: u64,
    /// Median.
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Worst.
    pub max_ms: u64,
    /// Worst lag in LSNs.
    pub max_lsns: u64,
}

/// A bounded ring of samples, oldest first.
#[derive(Debug, Clone)]
pub struct LagHistory {
    samples: VecDeque<LagSample>,
    capacity: usize,
}

impl LagHistory {
    /// A history of at most `capacity` samples (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> LagHistory {
        let capacity = capacity.max(1);
        LagHistory { samples: VecDeque::with_capacity(capacity.min(4096)), capacity }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: LagSample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The latest sample.
    #[must_use]
    pub fn latest(&self) -> Option<LagSample> {
        self.samples.back().copied()
    }

    /// Statistics over the samples taken in the last `window_ms` before `now_ms`.
    #[must_use]
    pub fn stats(&self, now_ms: u64, window_ms: u64) -> LagStats {
        let since = now_ms.saturating_sub(window_ms);
        let mut lags: Vec<u64> = Vec::new();
        let mut max_lsns = 0;
        for s in self.samples.iter().rev().take_while(|s| s.at_ms >= since) {
            lags.push(s.lag_ms);
            max_lsns = max_lsns.max(s.lag_lsns);
        }
        if lags.is_empty() {
            return LagStats::default();
        }
        lags.sort_unstable();
        let pick = |percent: usize| {
            // Nearest rank: the smallest sample with at least `percent`% of them at or below it.
            let rank = (percent * lags.len()).div_ceil(100);
            lags[rank.clamp(1, lags.len()) - 1]
        };
        LagStats {
            samples: lags.len(),
            avg_ms: lags.iter().sum::<u64>() / lags.len() as u64,
            p50_ms: pick(50),
            p95_ms: pick(95),
            p99_ms: pick(99),
            max_ms: *lags.last().expect("not empty"),
            max_lsns,
        }
    }
}

/// One replica's staleness now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStaleness {
    /// The replica.
    pub replica: NodeId,
    /// Its region.
    pub region: String,
    /// The latest sample.
    pub latest: LagSample,
}

/// A region's staleness now: its freshest replica bounds what a read there can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStaleness {
    /// The region.
    pub region: String,
    /// The freshest replica's lag in ms.
    pub min_lag_ms: u64,
    /// The stalest replica's lag in ms.
    pub max_lag_ms: u64,
    /// The freshest replica's lag in LSNs.
    pub min_lag_lsns: u64,
    /// Each replica.
    pub replicas: Vec<ReplicaStaleness>,
}

/// Staleness of every replica, with history (the spec's `updateRegionStaleness` and
/// `getStaleness`).
#[derive(Debug, Clone)]
pub struct StalenessTracker {
    replicas: BTreeMap<NodeId, (String, LagHistory)>,
    capacity: usize,
}

impl StalenessTracker {
    /// A tracker keeping `capacity` samples per replica.
    #[must_use]
    pub fn new(capacity: usize) -> StalenessTracker {
        StalenessTracker { replicas: BTreeMap::new(), capacity }
    }

    /// Records a replica's lag.
    pub fn update(&mut self, replica: NodeId, region: &str, sample: LagSample) {
        let capacity = self.capacity;
        let entry =
            self.replicas.entry(replica).or_insert_with(|| (region.to_owned(), LagHistory::new(capacity)));
        if entry.0 != region {
            region.clone_into(&mut entry.0);
        }
        entry.1.push(sample);
    }

    /// Forgets a replica that left.
    pub fn remove(&mut self, replica: NodeId) {
        self.replicas.remove(&replica);
    }

    /// A region's staleness, or `None` if no replica there has reported.
    #[must_use]
    pub fn get_staleness(&self, region: &str) -> Option<RegionStaleness> {
        let replicas: Vec<ReplicaStaleness> = self
            .replicas
            .iter()
            .filter(|(_, (r, _))| r == region)
            .filter_map(|(&replica, (r, h))| {
                h.latest().map(|latest| ReplicaStaleness { replica, region: r.clone(), latest })
            })
            .collect();
        let freshest = replicas.iter().min_by_key(|r| (r.latest.lag_ms, r.latest.lag_lsns))?;
        Some(RegionStaleness {
            region: region.to_owned(),
            min_lag_ms: freshest.latest.lag_ms,
            min_lag_lsns: freshest.latest.lag_lsns,
            max_lag_ms: replicas.iter().map(|r| r.latest.lag_ms).max().unwrap_or(0),
            replicas,
        })
    }

    /// The replicas tracked.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.keys().copied()
    }

    /// Every region that has a replica reporting.
    #[must_use]
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.replicas.values().map(|(r, _)| r.clone()).collect();
        regions.sort();
        regions.dedup();
        regions
    }

    /// A replica's lag statistics over the last `window_ms`.
    #[must_use]
    pub fn history(&self, replica: NodeId, now_ms: u64, window_ms: u64) -> Option<LagStats> {
        self.replicas.get(&replica).map(|(_, h)| h.stats(now_ms, window_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, lag_ms: u64) -> LagSample {
        LagSample { at_ms, lag_lsns: lag_ms / 10, lag_ms }
    }

    #[test]
    fn percentiles_over_a_window_use_nearest_rank() {
        let mut h = LagHistory::new(1000);
        for i in 1..=100 {
            h.push(sample(i * 1000, i));
        }
        let all = h.stats(100_000, 1_000_000);
        assert_eq!((all.samples, all.p50_ms, all.p95_ms, all.p99_ms, all.max_ms), (100, 50, 95, 99, 100));
        assert_eq!(all.avg_ms, 50); // 5050 / 100
        assert_eq!(all.max_lsns, 10);
        // The last 10 seconds: samples 90..=100.
        let recent = h.stats(100_000, 10_000);
        assert_eq!((recent.samples, recent.p50_ms, recent.max_ms), (11, 95, 100));
        assert_eq!(h.stats(500_000, 1_000), LagStats::default());
    }

    #[test]
    fn the_history_is_bounded() {
        let mut h = LagHistory::new(3);
        for i in 0..10 {
            h.push(sample(i, i));
        }
        assert_eq!(h.stats(10, 100).samples, 3);
        assert_eq!(h.latest().unwrap().lag_ms, 9);
    }

    #[test]
    fn a_region_reports_its_freshest_and_stalest_replica() {
        let mut t = StalenessTracker::new(10);
        t.update(NodeId(2), "eu-west", sample(1, 40));
        t.update(NodeId(3), "eu-west", sample(1, 90));
        t.update(NodeId(4), "ap-south", sample(1, 200));
        let eu = t.get_staleness("eu-west").unwrap();
        assert_eq!((eu.min_lag_ms, eu.max_lag_ms, eu.min_lag_lsns, eu.replicas.len()), (40, 90, 4, 2));
        assert!(t.get_staleness("us-east").is_none());
        assert_eq!(t.regions(), ["ap-south", "eu-west"]);
        t.update(NodeId(4), "eu-west", sample(2, 10));
        assert_eq!(
            t.get_staleness("eu-west").unwrap().min_lag_ms,
            10,
            "a replica that moved counts in its new region"
        );
        t.remove(NodeId(4));
        assert_eq!(t.get_staleness("eu-west").unwrap().min_lag_ms, 40);
        assert_eq!(t.history(NodeId(2), 10, 100).unwrap().samples, 1);
    }
}
