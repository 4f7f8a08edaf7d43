//! A cluster's geography: regions, replica counts, default level and bounds, and the
//! cascading chains read replicas stream through.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;

use crate::error::GeoError;
use crate::level::{ConsistencyLevel, check_staleness_ms};
use crate::token::check_region;

/// The most hops from a read replica to the leader (the spec's limit): a replica may
/// stream from a replica that streams from ... at most this many links in all.
pub const MAX_CHAIN_HOPS: usize = 5;

/// How a cluster spreads over regions (the spec's `GeoConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoConfig {
    /// This node's region.
    pub local_region: String,
    /// Every region the cluster has replicas in (the local one among them).
    pub regions: Vec<String>,
    /// Copies of each document in all (voters and read replicas).
    pub replication_factor: u32,
    /// Replicas in the local region.
    pub local_replicas: u32,
    /// Replicas outside it.
    pub global_replicas: u32,
    /// The level of a read that names none.
    pub default_consistency: ConsistencyLevel,
    /// A bounded-staleness read's bound when the read gives none, in ms.
    pub max_staleness_ms: u64,
    /// How long a session token stays valid, in ms.
    pub session_token_ttl_ms: u64,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            local_region: "local".into(),
            regions: vec!["local".into()],
            replication_factor: 3,
            local_replicas: 3,
            global_replicas: 0,
            default_consistency: ConsistencyLevel::Strong,
            max_staleness_ms: 5_000,
            session_token_ttl_ms: 3_600_000,
        }
    }
}

impl GeoConfig {
    /// Checks the configuration; the error names the setting.
    pub fn validate(&self) -> Result<(), GeoError> {
        check_region(&self.local_region)?;
        let mut seen = BTreeSet::new();
        for region in &self.regions {
            check_region(region)?;
            if !seen.insert(region) {
                return Err(GeoError::Config(format!("region {region:?} is listed twice")));
            }
        }
        if !seen.contains(&self.local_region) {
            return Err(GeoError::Config(format!(
                "local_region {:?} is not among regions {:?}",
                self.local_region, self.regions
            )));
        }
        if self.replication_factor == 0 || self.replication_factor > 64 {
            return Err(GeoError::OutOfRange {
                name: "replication_factor",
                value: self.replication_factor.to_string(),
                reason: "must be 1 to 64".into(),
            });
        }
        if self.local_replicas + self.global_replicas != self.replication_factor {
            return Err(GeoError::Config(format!(
                "local_replicas ({}) + global_replicas ({}) must equal replication_factor ({})",
                self.local_replicas, self.global_replicas, self.replication_factor
            )));
        }
        if self.global_replicas > 0 && self.regions.len() < 2 {
            return Err(GeoError::Config(format!(
                "global_replicas = {} needs a second region in regions",
                self.global_replicas
            )));
        }
        check_staleness_ms(self.max_staleness_ms)?;
        if self.session_token_ttl_ms < 1_000 || self.session_token_ttl_ms > 7 * 86_400_000 {
            return Err(GeoError::OutOfRange {
                name: "session_token_ttl_ms",
                value: self.session_token_ttl_ms.to_string(),
                reason: "must be 1000 (a second) to 604800000 (a week)".into(),
            });
        }
        Ok(())
    }
}

/// Which member each read replica streams from (`None` or absent: the leader). The
/// topology refuses a chain deeper than [`MAX_CHAIN_HOPS`] and a cycle, naming the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cascade {
    upstream: BTreeMap<NodeId, NodeId>,
}

impl Cascade {
    /// An empty topology: every replica streams from the leader.
    #[must_use]
    pub fn new() -> Cascade {
        Cascade::default()
    }

    /// Makes `replica` stream from `source`, if the chain it joins stays within the limit
    /// and has no cycle; otherwise nothing changes.
    pub fn set_upstream(&mut self, replica: NodeId, source: NodeId) -> Result<(), GeoError> {
        if replica == source {
            return Err(GeoError::Chain {
                chain: format!("{replica} -> {source}"),
                problem: "a cycle".into(),
            });
        }
        let previous = self.upstream.insert(replica, source);
        // Every chain through `replica` now ends in its new tail; check the longest.
        let mut checked = Ok(());
        for start in self.downstream_of(replica) {
            if let Err(e) = self.chain(start) {
                checked = Err(e);
                break;
            }
        }
        if checked.is_err() {
            match previous {
                Some(p) => self.upstream.insert(replica, p),
                None => self.upstream.remove(&replica),
            };
        }
        checked
    }

    /// Makes `replica` stream from the leader again.
    pub fn clear_upstream(&mut self, replica: NodeId) {
        self.upstream.remove(&replica);
    }

    /// Where `replica` streams from (`None`: the leader).
    #[must_use]
    pub fn upstream(&self, replica: NodeId) -> Option<NodeId> {
        self.upstream.get(&replica).copied()
    }

    /// The members from `replica` to the member streaming from the leader, and the number
    /// of hops to the leader (the chain's length).
    pub fn chain(&self, replica: NodeId) -> Result<Vec<NodeId>, GeoError> {
        let mut chain = vec![replica];
        let mut at = replica;
        while let Some(&next) = self.upstream.get(&at) {
            if chain.contains(&next) {
                chain.push(next);
                return Err(GeoError::Chain { chain: render(&chain, false), problem: "a cycle".into() });
            }
            chain.push(next);
            if chain.len() > MAX_CHAIN_HOPS {
                return Err(GeoError::Chain {
                    chain: render(&chain, !self.upstream.contains_key(&next)),
                    problem: format!(
                        "{} hops from the leader; at most {MAX_CHAIN_HOPS} are allowed",
                        self.hops_unbounded(replica)
                    ),
                });
            }
            at = next;
        }
        Ok(chain)
    }

    fn hops_unbounded(&self, replica: NodeId) -> usize {
        let mut hops = 1;
        let mut at = replica;
        let mut seen = BTreeSet::from([replica]);
        while let Some(&next) = self.upstream.get(&at) {
            if !seen.insert(next) {
                break;
            }
            hops += 1;
            at = next;
        }
        hops
    }

    fn downstream_of(&self, replica: NodeId) -> Vec<NodeId> {
        // Members whose chain passes through `replica` (the replica itself included).
        // The replica comes first, so an error names the chain that was changed.
        std::iter::once(replica)
            .chain(self.upstream.keys().copied().filter(|&k| k != replica))
            .filter(|&start| {
                let mut at = start;
                let mut steps = 0;
                loop {
                    if at == replica {
                        return true;
                    }
                    match self.upstream.get(&at) {
                        Some(&next) if steps <= self.upstream.len() => {
                            at = next;
                            steps += 1;
                        }
                        _ => return false,
                    }
                }
            })
            .collect()
    }
}

fn render(chain: &[NodeId], to_leader: bool) -> String {
    let mut text = chain.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> ");
    if to_leader {
        text.push_str(" -> leader");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_each_bad_setting_is_named() {
        GeoConfig::default().validate().unwrap();
        let good = GeoConfig {
            local_region: "us-east".into(),
            regions: vec!["us-east".into(), "eu-west".into()],
            replication_factor: 5,
            local_replicas: 3,
            global_replicas: 2,
            ..GeoConfig::default()
        };
        good.validate().unwrap();
        for (bad, says) in [
            (GeoConfig { local_region: "ap-south".into(), ..good.clone() }, "not among regions"),
            (GeoConfig { regions: vec!["us-east".into(), "us-east".into()], ..good.clone() }, "listed twice"),
            (GeoConfig { regions: vec!["us-east".into(), "EU".into()], ..good.clone() }, "region \"EU\""),
            (
                GeoConfig { replication_factor: 0, local_replicas: 0, global_replicas: 0, ..good.clone() },
                "replication_factor = 0",
            ),
            (GeoConfig { local_replicas: 2, ..good.clone() }, "must equal replication_factor"),
            (GeoConfig { regions: vec!["us-east".into()], ..good.clone() }, "needs a second region"),
            (GeoConfig { max_staleness_ms: 0, ..good.clone() }, "max_staleness_ms = 0"),
            (GeoConfig { session_token_ttl_ms: 10, ..good.clone() }, "session_token_ttl_ms = 10"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn chains_up_to_five_hops_are_allowed_and_deeper_ones_named() {
        let mut cascade = Cascade::new();
        // 6 -> 5 -> 4 -> 3 -> 2 -> leader: five hops.
        for (replica, source) in [(3, 2), (4, 3), (5, 4), (6, 5)] {
            cascade.set_upstream(NodeId(replica), NodeId(source)).unwrap();
        }
        assert_eq!(cascade.chain(NodeId(6)).unwrap(), [6, 5, 4, 3, 2].map(NodeId));
        let err = cascade.set_upstream(NodeId(7), NodeId(6)).unwrap_err().to_string();
        assert_eq!(
            err,
            "replication chain 7 -> 6 -> 5 -> 4 -> 3 -> 2 -> leader is 6 hops from the leader; at most 5 are allowed"
        );
        assert_eq!(cascade.upstream(NodeId(7)), None, "a refused change changes nothing");

        // Re-pointing the head of a chain lengthens every chain below it.
        let mut cascade2 = cascade.clone();
        cascade2.set_upstream(NodeId(9), NodeId(8)).unwrap();
        let err = cascade2.set_upstream(NodeId(2), NodeId(9)).unwrap_err().to_string();
        assert!(err.contains("at most 5"), "{err}");
        assert_eq!(cascade2.upstream(NodeId(2)), None);

        let err = cascade.set_upstream(NodeId(2), NodeId(6)).unwrap_err().to_string();
        assert!(err.contains("a cycle") && err.contains("2 -> 6 -> 5 -> 4 -> 3 -> 2"), "{err}");
        assert!(cascade.set_upstream(NodeId(2), NodeId(2)).unwrap_err().to_string().contains("a cycle"));
        cascade.clear_upstream(NodeId(3));
        assert_eq!(cascade.chain(NodeId(6)).unwrap(), [6, 5, 4, 3].map(NodeId));
    }
}
