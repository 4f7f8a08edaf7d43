//! The Raft state machine: roles, terms, votes, replication, commit, reads, configuration.
//! Pure: it reads the log through [`Storage`] and its only outputs are messages and the
//! state a [`Ready`](crate::Ready) reports.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_wal::{Entry, EntryKind, Lsn};

use crate::confchange::{self, ConfigChange};
use crate::config::Config;
use crate::error::{RaftError, StorageError};
use crate::log::RaftLog;
use crate::message::{Body, Message};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{self, VoteResult};
use crate::signing::{Signature, VoteClaim, VoteRejections, VoteSigner};
use crate::storage::Storage;
use crate::types::{AckPolicy, ConfState, ReadOnlyOption, ReadState, ReplicationMode, Role, Snapshot};

/// Most reads a leader queues while its first entry of the term is not yet committed, and
/// most heartbeat rounds it remembers for the lease.
const MAX_QUEUED_READS: usize = 4096;
const MAX_ROUNDS: usize = 1024;

#[cfg(feature = "mutation")]
use crate::mutation::{Mutation, active as mutated};

#[cfg(not(feature = "mutation"))]
#[derive(Clone, Copy)]
enum Mutation {
    DoubleCountVote,
    LeaseOutlivesElection,
}

/// Without the `mutation` feature no rule is ever broken, and this folds away.
#[cfg(not(feature = "mutation"))]
#[allow(clippy::inline_always, reason = "a constant false that must fold away in every build")]
#[inline(always)]
fn mutated(_: Mutation) -> bool {
    false
}

/// The injected source of entry timestamps (an HLC in production, a simulated one in tests).
pub(crate) type TimeSource = Box<dyn Fn() -> Timestamp + Send>;

/// A read waiting for a heartbeat round to confirm leadership.
#[derive(Debug)]
struct PendingRead {
    ctx: Bytes,
    /// `None` for this node's own client; a follower that forwarded it otherwise.
    from: Option<NodeId>,
    lsn: Lsn,
    round: u64,
}

pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    /// The committed configuration.
    pub(crate) conf: ConfState,
    pub(crate) policy: AckPolicy,
    /// LSNs of configuration entries in the log that are not yet applied.
    config_lsns: BTreeSet<Lsn>,
    /// The highest LSN whose configuration effects are applied.
    config_applied: Lsn,
    /// Bumped whenever the configuration or policy changes, for `Ready`.
    pub(crate) conf_version: u64,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    pub(crate) msgs: Vec<Message>,
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    /// Ticks since this node last heard from a leader (or led, or started). While below
    /// `election_tick`, it refuses to vote for anyone else: the leader's lease rests on it.
    leader_contact_elapsed: u64,
    randomized_election_timeout: u64,
    pub(crate) ticks: u64,
    rng: fastrand::Rng,
    pub(crate) lead_transferee: Option<NodeId>,
    /// Leader: heartbeat rounds of this term, and the tick each was sent at.
    round: u64,
    round_ticks: VecDeque<(u64, u64)>,
    /// Rounds before this one do not back the lease (a transfer started after them).
    lease_min_round: u64,
    /// The newest (whole commit LSN, clock ms) a leader's heartbeat carried.
    pub(crate) closed: Option<(Lsn, u64)>,
    pending_reads: VecDeque<PendingRead>,
    reads_before_commit: Vec<(Bytes, Option<NodeId>)>,
    read_round_due: bool,
    bcast_due: bool,
    /// Leader: entries it appended that are not yet committed, for the uncommitted bound.
    uncommitted: VecDeque<(Lsn, u64)>,
    uncommitted_bytes: u64,
    pub(crate) acknowledged: Lsn,
    pub(crate) ack_version: u64,
    signer: Box<dyn VoteSigner>,
    pub(crate) vote_rejections: VoteRejections,
    clock: TimeSource,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(
        config: Config,
        storage: S,
        signer: Box<dyn VoteSigner>,
        clock: TimeSource,
    ) -> Result<Self, RaftError> {
        config.validate()?;
        let initial = storage.initial_state()?;
        if !initial.conf_state.voters.is_empty() {
            // A node joining later may start with no membership and learn it from the
            // leader; a bootstrap membership or policy must be valid.
            initial.conf_state.validate()?;
            initial.policy.validate(initial.conf_state.voters.len())?;
        }
        let log = RaftLog::new(storage, config.applied)?;
        let mut raft = Raft {
            id: config.id,
            term: initial.hard_state.term,
            vote: initial.hard_state.vote,
            log,
            role: Role::Follower,
            leader: None,
            conf: initial.conf_state,
            policy: initial.policy,
            config_lsns: BTreeSet::new(),
            config_applied: 0,
            conf_version: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            leader_contact_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            ticks: 0,
            rng: fastrand::Rng::with_seed(config.seed),
            lead_transferee: None,
            round: 0,
            round_ticks: VecDeque::new(),
            lease_min_round: 0,
            closed: None,
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            read_round_due: false,
            bcast_due: false,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            acknowledged: 0,
            ack_version: 0,
            signer,
            vote_rejections: VoteRejections::default(),
            clock,
            config,
        };
        // A node that ever saw a term may have promised a leader not to vote for election_tick
        // ticks, and forgot when it crashed: it keeps the promise from its start. A node at
        // term 0 never promised anything (heartbeat answers leave only after the term is
        // durable).
        if raft.term == 0 {
            raft.leader_contact_elapsed = raft.config.election_tick;
        }
        raft.config_applied = raft.log.first_lsn()? - 1;
        raft.scan_config_entries(raft.log.first_lsn()?)?;
        raft.apply_committed_configs()?;
        raft.reset_timeouts();
        Ok(raft)
    }

    // ---- configuration entries -------------------------------------------------------

    /// Records the configuration entries from `from` to the end of the log.
    fn scan_config_entries(&mut self, from: Lsn) -> Result<(), RaftError> {
        let last = self.log.last_lsn()?;
        let mut at = from;
        while at <= last {
            let chunk = self.log.slice(at, last + 1, self.config.max_committed_bytes_per_ready)?;
            let Some(end) = chunk.last().map(|e| e.lsn) else { break };
            self.note_entries(&chunk);
            at = end + 1;
        }
        Ok(())
    }

    fn note_entries(&mut self, entries: &[Entry]) {
        for entry in entries {
            if entry.kind == EntryKind::CONFIG {
                self.config_lsns.insert(entry.lsn);
            } else {
                self.config_lsns.remove(&entry.lsn);
            }
        }
    }

    /// The latest configuration entry in the log that is not yet committed.
    fn pending_config(&self) -> Option<Lsn> {
        self.config_lsns.range(self.log.committed + 1..).next_back().copied()
    }

    /// Applies configuration entries up to the commit LSN, in order.
    fn apply_committed_configs(&mut self) -> Result<(), RaftError> {
        let committed = self.log.committed;
        if committed <= self.config_applied {
            return Ok(());
        }
        let due: Vec<Lsn> = self.config_lsns.range(self.config_applied + 1..=committed).copied().collect();
        for lsn in due {
            let entries = self.log.slice(lsn, lsn + 1, u64::MAX)?;
            let Some(entry) = entries.first() else { continue };
            self.config_lsns.remove(&lsn);
            self.apply_config(lsn, &entry.payload);
        }
        self.config_applied = self.config_applied.max(committed);
        Ok(())
    }

    /// Applies one committed configuration entry. Every node applies the same entries in
    /// the same order, so a change that is invalid here is invalid everywhere and is
    /// skipped everywhere; the leader validated it when proposing.
    fn apply_config(&mut self, lsn: Lsn, payload: &[u8]) {
        let next = match ConfigChange::decode(lsn, payload) {
            Ok(ConfigChange::Membership(changes)) => {
                confchange::enter(&self.conf, &changes).map(|c| (c, self.policy))
            }
            Ok(ConfigChange::LeaveJoint) => confchange::leave(&self.conf).map(|c| (c, self.policy)),
            Ok(ConfigChange::Policy(policy)) => {
                policy.validate(self.conf.voters.len()).map(|()| (self.conf.clone(), policy))
            }
            Err(err) => Err(err),
        };
        let (conf, policy) = match next {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(node = %self.id, lsn, %err, "skipping an invalid configuration entry");
                return;
            }
        };
        tracing::info!(node = %self.id, lsn, %conf, %policy, "configuration applied");
        self.conf = conf;
        self.policy = policy;
        self.conf_version += 1;
        if self.role == Role::Leader {
            self.sync_progress_to_conf();
            if !self.conf.is_voter(self.id) && !self.conf.is_joint() {
                // Removed (or demoted) and the joint state left: hand over by stepping down.
                self.become_follower(self.term, None);
                return;
            }
            if self.conf.is_joint() && self.pending_config().is_none() {
                // Auto-leave: the joint configuration is committed, so leave it.
                let change = ConfigChange::LeaveJoint;
                if let Err(err) = self.append_leader_entry(EntryKind::CONFIG, Bytes::from(change.encode())) {
                    tracing::warn!(node = %self.id, %err, "could not propose leaving the joint configuration");
                }
            }
        }
    }

    fn sync_progress_to_conf(&mut self) {
        let members = self.conf.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_lsn().unwrap_or(0) + 1;
        for id in members {
            let ticks = self.ticks;
            self.progress.entry(id).or_insert_with(|| Progress::new(next, ticks));
        }
        self.bcast_due = true;
    }

    // ---- roles ---------------------------------------------------------------------------

    fn reset_timeouts(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let spread = self.config.election_tick;
        self.randomized_election_timeout = self.config.election_tick + self.rng.u64(0..spread);
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.reset_timeouts();
        self.votes.clear();
        self.lead_transferee = None;
        self.pending_reads.clear();
        self.reads_before_commit.clear();
        self.read_round_due = false;
        self.bcast_due = false;
        self.round = 0;
        self.round_ticks.clear();
        self.lease_min_round = 0;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.progress.clear();
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.leader_contact_elapsed = 0;
        }
    }

    fn become_pre_candidate(&mut self) {
        // Pre-vote does not change the term or the vote (dissertation §9.6).
        self.votes.clear();
        self.leader = None;
        self.role = Role::PreCandidate;
        self.reset_timeouts();
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) -> Result<(), RaftError> {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.acknowledged = 0;
        self.ack_version += 1;
        let last = self.log.last_lsn()?;
        self.progress.clear();
        for id in self.conf.members() {
            self.progress.insert(id, Progress::new(last + 1, self.ticks));
        }
        if let Some(me) = self.progress.get_mut(&self.id) {
            me.match_lsn = self.log.persisted;
            me.become_replicate();
        }
        tracing::info!(node = %self.id, term, "became leader");
        // A no-op commits the entries of earlier terms (Raft §5.4.2, §8).
        self.append_leader_entry(EntryKind::NO_OP, Bytes::new())?;
        if self.conf.is_joint() && self.pending_config().is_none() {
            self.append_leader_entry(EntryKind::CONFIG, Bytes::from(ConfigChange::LeaveJoint.encode()))?;
        }
        Ok(())
    }

    fn promotable(&self) -> bool {
        self.conf.is_voter(self.id)
    }

    // ---- ticks -----------------------------------------------------------------------------

    /// Moves the clock that leases and contact ages are measured by, without running the
    /// election and heartbeat timers (see [`crate::RawNode::advance_time`]).
    pub(crate) fn advance_time(&mut self, ticks: u64) {
        self.ticks += ticks;
    }

    pub(crate) fn tick(&mut self) -> Result<(), RaftError> {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
            Ok(())
        } else {
            self.election_elapsed += 1;
            self.leader_contact_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                self.election_elapsed = 0;
                self.hup(false)?;
            }
            Ok(())
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        self.leader_contact_elapsed = 0;
        for (id, pr) in &mut self.progress {
            if *id != self.id && pr.state == ProgressState::Snapshot {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks > 2 * self.config.election_tick {
                    // The snapshot (or its answer) was lost; probe again.
                    pr.become_probe();
                }
            }
        }
        if self.election_elapsed >= self.config.election_tick {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let me = self.id;
                let active = quorum::is_quorum(&self.conf, |id| {
                    id == me || self.progress.get(&id).is_some_and(|p| p.recent_active)
                });
                if !active {
                    tracing::info!(node = %me, term = self.term, "stepping down: no quorum heard from");
                    self.become_follower(self.term, None);
                    return;
                }
                for (id, pr) in &mut self.progress {
                    if *id != me {
                        pr.recent_active = false;
                    }
                }
            }
            if self.lead_transferee.take().is_some() {
                // The transfer did not finish within an election timeout: lead on, but
                // only rounds sent from now back the lease.
                self.lease_min_round = self.round + 1;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    // ---- elections -----------------------------------------------------------------------

    /// Starts an election: a pre-vote first unless `transfer` (a leadership transfer skips
    /// it and overrides leases).
    pub(crate) fn hup(&mut self, transfer: bool) -> Result<(), RaftError> {
        if self.role == Role::Leader || !self.promotable() {
            return Ok(());
        }
        if self.config.pre_vote && !transfer {
            self.campaign(true, false)
        } else {
            self.campaign(false, transfer)
        }
    }

    fn campaign(&mut self, pre_vote: bool, force: bool) -> Result<(), RaftError> {
        let vote_term = if pre_vote {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        let (last_lsn, last_term) = (self.log.last_lsn()?, self.log.last_term()?);
        self.votes.insert(self.id, true);
        if quorum::vote_result(&self.conf, &self.votes) == VoteResult::Won {
            // A single voter.
            return if pre_vote { self.campaign(false, force) } else { self.become_leader() };
        }
        let voters: Vec<NodeId> = self.conf.all_voters().into_iter().filter(|id| *id != self.id).collect();
        for voter in voters {
            let claim = VoteClaim {
                cluster: self.config.cluster.clone(),
                term: vote_term,
                candidate: self.id,
                voter,
                last_lsn,
                last_term,
                pre_vote,
                response: false,
                granted: false,
            };
            let signature = self.signer.sign(&claim);
            // Sent once the term and self-vote are durable, so a crash cannot make this
            // node vote twice in one term.
            self.msgs_after_persist.push(Message {
                from: self.id,
                to: voter,
                term: vote_term,
                body: Body::Vote { claim, signature, force },
            });
        }
        Ok(())
    }

    /// Checks a vote message's signature and claim; counts and drops a bad one.
    fn vote_is_authentic(
        &mut self,
        m: &Message,
        claim: &VoteClaim,
        signature: &Signature,
        response: bool,
    ) -> bool {
        let signer = m.from;
        if signature.0.is_empty() {
            self.vote_rejections.unsigned += 1;
            tracing::warn!(node = %self.id, from = %signer, "unsigned vote rejected");
            return false;
        }
        if !self.signer.verify(signer, claim, signature) {
            self.vote_rejections.invalid += 1;
            tracing::warn!(node = %self.id, from = %signer, "vote with an invalid signature rejected");
            return false;
        }
        let (candidate, voter) = if response { (m.to, m.from) } else { (m.from, m.to) };
        let matches = claim.cluster == self.config.cluster
            && claim.term == m.term
            && claim.candidate == candidate
            && claim.voter == voter
            && claim.response == response;
        if !matches {
            self.vote_rejections.replayed += 1;
            tracing::warn!(node = %self.id, from = %signer, term = claim.term, "replayed vote rejected");
        }
        matches
    }

    fn handle_vote_request(&mut self, m: &Message, claim: &VoteClaim, force: bool) -> Result<(), RaftError> {
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (claim.pre_vote && m.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(claim.last_lsn, claim.last_term)?;
        if granted && !claim.pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
        }
        tracing::debug!(node = %self.id, candidate = %m.from, term = m.term, granted, pre_vote = claim.pre_vote, force, "vote");
        // A granted pre-vote answers in the candidate's future term; anything else in ours.
        let term = if granted && claim.pre_vote { m.term } else { self.term };
        self.answer_vote(m.from, claim, granted, term);
        Ok(())
    }

    /// Signs and queues the answer to `claim`. After persist: a granted vote is a promise
    /// that must survive a crash.
    fn answer_vote(&mut self, candidate: NodeId, claim: &VoteClaim, granted: bool, term: u64) {
        let answer = VoteClaim { voter: self.id, response: true, granted, term, ..claim.clone() };
        let signature = self.signer.sign(&answer);
        self.msgs_after_persist.push(Message {
            from: self.id,
            to: candidate,
            term,
            body: Body::VoteResponse { claim: answer, signature },
        });
    }

    /// Queues `body` to `to`, in this node's term, to send at once.
    fn send(&mut self, to: NodeId, body: Body) {
        self.msgs.push(Message { from: self.id, to, term: self.term, body });
    }

    /// Queues `body` to `to`, in this node's term, to send once the `Ready` is persisted.
    fn send_after_persist(&mut self, to: NodeId, body: Body) {
        self.msgs_after_persist.push(Message { from: self.id, to, term: self.term, body });
    }

    fn handle_vote_response(&mut self, m: &Message, claim: &VoteClaim) -> Result<(), RaftError> {
        let expected = match self.role {
            Role::PreCandidate if claim.pre_vote => self.term + 1,
            Role::Candidate if !claim.pre_vote => self.term,
            _ => return Ok(()),
        };
        if m.term != expected && claim.granted {
            return Ok(());
        }
        self.votes.insert(m.from, claim.granted);
        if mutated(Mutation::DoubleCountVote) && claim.granted {
            let phantom = self.conf.all_voters().into_iter().find(|id| !self.votes.contains_key(id));
            if let Some(phantom) = phantom {
                self.votes.insert(phantom, true);
            }
        }
        match quorum::vote_result(&self.conf, &self.votes) {
            VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                self.become_follower(self.term, None);
                Ok(())
            }
            VoteResult::Pending => Ok(()),
        }
    }

    // ---- step ----------------------------------------------------------------------------

    pub(crate) fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.to != self.id {
            return Err(RaftError::Message {
                from: m.from,
                reason: format!("addressed to node {}, not {}", m.to, self.id),
            });
        }
        if m.from == self.id {
            return Err(RaftError::Message { from: m.from, reason: "a node does not message itself".into() });
        }
        let authentic = match &m.body {
            Body::Vote { claim, signature, .. } => self.vote_is_authentic(&m, claim, signature, false),
            Body::VoteResponse { claim, signature } => self.vote_is_authentic(&m, claim, signature, true),
            _ => true,
        };
        if !authentic {
            return Ok(());
        }

        if m.term > self.term {
            match &m.body {
                Body::Vote { claim, force, .. } => {
                    let in_lease = self.config.check_quorum
                        && !force
                        && self.leader_contact_elapsed < self.config.election_tick;
                    if in_lease {
                        // A leader was heard from recently: its lease forbids a new one.
                        tracing::debug!(node = %self.id, candidate = %m.from, term = m.term, "vote ignored within lease");
                        return Ok(());
                    }
                    if !claim.pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                Body::VoteResponse { claim, .. } if claim.pre_vote && claim.granted => {}
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot(_) => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                Body::Append { .. } | Body::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    // A stale leader: our higher term in the answer makes it step down.
                    self.send(
                        m.from,
                        Body::AppendResponse { reject: true, lsn: 0, hint_lsn: 0, hint_term: 0 },
                    );
                }
                Body::Vote { claim, .. } if claim.pre_vote => {
                    self.answer_vote(m.from, claim, false, self.term);
                }
                _ => {}
            }
            return Ok(());
        }

        match &m.body {
            Body::Vote { claim, force, .. } => return self.handle_vote_request(&m, claim, *force),
            Body::VoteResponse { claim, .. } => return self.handle_vote_response(&m, claim),
            _ => {}
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Follower => self.step_follower(m),
            Role::PreCandidate | Role::Candidate => match m.body {
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot(_) => {
                    self.become_follower(m.term, Some(m.from));
                    self.step_follower(m)
                }
                _ => Ok(()),
            },
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), RaftError> {
        match m.body {
            Body::Append { prev_lsn, prev_term, entries, commit } => {
                self.heard_from_leader(m.from);
                self.handle_append(m.from, prev_lsn, prev_term, &entries, commit)
            }
            Body::Heartbeat { commit, round, closed, closed_ms } => {
                self.heard_from_leader(m.from);
                if self.closed.is_none_or(|(lsn, ms)| closed >= lsn && closed_ms >= ms) {
                    self.closed = Some((closed, closed_ms));
                }
                let last = self.log.last_lsn()?;
                self.log.commit_to(commit.min(last));
                self.on_commit()?;
                // After persist: the answer renews the leader's lease, a promise this node
                // must still keep after a crash, so its term must be durable first.
                self.send_after_persist(m.from, Body::HeartbeatResponse { round });
                Ok(())
            }
            Body::Snapshot(snapshot) => {
                self.heard_from_leader(m.from);
                self.handle_snapshot(m.from, snapshot)
            }
            Body::TimeoutNow => {
                tracing::info!(node = %self.id, from = %m.from, "leadership transfer: campaigning now");
                self.hup(true)
            }
            Body::ReadIndexResponse { ctx, lsn } => {
                if let Some(lsn) = lsn {
                    self.read_states.push(ReadState { ctx, lsn, lease: false });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader_contact_elapsed = 0;
        self.leader = Some(leader);
    }

    fn handle_append(
        &mut self,
        leader: NodeId,
        prev_lsn: Lsn,
        prev_term: u64,
        entries: &[Entry],
        commit: Lsn,
    ) -> Result<(), RaftError> {
        let accept = |lsn| Body::AppendResponse { reject: false, lsn, hint_lsn: 0, hint_term: 0 };
        if prev_lsn < self.log.committed {
            self.send_after_persist(leader, accept(self.log.committed));
            return Ok(());
        }
        if let Some(last_new) = self.log.maybe_append(prev_lsn, prev_term, entries)? {
            self.note_entries(entries);
            let last = self.log.last_lsn()?;
            self.config_lsns.retain(|lsn| *lsn <= last);
            self.log.commit_to(commit.min(last_new));
            self.on_commit()?;
            self.send_after_persist(leader, accept(last_new));
        } else {
            let probe = prev_lsn.min(self.log.last_lsn()?);
            let (hint_lsn, hint_term) = self.log.find_conflict_by_term(probe, prev_term);
            self.send_after_persist(
                leader,
                Body::AppendResponse { reject: true, lsn: prev_lsn, hint_lsn, hint_term },
            );
        }
        Ok(())
    }

    fn handle_snapshot(&mut self, leader: NodeId, snapshot: Snapshot) -> Result<(), RaftError> {
        let meta = snapshot.meta.clone();
        let lsn = if meta.lsn <= self.log.committed {
            self.log.committed
        } else if self.log.match_term(meta.lsn, meta.term) {
            // The log already holds it: just learn the commit.
            self.log.commit_to(meta.lsn);
            self.on_commit()?;
            self.log.last_lsn()?
        } else {
            tracing::info!(node = %self.id, lsn = meta.lsn, term = meta.term, "installing snapshot");
            self.log.restore(snapshot);
            self.conf = meta.conf_state;
            self.policy = meta.policy;
            self.config_lsns.clear();
            self.config_applied = meta.lsn;
            self.conf_version += 1;
            meta.lsn
        };
        self.send_after_persist(
            leader,
            Body::AppendResponse { reject: false, lsn, hint_lsn: 0, hint_term: 0 },
        );
        Ok(())
    }

    // ---- leader ----------------------------------------------------------------------------

    fn step_leader(&mut self, m: Message) -> Result<(), RaftError> {
        let from = m.from;
        if let Body::ReadIndex { ctx } = m.body {
            return self.read_index(ctx, Some(from));
        }
        let ticks = self.ticks;
        let Some(pr) = self.progress.get_mut(&from) else { return Ok(()) };
        pr.recent_active = true;
        pr.last_contact_tick = ticks;
        match m.body {
            Body::AppendResponse { reject: true, lsn, hint_lsn, hint_term } => {
                let mut next_probe = hint_lsn;
                if hint_term > 0 {
                    next_probe = self.log.find_conflict_by_term(hint_lsn, hint_term).0;
                }
                let pr = self.progress.get_mut(&from).expect("checked above");
                if pr.maybe_decr_to(lsn, next_probe) {
                    if pr.state == ProgressState::Replicate {
                        pr.become_probe();
                    }
                    self.send_append(from, true)?;
                }
            }
            Body::AppendResponse { reject: false, lsn, .. } => {
                let pr = self.progress.get_mut(&from).expect("checked above");
                let was_paused = pr.is_paused(self.config.max_inflight_msgs, self.config.max_inflight_bytes);
                if pr.maybe_update(lsn) {
                    match pr.state {
                        ProgressState::Probe => pr.become_replicate(),
                        ProgressState::Snapshot if pr.match_lsn >= pr.pending_snapshot => {
                            pr.become_probe();
                            pr.become_replicate();
                        }
                        ProgressState::Snapshot => {}
                        ProgressState::Replicate => pr.inflights.free_to(lsn),
                    }
                    if self.maybe_commit()? {
                        self.bcast_append()?;
                    } else if was_paused {
                        // It may have missed the commit broadcast while paused: one append,
                        // even empty, carries the commit LSN.
                        self.send_append(from, true)?;
                    }
                    // Keep the pipeline full while there is more to send.
                    while self.send_append(from, false)? {}
                    self.update_acknowledged();
                    let last = self.log.last_lsn()?;
                    if self.lead_transferee == Some(from) && self.progress[&from].match_lsn == last {
                        self.send_timeout_now(from);
                    }
                }
            }
            Body::HeartbeatResponse { round } => {
                let pr = self.progress.get_mut(&from).expect("checked above");
                pr.on_heartbeat_answer();
                // A round this leader never sent counts as nothing.
                pr.acked_round = pr.acked_round.max(round.min(self.round));
                let probing = pr.state == ProgressState::Probe;
                let behind = pr.match_lsn < self.log.last_lsn()?;
                if behind {
                    // A probe goes out even empty: when the last probe or its answer was
                    // lost and the leader has nothing new, only an empty append finds
                    // where the follower's log ends.
                    self.send_append(from, probing)?;
                }
                self.release_reads();
            }
            _ => {}
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        tracing::info!(node = %self.id, to = %to, "leadership transfer: sending TimeoutNow");
        self.send(to, Body::TimeoutNow);
    }

    /// Sends the next append to `to` if its progress allows; returns whether it sent one
    /// carrying entries (or an empty one when `send_if_empty`).
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> Result<bool, RaftError> {
        if self.role != Role::Leader {
            // Stepped down while handling this message (removed by a configuration).
            return Ok(false);
        }
        let Some(pr) = self.progress.get(&to) else { return Ok(false) };
        if pr.is_paused(self.config.max_inflight_msgs, self.config.max_inflight_bytes) {
            return Ok(false);
        }
        let next = pr.next_lsn;
        let prev_lsn = next - 1;
        let prev_term = self.log.term(prev_lsn);
        let entries = self.log.entries(next, self.config.max_msg_bytes);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(term), Ok(entries)) => (term, entries),
            (Err(StorageError::Compacted { .. }), _) | (_, Err(StorageError::Compacted { .. })) => {
                return self.send_snapshot(to);
            }
            (Err(err), _) | (_, Err(err)) => return Err(err.into()),
        };
        if entries.is_empty() && !send_if_empty {
            return Ok(false);
        }
        let last = entries.last().map(|e| e.lsn);
        let bytes: u64 = entries.iter().map(|e| e.payload.len() as u64).sum();
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.sent_entries(last, bytes);
        let commit = self.log.committed;
        self.send(to, Body::Append { prev_lsn, prev_term, entries, commit });
        Ok(last.is_some())
    }

    fn send_snapshot(&mut self, to: NodeId) -> Result<bool, RaftError> {
        let snapshot = match self.log.storage.snapshot() {
            Ok(snapshot) => snapshot,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return Ok(false),
            Err(err) => return Err(err.into()),
        };
        tracing::info!(node = %self.id, to = %to, lsn = snapshot.meta.lsn, "sending snapshot");
        let pr = self.progress.get_mut(&to).expect("caller checked");
        pr.become_snapshot(snapshot.meta.lsn);
        self.send(to, Body::Snapshot(snapshot));
        Ok(false)
    }

    fn bcast_append(&mut self) -> Result<(), RaftError> {
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|id| *id != self.id).collect();
        for id in peers {
            self.send_append(id, true)?;
        }
        Ok(())
    }

    fn bcast_heartbeat(&mut self) {
        self.round += 1;
        self.round_ticks.push_back((self.round, self.ticks));
        while self.round_ticks.len() > MAX_ROUNDS {
            self.round_ticks.pop_front();
        }
        self.read_round_due = false;
        let beats: Vec<(NodeId, Lsn)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, pr)| (*id, pr.match_lsn.min(self.log.committed)))
            .collect();
        let closed = self.log.committed;
        let closed_ms = (self.clock)().physical_ms();
        for (to, commit) in beats {
            self.send(to, Body::Heartbeat { commit, round: self.round, closed, closed_ms });
        }
    }

    /// Sends what batching deferred: appends for new proposals, a heartbeat round for
    /// queued reads.
    pub(crate) fn flush(&mut self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Ok(());
        }
        if std::mem::take(&mut self.bcast_due) {
            self.bcast_append()?;
        }
        if self.read_round_due {
            self.bcast_heartbeat();
        }
        Ok(())
    }

    pub(crate) fn has_deferred(&self) -> bool {
        self.role == Role::Leader && (self.bcast_due || self.read_round_due)
    }

    fn durable_lsn_of(&self, id: NodeId) -> Lsn {
        if id == self.id { self.log.persisted } else { self.progress.get(&id).map_or(0, |p| p.match_lsn) }
    }

    /// Commits what a quorum holds durably, if it is of this term. Returns whether the
    /// commit LSN moved.
    fn maybe_commit(&mut self) -> Result<bool, RaftError> {
        let mut moved = false;
        // Applying a configuration can change the quorum; a few rounds settle it.
        for _ in 0..4 {
            let lsn = quorum::committed_lsn(&self.conf, |id| self.durable_lsn_of(id));
            if !self.log.maybe_commit(lsn, self.term) {
                break;
            }
            moved = true;
            self.on_commit()?;
            if self.role != Role::Leader {
                break;
            }
        }
        Ok(moved)
    }

    /// Effects of a higher commit LSN: configurations, reads waiting on the first commit
    /// of the term, the uncommitted bound, the acknowledged LSN.
    fn on_commit(&mut self) -> Result<(), RaftError> {
        self.apply_committed_configs()?;
        if self.role != Role::Leader {
            return Ok(());
        }
        while self.uncommitted.front().is_some_and(|(lsn, _)| *lsn <= self.log.committed) {
            let (_, bytes) = self.uncommitted.pop_front().expect("checked");
            self.uncommitted_bytes -= bytes;
        }
        if self.committed_in_term() && !self.reads_before_commit.is_empty() {
            for (ctx, from) in std::mem::take(&mut self.reads_before_commit) {
                self.read_index(ctx, from)?;
            }
        }
        self.update_acknowledged();
        Ok(())
    }

    /// Recomputes the acknowledged LSN under the policy (DESIGN.md decision 3).
    fn update_acknowledged(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let committed = self.log.committed;
        let lsn = match self.policy.mode {
            ReplicationMode::Async => self.log.persisted,
            ReplicationMode::SemiSync => {
                let mut followers: Vec<Lsn> = self
                    .conf
                    .all_voters()
                    .into_iter()
                    .filter(|id| *id != self.id)
                    .map(|id| self.durable_lsn_of(id))
                    .collect();
                followers.sort_unstable_by(|a, b| b.cmp(a));
                let k = self.policy.min_sync_replicas as usize;
                let replicas = if k == 0 { Lsn::MAX } else { followers.get(k - 1).copied().unwrap_or(0) };
                committed.min(replicas).min(self.log.persisted)
            }
            ReplicationMode::Sync => {
                let all =
                    self.conf.all_voters().into_iter().map(|id| self.durable_lsn_of(id)).min().unwrap_or(0);
                committed.min(all)
            }
        };
        if lsn > self.acknowledged {
            self.acknowledged = lsn;
            self.ack_version += 1;
        }
    }

    pub(crate) fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed).is_ok_and(|t| t == self.term)
    }

    /// The leader persisted its log up to `lsn`.
    pub(crate) fn on_persisted(&mut self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let persisted = self.log.persisted;
        if let Some(me) = self.progress.get_mut(&self.id) {
            me.maybe_update(persisted);
        }
        if self.maybe_commit()? {
            self.bcast_append()?;
        }
        self.update_acknowledged();
        Ok(())
    }

    fn append_leader_entry(&mut self, kind: EntryKind, payload: Bytes) -> Result<Lsn, RaftError> {
        let lsn = self.log.last_lsn()? + 1;
        let bytes = payload.len() as u64;
        let entry = Entry { lsn, term: self.term, timestamp: (self.clock)(), kind, payload };
        self.log.append(std::slice::from_ref(&entry))?;
        self.note_entries(std::slice::from_ref(&entry));
        self.uncommitted.push_back((lsn, bytes));
        self.uncommitted_bytes += bytes;
        if self.config.batch_appends {
            self.bcast_due = true;
        } else {
            self.bcast_append()?;
        }
        Ok(lsn)
    }

    fn check_proposal(&self, bytes: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { node: self.id, leader: self.leader });
        }
        if let Some(to) = self.lead_transferee {
            return Err(RaftError::TransferInProgress { to });
        }
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + bytes > self.config.max_uncommitted_bytes {
            return Err(RaftError::ProposalDropped { bytes, max: self.config.max_uncommitted_bytes });
        }
        Ok(())
    }

    pub(crate) fn propose(&mut self, kind: EntryKind, payload: Bytes) -> Result<Lsn, RaftError> {
        if kind == EntryKind::CONFIG {
            return Err(RaftError::Membership {
                reason: "propose configuration changes with propose_config".into(),
            });
        }
        self.check_proposal(payload.len() as u64)?;
        self.append_leader_entry(kind, payload)
    }

    pub(crate) fn propose_config(&mut self, change: &ConfigChange) -> Result<Lsn, RaftError> {
        self.check_proposal(0)?;
        if let Some(lsn) = self.pending_config() {
            return Err(RaftError::ConfigChangePending { lsn });
        }
        match change {
            ConfigChange::Membership(changes) => {
                let next = confchange::enter(&self.conf, changes)?;
                self.policy.validate(next.voters.len())?;
            }
            ConfigChange::LeaveJoint => {
                confchange::leave(&self.conf)?;
            }
            ConfigChange::Policy(policy) => policy.validate(self.conf.voters.len())?,
        }
        self.append_leader_entry(EntryKind::CONFIG, Bytes::from(change.encode()))
    }

    pub(crate) fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { node: self.id, leader: self.leader });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) {
            return Err(RaftError::Membership {
                reason: format!("node {to} is not a voter; only voters can lead"),
            });
        }
        tracing::info!(node = %self.id, to = %to, "leadership transfer started");
        self.lead_transferee = Some(to);
        self.election_elapsed = 0;
        // The transferee will win votes despite this leader's lease: stop serving from it.
        self.lease_min_round = u64::MAX;
        let last = self.log.last_lsn()?;
        if self.progress.get(&to).is_some_and(|p| p.match_lsn == last) {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, true)?;
        }
        Ok(())
    }

    // ---- reads -----------------------------------------------------------------------------

    /// Whether the leader's lease is valid now: a quorum of the current configuration
    /// acknowledged a heartbeat round sent less than `lease_ticks` ago, and no transfer is
    /// under way (docs/raft.md, "Lease safety").
    pub(crate) fn lease_valid(&self) -> bool {
        if self.role != Role::Leader || !self.config.check_quorum || self.lead_transferee.is_some() {
            return false;
        }
        let acked = self.quorum_round();
        if acked < self.lease_min_round || acked == 0 {
            return quorum::is_quorum(&self.conf, |id| id == self.id);
        }
        let Some(&(_, sent)) = self.round_ticks.iter().find(|(round, _)| *round == acked) else {
            return false;
        };
        let lease_ticks = if mutated(Mutation::LeaseOutlivesElection) {
            3 * self.config.election_tick
        } else {
            self.config.lease_ticks()
        };
        sent + lease_ticks > self.ticks
    }

    /// The highest heartbeat round a quorum acknowledged (this node counts as acking its
    /// latest round).
    fn quorum_round(&self) -> u64 {
        quorum::committed_lsn(&self.conf, |id| {
            if id == self.id { self.round } else { self.progress.get(&id).map_or(0, |p| p.acked_round) }
        })
    }

    pub(crate) fn read_index(&mut self, ctx: Bytes, from: Option<NodeId>) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return match (from, self.leader) {
                (None, Some(leader)) => {
                    self.send(leader, Body::ReadIndex { ctx });
                    Ok(())
                }
                _ => Err(RaftError::NotLeader { node: self.id, leader: self.leader }),
            };
        }
        if !self.committed_in_term() {
            // The read index must be at least every commit of earlier terms, which this
            // leader only knows once its own no-op commits (dissertation §6.4).
            if self.reads_before_commit.len() >= MAX_QUEUED_READS {
                return Err(RaftError::ReadsQueued { max: MAX_QUEUED_READS });
            }
            self.reads_before_commit.push((ctx, from));
            return Ok(());
        }
        let lsn = self.log.committed;
        let single = quorum::is_quorum(&self.conf, |id| id == self.id);
        if single || (self.config.read_only == ReadOnlyOption::LeaseBased && self.lease_valid()) {
            self.answer_read(ctx, from, lsn, !single);
            return Ok(());
        }
        if self.pending_reads.len() >= MAX_QUEUED_READS {
            return Err(RaftError::ReadsQueued { max: MAX_QUEUED_READS });
        }
        self.pending_reads.push_back(PendingRead { ctx, from, lsn, round: self.round + 1 });
        if self.config.batch_appends {
            self.read_round_due = true;
        } else {
            self.bcast_heartbeat();
        }
        Ok(())
    }

    fn answer_read(&mut self, ctx: Bytes, from: Option<NodeId>, lsn: Lsn, lease: bool) {
        match from {
            None => self.read_states.push(ReadState { ctx, lsn, lease }),
            Some(to) => self.send(to, Body::ReadIndexResponse { ctx, lsn: Some(lsn) }),
        }
    }

    fn release_reads(&mut self) {
        let acked = self.quorum_round();
        while self.pending_reads.front().is_some_and(|r| r.round <= acked) {
            let read = self.pending_reads.pop_front().expect("checked");
            self.answer_read(read.ctx, read.from, read.lsn, false);
        }
        // Rounds older than the acknowledged one no longer matter for the lease.
        while self.round_ticks.front().is_some_and(|(round, _)| *round < acked) {
            self.round_ticks.pop_front();
        }
    }

    pub(crate) fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    pub(crate) fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        if let Some(pr) = self.progress.get_mut(&to)
            && pr.state == ProgressState::Snapshot
        {
            if !ok {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for an answer before probing again.
            pr.probe_sent = true;
        }
    }
}

impl<S> std::fmt::Debug for Raft<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raft")
            .field("id", &self.id)
            .field("term", &self.term)
            .field("role", &self.role)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}
