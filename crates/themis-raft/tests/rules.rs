//! One test per Raft rule, on a hand-driven network (themis-testkit's `Network`). Each
//! names the section of the Raft paper (Ongaro & Ousterhout 2014, "§") or of Ongaro's
//! dissertation ("dissertation §") it checks.

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_raft::{
    AckPolicy, Body, ConfState, Config, MemStorage, MemberChange, ProgressState, RaftError, RawNode,
    ReadOnlyOption, ReplicationMode, Role, Signature, Snapshot, SnapshotMeta, Storage,
};
use themis_testkit::network::Network;

const SEMI: AckPolicy = AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 };

fn three() -> Network {
    Network::new(&[1, 2, 3], &[], SEMI, |_| {})
}

#[test]
fn a_candidate_with_a_majority_leads_and_commits_a_no_op() {
    // §5.2 (leader election), §5.4.2 / §8 (a no-op commits earlier terms).
    let mut net = three();
    assert!(net.elect(1));
    assert_eq!(net.term(1), 1);
    for id in [2, 3] {
        assert_eq!(net.role(id), Role::Follower);
        assert_eq!(net.node(id).status().soft_state.leader, Some(NodeId(1)));
        assert_eq!(net.node(id).status().hard_state.commit, 1, "the no-op is committed everywhere");
    }
}

#[test]
fn a_voter_grants_one_vote_per_term() {
    // §5.2: each server votes for at most one candidate in a given term.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| c.pre_vote = false);
    let mut requests = Vec::new();
    for id in [1, 2] {
        let node = net.node(id);
        node.campaign().unwrap();
        let ready = node.ready().unwrap();
        requests.extend(ready.persisted_messages.into_iter().filter(|m| m.to == NodeId(3)));
        node.advance().unwrap();
    }
    assert_eq!(requests.iter().map(|m| m.term).collect::<Vec<_>>(), [1, 1], "two candidates, one term");
    for request in requests {
        net.node(3).step(request).unwrap();
    }
    let ready = net.node(3).ready().unwrap();
    let answers: Vec<(NodeId, bool)> = ready
        .persisted_messages
        .iter()
        .filter_map(|m| match &m.body {
            Body::VoteResponse { claim, .. } => Some((m.to, claim.granted)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(NodeId(1), true), (NodeId(2), false)]);
    assert_eq!(ready.hard_state.and_then(|h| h.vote), Some(NodeId(1)), "the vote is persisted");
}

#[test]
fn a_candidate_with_a_stale_log_loses() {
    // §5.4.1: a vote goes only to a candidate whose log is at least as up to date.
    let mut net = three();
    assert!(net.elect(1));
    net.cut(1, 3);
    net.cut(2, 3);
    net.node(1).propose(&b"x"[..]).unwrap();
    net.deliver();
    net.heal();
    net.isolate(1);
    // Node 3 missed the entry; node 2 has it and refuses node 3.
    net.node(3).campaign().unwrap();
    net.deliver();
    assert_ne!(net.role(3), Role::Leader);
    net.tick_all(30);
    assert_eq!(net.role(2), Role::Leader, "the up-to-date node wins");
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_the_term() {
    // Dissertation §9.6: a node that cannot win does not disrupt the cluster.
    let mut net = three();
    assert!(net.elect(1));
    net.isolate(3);
    for _ in 0..100 {
        net.node(3).tick().unwrap();
        net.deliver();
    }
    assert_eq!(net.term(3), 1, "pre-votes do not raise the term");
    net.heal();
    net.tick_all(5);
    assert_eq!(net.role(1), Role::Leader, "the leader was not disturbed");
    assert_eq!(net.term(1), 1);
}

#[test]
fn an_isolated_leader_steps_down_with_check_quorum() {
    // Dissertation §6.2: a leader that cannot reach a quorum steps down.
    let mut net = three();
    assert!(net.elect(1));
    net.isolate(1);
    for _ in 0..20 {
        net.node(1).tick().unwrap();
        net.deliver();
    }
    assert_eq!(net.role(1), Role::Follower);
}

#[test]
fn followers_in_a_lease_ignore_vote_requests() {
    // Dissertation §6.4.1 / §4.2.3: a follower that heard from a leader within the
    // election timeout does not vote, so the leader's lease holds.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| c.pre_vote = false);
    assert!(net.elect(1));
    net.isolate(1);
    net.heal();
    net.cut(1, 3);
    // Node 3 campaigns at once; node 2 just heard from leader 1 and ignores it.
    net.node(3).campaign().unwrap();
    net.deliver();
    assert_ne!(net.role(3), Role::Leader);
    assert_eq!(net.term(2), 1, "the vote request did not even raise node 2's term");
}

#[test]
fn unsigned_forged_and_replayed_votes_are_rejected_and_counted() {
    // DESIGN.md decision 5: votes are signed over term and candidate.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| c.pre_vote = false);
    net.node(1).campaign().unwrap();
    let mut tampered = 0;
    net.deliver_with(100, |mut m| {
        if let Body::Vote { signature, .. } = &mut m.body {
            tampered += 1;
            match m.to.0 {
                2 => *signature = Signature::default(),
                _ => signature.0[0] ^= 1,
            }
        }
        Some(m)
    });
    assert_eq!(tampered, 2);
    assert_ne!(net.role(1), Role::Leader);
    assert_eq!(net.node(2).status().vote_rejections.unsigned, 1);
    assert_eq!(net.node(3).status().vote_rejections.invalid, 1);

    // A genuine vote request replayed into a later term.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| c.pre_vote = false);
    net.node(1).campaign().unwrap();
    net.deliver_with(100, |mut m| {
        if matches!(m.body, Body::Vote { .. }) {
            m.term += 5;
        }
        Some(m)
    });
    assert_eq!(net.node(2).status().vote_rejections.replayed, 1);
    assert_eq!(net.term(2), 0, "a replayed vote does not raise the term");
}

#[test]
fn acknowledgement_follows_the_mode() {
    // DESIGN.md decision 3: ASYNC = leader durable; SEMI_SYNC = committed and
    // min_sync_replicas followers durable; SYNC = every voter durable.
    for (policy, acked_with_one_follower_cut) in [
        (AckPolicy::ASYNC, true),
        (AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 }, true),
        (AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 2 }, false),
        (AckPolicy { mode: ReplicationMode::Sync, min_sync_replicas: 1 }, false),
    ] {
        let mut net = Network::new(&[1, 2, 3], &[], policy, |_| {});
        assert!(net.elect(1));
        net.cut(1, 3);
        let lsn = net.node(1).propose(&b"w"[..]).unwrap();
        net.deliver();
        let acked = net.outputs[&NodeId(1)].acknowledged.is_some_and(|a| a.lsn >= lsn);
        assert_eq!(acked, acked_with_one_follower_cut, "{policy}");
        net.heal();
        net.tick_all(4);
        let acked = net.outputs[&NodeId(1)].acknowledged.is_some_and(|a| a.lsn >= lsn);
        assert!(acked, "{policy}: acknowledged once every voter has it");
    }
}

#[test]
fn the_mode_changes_through_the_log_on_every_node() {
    let mut net = three();
    assert!(net.elect(1));
    let sync = AckPolicy { mode: ReplicationMode::Sync, min_sync_replicas: 2 };
    net.node(1).set_policy(sync).unwrap();
    net.deliver();
    net.tick_all(2);
    for id in [1, 2, 3] {
        assert_eq!(net.node(id).status().policy, sync);
    }
}

#[test]
fn invalid_modes_are_refused_with_the_values() {
    let mut net = three();
    assert!(net.elect(1));
    let err =
        net.node(1).set_policy(AckPolicy { mode: ReplicationMode::Sync, min_sync_replicas: 0 }).unwrap_err();
    assert!(err.to_string().contains("SYNC with min_sync_replicas = 0"), "{err}");
    let err = net
        .node(1)
        .set_policy(AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 3 })
        .unwrap_err();
    assert!(
        err.to_string().contains("min_sync_replicas = 3") && err.to_string().contains("2 of a 3-voter"),
        "{err}"
    );
    let err = "QUORUM".parse::<ReplicationMode>().unwrap_err();
    assert!(err.to_string().contains("\"QUORUM\""), "{err}");
}

#[test]
fn a_voter_joins_through_a_joint_configuration_and_leaves_it_alone() {
    // Dissertation §4.3: joint consensus, then C_new.
    let mut net = Network::new(&[1, 2, 3], &[4], SEMI, |_| {});
    assert!(net.elect(1));
    assert!(net.node(4).status().conf_state.is_learner(NodeId(4)));
    net.node(1).change_membership(vec![MemberChange::AddVoter(NodeId(4))]).unwrap();
    let pending = net.node(1).change_membership(vec![MemberChange::Remove(NodeId(2))]);
    assert!(matches!(pending, Err(RaftError::ConfigChangePending { .. })), "one change at a time");
    net.deliver();
    net.tick_all(4);
    for id in [1, 2, 3, 4] {
        let conf = net.node(id).status().conf_state;
        assert!(!conf.is_joint(), "node {id}: {conf}");
        assert_eq!(conf.voters.len(), 4, "node {id}: {conf}");
    }
}

#[test]
fn learners_replicate_but_never_campaign_or_count() {
    // Dissertation §4.2.1: non-voting members.
    let mut net = Network::new(&[1, 2, 3], &[4], SEMI, |_| {});
    assert!(net.elect(1));
    net.node(1).propose(&b"to learner"[..]).unwrap();
    net.deliver();
    net.tick_all(2);
    assert_eq!(net.outputs[&NodeId(4)].applied, [b"to learner".to_vec()]);
    net.isolate(1);
    for _ in 0..100 {
        net.node(4).tick().unwrap();
    }
    net.deliver();
    assert_eq!(net.role(4), Role::Follower, "a learner never campaigns");
    assert!(net.sent_where(|m| m.from == NodeId(4) && Network::is_vote(m)).is_empty());
}

#[test]
fn a_removed_leader_steps_down() {
    let mut net = three();
    assert!(net.elect(1));
    net.node(1).change_membership(vec![MemberChange::Remove(NodeId(1))]).unwrap();
    net.deliver();
    net.tick_all(4);
    assert_ne!(net.role(1), Role::Leader);
    net.tick_all(40);
    assert!([2, 3].iter().any(|id| net.role(*id) == Role::Leader), "the remaining voters elect a leader");
}

#[test]
fn leadership_transfers_to_a_caught_up_voter() {
    // Dissertation §3.10.
    let mut net = three();
    assert!(net.elect(1));
    net.node(1).transfer_leader(NodeId(2)).unwrap();
    let during = net.node(1).propose(&b"x"[..]);
    assert!(matches!(during, Err(RaftError::TransferInProgress { to: NodeId(2) })));
    net.deliver();
    assert_eq!(net.role(2), Role::Leader);
    assert_eq!(net.role(1), Role::Follower);
    assert!(!net.node(1).status().lease_valid);
}

#[test]
fn read_index_waits_for_a_heartbeat_quorum_and_followers_forward() {
    // Dissertation §6.4.
    let mut net = three();
    assert!(net.elect(1));
    net.node(1).read_index(&b"leader read"[..]).unwrap();
    net.node(2).read_index(&b"follower read"[..]).unwrap();
    net.deliver();
    let commit = net.node(1).status().hard_state.commit;
    let leader_read = &net.outputs[&NodeId(1)].read_states[0];
    assert_eq!(
        (leader_read.ctx.as_ref(), leader_read.lsn, leader_read.lease),
        (&b"leader read"[..], commit, false)
    );
    assert_eq!(net.outputs[&NodeId(2)].read_states[0].ctx, Bytes::from_static(b"follower read"));

    // An isolated leader cannot confirm a read.
    net.isolate(1);
    net.node(1).read_index(&b"stale"[..]).unwrap();
    net.deliver();
    assert_eq!(net.outputs[&NodeId(1)].read_states.len(), 1);
}

#[test]
fn lease_reads_are_answered_at_once_only_while_the_lease_holds() {
    // Dissertation §6.4.1; the bound is argued in docs/raft.md.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| c.read_only = ReadOnlyOption::LeaseBased);
    assert!(net.elect(1));
    net.tick_all(2); // a heartbeat round acknowledged by a quorum
    assert!(net.node(1).status().lease_valid);
    net.node(1).read_index(&b"lease"[..]).unwrap();
    let ready = net.node(1).ready().unwrap();
    assert!(
        ready.read_states.iter().any(|r| r.lease && r.ctx == Bytes::from_static(b"lease")),
        "answered at once"
    );
    net.node(1).advance().unwrap();
    net.isolate(1);
    let lease = net.node(1).status();
    assert!(lease.lease_valid);
    let mut ticks = 0;
    while net.node(1).status().lease_valid {
        net.node(1).tick().unwrap();
        net.deliver();
        ticks += 1;
    }
    let config_lease = themis_raft::Config::new(NodeId(1), "test").lease_ticks();
    assert!(ticks <= config_lease, "lease lasted {ticks} ticks, more than {config_lease}");
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_snapshot() {
    // §7: log compaction and InstallSnapshot.
    let mut net = three();
    assert!(net.elect(1));
    net.isolate(3);
    for i in 0..20u8 {
        net.node(1).propose(vec![i]).unwrap();
    }
    net.deliver();
    net.tick_all(2);
    let status = net.node(1).status();
    let storage = net.node(1).storage().clone();
    let term = storage.term(status.applied_lsn).unwrap();
    let meta =
        SnapshotMeta { lsn: status.applied_lsn, term, conf_state: status.conf_state, policy: status.policy };
    storage.wl().compact(Snapshot { meta, data: Bytes::from_static(b"state") }).unwrap();
    net.heal();
    net.tick_all(6);
    assert_eq!(net.node(3).storage().rl().snapshot().data, Bytes::from_static(b"state"));
    assert_eq!(net.node(3).status().hard_state.commit, net.node(1).status().hard_state.commit);
}

#[test]
fn appends_to_an_unresponsive_follower_are_bounded() {
    // Flow control: at most max_inflight_msgs appends in flight to one follower.
    let mut net = Network::new(&[1, 2, 3], &[], SEMI, |c| {
        c.max_inflight_msgs = 3;
        c.batch_appends = false;
    });
    assert!(net.elect(1));
    net.cut(1, 3);
    for i in 0..20u8 {
        net.node(1).propose(vec![i]).unwrap();
    }
    net.deliver();
    let status = net.node(1).status();
    let third = &status.progress[&NodeId(3)];
    assert!(third.inflight_msgs <= 3, "{third:?}");
    assert_eq!(third.state, ProgressState::Replicate);
    let appends = net.sent_where(|m| m.to == NodeId(3) && matches!(m.body, Body::Append { .. })).len();
    assert!(appends <= 5, "{appends} appends sent to an unresponsive follower");
}

#[test]
fn reads_waiting_for_a_quorum_are_bounded() {
    // A leader cut off from its followers cannot confirm reads; it queues at most 4096.
    let mut net = three();
    assert!(net.elect(1));
    net.isolate(1);
    for i in 0..4096u32 {
        net.node(1).read_index(i.to_le_bytes().to_vec()).unwrap();
    }
    let err = net.node(1).read_index(&b"one more"[..]).unwrap_err();
    assert!(matches!(err, RaftError::ReadsQueued { max: 4096 }), "{err}");
}

#[test]
fn a_bootstrap_with_an_invalid_mode_or_membership_is_refused() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let start = |conf: ConfState, policy| {
        let storage = MemStorage::bootstrap(conf, policy);
        let signer = Box::new(themis_testkit::network::signer(NodeId(1), &ids));
        RawNode::new(Config::new(NodeId(1), "test"), storage, signer, || Timestamp::ZERO).map(|_| ())
    };
    let sync_zero = AckPolicy { mode: ReplicationMode::Sync, min_sync_replicas: 0 };
    let err = start(ConfState::with_voters(ids), sync_zero).unwrap_err();
    assert!(err.to_string().contains("SYNC with min_sync_replicas = 0"), "{err}");
    let mut both = ConfState::with_voters(ids);
    both.learners.insert(NodeId(2));
    let err = start(both, SEMI).unwrap_err();
    assert!(err.to_string().contains("node 2 is both a voter and a learner"), "{err}");
    // A node that will join later starts with no membership at all.
    start(ConfState::default(), SEMI).unwrap();
}

#[test]
fn an_undecodable_configuration_entry_is_skipped_not_fatal() {
    // Every node applies the same committed entries, so an entry no node can decode is
    // skipped by all of them alike; the membership stays as it was.
    let mut net = three();
    assert!(net.elect(1));
    let before = net.node(2).status().conf_state;
    let entry = themis_wal::Entry {
        lsn: 2,
        term: 1,
        timestamp: Timestamp::ZERO,
        kind: themis_wal::EntryKind::CONFIG,
        payload: Bytes::from_static(&[9, 9]),
    };
    let append = Body::Append { prev_lsn: 1, prev_term: 1, entries: vec![entry], commit: 2 };
    net.node(2).step(themis_raft::Message { from: NodeId(1), to: NodeId(2), term: 1, body: append }).unwrap();
    let status = net.node(2).status();
    assert_eq!(status.hard_state.commit, 2);
    assert_eq!(status.conf_state, before);
}

#[test]
fn ready_and_advance_must_alternate() {
    let mut net = three();
    let node = net.node(1);
    assert!(matches!(node.advance(), Err(RaftError::NoReady)));
    node.campaign().unwrap();
    node.ready().unwrap();
    assert!(!node.has_ready(), "nothing more until the outstanding ready is advanced");
    assert!(matches!(node.ready(), Err(RaftError::ReadyOutstanding)));
    node.advance().unwrap();
    assert!(matches!(node.advance(), Err(RaftError::NoReady)));
}
