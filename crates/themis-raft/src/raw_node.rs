//! The API a driver uses: feed ticks, messages and proposals in; take a [`Ready`] out,
//! persist and send what it says, then [`RawNode::advance`].

use std::collections::BTreeMap;

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_wal::{Entry, EntryKind, Lsn};

use crate::confchange::{ConfigChange, MemberChange};
use crate::config::Config;
use crate::error::RaftError;
use crate::message::Message;
use crate::progress::ProgressState;
use crate::raft::Raft;
use crate::signing::{VoteRejections, VoteSigner};
use crate::storage::Storage;
use crate::types::{AckPolicy, ConfState, HardState, ReadState, Role, Snapshot, SoftState};

/// The acknowledgement point of a leader's term: client writes this leader proposed at
/// LSNs up to `lsn` in `term` are done under the cluster's [`AckPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// The leader's term.
    pub term: u64,
    /// The highest acknowledged LSN.
    pub lsn: Lsn,
}

/// What the driver must do next, in this order:
/// 1. install `snapshot` and append `entries` to storage, and persist `hard_state`
///    (durably, before step 3);
/// 2. send `messages` (these may go before step 1, in parallel with it);
/// 3. send `persisted_messages` (votes and append answers: they promise durability);
/// 4. apply `committed_entries`, serve `read_states` once their LSN is applied, answer
///    clients up to `acknowledged`;
/// 5. call [`RawNode::advance`].
#[derive(Debug, Default)]
pub struct Ready {
    /// The role or leader changed.
    pub soft_state: Option<SoftState>,
    /// The hard state changed; persist it.
    pub hard_state: Option<HardState>,
    /// A snapshot to install.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to storage (replacing any at or after the first's LSN).
    pub entries: Vec<Entry>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send once everything above is durable.
    pub persisted_messages: Vec<Message>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// The leader's acknowledgement point moved.
    pub acknowledged: Option<Acknowledged>,
    /// The committed membership or policy changed.
    pub conf_state: Option<(ConfState, AckPolicy)>,
}

impl Ready {
    /// Whether the driver must fsync before sending `persisted_messages`.
    #[must_use]
    pub fn must_sync(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

/// What the leader knows of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressStatus {
    /// The member's highest LSN known durable and matching.
    pub match_lsn: Lsn,
    /// The next LSN the leader sends it.
    pub next_lsn: Lsn,
    /// How the leader sends to it.
    pub state: ProgressState,
    /// Ticks since it last answered.
    pub last_contact_ticks: u64,
    /// Appends in flight to it.
    pub inflight_msgs: usize,
    /// Payload bytes in flight to it.
    pub inflight_bytes: u64,
    /// Whether it is a learner.
    pub learner: bool,
}

/// A node's state, for operators and health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The node.
    pub id: NodeId,
    /// Persisted state.
    pub hard_state: HardState,
    /// Role and leader.
    pub soft_state: SoftState,
    /// The last LSN in its log.
    pub last_lsn: Lsn,
    /// The last LSN durable here.
    pub persisted_lsn: Lsn,
    /// The last LSN handed out to apply.
    pub applied_lsn: Lsn,
    /// The committed membership.
    pub conf_state: ConfState,
    /// The committed acknowledgement policy.
    pub policy: AckPolicy,
    /// Leader: the acknowledged LSN.
    pub acknowledged_lsn: Lsn,
    /// Leader: whether its lease is valid now.
    pub lease_valid: bool,
    /// Leader: the member being handed leadership.
    pub lead_transferee: Option<NodeId>,
    /// Leader: every other member's progress.
    pub progress: BTreeMap<NodeId, ProgressStatus>,
    /// Votes refused for their signatures.
    pub vote_rejections: VoteRejections,
    /// Ticks since start.
    pub ticks: u64,
}

/// What the outstanding `Ready` handed out, to settle in `advance`.
#[derive(Debug, Default)]
struct Handed {
    last_entry: Option<(Lsn, u64)>,
    snapshot_lsn: Option<Lsn>,
    applied_to: Option<Lsn>,
}

/// A Raft node without I/O: a thread-unsafe state machine driven by its owner.
///
/// See the crate documentation for a complete loop.
pub struct RawNode<S> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    conf_version: u64,
    ack_version: u64,
    handed: Option<Handed>,
}

impl<S> std::fmt::Debug for RawNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawNode").field("raft", &self.raft).finish_non_exhaustive()
    }
}

impl<S: Storage> RawNode<S> {
    /// A node over `storage`, restarting from what it holds. `signer` signs and checks
    /// votes; `clock` stamps the entries this node creates (an HLC's `now`).
    pub fn new(
        config: Config,
        storage: S,
        signer: Box<dyn VoteSigner>,
        clock: impl Fn() -> Timestamp + Send + 'static,
    ) -> Result<RawNode<S>, RaftError> {
        let raft = Raft::new(config, storage, signer, Box::new(clock))?;
        let prev_hard = HardState { term: raft.term, vote: raft.vote, commit: raft.log.committed };
        let prev_soft = SoftState { role: raft.role, leader: raft.leader };
        let conf_version = raft.conf_version;
        Ok(RawNode { raft, prev_soft, prev_hard, conf_version, ack_version: 0, handed: None })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> Result<(), RaftError> {
        self.raft.tick()
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), RaftError> {
        self.raft.step(message)
    }

    /// Proposes application data; returns its LSN (leader only).
    pub fn propose(&mut self, payload: impl Into<Bytes>) -> Result<Lsn, RaftError> {
        self.raft.propose(EntryKind::DATA, payload.into())
    }

    /// Proposes an entry of another kind (not `CONFIG`).
    pub fn propose_entry(&mut self, kind: EntryKind, payload: impl Into<Bytes>) -> Result<Lsn, RaftError> {
        self.raft.propose(kind, payload.into())
    }

    /// Proposes a configuration change (membership or acknowledgement policy). One change
    /// at a time; it takes effect on every node when committed.
    pub fn propose_config(&mut self, change: &ConfigChange) -> Result<Lsn, RaftError> {
        self.raft.propose_config(change)
    }

    /// Changes membership through joint consensus; the leader leaves the joint state by
    /// itself once it commits.
    pub fn change_membership(&mut self, changes: Vec<MemberChange>) -> Result<Lsn, RaftError> {
        self.raft.propose_config(&ConfigChange::Membership(changes))
    }

    /// Changes the acknowledgement policy at run time, through the log.
    pub fn set_policy(&mut self, policy: AckPolicy) -> Result<Lsn, RaftError> {
        self.raft.propose_config(&ConfigChange::Policy(policy))
    }

    /// Asks for a linearizable read: a [`ReadState`] carrying `ctx` comes out in a later
    /// `Ready`. A follower forwards the request to its leader.
    pub fn read_index(&mut self, ctx: impl Into<Bytes>) -> Result<(), RaftError> {
        self.raft.read_index(ctx.into(), None)
    }

    /// Starts an election now (with a pre-vote when configured).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        self.raft.hup(false)
    }

    /// Hands leadership to `to` once it has caught up.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        self.raft.transfer_leader(to)
    }

    /// The transport could not reach `to`: stop pipelining to it until it answers.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// The transport finished (or failed) sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        self.raft.report_snapshot(to, ok);
    }

    /// Whether a `Ready` has work, and none is outstanding.
    #[must_use]
    pub fn has_ready(&self) -> bool {
        if self.handed.is_some() {
            return false;
        }
        let raft = &self.raft;
        SoftState { role: raft.role, leader: raft.leader } != self.prev_soft
            || self.hard_state() != self.prev_hard
            || raft.log.has_unstable_snapshot()
            || raft.log.has_unstable_entries()
            || raft.log.has_next_committed_entries()
            || !raft.msgs.is_empty()
            || !raft.msgs_after_persist.is_empty()
            || !raft.read_states.is_empty()
            || raft.has_deferred()
            || raft.conf_version != self.conf_version
            || (raft.ack_version != self.ack_version && raft.role == Role::Leader)
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.raft.term, vote: self.raft.vote, commit: self.raft.log.committed }
    }

    /// Takes the work to do. Call [`RawNode::advance`] once it is done, before the next
    /// `ready`.
    pub fn ready(&mut self) -> Result<Ready, RaftError> {
        if self.handed.is_some() {
            return Err(RaftError::ReadyOutstanding);
        }
        self.raft.flush()?;
        let raft = &mut self.raft;
        let mut ready = Ready::default();
        let soft = SoftState { role: raft.role, leader: raft.leader };
        if soft != self.prev_soft {
            ready.soft_state = Some(soft);
            self.prev_soft = soft;
        }
        let hard = HardState { term: raft.term, vote: raft.vote, commit: raft.log.committed };
        if hard != self.prev_hard {
            ready.hard_state = Some(hard);
            self.prev_hard = hard;
        }
        let mut handed = Handed::default();
        if let Some(snapshot) = raft.log.take_unstable_snapshot() {
            handed.snapshot_lsn = Some(snapshot.meta.lsn);
            ready.snapshot = Some(snapshot);
        }
        ready.entries = raft.log.take_unstable_entries();
        handed.last_entry = ready.entries.last().map(|e| (e.lsn, e.term));
        if ready.snapshot.is_none() {
            ready.committed_entries =
                raft.log.next_committed_entries(raft.config.max_committed_bytes_per_ready)?;
            handed.applied_to = ready.committed_entries.last().map(|e| e.lsn);
        }
        ready.messages = std::mem::take(&mut raft.msgs);
        ready.persisted_messages = std::mem::take(&mut raft.msgs_after_persist);
        ready.read_states = std::mem::take(&mut raft.read_states);
        if raft.ack_version != self.ack_version {
            self.ack_version = raft.ack_version;
            if raft.role == Role::Leader && raft.acknowledged > 0 {
                ready.acknowledged = Some(Acknowledged { term: raft.term, lsn: raft.acknowledged });
            }
        }
        if raft.conf_version != self.conf_version {
            self.conf_version = raft.conf_version;
            ready.conf_state = Some((raft.conf.clone(), raft.policy));
        }
        self.handed = Some(handed);
        Ok(ready)
    }

    /// Reports that the last `Ready` is done: its entries and snapshot are durable and its
    /// committed entries applied.
    pub fn advance(&mut self) -> Result<(), RaftError> {
        let handed = self.handed.take().ok_or(RaftError::NoReady)?;
        let raft = &mut self.raft;
        if let Some(lsn) = handed.snapshot_lsn {
            raft.log.stable_snapshot_to(lsn);
        }
        if let Some((lsn, term)) = handed.last_entry {
            raft.log.stable_to(lsn, term);
        }
        if let Some(lsn) = handed.applied_to {
            raft.log.applied_to(lsn);
        }
        raft.on_persisted()
    }

    /// The current term (cheap; [`status`](Self::status) builds a full report).
    #[must_use]
    pub fn term(&self) -> u64 {
        self.raft.term
    }

    /// The commit LSN this node knows of (cheap).
    #[must_use]
    pub fn committed(&self) -> Lsn {
        self.raft.log.committed
    }

    /// The node's role (cheap).
    #[must_use]
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The leader this node knows of.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader
    }

    /// Counts `ticks` of time that passed without [`tick`](Self::tick) being called (the
    /// driver stalled or the process was stopped), for the lease alone: a lease granted
    /// before the lost time expires by it, so a leader that resumes after a pause does not
    /// answer from a lease a newer leader has outlived. Election and heartbeat timers do
    /// not run: a node that was only busy does not time out the peers whose messages are
    /// still queued.
    pub fn advance_time(&mut self, ticks: u64) {
        self.raft.advance_time(ticks);
    }

    /// The newest closed point a leader's heartbeat carried: its whole commit LSN and its
    /// clock (HLC physical ms) when it sent it. Once this node has applied that LSN it
    /// holds every write committed before that time.
    #[must_use]
    pub fn closed(&self) -> Option<(Lsn, u64)> {
        self.raft.closed
    }

    /// The membership in force.
    #[must_use]
    pub fn conf_state(&self) -> &ConfState {
        &self.raft.conf
    }

    /// The node's state.
    #[must_use]
    pub fn status(&self) -> Status {
        let raft = &self.raft;
        let mut progress = BTreeMap::new();
        if raft.role == Role::Leader {
            for (id, pr) in &raft.progress {
                if *id == raft.id {
                    continue;
                }
                progress.insert(
                    *id,
                    ProgressStatus {
                        match_lsn: pr.match_lsn,
                        next_lsn: pr.next_lsn,
                        state: pr.state,
                        last_contact_ticks: raft.ticks.saturating_sub(pr.last_contact_tick),
                        inflight_msgs: pr.inflights.len(),
                        inflight_bytes: pr.inflights.bytes(),
                        learner: raft.conf.is_learner(*id),
                    },
                );
            }
        }
        Status {
            id: raft.id,
            hard_state: self.hard_state(),
            soft_state: SoftState { role: raft.role, leader: raft.leader },
            last_lsn: raft.log.last_lsn().unwrap_or(0),
            persisted_lsn: raft.log.persisted,
            applied_lsn: raft.log.applied,
            conf_state: raft.conf.clone(),
            policy: raft.policy,
            acknowledged_lsn: if raft.role == Role::Leader { raft.acknowledged } else { 0 },
            lease_valid: raft.lease_valid(),
            lead_transferee: raft.lead_transferee,
            progress,
            vote_rejections: raft.vote_rejections,
            ticks: raft.ticks,
        }
    }

    /// The storage, for the driver to write through.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }
}
