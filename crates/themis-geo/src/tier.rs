//! Per-request write concerns and per-collection replication tiers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::GeoError;

/// How many replicas must hold a write before it is acknowledged, per request, beside the
/// cluster's mode: the stricter of the two applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteConcern {
    /// The leader's durable copy.
    One,
    /// A majority of voters (Raft commit).
    Majority,
    /// Every voter, in every region.
    All,
}

impl WriteConcern {
    /// Its name as the APIs spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WriteConcern::One => "one",
            WriteConcern::Majority => "majority",
            WriteConcern::All => "all",
        }
    }

    /// Followers (besides the leader) that must hold the write among `voters` voters.
    #[must_use]
    pub fn followers_needed(self, voters: usize) -> usize {
        match self {
            WriteConcern::One => 0,
            WriteConcern::Majority => voters / 2,
            WriteConcern::All => voters.saturating_sub(1),
        }
    }
}

impl fmt::Display for WriteConcern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WriteConcern {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<Self, GeoError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "one" | "1" => WriteConcern::One,
            "majority" | "quorum" => WriteConcern::Majority,
            "all" => WriteConcern::All,
            _ => {
                return Err(GeoError::Unknown {
                    what: "write concern",
                    given: s.chars().take(64).collect(),
                    expected: "one, majority, all",
                });
            }
        })
    }
}

/// A collection's replication tier (the spec's multi-tier replication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReplicationTier {
    /// Critical: acknowledged once every voter holds it (3+ replicas), synchronous.
    Tier1,
    /// Standard: acknowledged at Raft commit (a majority), semi-synchronous.
    Tier2,
    /// Archival: acknowledged once the leader holds it, replicated asynchronously.
    Tier3,
}

impl ReplicationTier {
    /// Every tier, most durable first.
    pub const ALL: [ReplicationTier; 3] =
        [ReplicationTier::Tier1, ReplicationTier::Tier2, ReplicationTier::Tier3];

    /// Its name: `tier1`, `tier2`, `tier3`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationTier::Tier1 => "tier1",
            ReplicationTier::Tier2 => "tier2",
            ReplicationTier::Tier3 => "tier3",
        }
    }

    /// The write concern a write to the tier gets when the request names none.
    #[must_use]
    pub fn write_concern(self) -> WriteConcern {
        match self {
            ReplicationTier::Tier1 => WriteConcern::All,
            ReplicationTier::Tier2 => WriteConcern::Majority,
            ReplicationTier::Tier3 => WriteConcern::One,
        }
    }

    /// The fewest voters the tier needs to mean what it says.
    #[must_use]
    pub fn min_replicas(self) -> usize {
        match self {
            ReplicationTier::Tier1 => 3,
            ReplicationTier::Tier2 => 2,
            ReplicationTier::Tier3 => 1,
        }
    }

    fn up(self) -> ReplicationTier {
        match self {
            ReplicationTier::Tier3 => ReplicationTier::Tier2,
            _ => ReplicationTier::Tier1,
        }
    }

    fn down(self) -> ReplicationTier {
        match self {
            ReplicationTier::Tier1 => ReplicationTier::Tier2,
            _ => ReplicationTier::Tier3,
        }
    }
}

impl fmt::Display for ReplicationTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicationTier {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<Self, GeoError> {
        Ok(match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "tier1" | "1" | "critical" | "tier1critical" => ReplicationTier::Tier1,
            "tier2" | "2" | "standard" | "tier2standard" => ReplicationTier::Tier2,
            "tier3" | "3" | "archival" | "tier3archival" => ReplicationTier::Tier3,
            _ => {
                return Err(GeoError::Unknown {
                    what: "tier",
                    given: s.chars().take(64).collect(),
                    expected: "tier1, tier2, tier3",
                });
            }
        })
    }
}

/// A change to the tier table; it travels through the log, so every node applies the
/// same changes in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierChange {
    /// Puts a collection in a tier.
    Assign {
        /// The collection.
        collection: String,
        /// Its tier.
        tier: ReplicationTier,
        /// Whether automatic tiering made the change (it may undo only its own).
        automatic: bool,
    },
    /// Returns a collection to the default tier.
    Clear {
        /// The collection.
        collection: String,
    },
}

/// Which tier each collection is in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TierMap {
    default: Option<ReplicationTier>,
    assigned: BTreeMap<String, (ReplicationTier, bool)>,
}

impl TierMap {
    /// A map where unassigned collections are in `default`.
    #[must_use]
    pub fn new(default: ReplicationTier) -> TierMap {
        TierMap { default: Some(default), assigned: BTreeMap::new() }
    }

    /// The default tier.
    #[must_use]
    pub fn default_tier(&self) -> ReplicationTier {
        self.default.unwrap_or(ReplicationTier::Tier2)
    }

    /// Applies a change (as the log delivers it).
    pub fn apply(&mut self, change: &TierChange) {
        match change {
            TierChange::Assign { collection, tier, automatic } => {
                self.assigned.insert(collection.clone(), (*tier, *automatic));
            }
            TierChange::Clear { collection } => {
                self.assigned.remove(collection);
            }
        }
    }

    /// A collection's tier (the spec's `getTier`).
    #[must_use]
    pub fn tier(&self, collection: &str) -> ReplicationTier {
        self.assigned.get(collection).map_or(self.default_tier(), |(t, _)| *t)
    }

    /// The tier assigned to `collection`, if any (`None`: it is in the default tier).
    #[must_use]
    pub fn assigned(&self, collection: &str) -> Option<ReplicationTier> {
        self.assigned.get(collection).map(|(t, _)| *t)
    }

    /// Whether the collection's tier was set by hand (automatic tiering leaves it alone).
    #[must_use]
    pub fn pinned(&self, collection: &str) -> bool {
        self.assigned.get(collection).is_some_and(|(_, auto)| !auto)
    }

    /// Every assignment: collection, tier, whether automatic.
    pub fn assignments(&self) -> impl Iterator<Item = (&str, ReplicationTier, bool)> {
        self.assigned.iter().map(|(c, (t, a))| (c.as_str(), *t, *a))
    }
}

/// When automatic tiering moves a collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoTierPolicy {
    /// Writes per second (smoothed) at or above which a collection moves up a tier.
    pub promote_per_sec: f64,
    /// Writes per second at or below which it moves down a tier.
    pub demote_per_sec: f64,
    /// How long a collection stays in a tier before it may move again, in ms.
    pub min_dwell_ms: u64,
    /// The smoothing half-life of the rate, in ms.
    pub half_life_ms: u64,
}

impl Default for AutoTierPolicy {
    fn default() -> Self {
        AutoTierPolicy {
            promote_per_sec: 100.0,
            demote_per_sec: 1.0,
            min_dwell_ms: 300_000,
            half_life_ms: 60_000,
        }
    }
}

impl AutoTierPolicy {
    /// Checks the policy: thresholds apart (hysteresis), a positive half-life.
    pub fn validate(&self) -> Result<(), GeoError> {
        if !(self.demote_per_sec >= 0.0
            && self.promote_per_sec > self.demote_per_sec
            && self.promote_per_sec.is_finite())
        {
            return Err(GeoError::Config(format!(
                "auto tiering needs 0 <= demote_per_sec ({}) < promote_per_sec ({})",
                self.demote_per_sec, self.promote_per_sec
            )));
        }
        if self.half_life_ms == 0 {
            return Err(GeoError::OutOfRange {
                name: "half_life_ms",
                value: "0".into(),
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_sec: f64,
    at_ms: u64,
    moved_ms: u64,
}

/// Automatic tier promotion and demotion from access rates (the spec's
/// `enableAutoTiering`): the leader counts writes per collection and proposes
/// [`TierChange`]s; collections assigned by hand are never moved.
#[derive(Debug, Clone)]
pub struct AutoTiering {
    policy: AutoTierPolicy,
    rates: BTreeMap<String, Rate>,
}

impl AutoTiering {
    /// Tiering by `policy`.
    pub fn new(policy: AutoTierPolicy) -> Result<AutoTiering, GeoError> {
        policy.validate()?;
        Ok(AutoTiering { policy, rates: BTreeMap::new() })
    }

    fn decay(&self, rate: &mut Rate, now_ms: u64) {
        let dt = now_ms.saturating_sub(rate.at_ms) as f64;
        rate.per_sec *= 0.5f64.powf(dt / self.policy.half_life_ms as f64);
        rate.at_ms = now_ms;
    }

    /// Counts `writes` writes to `collection` at `now_ms`.
    pub fn record(&mut self, collection: &str, writes: u64, now_ms: u64) {
        // An exponentially decayed count; `per_sec` = count * ln2 / half-life.
        let scale = std::f64::consts::LN_2 * 1000.0 / self.policy.half_life_ms as f64;
        if let Some(rate) = self.rates.get_mut(collection) {
            let mut r = *rate;
            self.decay(&mut r, now_ms);
            r.per_sec += writes as f64 * scale;
            *self.rates.get_mut(collection).expect("present") = r;
        } else {
            self.rates.insert(
                collection.to_owned(),
                Rate { per_sec: writes as f64 * scale, at_ms: now_ms, moved_ms: now_ms },
            );
        }
    }

    /// A collection's smoothed write rate at `now_ms`.
    #[must_use]
    pub fn rate(&self, collection: &str, now_ms: u64) -> f64 {
        self.rates.get(collection).map_or(0.0, |r| {
            let mut r = *r;
            self.decay(&mut r, now_ms);
            r.per_sec
        })
    }

    /// The changes due at `now_ms` given the current `map`.
    pub fn evaluate(&mut self, map: &TierMap, now_ms: u64) -> Vec<TierChange> {
        let mut changes = Vec::new();
        let policy = self.policy;
        for (collection, rate) in &mut self.rates {
            if map.pinned(collection) || now_ms.saturating_sub(rate.moved_ms) < policy.min_dwell_ms {
                continue;
            }
            let dt = now_ms.saturating_sub(rate.at_ms) as f64;
            let per_sec = rate.per_sec * 0.5f64.powf(dt / policy.half_life_ms as f64);
            let current = map.tier(collection);
            let next = if per_sec >= policy.promote_per_sec {
                current.up()
            } else if per_sec <= policy.demote_per_sec {
                current.down()
            } else {
                current
            };
            if next != current {
                rate.moved_ms = now_ms;
                changes.push(TierChange::Assign {
                    collection: collection.clone(),
                    tier: next,
                    automatic: true,
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_refused() {
        for c in [WriteConcern::One, WriteConcern::Majority, WriteConcern::All] {
            assert_eq!(c.as_str().parse::<WriteConcern>().unwrap(), c);
        }
        for t in ReplicationTier::ALL {
            assert_eq!(t.as_str().parse::<ReplicationTier>().unwrap(), t);
        }
        assert_eq!("TIER_1_CRITICAL".parse::<ReplicationTier>().unwrap(), ReplicationTier::Tier1);
        assert!("two".parse::<WriteConcern>().unwrap_err().to_string().contains("one, majority, all"));
        assert!("gold".parse::<ReplicationTier>().unwrap_err().to_string().contains("tier1, tier2, tier3"));
        assert_eq!(WriteConcern::Majority.followers_needed(5), 2);
        assert_eq!(WriteConcern::All.followers_needed(5), 4);
        assert_eq!(WriteConcern::One.followers_needed(5), 0);
    }

    #[test]
    fn the_map_applies_changes_in_order() {
        let mut map = TierMap::new(ReplicationTier::Tier2);
        map.apply(&TierChange::Assign {
            collection: "payments".into(),
            tier: ReplicationTier::Tier1,
            automatic: false,
        });
        map.apply(&TierChange::Assign {
            collection: "logs".into(),
            tier: ReplicationTier::Tier3,
            automatic: true,
        });
        assert_eq!(map.tier("payments"), ReplicationTier::Tier1);
        assert_eq!(map.tier("users"), ReplicationTier::Tier2);
        assert_eq!((map.assigned("payments"), map.assigned("users")), (Some(ReplicationTier::Tier1), None));
        assert!(map.pinned("payments") && !map.pinned("logs"));
        map.apply(&TierChange::Clear { collection: "payments".into() });
        assert_eq!(map.tier("payments"), ReplicationTier::Tier2);
        assert_eq!(map.assignments().count(), 1);
    }

    #[test]
    fn hot_collections_move_up_idle_ones_down_and_pinned_ones_stay() {
        let policy = AutoTierPolicy {
            promote_per_sec: 50.0,
            demote_per_sec: 1.0,
            min_dwell_ms: 10_000,
            half_life_ms: 10_000,
        };
        let mut auto = AutoTiering::new(policy).unwrap();
        let mut map = TierMap::new(ReplicationTier::Tier2);
        map.apply(&TierChange::Assign {
            collection: "pinned".into(),
            tier: ReplicationTier::Tier2,
            automatic: false,
        });
        // 200 writes/s for 20 s on "hot" and "pinned"; one write on "cold".
        auto.record("cold", 1, 0);
        for s in 0..20u64 {
            auto.record("hot", 200, s * 1000);
            auto.record("pinned", 200, s * 1000);
        }
        let rate = auto.rate("hot", 20_000);
        assert!(rate > 50.0 && rate < 200.0, "{rate}");
        let changes = auto.evaluate(&map, 20_000);
        assert!(changes.contains(&TierChange::Assign {
            collection: "hot".into(),
            tier: ReplicationTier::Tier1,
            automatic: true
        }));
        assert!(changes.contains(&TierChange::Assign {
            collection: "cold".into(),
            tier: ReplicationTier::Tier3,
            automatic: true
        }));
        assert_eq!(changes.len(), 2, "{changes:?}");
        for c in &changes {
            map.apply(c);
        }
        // Within the dwell time nothing moves again.
        assert!(auto.evaluate(&map, 25_000).is_empty());
        // Long idle: hot comes down one tier at a time.
        let later = auto.evaluate(&map, 200_000);
        assert_eq!(
            later,
            [TierChange::Assign { collection: "hot".into(), tier: ReplicationTier::Tier2, automatic: true }]
        );
        assert!(
            AutoTiering::new(AutoTierPolicy { promote_per_sec: 1.0, demote_per_sec: 2.0, ..policy }).is_err()
        );
    }
}
