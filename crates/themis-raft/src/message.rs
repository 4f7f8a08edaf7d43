//! The messages Raft nodes exchange. The core produces and consumes them as values; the
//! driver frames them for themis-ship.

use bytes::Bytes;
use themis_clock::NodeId;
use themis_wal::{Entry, Lsn};

use crate::signing::{Signature, VoteClaim};
use crate::types::Snapshot;

/// One message between two nodes, in the sender's term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term when it sent the message.
    pub term: u64,
    /// What it says.
    pub body: Body,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A (pre-)vote request (Raft §5.2, dissertation §9.6), signed by the candidate.
    Vote {
        /// What the candidate claims, signed.
        claim: VoteClaim,
        /// The candidate's signature over `claim`.
        signature: Signature,
        /// Set by a leadership transfer: the voter grants despite a live leader.
        force: bool,
    },
    /// A (pre-)vote answer, signed by the voter.
    VoteResponse {
        /// What the voter answers, signed (`claim.granted`).
        claim: VoteClaim,
        /// The voter's signature over `claim`.
        signature: Signature,
    },
    /// Entries to append after `prev_lsn` (Raft §5.3); empty entries probe.
    Append {
        /// The LSN before the first entry.
        prev_lsn: Lsn,
        /// Its term.
        prev_term: u64,
        /// The entries, in LSN order.
        entries: Vec<Entry>,
        /// The leader's commit LSN.
        commit: Lsn,
    },
    /// An answer to `Append` or `Snapshot`, sent once the follower's log is durable.
    AppendResponse {
        /// Whether the follower refused (its log does not match at `lsn`).
        reject: bool,
        /// Accepted: the follower's durable match. Refused: the `prev_lsn` it refused.
        lsn: Lsn,
        /// Refused: the highest LSN at or below `lsn` whose term is at most the leader's
        /// `prev_term`, so the leader can skip a whole conflicting term at once.
        hint_lsn: Lsn,
        /// Refused: the term of `hint_lsn`.
        hint_term: u64,
    },
    /// Leadership and commit; `round` numbers the heartbeat for `ReadIndex` and the lease.
    Heartbeat {
        /// The leader's commit LSN, capped at what the follower is known to hold.
        commit: Lsn,
        /// The heartbeat round.
        round: u64,
        /// The leader's whole commit LSN when it sent the heartbeat (not capped)...
        closed: Lsn,
        /// ... and its clock then (HLC physical ms): a member that has applied `closed`
        /// holds every write committed before `closed_ms` (bounded-staleness reads).
        closed_ms: u64,
    },
    /// An answer to a heartbeat.
    HeartbeatResponse {
        /// The round answered.
        round: u64,
    },
    /// A snapshot to install, for a follower behind the leader's first LSN.
    Snapshot(Snapshot),
    /// Start an election now, ignoring the leader's lease: a leadership transfer.
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        /// The caller's context.
        ctx: Bytes,
    },
    /// The leader's answer: the read index, or `None` if it cannot serve reads now.
    ReadIndexResponse {
        /// The caller's context.
        ctx: Bytes,
        /// The read index.
        lsn: Option<Lsn>,
    },
}

impl Body {
    /// A short name for logs and counters.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Body::Vote { claim, .. } if claim.pre_vote => "PreVote",
            Body::Vote { .. } => "Vote",
            Body::VoteResponse { claim, .. } if claim.pre_vote => "PreVoteResponse",
            Body::VoteResponse { .. } => "VoteResponse",
            Body::Append { .. } => "Append",
            Body::AppendResponse { .. } => "AppendResponse",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::HeartbeatResponse { .. } => "HeartbeatResponse",
            Body::Snapshot(_) => "Snapshot",
            Body::TimeoutNow => "TimeoutNow",
            Body::ReadIndex { .. } => "ReadIndex",
            Body::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}

impl Message {
    /// The payload bytes the message carries (entries or snapshot), for flow control.
    #[must_use]
    pub fn payload_bytes(&self) -> u64 {
        match &self.body {
            Body::Append { entries, .. } => entries.iter().map(|e| e.payload.len() as u64).sum(),
            Body::Snapshot(snapshot) => snapshot.data.len() as u64,
            _ => 0,
        }
    }
}
