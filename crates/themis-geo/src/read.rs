//! What a replica does with a read at a level: serve it, confirm leadership first, wait
//! for its log to catch up, or send the client elsewhere.

use crate::level::ReadConsistency;

/// A replica's state when a read arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaState {
    /// Whether it leads.
    pub is_leader: bool,
    /// Whether, leading, it holds a valid read lease.
    pub lease_valid: bool,
    /// The LSN its state machine has applied.
    pub applied_lsn: u64,
    /// The leader's commit LSN as this replica last heard it.
    pub commit_lsn: u64,
    /// The newest time (Unix ms, the leader's clock) as of which this replica has applied
    /// every committed write; 0 when unknown.
    pub safe_ms: u64,
    /// Now, Unix ms.
    pub now_ms: u64,
}

impl ReplicaState {
    /// How stale this replica may be, in ms (`u64::MAX` when unknown).
    #[must_use]
    pub fn staleness_ms(&self) -> u64 {
        if self.safe_ms == 0 { u64::MAX } else { self.now_ms.saturating_sub(self.safe_ms) }
    }
}

/// What to do with a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Answer from the local state now.
    Serve,
    /// Confirm the read index with a quorum (here, or through the leader), then answer.
    ReadIndex,
    /// Not yet: wait (briefly) for the log to advance, then plan again.
    Wait,
    /// This replica cannot answer at the level; the reason is for the client.
    Redirect(String),
}

/// Plans a read at `consistency` on a replica in `state` (the session token, if any, has
/// already been checked: syntax, MAC, age, log). `waited` says whether the read has
/// already waited its allowance: a plan that would wait again redirects instead.
#[must_use]
pub fn plan_read(consistency: &ReadConsistency, state: &ReplicaState, waited: bool) -> ReadPlan {
    let wait_or = |reason: String| if waited { ReadPlan::Redirect(reason) } else { ReadPlan::Wait };
    match consistency {
        ReadConsistency::Strong => {
            if state.is_leader && state.lease_valid && state.applied_lsn >= state.commit_lsn {
                ReadPlan::Serve
            } else {
                ReadPlan::ReadIndex
            }
        }
        ReadConsistency::BoundedStaleness { max_staleness_ms, max_versions } => {
            let staleness = state.staleness_ms();
            let behind = state.commit_lsn.saturating_sub(state.applied_lsn);
            let within_versions = max_versions.is_none_or(|k| behind <= k);
            if staleness <= *max_staleness_ms && within_versions {
                ReadPlan::Serve
            } else if state.is_leader {
                // The leader is never more than its own apply queue behind.
                ReadPlan::ReadIndex
            } else if !within_versions {
                wait_or(format!(
                    "{behind} versions behind the commit; the bound is {}",
                    max_versions.unwrap_or(0)
                ))
            } else if staleness == u64::MAX {
                wait_or("this replica has not heard from a leader yet".into())
            } else {
                wait_or(format!("{staleness} ms behind; the bound is {max_staleness_ms} ms"))
            }
        }
        ReadConsistency::Session(token) => match token {
            Some(t) if t.lsn > state.applied_lsn => {
                if state.is_leader {
                    // Committed or not yet, the leader will apply it: wait for it.
                    ReadPlan::Wait
                } else {
                    wait_or(format!("has applied LSN {}; the session has seen {}", state.applied_lsn, t.lsn))
                }
            }
            _ => ReadPlan::Serve,
        },
        ReadConsistency::ConsistentPrefix | ReadConsistency::Eventual => ReadPlan::Serve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SessionToken;

    fn follower() -> ReplicaState {
        ReplicaState {
            applied_lsn: 100,
            commit_lsn: 100,
            safe_ms: 9_900,
            now_ms: 10_000,
            ..ReplicaState::default()
        }
    }

    #[test]
    fn strong_reads_serve_under_a_lease_and_confirm_otherwise() {
        let leader = ReplicaState { is_leader: true, lease_valid: true, ..follower() };
        assert_eq!(plan_read(&ReadConsistency::Strong, &leader, false), ReadPlan::Serve);
        let no_lease = ReplicaState { lease_valid: false, ..leader };
        assert_eq!(plan_read(&ReadConsistency::Strong, &no_lease, false), ReadPlan::ReadIndex);
        let behind = ReplicaState { commit_lsn: 101, ..leader };
        assert_eq!(plan_read(&ReadConsistency::Strong, &behind, false), ReadPlan::ReadIndex);
        assert_eq!(plan_read(&ReadConsistency::Strong, &follower(), false), ReadPlan::ReadIndex);
    }

    #[test]
    fn bounded_reads_serve_within_the_bound_wait_then_redirect() {
        let bounded = |ms, k| ReadConsistency::BoundedStaleness { max_staleness_ms: ms, max_versions: k };
        assert_eq!(plan_read(&bounded(100, None), &follower(), false), ReadPlan::Serve);
        assert_eq!(plan_read(&bounded(50, None), &follower(), false), ReadPlan::Wait);
        match plan_read(&bounded(50, None), &follower(), true) {
            ReadPlan::Redirect(why) => assert_eq!(why, "100 ms behind; the bound is 50 ms"),
            other => panic!("{other:?}"),
        }
        let lagging = ReplicaState { applied_lsn: 90, ..follower() };
        assert_eq!(plan_read(&bounded(1_000, Some(20)), &lagging, false), ReadPlan::Serve);
        assert_eq!(
            plan_read(&bounded(1_000, Some(5)), &lagging, true),
            ReadPlan::Redirect("10 versions behind the commit; the bound is 5".into())
        );
        let never = ReplicaState { safe_ms: 0, ..follower() };
        assert_eq!(
            plan_read(&bounded(1_000, None), &never, true),
            ReadPlan::Redirect("this replica has not heard from a leader yet".into())
        );
        let leader = ReplicaState { is_leader: true, safe_ms: 0, ..follower() };
        assert_eq!(plan_read(&bounded(10, None), &leader, true), ReadPlan::ReadIndex);
    }

    #[test]
    fn session_reads_wait_for_the_token() {
        let token = |lsn| {
            ReadConsistency::Session(Some(SessionToken { term: 1, lsn, region: "r".into(), issued_ms: 0 }))
        };
        assert_eq!(plan_read(&token(100), &follower(), false), ReadPlan::Serve);
        assert_eq!(plan_read(&token(101), &follower(), false), ReadPlan::Wait);
        assert!(matches!(plan_read(&token(101), &follower(), true), ReadPlan::Redirect(_)));
        assert_eq!(plan_read(&ReadConsistency::Session(None), &follower(), true), ReadPlan::Serve);
        let leader = ReplicaState { is_leader: true, ..follower() };
        assert_eq!(plan_read(&token(101), &leader, true), ReadPlan::Wait);
        for weak in [ReadConsistency::ConsistentPrefix, ReadConsistency::Eventual] {
            assert_eq!(plan_read(&weak, &ReplicaState::default(), true), ReadPlan::Serve);
        }
    }
}
