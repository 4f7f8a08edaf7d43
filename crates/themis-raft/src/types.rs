//! The state Raft persists and reports: hard state, membership, snapshots, roles, reads.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::error::RaftError;

/// What a node must persist before it answers a vote or an append (Raft §5.1): its term,
/// whom it voted for in that term, and how far it knows the log is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term the node has seen.
    pub term: u64,
    /// The candidate it voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest LSN it knows to be committed.
    pub commit: Lsn,
}

/// The cluster's membership: voters (in one configuration, or two while joint), and
/// learners, which receive the log but neither vote nor count towards a quorum.
///
/// While joint (`voters_outgoing` non-empty), every decision needs a majority of both
/// `voters` (the incoming configuration) and `voters_outgoing` (Raft §6 / dissertation
/// §4.3). `learners_next` holds voters being demoted: they stay voters of the outgoing
/// configuration until the joint state is left, then become learners.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration; empty unless joint.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Learners.
    pub learners: BTreeSet<NodeId>,
    /// Outgoing voters that become learners when the joint state is left.
    pub learners_next: BTreeSet<NodeId>,
}

impl ConfState {
    /// A configuration of `voters` only.
    #[must_use]
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState { voters: voters.into_iter().collect(), ..ConfState::default() }
    }

    /// Whether the configuration is joint.
    #[must_use]
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either configuration.
    #[must_use]
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner (now or after the joint state is left).
    #[must_use]
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Every member: voters of both configurations and learners.
    #[must_use]
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners);
        all.extend(&self.learners_next);
        all
    }

    /// Every voter of either configuration.
    #[must_use]
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }

    /// Checks the structural rules: at least one voter, no node both voter and learner.
    pub fn validate(&self) -> Result<(), RaftError> {
        if self.voters.is_empty() {
            return Err(RaftError::Membership { reason: "the configuration has no voters".into() });
        }
        if let Some(id) = self.learners.iter().find(|id| self.is_voter(**id)) {
            return Err(RaftError::Membership { reason: format!("node {id} is both a voter and a learner") });
        }
        if let Some(id) = self.learners_next.iter().find(|id| !self.voters_outgoing.contains(id)) {
            return Err(RaftError::Membership {
                reason: format!("node {id} is to become a learner but is not an outgoing voter"),
            });
        }
        Ok(())
    }
}

impl fmt::Display for ConfState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |set: &BTreeSet<NodeId>| set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        write!(f, "voters=({})", ids(&self.voters))?;
        if self.is_joint() {
            write!(f, "&&({})", ids(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners=({})", ids(&self.learners))?;
        }
        if !self.learners_next.is_empty() {
            write!(f, " learners_next=({})", ids(&self.learners_next))?;
        }
        Ok(())
    }
}

/// When a client write is acknowledged (DESIGN.md decision 3). Entries are applied only
/// once committed by a majority whatever the mode; the mode decides when the client is told
/// its write is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicationMode {
    /// Every voter holds the entry durably.
    Sync,
    /// The entry is committed and at least `min_sync_replicas` followers hold it durably.
    SemiSync,
    /// The leader holds the entry durably. A leader crash can lose it.
    Async,
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationMode::Sync => "SYNC",
            ReplicationMode::SemiSync => "SEMI_SYNC",
            ReplicationMode::Async => "ASYNC",
        })
    }
}

impl std::str::FromStr for ReplicationMode {
    type Err = RaftError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.to_ascii_uppercase().replace('-', "_").as_str() {
            "SYNC" => Ok(ReplicationMode::Sync),
            "SEMI_SYNC" | "SEMISYNC" => Ok(ReplicationMode::SemiSync),
            "ASYNC" => Ok(ReplicationMode::Async),
            _ => Err(RaftError::Mode {
                reason: format!("unknown replication mode {input:?}; expected SYNC, SEMI_SYNC or ASYNC"),
            }),
        }
    }
}

/// The acknowledgement rule the cluster agreed on: a mode and, for SYNC and `SEMI_SYNC`,
/// how many followers must hold an entry durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AckPolicy {
    /// The mode.
    pub mode: ReplicationMode,
    /// Followers that must hold an entry durably before `SEMI_SYNC` acknowledges it. SYNC
    /// waits for every voter, and still requires this to be at least 1, so that a
    /// configuration that would acknowledge with no replica at all is refused.
    pub min_sync_replicas: u32,
}

impl AckPolicy {
    /// ASYNC: the leader's durable copy.
    pub const ASYNC: AckPolicy = AckPolicy { mode: ReplicationMode::Async, min_sync_replicas: 0 };

    /// Checks the policy against a voter count. SYNC with `min_sync_replicas = 0`, and
    /// `min_sync_replicas` above the number of followers (voters - 1), are refused.
    pub fn validate(&self, voters: usize) -> Result<(), RaftError> {
        let followers = voters.saturating_sub(1);
        if self.mode == ReplicationMode::Sync && self.min_sync_replicas == 0 {
            return Err(RaftError::Mode {
                reason: "mode SYNC with min_sync_replicas = 0 would acknowledge writes no replica holds; \
                         set min_sync_replicas to at least 1"
                    .into(),
            });
        }
        if self.mode != ReplicationMode::Async && self.min_sync_replicas as usize > followers {
            return Err(RaftError::Mode {
                reason: format!(
                    "mode {} with min_sync_replicas = {} needs more followers than the {followers} of a {voters}-voter cluster",
                    self.mode, self.min_sync_replicas
                ),
            });
        }
        Ok(())
    }
}

impl Default for AckPolicy {
    fn default() -> Self {
        AckPolicy::ASYNC
    }
}

impl fmt::Display for AckPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            ReplicationMode::Async => write!(f, "{}", self.mode),
            _ => write!(f, "{}(min_sync_replicas={})", self.mode, self.min_sync_replicas),
        }
    }
}

/// What a snapshot covers: the log up to `lsn` (of `term`), under `conf_state` and `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last LSN the snapshot includes.
    pub lsn: Lsn,
    /// The term of that entry.
    pub term: u64,
    /// The membership as of `lsn`.
    pub conf_state: ConfState,
    /// The acknowledgement policy as of `lsn`.
    pub policy: AckPolicy,
}

/// A state machine snapshot and what it covers. `data` is opaque to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine's bytes.
    pub data: Bytes,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election before disrupting the cluster (pre-vote,
    /// dissertation §9.6).
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// State that is not persisted: the role and the known leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
}

/// A read that may be served once the state machine has applied `lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context, returned unchanged.
    pub ctx: Bytes,
    /// The commit LSN at the time of the request; serve the read after applying it.
    pub lsn: Lsn,
    /// Whether the leader answered from its lease, without a heartbeat round.
    pub lease: bool,
}

/// How reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// `ReadIndex`: a heartbeat round proves the leader still leads (dissertation §6.4).
    #[default]
    Safe,
    /// Lease: the leader answers at once while its lease is valid, and falls back to a
    /// heartbeat round otherwise. The lease bound is argued in docs/raft.md.
    LeaseBased,
}
