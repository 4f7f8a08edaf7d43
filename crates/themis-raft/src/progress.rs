//! What the leader knows of each follower's log, and the flow control of appends to it.

use std::collections::VecDeque;

use themis_wal::Lsn;

/// How the leader sends to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches; it sends one append at a
    /// time and waits for the answer.
    Probe,
    /// The follower's log matches; appends are pipelined up to the in-flight bounds.
    Replicate,
    /// The follower needs a snapshot; nothing else is sent until it is installed.
    Snapshot,
}

/// Appends in flight to one follower: the last LSN and payload bytes of each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inflights {
    queue: VecDeque<(Lsn, u64)>,
    bytes: u64,
}

impl Inflights {
    pub(crate) fn add(&mut self, last_lsn: Lsn, bytes: u64) {
        self.queue.push_back((last_lsn, bytes));
        self.bytes += bytes;
    }

    /// Frees every append up to `lsn`.
    pub(crate) fn free_to(&mut self, lsn: Lsn) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > lsn {
                break;
            }
            self.bytes -= bytes;
            self.queue.pop_front();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub(crate) fn full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.queue.len() >= max_msgs || self.bytes >= max_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's view of one member.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// The highest LSN known durable on the member and matching the leader's log.
    pub(crate) match_lsn: Lsn,
    /// The next LSN to send.
    pub(crate) next_lsn: Lsn,
    pub(crate) state: ProgressState,
    /// In `Probe`, an append is outstanding; cleared by any answer or a heartbeat answer.
    pub(crate) probe_sent: bool,
    /// In `Snapshot`, the snapshot's LSN.
    pub(crate) pending_snapshot: Lsn,
    /// Ticks the snapshot has been pending; a lost snapshot is retried after a while.
    pub(crate) snapshot_ticks: u64,
    /// Whether the member answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// The leader's tick count when the member last answered.
    pub(crate) last_contact_tick: u64,
    /// The highest heartbeat round it answered.
    pub(crate) acked_round: u64,
    /// `match_lsn` when the previous heartbeat answer came: a full pipeline that has not
    /// moved between two answers lost a message.
    pub(crate) match_at_heartbeat: Lsn,
    pub(crate) inflights: Inflights,
}

impl Progress {
    pub(crate) fn new(next_lsn: Lsn, now_tick: u64) -> Progress {
        Progress {
            match_lsn: 0,
            next_lsn,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_ticks: 0,
            recent_active: true,
            last_contact_tick: now_tick,
            acked_round: 0,
            match_at_heartbeat: Lsn::MAX,
            inflights: Inflights::default(),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_ticks = 0;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_lsn = (self.match_lsn + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_lsn = self.match_lsn + 1;
        }
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_lsn = self.match_lsn + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_lsn: Lsn) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_lsn;
    }

    /// An accepted append up to `lsn`; returns whether the match moved.
    pub(crate) fn maybe_update(&mut self, lsn: Lsn) -> bool {
        let moved = lsn > self.match_lsn;
        if moved {
            self.match_lsn = lsn;
            self.probe_sent = false;
        }
        self.next_lsn = self.next_lsn.max(lsn.saturating_add(1));
        moved
    }

    /// A refused append at `rejected`; `hint` is where the follower's log may match.
    /// Returns false for a stale refusal.
    pub(crate) fn maybe_decr_to(&mut self, rejected: Lsn, hint: Lsn) -> bool {
        if self.state == ProgressState::Replicate {
            // Pipelined appends: only a refusal of what would come next is news.
            if rejected <= self.match_lsn {
                return false;
            }
            self.next_lsn = self.match_lsn + 1;
            return true;
        }
        if self.next_lsn.saturating_sub(1) != rejected {
            return false;
        }
        self.next_lsn = hint.min(rejected).saturating_add(1).max(self.match_lsn + 1).max(1);
        self.probe_sent = false;
        true
    }

    /// A heartbeat answer arrived: the link works. Appends in flight that made no progress
    /// since the previous answer were lost (a healthy link answers them within a heartbeat
    /// interval); resend from the match (Probe). Returns whether it did. A false alarm
    /// costs a duplicate append, which followers ignore.
    pub(crate) fn on_heartbeat_answer(&mut self) -> bool {
        self.probe_sent = false;
        let stalled = self.state == ProgressState::Replicate
            && self.inflights.len() > 0
            && self.match_lsn == self.match_at_heartbeat;
        self.match_at_heartbeat = self.match_lsn;
        if stalled {
            self.become_probe();
        }
        stalled
    }

    /// Whether the leader must hold off sending appends.
    pub(crate) fn is_paused(&self, max_msgs: usize, max_bytes: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(max_msgs, max_bytes),
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append of entries up to `last_lsn` carrying `bytes`.
    pub(crate) fn sent_entries(&mut self, last_lsn: Option<Lsn>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_lsn {
                    self.next_lsn = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time_and_backs_off_on_refusal() {
        let mut progress = Progress::new(11, 0);
        assert!(!progress.is_paused(4, 100));
        progress.sent_entries(Some(12), 10);
        assert!(progress.is_paused(4, 100));
        assert!(!progress.maybe_decr_to(5, 3), "stale refusal");
        assert!(progress.maybe_decr_to(10, 6));
        assert_eq!(progress.next_lsn, 7);
        assert!(!progress.is_paused(4, 100));
    }

    #[test]
    fn replicate_is_bounded_by_messages_and_bytes() {
        let mut progress = Progress::new(1, 0);
        progress.become_replicate();
        progress.sent_entries(Some(5), 60);
        assert!(!progress.is_paused(2, 100));
        progress.sent_entries(Some(9), 60);
        assert!(progress.is_paused(2, 1000), "two messages in flight");
        assert!(progress.is_paused(10, 100), "120 bytes in flight");
        progress.maybe_update(5);
        progress.inflights.free_to(5);
        assert!(!progress.is_paused(2, 100));
        assert_eq!(progress.next_lsn, 10);
    }

    #[test]
    fn appends_unanswered_across_two_heartbeats_fall_back_to_probing() {
        let mut progress = Progress::new(1, 0);
        progress.become_replicate();
        progress.sent_entries(Some(5), 10);
        progress.sent_entries(Some(9), 10);
        assert!(!progress.on_heartbeat_answer(), "first answer: just remembers the match");
        assert!(progress.on_heartbeat_answer(), "no progress between two answers");
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_lsn, 1);
    }

    #[test]
    fn a_snapshot_resumes_probing_after_it() {
        let mut progress = Progress::new(3, 0);
        progress.become_snapshot(50);
        assert!(progress.is_paused(10, 10));
        progress.become_probe();
        assert_eq!(progress.next_lsn, 51);
    }
}
