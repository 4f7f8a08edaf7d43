//! The driver over a network and a log store of this test's own, both in memory: the
//! [`Network`] and [`LogStore`] traits are all the driver needs, so an embedder with
//! their own transport or storage does not fork it.
//!
//! The network is a hub of inboxes whose links can be cut one way or both (a partition);
//! the store wraps the crate's `MemStorage`. Three nodes elect a leader, replicate, compact
//! their logs, catch a cut-off follower up from a snapshot sent in chunks and held in
//! memory, fail over when the leader is cut off, and restart a node on its store.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_clock::{Hlc, NodeId};
use themis_raft::driver::{Driver, DriverConfig, DriverStatus, PeerInfo, ReplicationManager};
use themis_raft::{
    AckPolicy, ConfState, Config, DriverError, Ed25519Votes, HardState, Inbox, InitialState, Link,
    LinkCounters, LinkError, LogStore, MemStorage, Network, SharedVotes, Snapshot, SnapshotMeta, Storage,
    StorageError,
};
use themis_ship::MemoryStateMachine;
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{Entry, Lsn};
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::{AbortHandle, JoinHandle};

// ---- The network: a hub of inboxes -------------------------------------------------

#[derive(Default)]
struct Hub {
    /// Each serving node's inbox and the peers it admits.
    nodes: HashMap<NodeId, (Inbox, BTreeSet<NodeId>)>,
    /// Directed links that drop everything: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
}

#[derive(Clone, Default)]
struct MemNet(Arc<Mutex<Hub>>);

impl MemNet {
    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts `node` off from every other node, both ways.
    fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let mut hub = self.hub();
        for other in all.iter().copied().filter(|o| *o != node) {
            hub.cut.insert((node, other));
            hub.cut.insert((other, node));
        }
    }

    fn heal(&self) {
        self.hub().cut.clear();
    }

    fn endpoint(&self, me: NodeId) -> MemNetwork {
        MemNetwork { me, net: self.clone() }
    }
}

/// One node's view of the hub.
struct MemNetwork {
    me: NodeId,
    net: MemNet,
}

impl Network for MemNetwork {
    type Link = MemLink;

    fn max_message_bytes(&self) -> usize {
        64 << 20
    }

    fn serve(&mut self, inbox: Inbox, _votes: SharedVotes) -> Result<AbortHandle, DriverError> {
        // Vote keys were exchanged before start (nothing here authenticates peers).
        let mut hub = self.net.hub();
        let admitted = hub.nodes.remove(&self.me).map(|(_, admitted)| admitted).unwrap_or_default();
        hub.nodes.insert(self.me, (inbox, admitted));
        Ok(tokio::spawn(std::future::pending::<()>()).abort_handle())
    }

    fn connect(&mut self, peer: &PeerInfo, _seed: u64) -> Result<MemLink, DriverError> {
        Ok(MemLink { from: self.me, to: peer.id, net: self.net.clone(), sent: Arc::default() })
    }

    fn admit(&mut self, node: NodeId, member: bool) {
        let mut hub = self.net.hub();
        let Some((_, admitted)) = hub.nodes.get_mut(&self.me) else { return };
        if member {
            admitted.insert(node);
        } else {
            admitted.remove(&node);
        }
    }
}

struct MemLink {
    from: NodeId,
    to: NodeId,
    net: MemNet,
    sent: Arc<(AtomicU64, AtomicU64)>,
}

impl Link for MemLink {
    fn try_send(&self, message: Bytes) -> Result<(), LinkError> {
        let hub = self.net.hub();
        let len = message.len() as u64;
        // A cut link, a peer not serving yet, or one that does not admit this node: the
        // message is lost, as on a real network.
        let delivered = match hub.nodes.get(&self.to) {
            Some((inbox, admitted))
                if admitted.contains(&self.from) && !hub.cut.contains(&(self.from, self.to)) =>
            {
                match inbox.try_send((self.from, message)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => return Err(LinkError::Full { peer: self.to }),
                    // A stopped node: lost, and it may be started again on the same inbox slot.
                    Err(TrySendError::Closed(_)) => false,
                }
            }
            _ => false,
        };
        if delivered {
            self.sent.0.fetch_add(1, Ordering::Relaxed);
            self.sent.1.fetch_add(len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn counters(&self) -> LinkCounters {
        let bytes = self.sent.1.load(Ordering::Relaxed);
        LinkCounters {
            sent_msgs: self.sent.0.load(Ordering::Relaxed),
            payload_bytes: bytes,
            wire_bytes: bytes,
        }
    }
}

// ---- The store: the crate's MemStorage behind the driver's trait -------------------

#[derive(Clone)]
struct MemLog {
    log: MemStorage,
    /// Times the driver asked for a blocking hard-state write.
    hard_state_writes: Arc<AtomicU64>,
}

fn storage_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(e.to_string())
}

impl Storage for MemLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.log.initial_state()
    }
    fn entries(&self, low: Lsn, high: Lsn, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(low, high, max_bytes)
    }
    fn term(&self, lsn: Lsn) -> Result<u64, StorageError> {
        self.log.term(lsn)
    }
    fn first_lsn(&self) -> Result<Lsn, StorageError> {
        self.log.first_lsn()
    }
    fn last_lsn(&self) -> Result<Lsn, StorageError> {
        self.log.last_lsn()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.log.snapshot()
    }
}

impl LogStore for MemLog {
    fn max_record_bytes(&self) -> usize {
        usize::MAX
    }

    fn append(&self, entries: &[Entry]) -> impl Future<Output = Result<(), StorageError>> + Send {
        std::future::ready(self.log.wl().append(entries).map_err(storage_error))
    }

    fn hard_state_needs_write(&self, hs: &HardState) -> bool {
        let held = self.log.rl().hard_state();
        held.term != hs.term || held.vote != hs.vote
    }

    fn set_hard_state(&self, hs: HardState) -> Result<(), StorageError> {
        if self.hard_state_needs_write(&hs) {
            self.hard_state_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.log.wl().set_hard_state(hs);
        Ok(())
    }

    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.log.wl().apply_snapshot(snapshot.clone());
        Ok(())
    }

    fn compact(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.log.wl().compact(snapshot.clone()).map_err(storage_error)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.rl().snapshot().meta.clone()
    }

    fn entries_since_snapshot(&self) -> u64 {
        self.log.rl().entries().len() as u64
    }
}

// ---- The cluster -------------------------------------------------------------------

struct Node {
    id: NodeId,
    log: MemLog,
    votes: SharedVotes,
    machine: Arc<MemoryStateMachine>,
    manager: Option<ReplicationManager>,
    handle: Option<JoinHandle<Result<(), DriverError>>>,
}

struct Cluster {
    net: MemNet,
    ids: Vec<NodeId>,
    peers: Vec<PeerInfo>,
    nodes: Vec<Node>,
}

fn config(id: NodeId, peers: Vec<PeerInfo>) -> DriverConfig {
    let mut raft = Config::new(id, "in-memory");
    raft.seed = id.0;
    let mut config = DriverConfig::new(raft, peers);
    config.tick = Duration::from_millis(10);
    config.snapshot_entries = 16;
    config.snapshot_log_percent = 0;
    config.snapshot_chunk_bytes = 1024;
    config
}

impl Cluster {
    fn new() -> Cluster {
        let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
        // Every node knows every node's vote key up front: this network authenticates no one.
        let keys: Vec<Ed25519Votes> = ids
            .iter()
            .map(|id| Ed25519Votes::from_seed(*id, &[u8::try_from(id.0).unwrap(); 32]).unwrap())
            .collect();
        let public: Vec<_> = keys.iter().map(Ed25519Votes::public_key).collect();
        let peers: Vec<PeerInfo> = ids
            .iter()
            .map(|id| PeerInfo {
                id: *id,
                raft_addr: format!("10.0.0.{}:7000", id.0).parse().unwrap(),
                meta: vec![],
            })
            .collect();
        let nodes = ids
            .iter()
            .zip(keys)
            .map(|(id, mut signer)| {
                for (peer, key) in ids.iter().zip(&public) {
                    signer.add_peer(*peer, key).unwrap();
                }
                let log = MemLog {
                    log: MemStorage::bootstrap(ConfState::with_voters(ids.clone()), AckPolicy::ASYNC),
                    hard_state_writes: Arc::default(),
                };
                Node {
                    id: *id,
                    log,
                    votes: SharedVotes::new(signer),
                    machine: Arc::new(MemoryStateMachine::new()),
                    manager: None,
                    handle: None,
                }
            })
            .collect();
        let mut cluster = Cluster { net: MemNet::default(), ids, peers, nodes };
        for i in 0..3 {
            cluster.start(i);
        }
        cluster
    }

    /// Starts node `i` on its store, with a fresh state machine (restored by the driver
    /// from the store's snapshot and log).
    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.machine = Arc::new(MemoryStateMachine::new());
        let hlc = Arc::new(Hlc::new(node.id));
        let (manager, handle) = Driver::start(
            config(node.id, self.peers.clone()),
            node.log.clone(),
            self.net.endpoint(node.id),
            Arc::clone(&node.machine),
            node.votes.clone(),
            move || hlc.now(),
        )
        .unwrap();
        node.manager = Some(manager);
        node.handle = Some(handle);
    }

    async fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(manager) = node.manager.take() {
            manager.shutdown().await;
        }
        if let Some(handle) = node.handle.take() {
            let _ = handle.await;
        }
    }

    fn manager(&self, i: usize) -> &ReplicationManager {
        self.nodes[i].manager.as_ref().expect("running")
    }

    /// The index of the node that leads, among `among`, once one does and its lease holds.
    async fn leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for &i in among {
                let status = self.manager(i).status();
                if status.role == "Leader" && status.lease_valid {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?} within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until(&self, i: usize, what: &str, ok: impl Fn(&DriverStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok(&self.manager(i).status()) {
            assert!(
                Instant::now() < deadline,
                "node {}: {what} within 10 s: {:?}",
                self.nodes[i].id,
                self.manager(i).status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until node `i`'s state machine holds `key` = `value`.
    async fn holds(&self, i: usize, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes[i].machine.get("docs", key.as_bytes()).as_deref() != Some(value.as_bytes()) {
            assert!(Instant::now() < deadline, "node {} never applied {key} = {value}", self.nodes[i].id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn put(key: &str, value: &str) -> Bytes {
    let kind = OpKind::Upsert {
        collection: "docs".into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    encode_batch(&[Op { origin: NodeId(0), txn: 0, kind, stamp: None }]).unwrap()
}

async fn write_many(manager: &ReplicationManager, prefix: &str, n: usize) -> Lsn {
    let mut last = 0;
    for i in 0..n {
        last = manager.propose(put(&format!("{prefix}-{i}"), &format!("v{i}"))).await.unwrap();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_runs_over_a_network_and_a_store_of_its_users_own() {
    let mut cluster = Cluster::new();
    let all = [0, 1, 2];

    // Elect and replicate.
    let leader = cluster.leader(&all).await;
    write_many(cluster.manager(leader), "a", 40).await;
    for i in all {
        cluster.holds(i, "a-39", "v39").await;
    }
    // Term and vote changes went through the store's blocking write on every node.
    for node in &cluster.nodes {
        assert!(node.log.hard_state_writes.load(Ordering::Relaxed) >= 1, "node {}", node.id);
    }

    // A follower cut off misses enough writes that the leader compacts them away; once
    // healed it catches up from a snapshot sent in 1 KiB chunks and held in memory.
    let behind = (leader + 1) % 3;
    cluster.net.isolate(cluster.ids[behind], &cluster.ids);
    let last = write_many(cluster.manager(leader), "b", 120).await;
    cluster
        .until(leader, "a snapshot past the cut-off follower", |s| {
            s.snapshot_lsn > cluster.manager(behind).applied_lsn()
        })
        .await;
    assert!(cluster.nodes[leader].log.log.rl().snapshot().meta.lsn > 0, "the leader compacted its log");
    cluster.net.heal();
    cluster.holds(behind, "b-119", "v119").await;
    cluster.until(behind, "the snapshot received", |s| s.counters.snapshots_received >= 1).await;
    cluster.until(behind, "everything applied", |s| s.applied_lsn >= last).await;
    // Status is published once a tick.
    cluster.until(leader, "the snapshot sent in chunks", |s| s.counters.snapshot_chunks_sent > 1).await;

    // The leader cut off: the other two elect one of themselves and go on writing; the
    // old leader follows once healed.
    let old = cluster.leader(&all).await;
    cluster.net.isolate(cluster.ids[old], &cluster.ids);
    let rest: Vec<usize> = all.into_iter().filter(|i| *i != old).collect();
    let new = cluster.leader(&rest).await;
    assert_ne!(new, old);
    write_many(cluster.manager(new), "c", 10).await;
    for &i in &rest {
        cluster.holds(i, "c-9", "v9").await;
    }
    cluster.net.heal();
    cluster.holds(old, "c-9", "v9").await;
    cluster.until(old, "following the new leader", |s| s.leader == Some(cluster.ids[new])).await;

    // A node restarted on its store replays it into a fresh state machine.
    let restarted = rest.into_iter().find(|i| *i != new).unwrap();
    cluster.stop(restarted).await;
    let last = write_many(cluster.manager(new), "d", 5).await;
    cluster.start(restarted);
    cluster.holds(restarted, "a-0", "v0").await;
    cluster.holds(restarted, "d-4", "v4").await;
    cluster.until(restarted, "everything applied", |s| s.applied_lsn >= last).await;
    for i in all {
        cluster.stop(i).await;
    }
}

/// A network whose messages cannot carry the largest record is refused at start, by name.
#[tokio::test]
async fn a_network_too_small_for_the_largest_record_is_refused_at_start() {
    struct Tiny(MemNetwork);
    impl Network for Tiny {
        type Link = MemLink;
        fn max_message_bytes(&self) -> usize {
            4096
        }
        fn serve(&mut self, inbox: Inbox, votes: SharedVotes) -> Result<AbortHandle, DriverError> {
            self.0.serve(inbox, votes)
        }
        fn connect(&mut self, peer: &PeerInfo, seed: u64) -> Result<MemLink, DriverError> {
            self.0.connect(peer, seed)
        }
        fn admit(&mut self, node: NodeId, member: bool) {
            self.0.admit(node, member);
        }
    }
    let id = NodeId(1);
    let peers = vec![PeerInfo { id, raft_addr: "10.0.0.1:7000".parse().unwrap(), meta: vec![] }];
    let log =
        MemLog { log: MemStorage::new(ConfState::with_voters([id])), hard_state_writes: Arc::default() };
    let votes = SharedVotes::new(Ed25519Votes::from_seed(id, &[1; 32]).unwrap());
    let net = MemNet::default();
    let err = Driver::start(
        config(id, peers),
        log,
        Tiny(net.endpoint(id)),
        Arc::new(MemoryStateMachine::new()),
        votes,
        || themis_clock::Timestamp::ZERO,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(&err, DriverError::Config(m) if m.contains("max_message_bytes = 4096")), "{err}");
    assert!(net.hub().nodes.is_empty(), "nothing was served");
}
