//! Per-node Raft configuration, validated before a node starts.

use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::error::RaftError;
use crate::types::ReadOnlyOption;

/// The largest clock drift accepted, in parts per million (10%). Beyond it the lease is
/// too short to be worth having, and the clocks are too broken to trust.
pub const MAX_CLOCK_DRIFT_PPM: u32 = 100_000;

/// How one node runs Raft. Time is counted in ticks: the driver calls `tick()` at a fixed
/// interval (100 ms heartbeat / 500-1000 ms election timeout in production means a 50 ms tick
/// with `heartbeat_tick = 2`, `election_tick = 10`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node. Never `NodeId(0)`.
    pub id: NodeId,
    /// The cluster's name; votes are signed over it, so clusters never mix votes.
    pub cluster: String,
    /// Ticks without hearing from a leader before a follower campaigns. Each election
    /// waits a random timeout in `[election_tick, 2 * election_tick)`.
    pub election_tick: u64,
    /// Ticks between the leader's heartbeats. Must be below `election_tick`.
    pub heartbeat_tick: u64,
    /// Ask for pre-votes before campaigning, so a partitioned node rejoining does not
    /// disrupt the cluster with a higher term (dissertation §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum for an election timeout,
    /// and followers refuse votes while they hear from a leader. Required for lease reads.
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_only: ReadOnlyOption,
    /// The most two nodes' tick rates may differ, in parts per million. The lease is
    /// shortened by it (docs/raft.md, "Lease safety").
    pub max_clock_drift_ppm: u32,
    /// Most payload bytes in one append message.
    pub max_msg_bytes: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Most payload bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Most payload bytes the leader holds uncommitted; proposals beyond it are refused.
    pub max_uncommitted_bytes: u64,
    /// Most payload bytes of committed entries handed out in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// Send appends when the driver asks for a `Ready` rather than on every proposal, so
    /// the proposals made between two `Ready`s travel in one message per follower.
    pub batch_appends: bool,
    /// The seed of the election-timeout randomness; give each node its own.
    pub seed: u64,
    /// The last LSN the state machine applied before a restart; committed entries up to it
    /// are not handed out again.
    pub applied: Lsn,
}

impl Config {
    /// A configuration with the defaults: 10-tick elections, 2-tick heartbeats, pre-vote
    /// and check-quorum on, `ReadIndex` reads, 1% drift, 1 MiB messages, 256 in flight.
    #[must_use]
    pub fn new(id: NodeId, cluster: impl Into<String>) -> Config {
        Config {
            id,
            cluster: cluster.into(),
            election_tick: 10,
            heartbeat_tick: 2,
            pre_vote: true,
            check_quorum: true,
            read_only: ReadOnlyOption::Safe,
            max_clock_drift_ppm: 10_000,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            batch_appends: true,
            seed: id.0,
            applied: 0,
        }
    }

    /// Checks every value; the error names the key and the value.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad =
            |key, value: String, reason: &str| Err(RaftError::Config { key, value, reason: reason.into() });
        if self.id == NodeId(0) {
            return bad("id", "0".into(), "node ids start at 1");
        }
        if self.cluster.is_empty() || self.cluster.len() > 255 {
            return bad(
                "cluster",
                format!("{:?}", self.cluster),
                "the cluster name must have 1 to 255 bytes",
            );
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick", "0".into(), "must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad(
                "election_tick",
                self.election_tick.to_string(),
                &format!("must be above heartbeat_tick ({})", self.heartbeat_tick),
            );
        }
        if self.max_clock_drift_ppm > MAX_CLOCK_DRIFT_PPM {
            return bad(
                "max_clock_drift_ppm",
                self.max_clock_drift_ppm.to_string(),
                &format!("must be at most {MAX_CLOCK_DRIFT_PPM}"),
            );
        }
        if self.read_only == ReadOnlyOption::LeaseBased {
            if !self.check_quorum {
                return bad("read_only", "LeaseBased".into(), "lease reads need check_quorum = true");
            }
            if self.lease_ticks() == 0 {
                return bad(
                    "election_tick",
                    self.election_tick.to_string(),
                    "too short for a lease under the configured clock drift",
                );
            }
        }
        if self.max_msg_bytes == 0 {
            return bad("max_msg_bytes", "0".into(), "must be at least 1");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs", "0".into(), "must be at least 1");
        }
        if self.max_inflight_bytes < self.max_msg_bytes {
            return bad(
                "max_inflight_bytes",
                self.max_inflight_bytes.to_string(),
                &format!("must be at least max_msg_bytes ({})", self.max_msg_bytes),
            );
        }
        if self.max_uncommitted_bytes == 0 {
            return bad("max_uncommitted_bytes", "0".into(), "must be at least 1");
        }
        if self.max_committed_bytes_per_ready == 0 {
            return bad("max_committed_bytes_per_ready", "0".into(), "must be at least 1");
        }
        Ok(())
    }

    /// How many of its own ticks a leader may serve lease reads after sending the
    /// heartbeat a quorum acknowledged.
    ///
    /// A voter that received that heartbeat at real time `r` refuses other candidates for
    /// `election_tick` of its own ticks, which lasts at least `(election_tick - 1)` of its
    /// tick periods after `r` (the first tick may come at once). The leader counts from its
    /// tick count at sending, which may be about to advance, so its lease of `L` ticks lasts
    /// at most `(L + 1)` of its tick periods after the send, which was before `r`. With tick
    /// periods within `p(1 ± d)`, the lease ends before any voter of the quorum could vote
    /// for another leader when `(L + 1)(1 + d) <= (election_tick - 1)(1 - d)`.
    #[must_use]
    pub fn lease_ticks(&self) -> u64 {
        let d = u128::from(self.max_clock_drift_ppm);
        let window = u128::from(self.election_tick.saturating_sub(1));
        let bound = window * (1_000_000 - d) / (1_000_000 + d);
        u64::try_from(bound).unwrap_or(u64::MAX).saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new(NodeId(1), "c").validate().unwrap();
    }

    #[test]
    fn every_bad_value_is_named() {
        type Mutation = fn(&mut Config);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.id = NodeId(0), "id = 0"),
            (|c| c.cluster = String::new(), "cluster"),
            (|c| c.heartbeat_tick = 0, "heartbeat_tick = 0"),
            (|c| c.election_tick = 2, "election_tick = 2: must be above heartbeat_tick (2)"),
            (|c| c.max_clock_drift_ppm = 200_000, "max_clock_drift_ppm = 200000"),
            (
                |c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.check_quorum = false;
                },
                "lease reads need check_quorum",
            ),
            (
                |c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.election_tick = 3;
                },
                "too short for a lease",
            ),
            (|c| c.max_inflight_msgs = 0, "max_inflight_msgs = 0"),
            (|c| c.max_inflight_bytes = 1, "max_inflight_bytes = 1"),
            (|c| c.max_msg_bytes = 0, "max_msg_bytes = 0"),
        ];
        for (mutate, expected) in cases {
            let mut config = Config::new(NodeId(1), "c");
            mutate(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn the_lease_is_shorter_than_the_election_timeout_by_the_drift() {
        let mut config = Config::new(NodeId(1), "c");
        config.max_clock_drift_ppm = 0;
        assert_eq!(config.lease_ticks(), 8); // (10 - 1) - 1
        config.max_clock_drift_ppm = 50_000; // 5%: 9 * 0.95 / 1.05 = 8.14 -> 8 - 1
        assert_eq!(config.lease_ticks(), 7);
        config.max_clock_drift_ppm = MAX_CLOCK_DRIFT_PPM; // 9 * 0.9 / 1.1 = 7.36 -> 7 - 1
        assert_eq!(config.lease_ticks(), 6);
    }
}
