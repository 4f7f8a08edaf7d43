//! Quorum arithmetic for one configuration (a majority) and for a joint one (a majority of
//! each, dissertation §4.3).

use std::collections::{BTreeMap, BTreeSet};

use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::types::ConfState;

/// The outcome of an election so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet.
    Pending,
    /// A quorum refused.
    Lost,
    /// A quorum granted.
    Won,
}

/// The highest value that a majority of `voters` has reached, by `value_of`. An empty
/// configuration imposes no constraint (`u64::MAX`), so a joint rule over a non-joint
/// configuration reduces to its incoming half.
fn majority_value(voters: &BTreeSet<NodeId>, value_of: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|id| value_of(*id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

fn majority_vote(voters: &BTreeSet<NodeId>, ballots: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match ballots.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The highest LSN a quorum of `conf` has reached by `match_of` (the joint minimum).
#[must_use]
pub fn committed_lsn(conf: &ConfState, match_of: impl Fn(NodeId) -> Lsn) -> Lsn {
    majority_value(&conf.voters, &match_of).min(majority_value(&conf.voters_outgoing, &match_of))
}

/// The election result in `conf` given `votes`.
#[must_use]
pub fn vote_result(conf: &ConfState, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    match (majority_vote(&conf.voters, votes), majority_vote(&conf.voters_outgoing, votes)) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Whether the nodes for which `active` holds form a quorum of `conf`.
#[must_use]
pub fn is_quorum(conf: &ConfState, active: impl Fn(NodeId) -> bool) -> bool {
    let votes: BTreeMap<NodeId, bool> = conf.all_voters().into_iter().map(|id| (id, active(id))).collect();
    vote_result(conf, &votes) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn a_majority_decides_the_commit_lsn() {
        let conf = ConfState::with_voters(ids(&[1, 2, 3]));
        let matched = |id: NodeId| [0, 10, 7, 3][id.0 as usize];
        assert_eq!(committed_lsn(&conf, matched), 7);
        let five = ConfState::with_voters(ids(&[1, 2, 3, 4, 5]));
        let matched = |id: NodeId| [0, 9, 8, 7, 2, 1][id.0 as usize];
        assert_eq!(committed_lsn(&five, matched), 7);
    }

    #[test]
    fn a_joint_configuration_needs_both_majorities() {
        // Dissertation §4.3: agreement requires separate majorities of both configurations.
        let conf =
            ConfState { voters: ids(&[1, 2, 3]), voters_outgoing: ids(&[3, 4, 5]), ..ConfState::default() };
        let matched = |id: NodeId| [0, 10, 10, 5, 1, 1][id.0 as usize];
        assert_eq!(committed_lsn(&conf, matched), 1);
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        votes.insert(NodeId(2), true);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Pending);
        votes.insert(NodeId(4), false);
        votes.insert(NodeId(5), false);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Lost);
        votes.insert(NodeId(4), true);
        votes.insert(NodeId(3), true);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Won);
    }

    #[test]
    fn votes_are_lost_once_a_majority_is_impossible() {
        let conf = ConfState::with_voters(ids(&[1, 2, 3]));
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Pending);
        votes.insert(NodeId(2), false);
        votes.insert(NodeId(3), false);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Lost);
        assert!(is_quorum(&conf, |id| id != NodeId(3)));
        assert!(!is_quorum(&conf, |id| id == NodeId(1)));
    }
}
