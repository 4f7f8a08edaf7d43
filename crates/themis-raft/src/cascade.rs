//! Cascading replication: a learner that streams the committed log from another member
//! (its *upstream*) instead of from the leader, so a leader in one region feeds one
//! replica in a distant region and that replica feeds the others there.
//!
//! The application names each cascaded learner's upstream
//! ([`ReplicationManager::set_upstreams`](crate::driver::ReplicationManager::set_upstreams));
//! every node is given the same map (the node layer keeps it in the replicated store), and
//! each plays its part:
//!
//! - **The upstream** (a follower or learner) passes on what it holds committed and
//!   durable: an `Append` that names the leader and its term, wrapped in a
//!   [`Packet::Forward`](crate::wire::Packet::Forward). One batch is in flight per
//!   learner; the learner's [`Packet::ForwardAck`](crate::wire::Packet::ForwardAck)
//!   (its commit LSN) says where the next one starts, so a mismatch or a restart of
//!   either side resumes from what the learner holds.
//! - **The learner** steps the `Append` as if it came from the leader. Only committed
//!   entries are forwarded, and every leader's log holds every committed entry, so what
//!   it appends is a prefix of the leader's log; its answer goes to the leader, whose
//!   progress for it (lag, health) stays accurate.
//! - **The leader** sends no `Append` to a cascaded learner while the upstream answers it
//!   and the learner keeps up. When the upstream falls silent, or the learner stops
//!   moving while behind (the upstream lacks the entries, say, its log compacted past
//!   them), the leader serves the learner directly until it is caught up and the upstream
//!   is back. Heartbeats and snapshots always come from the leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::raw_node::Status;
use crate::types::Role;

/// How long an upstream waits for a learner's answer before sending a batch again.
pub(crate) const FORWARD_RESEND: Duration = Duration::from_millis(500);

/// A learner served directly goes back to its upstream once it is at most this many LSNs
/// behind the commit LSN (under a steady load it is never exactly caught up).
const CAUGHT_UP_LSNS: u64 = 64;

/// The longest a learner that keeps stalling behind its upstream is served directly
/// before the upstream is tried again, in stall periods (each stall doubles the wait).
const MAX_BACKOFF_PERIODS: u64 = 16;

/// This node's side of cascading replication.
#[derive(Debug, Default)]
pub(crate) struct CascadeState {
    /// Cascaded learner → the member it streams from.
    upstreams: BTreeMap<NodeId, NodeId>,
    /// As an upstream: per learner, where the next batch starts and the one in flight.
    outbound: BTreeMap<NodeId, Outbound>,
    /// As the leader: per cascaded learner, how it is being served.
    watch: BTreeMap<NodeId, Watch>,
}

#[derive(Debug, Default)]
struct Outbound {
    /// The first LSN the next batch carries; `None` until the learner has answered once
    /// (the first batch is an empty probe after this node's commit LSN).
    next: Option<Lsn>,
    /// When the batch in flight was sent.
    in_flight: Option<Instant>,
}

#[derive(Debug)]
struct Watch {
    /// The learner's match LSN when it last moved, and the tick it moved at.
    match_lsn: Lsn,
    moved_at: u64,
    /// Served by the leader directly (new, its upstream silent, or it stalled).
    direct: bool,
    /// The tick the current direct or cascaded period began.
    since: u64,
    /// Stall periods a direct period lasts at least: doubled by each stall, back to one
    /// after a cascaded period in which the learner kept up.
    backoff: u64,
}

/// A batch an upstream is due to send: to `learner`, entries from `from` (an empty probe
/// when `from` is past the commit LSN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) learner: NodeId,
    pub(crate) from: Lsn,
}

impl CascadeState {
    /// Replaces the map of upstreams; state for learners no longer cascaded, or cascaded
    /// from another member now, is dropped (a new upstream starts like a new learner).
    pub(crate) fn set(&mut self, upstreams: BTreeMap<NodeId, NodeId>) {
        let same = |learner: &NodeId| upstreams.get(learner) == self.upstreams.get(learner);
        self.outbound.retain(|learner, _| same(learner));
        self.watch.retain(|learner, _| same(learner));
        self.upstreams = upstreams;
    }

    /// The map of upstreams.
    pub(crate) fn upstreams(&self) -> &BTreeMap<NodeId, NodeId> {
        &self.upstreams
    }

    /// Leader: whether an `Append` to `to` is left to its upstream.
    pub(crate) fn left_to_upstream(&self, to: NodeId) -> bool {
        self.watch.get(&to).is_some_and(|w| !w.direct)
    }

    /// Leader: the cascaded learners it serves directly now.
    pub(crate) fn direct(&self) -> Vec<NodeId> {
        self.watch.iter().filter(|(_, w)| w.direct).map(|(id, _)| *id).collect()
    }

    /// Leader, once a tick: decides for each cascaded learner whether its upstream serves
    /// it. A learner is first served directly, until it holds everything committed (a new
    /// learner learns its upstream's membership from that log, and admits its link only
    /// then); it is left to its upstream while the upstream answers the leader and the
    /// learner moves, and taken back when either stops, for a while that doubles with
    /// every stall. Returns the learners just taken back (their progress must be reset:
    /// the appends the leader counted in flight were never sent).
    pub(crate) fn review(&mut self, status: &Status, stall_ticks: u64) -> Vec<NodeId> {
        if status.soft_state.role != Role::Leader {
            self.watch.clear();
            return Vec::new();
        }
        let (commit, now) = (status.hard_state.commit, status.ticks);
        let mut taken_back = Vec::new();
        for (&learner, &upstream) in &self.upstreams {
            let Some(pr) = status.progress.get(&learner).filter(|p| p.learner) else {
                self.watch.remove(&learner);
                continue;
            };
            // An upstream that is this node is plain replication.
            let Some(up) = status.progress.get(&upstream) else {
                self.watch.remove(&learner);
                continue;
            };
            let upstream_live = up.last_contact_ticks < stall_ticks;
            let w = self.watch.entry(learner).or_insert(Watch {
                match_lsn: pr.match_lsn,
                moved_at: now,
                direct: true,
                since: now,
                backoff: 1,
            });
            if pr.match_lsn != w.match_lsn {
                w.match_lsn = pr.match_lsn;
                w.moved_at = now;
            }
            let behind = commit.saturating_sub(pr.match_lsn);
            if w.direct {
                let waited = now.saturating_sub(w.since) >= w.backoff * stall_ticks;
                if waited && upstream_live && behind <= CAUGHT_UP_LSNS && up.match_lsn >= pr.match_lsn {
                    w.direct = false;
                    w.since = now;
                    w.moved_at = now;
                }
                continue;
            }
            let stalled = behind > 0 && now.saturating_sub(w.moved_at) >= stall_ticks;
            if !upstream_live || stalled {
                // A cascaded period that kept up for a while resets the wait.
                let kept_up = w.moved_at.saturating_sub(w.since) >= stall_ticks;
                w.backoff = if kept_up || !stalled { 1 } else { (w.backoff * 2).min(MAX_BACKOFF_PERIODS) };
                w.direct = true;
                w.since = now;
                taken_back.push(learner);
            }
        }
        taken_back
    }

    /// Upstream: the batches due now. `commit` is what this node holds committed and
    /// durable; nothing is forwarded by a leader (it replicates) or without a known leader.
    pub(crate) fn due(&mut self, me: NodeId, leading: bool, commit: Lsn, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        if leading {
            self.outbound.clear();
            return due;
        }
        for (&learner, &upstream) in &self.upstreams {
            if upstream != me {
                continue;
            }
            let out = self.outbound.entry(learner).or_default();
            let idle = out.in_flight.is_none_or(|at| now.duration_since(at) >= FORWARD_RESEND);
            match out.next {
                _ if !idle => {}
                None => due.push(Due { learner, from: commit + 1 }),
                Some(next) if next <= commit => due.push(Due { learner, from: next }),
                // Caught up: a probe now and then keeps a learner that lost its log found.
                Some(next) if out.in_flight.is_some() => due.push(Due { learner, from: next }),
                Some(_) => {}
            }
        }
        due
    }

    /// Upstream: a batch to `learner` has gone out.
    pub(crate) fn sent(&mut self, learner: NodeId, now: Instant) {
        if let Some(out) = self.outbound.get_mut(&learner) {
            out.in_flight = Some(now);
        }
    }

    /// Upstream: `learner` answered with its commit LSN.
    pub(crate) fn acked(&mut self, learner: NodeId, commit: Lsn) {
        if let Some(out) = self.outbound.get_mut(&learner) {
            out.next = Some(commit + 1);
            out.in_flight = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::progress::ProgressState;
    use crate::raw_node::ProgressStatus;
    use crate::types::{ConfState, HardState, SoftState};

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    fn leader_status(ticks: u64, commit: Lsn, progress: &[(u64, Lsn, u64, bool)]) -> Status {
        Status {
            id: n(1),
            hard_state: HardState { term: 2, vote: Some(n(1)), commit },
            soft_state: SoftState { role: Role::Leader, leader: Some(n(1)) },
            last_lsn: commit,
            persisted_lsn: commit,
            applied_lsn: commit,
            conf_state: ConfState {
                voters: BTreeSet::from([n(1), n(2), n(3)]),
                learners: BTreeSet::from([n(4), n(5)]),
                ..ConfState::default()
            },
            policy: crate::types::AckPolicy::default(),
            acknowledged_lsn: commit,
            lease_valid: true,
            lead_transferee: None,
            progress: progress
                .iter()
                .map(|&(id, match_lsn, silent, learner)| {
                    (
                        n(id),
                        ProgressStatus {
                            match_lsn,
                            next_lsn: match_lsn + 1,
                            state: ProgressState::Replicate,
                            last_contact_ticks: silent,
                            inflight_msgs: 0,
                            inflight_bytes: 0,
                            learner,
                        },
                    )
                })
                .collect(),
            vote_rejections: crate::signing::VoteRejections::default(),
            ticks,
        }
    }

    #[test]
    fn the_leader_serves_a_new_learner_until_it_is_caught_up_then_leaves_it_to_its_upstream() {
        let mut c = CascadeState::default();
        c.set(BTreeMap::from([(n(4), n(2))]));
        assert!(!c.left_to_upstream(n(4)), "nothing is left to an upstream before a review");
        // New: served directly for a stall period, and until it holds everything.
        assert!(c.review(&leader_status(10, 100, &[(2, 100, 0, false), (4, 0, 0, true)]), 10).is_empty());
        assert!(!c.left_to_upstream(n(4)));
        assert_eq!(c.direct(), vec![n(4)]);
        c.review(&leader_status(20, 100, &[(2, 100, 0, false), (4, 30, 0, true)]), 10);
        assert!(!c.left_to_upstream(n(4)), "not caught up yet");
        c.review(&leader_status(21, 100, &[(2, 100, 0, false), (4, 100, 0, true)]), 10);
        assert!(c.left_to_upstream(n(4)));
        assert!(!c.left_to_upstream(n(2)), "a voter is never cascaded");
        // Writes go on; the learner moves: still left to the upstream.
        c.review(&leader_status(26, 150, &[(2, 150, 0, false), (4, 120, 0, true)]), 10);
        assert!(c.left_to_upstream(n(4)));
        // It stops moving while behind for the stall time: taken back.
        let taken = c.review(&leader_status(36, 200, &[(2, 200, 0, false), (4, 120, 0, true)]), 10);
        assert_eq!(taken, vec![n(4)]);
        assert!(!c.left_to_upstream(n(4)));
        assert_eq!(c.direct(), vec![n(4)]);
        // It kept up for a while before (tick 21 to 26 is under a stall period, so no):
        // the wait doubled to two stall periods.
        c.review(&leader_status(46, 200, &[(2, 200, 0, false), (4, 200, 0, true)]), 10);
        assert!(!c.left_to_upstream(n(4)), "still waiting out the doubled period");
        c.review(&leader_status(56, 200, &[(2, 200, 0, false), (4, 200, 0, true)]), 10);
        assert!(c.left_to_upstream(n(4)), "caught up, upstream live, waited: back");
        // Stalls again at once: the wait doubles again.
        c.review(&leader_status(66, 250, &[(2, 250, 0, false), (4, 200, 0, true)]), 10);
        assert!(!c.left_to_upstream(n(4)));
        c.review(&leader_status(96, 250, &[(2, 250, 0, false), (4, 250, 0, true)]), 10);
        assert!(!c.left_to_upstream(n(4)), "four stall periods now");
        c.review(&leader_status(106, 250, &[(2, 250, 0, false), (4, 250, 0, true)]), 10);
        assert!(c.left_to_upstream(n(4)));
        // This time it keeps up for more than a stall period, then its upstream goes
        // silent: taken back, and the wait is one period again.
        c.review(&leader_status(120, 300, &[(2, 300, 0, false), (4, 300, 0, true)]), 10);
        let taken = c.review(&leader_status(121, 300, &[(2, 300, 12, false), (4, 300, 0, true)]), 10);
        assert_eq!(taken, vec![n(4)]);
        c.review(&leader_status(131, 300, &[(2, 300, 0, false), (4, 300, 0, true)]), 10);
        assert!(c.left_to_upstream(n(4)));
        // An upstream that holds less than the learner does not take it back.
        c.set(BTreeMap::from([(n(4), n(3))]));
        c.review(&leader_status(140, 300, &[(3, 200, 0, false), (4, 300, 0, true)]), 10);
        c.review(&leader_status(160, 300, &[(3, 200, 0, false), (4, 300, 0, true)]), 10);
        assert!(!c.left_to_upstream(n(4)), "upstream 3 is behind the learner");
    }

    #[test]
    fn a_silent_upstream_hands_its_learner_to_the_leader_at_once() {
        let mut c = CascadeState::default();
        c.set(BTreeMap::from([(n(4), n(2)), (n(5), n(4))]));
        let all_caught_up = |ticks, silent2| {
            leader_status(ticks, 100, &[(2, 100, silent2, false), (4, 100, 0, true), (5, 100, 0, true)])
        };
        c.review(&all_caught_up(10, 0), 10);
        c.review(&all_caught_up(20, 0), 10);
        assert!(c.left_to_upstream(n(4)) && c.left_to_upstream(n(5)));
        let taken = c.review(&all_caught_up(21, 12), 10);
        assert_eq!(taken, vec![n(4)], "learner 4's upstream is silent; 5's (learner 4) is not");
        assert!(c.left_to_upstream(n(5)));
        // A follower reviewing forgets the watch: a new leader decides afresh.
        let mut follower = leader_status(22, 100, &[]);
        follower.soft_state.role = Role::Follower;
        c.review(&follower, 10);
        assert!(!c.left_to_upstream(n(5)));
    }

    #[test]
    fn an_upstream_probes_once_then_forwards_from_the_learners_commit_with_one_batch_in_flight() {
        let mut c = CascadeState::default();
        c.set(BTreeMap::from([(n(4), n(2)), (n(5), n(3))]));
        let t0 = Instant::now();
        // Node 2 forwards to learner 4 only, starting with a probe after its commit.
        assert_eq!(c.due(n(2), false, 50, t0), vec![Due { learner: n(4), from: 51 }]);
        c.sent(n(4), t0);
        assert!(c.due(n(2), false, 60, t0).is_empty(), "one batch in flight");
        // The learner holds up to 30: the next batch starts at 31.
        c.acked(n(4), 30);
        assert_eq!(c.due(n(2), false, 60, t0), vec![Due { learner: n(4), from: 31 }]);
        c.sent(n(4), t0);
        c.acked(n(4), 60);
        assert!(c.due(n(2), false, 60, t0).is_empty(), "caught up and answered: nothing due");
        // An unanswered batch is sent again after the resend time.
        c.sent(n(4), t0);
        assert!(c.due(n(2), false, 61, t0).is_empty());
        assert_eq!(c.due(n(2), false, 61, t0 + FORWARD_RESEND), vec![Due { learner: n(4), from: 61 }]);
        // A leader forwards nothing, and forgets what it tracked.
        assert!(c.due(n(2), true, 70, t0 + FORWARD_RESEND).is_empty());
        assert_eq!(c.due(n(2), false, 70, t0 + FORWARD_RESEND), vec![Due { learner: n(4), from: 71 }]);
        // Dropping a learner from the map drops its state.
        c.set(BTreeMap::from([(n(5), n(3))]));
        assert!(c.due(n(2), false, 70, t0).is_empty());
        assert_eq!(c.upstreams().len(), 1);
    }
}
