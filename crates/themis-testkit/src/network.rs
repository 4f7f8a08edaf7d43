//! A hand-driven cluster for rule-level tests, in the style of etcd's raft test harness:
//! nodes over `MemStorage`, messages delivered on demand, links cut and healed by hand.

use std::collections::{BTreeMap, HashSet};

use themis_clock::{NodeId, Timestamp};
use themis_raft::{
    AckPolicy, Acknowledged, Body, ConfState, Config, Ed25519Votes, MemStorage, Message, RawNode, ReadState,
    Role,
};

/// What a node's `Ready`s produced that tests look at.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Read states, in order.
    pub read_states: Vec<ReadState>,
    /// The latest acknowledgement point.
    pub acknowledged: Option<Acknowledged>,
    /// Committed data payloads, in order.
    pub applied: Vec<Vec<u8>>,
}

/// A cluster whose every step a test controls.
pub struct Network {
    /// The nodes.
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    /// What each node's `Ready`s produced.
    pub outputs: BTreeMap<NodeId, Outputs>,
    blocked: HashSet<(NodeId, NodeId)>,
    /// Every message delivered or dropped, for inspection.
    pub sent: Vec<Message>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The vote signer of node `id` in a test cluster of `ids` (deterministic keys).
#[must_use]
pub fn signer(id: NodeId, ids: &[NodeId]) -> Ed25519Votes {
    let seed = |id: NodeId| [id.0 as u8 ^ 0x5a; 32];
    let mut signer = Ed25519Votes::from_seed(id, &seed(id)).expect("a 32-byte seed");
    for peer in ids {
        let key = Ed25519Votes::from_seed(*peer, &seed(*peer)).expect("a 32-byte seed").public_key();
        signer.add_peer(*peer, &key).expect("a 32-byte key");
    }
    signer
}

impl Network {
    /// Voters `voters`, learners `learners`, policy `policy`; `configure` adjusts each
    /// node's config.
    pub fn new(
        voters: &[u64],
        learners: &[u64],
        policy: AckPolicy,
        configure: impl Fn(&mut Config),
    ) -> Network {
        let conf = ConfState {
            voters: voters.iter().map(|i| NodeId(*i)).collect(),
            learners: learners.iter().map(|i| NodeId(*i)).collect(),
            ..ConfState::default()
        };
        let ids: Vec<NodeId> = conf.members().into_iter().collect();
        let mut nodes = BTreeMap::new();
        for id in &ids {
            let mut config = Config::new(*id, "test");
            configure(&mut config);
            let storage = MemStorage::bootstrap(conf.clone(), policy);
            let node = RawNode::new(config, storage, Box::new(signer(*id, &ids)), || Timestamp::ZERO)
                .expect("a valid test node");
            nodes.insert(*id, node);
        }
        let outputs = ids.iter().map(|id| (*id, Outputs::default())).collect();
        Network { nodes, outputs, blocked: HashSet::new(), sent: Vec::new() }
    }

    /// The node `id`.
    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&NodeId(id)).expect("a member of the test network")
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.blocked.insert((NodeId(a), NodeId(b)));
        self.blocked.insert((NodeId(b), NodeId(a)));
    }

    /// Cuts `id` from everyone.
    pub fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.nodes.keys().map(|n| n.0).filter(|n| *n != id).collect();
        for other in others {
            self.cut(id, other);
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Handles `id`'s `Ready`s: persists, records outputs, returns its messages.
    fn drain(&mut self, id: NodeId) -> Vec<Message> {
        let node = self.nodes.get_mut(&id).expect("member");
        let outputs = self.outputs.get_mut(&id).expect("member");
        let mut out = Vec::new();
        while node.has_ready() {
            let ready = node.ready().expect("ready");
            {
                let mut log = node.storage().wl();
                if let Some(snapshot) = &ready.snapshot {
                    log.apply_snapshot(snapshot.clone());
                }
                log.append(&ready.entries).expect("append");
                if let Some(hard_state) = ready.hard_state {
                    log.set_hard_state(hard_state);
                }
            }
            out.extend(ready.messages);
            out.extend(ready.persisted_messages);
            outputs.read_states.extend(ready.read_states);
            if ready.acknowledged.is_some() {
                outputs.acknowledged = ready.acknowledged;
            }
            for entry in ready.committed_entries {
                if entry.kind == themis_wal::EntryKind::DATA {
                    outputs.applied.push(entry.payload.to_vec());
                }
            }
            node.advance().expect("advance");
        }
        out
    }

    /// Delivers messages until the network is quiet (at most `limit` rounds); `filter`
    /// may drop or rewrite each message. Returns the rounds taken.
    pub fn deliver_with(
        &mut self,
        limit: usize,
        mut filter: impl FnMut(Message) -> Option<Message>,
    ) -> usize {
        for round in 0..limit {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut inbox = Vec::new();
            for id in ids {
                inbox.extend(self.drain(id));
            }
            if inbox.is_empty() {
                return round;
            }
            for message in inbox {
                self.sent.push(message.clone());
                if self.blocked.contains(&(message.from, message.to)) {
                    continue;
                }
                let Some(message) = filter(message) else { continue };
                let to = message.to;
                // The harness only delivers well-addressed messages, so a step error is a bug.
                self.nodes.get_mut(&to).expect("member").step(message).expect("step");
            }
        }
        limit
    }

    /// Delivers until quiet.
    pub fn deliver(&mut self) -> usize {
        self.deliver_with(1000, Some)
    }

    /// Ticks every node `n` times, delivering after each tick.
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.nodes.get_mut(&id).expect("member").tick().expect("tick");
            }
            self.deliver();
        }
    }

    /// Makes `id` campaign and delivers; returns whether it leads.
    pub fn elect(&mut self, id: u64) -> bool {
        self.node(id).campaign().expect("campaign");
        self.deliver();
        self.role(id) == Role::Leader
    }

    /// `id`'s role.
    pub fn role(&mut self, id: u64) -> Role {
        self.node(id).status().soft_state.role
    }

    /// `id`'s term.
    pub fn term(&mut self, id: u64) -> u64 {
        self.node(id).status().hard_state.term
    }

    /// The messages sent so far whose body `matches`.
    pub fn sent_where(&self, matches: impl Fn(&Message) -> bool) -> Vec<&Message> {
        self.sent.iter().filter(|m| matches(m)).collect()
    }

    /// Whether `message` is a (pre-)vote request.
    #[must_use]
    pub fn is_vote(message: &Message) -> bool {
        matches!(message.body, Body::Vote { .. })
    }
}
