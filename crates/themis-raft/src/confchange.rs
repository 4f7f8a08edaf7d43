//! Configuration entries: membership changes through joint consensus, and acknowledgement
//! policy changes. Both travel in the log as `EntryKind::CONFIG` entries and take effect on
//! every node when committed, so all nodes agree without a restart.
//!
//! Payload: one version byte (1), then the postcard encoding of [`ConfigChange`].

use serde::{Deserialize, Serialize};
use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::error::RaftError;
use crate::types::{AckPolicy, ConfState};

const VERSION: u8 = 1;

/// One change to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Adds a voter, or promotes a learner.
    AddVoter(NodeId),
    /// Adds a learner, or demotes a voter (it keeps voting in the outgoing configuration
    /// until the joint state is left).
    AddLearner(NodeId),
    /// Removes a member.
    Remove(NodeId),
}

/// What a configuration entry changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    /// Applies member changes. When the voters change, the cluster enters the joint
    /// configuration (old and new voters both decide), and the leader leaves it with a
    /// [`ConfigChange::LeaveJoint`] once this entry commits.
    Membership(Vec<MemberChange>),
    /// Leaves the joint configuration for the incoming one.
    LeaveJoint,
    /// Changes the acknowledgement policy.
    Policy(AckPolicy),
}

impl ConfigChange {
    /// The entry payload.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Encoding a plain enum of integers into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Decodes an entry payload; `lsn` names the entry in errors.
    pub fn decode(lsn: Lsn, payload: &[u8]) -> Result<ConfigChange, RaftError> {
        match payload.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|err| RaftError::Entry {
                lsn,
                reason: format!("undecodable configuration change: {err}"),
            }),
            Some((version, _)) => Err(RaftError::Entry {
                lsn,
                reason: format!("unknown configuration change version {version}"),
            }),
            None => Err(RaftError::Entry { lsn, reason: "empty configuration change".into() }),
        }
    }
}

/// The membership after `changes`, and whether it is joint. Voter changes enter a joint
/// configuration; learner-only changes apply directly.
pub(crate) fn enter(conf: &ConfState, changes: &[MemberChange]) -> Result<ConfState, RaftError> {
    if conf.is_joint() {
        return Err(RaftError::Membership { reason: format!("already joint ({conf}); leave it first") });
    }
    if changes.is_empty() {
        return Err(RaftError::Membership { reason: "no member changes given".into() });
    }
    let mut next = conf.clone();
    let outgoing = conf.voters.clone();
    for change in changes {
        match *change {
            MemberChange::AddVoter(id) => {
                next.voters.insert(id);
                next.learners.remove(&id);
            }
            MemberChange::AddLearner(id) => {
                next.voters.remove(&id);
                if outgoing.contains(&id) {
                    next.learners_next.insert(id);
                } else {
                    next.learners.insert(id);
                }
            }
            MemberChange::Remove(id) => {
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.learners_next.remove(&id);
            }
        }
        if let MemberChange::AddVoter(id) | MemberChange::AddLearner(id) | MemberChange::Remove(id) = *change
            && id == NodeId(0)
        {
            return Err(RaftError::Membership { reason: "node ids start at 1".into() });
        }
    }
    if next.voters.is_empty() {
        return Err(RaftError::Membership { reason: "the change would leave no voters".into() });
    }
    if next.voters == outgoing {
        // Only learners changed: no quorum moves, so no joint state is needed.
        next.learners.extend(std::mem::take(&mut next.learners_next));
    } else {
        next.voters_outgoing = outgoing;
    }
    next.validate()?;
    Ok(next)
}

/// The membership after leaving the joint state.
pub(crate) fn leave(conf: &ConfState) -> Result<ConfState, RaftError> {
    if !conf.is_joint() {
        return Err(RaftError::Membership { reason: format!("not joint ({conf})") });
    }
    let mut next = conf.clone();
    next.voters_outgoing.clear();
    next.learners.extend(std::mem::take(&mut next.learners_next));
    next.validate()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ReplicationMode;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.iter().map(|i| NodeId(*i)).collect(),
            learners: learners.iter().map(|i| NodeId(*i)).collect(),
            ..ConfState::default()
        }
    }

    #[test]
    fn adding_a_voter_goes_through_a_joint_configuration() {
        let joint = enter(&conf(&[1, 2, 3], &[]), &[MemberChange::AddVoter(NodeId(4))]).unwrap();
        assert_eq!(joint.to_string(), "voters=(1,2,3,4)&&(1,2,3)");
        assert_eq!(leave(&joint).unwrap(), conf(&[1, 2, 3, 4], &[]));
        assert!(enter(&joint, &[MemberChange::Remove(NodeId(4))]).is_err(), "one change at a time");
    }

    #[test]
    fn promote_and_demote() {
        let promoted = enter(&conf(&[1, 2, 3], &[4]), &[MemberChange::AddVoter(NodeId(4))]).unwrap();
        assert_eq!(leave(&promoted).unwrap(), conf(&[1, 2, 3, 4], &[]));
        let demoted = enter(&conf(&[1, 2, 3], &[]), &[MemberChange::AddLearner(NodeId(3))]).unwrap();
        assert!(demoted.is_voter(NodeId(3)), "still votes in the outgoing configuration");
        assert_eq!(leave(&demoted).unwrap(), conf(&[1, 2], &[3]));
    }

    #[test]
    fn learner_only_changes_are_not_joint() {
        let next = enter(&conf(&[1, 2, 3], &[]), &[MemberChange::AddLearner(NodeId(9))]).unwrap();
        assert!(!next.is_joint());
        assert_eq!(next, conf(&[1, 2, 3], &[9]));
    }

    #[test]
    fn removing_every_voter_is_refused() {
        let err = enter(&conf(&[1], &[]), &[MemberChange::Remove(NodeId(1))]).unwrap_err();
        assert!(err.to_string().contains("no voters"), "{err}");
    }

    #[test]
    fn payloads_round_trip_and_bad_ones_are_named() {
        for change in [
            ConfigChange::Membership(vec![
                MemberChange::AddVoter(NodeId(4)),
                MemberChange::Remove(NodeId(1)),
            ]),
            ConfigChange::LeaveJoint,
            ConfigChange::Policy(AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 }),
        ] {
            assert_eq!(ConfigChange::decode(1, &change.encode()).unwrap(), change);
        }
        assert!(ConfigChange::decode(7, &[]).unwrap_err().to_string().contains("LSN 7"));
        assert!(ConfigChange::decode(7, &[9, 0]).unwrap_err().to_string().contains("version 9"));
        assert!(ConfigChange::decode(7, &[1, 0xff, 0xff]).is_err());
    }
}
