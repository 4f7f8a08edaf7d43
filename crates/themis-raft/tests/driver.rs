//! Three drivers in one process over loopback mutual TLS, each with its own WAL on disk:
//! elections, writes in every mode read back everywhere, leader loss, membership changes,
//! snapshots with compaction, a follower catching up from a snapshot, and health alerts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use themis_clock::{Hlc, NodeId};
use themis_raft::driver::{Driver, DriverConfig, HealthAlert, PeerInfo, ReplicationManager};
use themis_raft::{
    AckPolicy, ConfState, Config, DriverError, Ed25519Votes, ReplicationMode, SharedVotes, ShipNetwork,
    WalStorage,
};
use themis_ship::tls::{CertPem, TlsConfig, generate_ca, issue_node_cert};
use themis_ship::{Members, MemoryStateMachine, PeerConfig, Security, Transport, TransportConfig};
use themis_wal::WalConfig;
use themis_wal::op::{Op, OpKind, encode_batch};
use tokio::task::JoinHandle;

struct Node {
    id: NodeId,
    manager: Option<ReplicationManager>,
    machine: Arc<MemoryStateMachine>,
    handle: Option<JoinHandle<Result<(), DriverError>>>,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl Node {
    fn manager(&self) -> &ReplicationManager {
        self.manager.as_ref().expect("running")
    }

    async fn stop(&mut self) {
        if let Some(manager) = self.manager.take() {
            manager.shutdown().await;
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

struct Cluster {
    ca: CertPem,
    nodes: Vec<Node>,
    peers: Vec<PeerInfo>,
    snapshot_entries: u64,
    /// Changes every node's driver settings (at start and restart).
    edit: fn(&mut DriverConfig),
}

fn put(key: &str, value: &str) -> Bytes {
    let op = Op {
        origin: NodeId(0),
        txn: 0,
        kind: OpKind::Upsert {
            collection: "docs".into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        },
        stamp: None,
    };
    encode_batch(&[op]).unwrap()
}

fn start_node(
    id: NodeId,
    dir: tempfile::TempDir,
    bound: Bound,
    peers: Vec<PeerInfo>,
    bootstrap: ConfState,
    snapshot_entries: u64,
) -> Node {
    start_node_with(id, dir, bound, peers, bootstrap, snapshot_entries, |_| {})
}

/// [`start_node`] with the driver's settings changed by `edit` first.
fn start_node_with(
    id: NodeId,
    dir: tempfile::TempDir,
    (transport, listener, votes): Bound,
    peers: Vec<PeerInfo>,
    bootstrap: ConfState,
    snapshot_entries: u64,
    edit: impl FnOnce(&mut DriverConfig),
) -> Node {
    let addr = listener.local_addr().unwrap();
    let wal = WalConfig {
        segment_bytes: 1 << 20,
        max_record_bytes: 256 << 10,
        max_queue_bytes: 1 << 20,
        ..WalConfig::default()
    };
    let (storage, _) = WalStorage::open(dir.path(), wal, Some((bootstrap, AckPolicy::ASYNC))).unwrap();
    let mut raft = Config::new(id, "driver-test");
    raft.seed = id.0;
    let mut config = DriverConfig::new(raft, peers);
    config.tick = Duration::from_millis(20);
    config.snapshot_entries = snapshot_entries;
    edit(&mut config);
    let votes = SharedVotes::new(votes);
    let machine = Arc::new(MemoryStateMachine::new());
    let hlc = Arc::new(Hlc::new(id));
    let network = ShipNetwork::new(transport, listener, PeerConfig::default()).unwrap();
    let (manager, handle) =
        Driver::start(config, storage, network, machine.clone(), votes, move || hlc.now()).unwrap();
    Node { id, manager: Some(manager), machine, handle: Some(handle), dir, addr }
}

/// A node's transport, its bound listener, and its vote signer (its certificate's key).
type Bound = (Transport, themis_ship::transport::Listener, Ed25519Votes);

async fn bind(ca: &CertPem, id: NodeId, members: &[NodeId], addr: &str) -> Bound {
    let cert = issue_node_cert(ca, id, &[]).unwrap();
    let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key).unwrap();
    let votes = Ed25519Votes::from_pkcs8(id, tls.private_key_pkcs8().unwrap()).unwrap();
    let transport = Transport::new(
        TransportConfig::new("driver-test", id, Security::Tls(tls)),
        Members::new(members.iter().copied()),
    )
    .unwrap();
    // A restarted node binds its old address again: the stopped node's listener may take
    // a moment to close, so an address in use is retried for a while.
    let mut tries = 0;
    let listener = loop {
        match transport.bind(addr.parse().unwrap()).await {
            Ok(listener) => break listener,
            Err(themis_ship::ShipError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 100 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    };
    (transport, listener, votes)
}

impl Cluster {
    async fn start(n: u64, snapshot_entries: u64) -> Cluster {
        Cluster::start_with(n, snapshot_entries, |_| {}).await
    }

    async fn start_with(n: u64, snapshot_entries: u64, edit: fn(&mut DriverConfig)) -> Cluster {
        let ca = generate_ca("driver-test").unwrap();
        let mut listeners = Vec::new();
        let mut peers = Vec::new();
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        for &id in &ids {
            let bound = bind(&ca, id, &ids, "127.0.0.1:0").await;
            peers.push(PeerInfo { id, raft_addr: bound.1.local_addr().unwrap(), meta: vec![] });
            listeners.push(bound);
        }
        let conf = ConfState::with_voters((1..=n).map(NodeId));
        let mut nodes = Vec::new();
        for (i, listener) in (1..=n).zip(listeners) {
            let dir = tempfile::tempdir().unwrap();
            nodes.push(start_node_with(
                NodeId(i),
                dir,
                listener,
                peers.clone(),
                conf.clone(),
                snapshot_entries,
                edit,
            ));
        }
        Cluster { ca, nodes, peers, snapshot_entries, edit }
    }

    async fn leader(&self) -> usize {
        for _ in 0..500 {
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(m) = &node.manager
                    && m.status().role == "Leader"
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader within 5 s");
    }

    /// Restarts a stopped node on its directory (a crash and restart).
    async fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.manager.is_none());
        let (id, addr) = (node.id, node.addr);
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let ids: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        let listener = bind(&self.ca, id, &ids, &addr.to_string()).await;
        let conf = ConfState::with_voters(self.peers.iter().map(|p| p.id));
        self.nodes[index] =
            start_node_with(id, dir, listener, self.peers.clone(), conf, self.snapshot_entries, self.edit);
    }
}

async fn write(manager: &ReplicationManager, key: &str, value: &str) -> u64 {
    manager.propose(put(key, value)).await.unwrap()
}

async fn converge(nodes: &[&Node], key: &str, value: &str) {
    for node in nodes {
        for _ in 0..500 {
            if node.machine.get("docs", key.as_bytes()).as_deref() == Some(value.as_bytes()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if node.machine.get("docs", key.as_bytes()).is_none() {
            for n in nodes {
                eprintln!("{:?}", n.manager.as_ref().map(ReplicationManager::status));
            }
        }
        assert_eq!(
            node.machine.get("docs", key.as_bytes()).as_deref(),
            Some(value.as_bytes()),
            "node {} has {key}",
            node.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_in_every_mode_and_survives_losing_its_leader() {
    let mut cluster = Cluster::start(3, 100_000).await;
    let leader = cluster.leader().await;
    let lm = cluster.nodes[leader].manager().clone();
    // A follower refuses writes and names the leader.
    let follower = (leader + 1) % 3;
    match cluster.nodes[follower].manager().propose(put("k", "v")).await {
        Err(DriverError::NotLeader { leader: Some(l), leader_info: Some(info), .. }) => {
            assert_eq!((l, info.id), (cluster.nodes[leader].id, cluster.nodes[leader].id));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Concurrent writes share Readies; each is acknowledged with its LSN.
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let m = lm.clone();
            tokio::spawn(async move { m.propose(put(&format!("k{i}"), &format!("v{i}"))).await.unwrap() })
        })
        .collect();
    let mut lsns = Vec::new();
    for w in writes {
        lsns.push(w.await.unwrap());
    }
    lsns.sort_unstable();
    lsns.dedup();
    assert_eq!(lsns.len(), 200);
    for (mode, min) in
        [(ReplicationMode::Async, 0), (ReplicationMode::Sync, 1), (ReplicationMode::SemiSync, 1)]
    {
        let policy = AckPolicy { mode, min_sync_replicas: min };
        lm.set_mode(policy).await.unwrap();
        let key = format!("mode-{mode:?}");
        write(&lm, &key, "x").await;
        let all: Vec<&Node> = cluster.nodes.iter().collect();
        converge(&all, &key, "x").await;
        for node in &cluster.nodes {
            let status = node.manager().status();
            assert_eq!(status.mode, policy.to_string(), "node {} sees the mode", node.id);
        }
    }
    // Under SEMI_SYNC a write is acknowledged once committed, so a linearizable read on
    // the leader and on a follower (forwarded) sees it.
    let last = write(&lm, "last", "1").await;
    let read = lm.read_index().await.unwrap();
    assert!(read >= last);
    let follower_read = cluster.nodes[follower].manager().read_index().await.unwrap();
    assert!(follower_read >= last && cluster.nodes[follower].manager().applied_lsn() >= last);
    // Status is published every tick.
    let mut watch = lm.watch_status();
    let status = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let status = watch.borrow_and_update().clone();
            if status.replicas.iter().all(|r| r.match_lsn >= last) {
                return status;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("replicas caught up");
    assert_eq!(status.replicas.len(), 2);
    assert!(status.replicas.iter().all(|r| r.match_lsn >= last && r.healthy), "{status:?}");

    // Lose the leader: another takes over and accepts writes; the old one restarts and catches up.
    cluster.nodes[leader].stop().await;
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let nm = cluster.nodes[next].manager().clone();
    write(&nm, "after-failover", "yes").await;
    assert!(nm.failover_history().iter().any(|e| e.leader == Some(cluster.nodes[next].id)));
    cluster.restart(leader).await;
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "after-failover", "yes").await;
    converge(&all, "k199", "v199").await;
    for node in &mut cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_a_new_learner_catches_up_from_one_then_is_promoted() {
    let mut cluster = Cluster::start(3, 64).await;
    let leader = cluster.leader().await;
    let lm = cluster.nodes[leader].manager().clone();
    for i in 0..300 {
        write(&lm, &format!("k{i}"), &format!("v{i}")).await;
    }
    // The leader compacted: its WAL no longer starts at 1.
    for _ in 0..200 {
        if cluster.nodes[leader].manager().status().applied_lsn >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A fourth node joins as a learner, gets a snapshot, catches up and is promoted.
    let id = NodeId(4);
    let mut ids: Vec<NodeId> = cluster.peers.iter().map(|p| p.id).collect();
    ids.push(id);
    let listener = bind(&cluster.ca, id, &ids, "127.0.0.1:0").await;
    let info = PeerInfo { id, raft_addr: listener.1.local_addr().unwrap(), meta: b"client".to_vec() };
    let mut peers = cluster.peers.clone();
    peers.push(info.clone());
    let mut join_conf = ConfState::with_voters(cluster.peers.iter().map(|p| p.id));
    join_conf.learners.insert(id);
    let node = start_node(id, tempfile::tempdir().unwrap(), listener, peers, join_conf, 64);
    cluster.nodes.push(node);
    lm.add_learner(info.clone()).await.unwrap();
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "k299", "v299").await;
    assert_eq!(lm.peer(id).await, Some(info));
    lm.promote(id).await.unwrap();
    for _ in 0..300 {
        if lm.status().voters.contains(&id) && !lm.status().learners.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lm.status().voters.contains(&id), "{:?}", lm.status());
    write(&lm, "with-four", "1").await;
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "with-four", "1").await;

    // A follower goes silent: the leader raises a heartbeat alert within two intervals.
    let mut alerts = lm.alerts();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id;
    cluster.nodes[victim].stop().await;
    let alert = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(HealthAlert::MissingHeartbeats { id, silent_ms }) = alerts.recv().await
                && id == victim_id
            {
                return silent_ms;
            }
        }
    })
    .await
    .expect("an alert within 3 s");
    assert!(alert >= 80, "two heartbeat intervals of 40 ms: {alert}");
    // Remove it; the cluster keeps writing.
    lm.remove(victim_id).await.unwrap();
    write(&lm, "after-remove", "1").await;
    for node in &mut cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_proposal_is_refused_unwritten_and_a_stopped_driver_reports_no_role() {
    let mut cluster = Cluster::start(3, 100_000).await;
    let leader = cluster.leader().await;
    let lm = cluster.nodes[leader].manager().clone();
    // The WAL here holds records of 256 KiB: the largest payload is that less the header.
    let max = (256 << 10) - themis_wal::record::RECORD_HEADER_LEN;
    for size in [max + 1, 1 << 20, 64 << 20] {
        match lm.propose(Bytes::from(vec![0u8; size])).await {
            Err(DriverError::TooLarge { size: s, max: m }) => assert_eq!((s, m), (size, max)),
            other => panic!("a {size}-byte payload: expected TooLarge, got {other:?}"),
        }
    }
    // Nothing was written, and the leader goes on leading and writing.
    let lsn = write(&lm, "after", "1").await;
    assert_eq!(lm.status().role, "Leader");
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "after", "1").await;
    // The largest payload is accepted (an undecodable one, to stop every applier below).
    let at_max = lm.propose(Bytes::from(vec![0xffu8; max])).await.unwrap();
    assert_eq!(at_max, lsn + 1);
    // Applying it fails on every node: each driver stops, and its status names no role or
    // leader any more (a node must not look like a leader once it cannot lead).
    for node in &mut cluster.nodes {
        let handle = node.handle.take().unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), handle).await.expect("the driver stops");
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, DriverError::Apply(_)), "node {}: {err}", node.id);
        let status = node.manager().status();
        assert_eq!(
            (status.role.as_str(), status.leader),
            (themis_raft::STOPPED_ROLE, None),
            "node {}",
            node.id
        );
        let refused = node.manager().propose(put("k", "v")).await.unwrap_err();
        assert!(matches!(refused, DriverError::Stopped(_)), "{refused}");
    }
}

/// Three nodes of one CA bound to loopback, not started: their ids, transports and peer
/// addresses (a test may put a proxy in front of one before starting them).
async fn bind_three() -> (Vec<NodeId>, Vec<Bound>, Vec<PeerInfo>) {
    let ca = generate_ca("driver-test").unwrap();
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut bound = Vec::new();
    let mut peers = Vec::new();
    for &id in &ids {
        let b = bind(&ca, id, &ids, "127.0.0.1:0").await;
        peers.push(PeerInfo { id, raft_addr: b.1.local_addr().unwrap(), meta: vec![] });
        bound.push(b);
    }
    (ids, bound, peers)
}

/// The index of the first of `nodes` to report itself leader (5 s at most).
async fn first_leader(nodes: &[Node]) -> usize {
    for _ in 0..500 {
        if let Some(i) = nodes.iter().position(|n| n.manager().status().role == "Leader") {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_counts_only_under_the_key_its_senders_certificate_certifies() {
    // Node 3 holds a valid certificate but signs its votes with another key, and sends that
    // key in its hello, as a node trying to replace its key in-band would. Its peers take
    // the key from the certificate instead, so none of its votes verifies: it never leads
    // and its grants never count.
    let (ids, mut bound, peers) = bind_three().await;
    let rogue = Ed25519Votes::from_seed(NodeId(3), &[3; 32]).unwrap();
    assert_ne!(rogue.public_key(), bound[2].2.public_key());
    bound[2].2 = rogue;
    let conf = ConfState::with_voters(ids.iter().copied());
    let mut nodes: Vec<Node> = bound
        .into_iter()
        .zip(&ids)
        .map(|(b, id)| start_node(*id, tempfile::tempdir().unwrap(), b, peers.clone(), conf.clone(), 100_000))
        .collect();
    let cluster_leader = |nodes: &[Node]| nodes.iter().position(|n| n.manager().status().role == "Leader");
    let leader = first_leader(&nodes).await;
    assert_ne!(leader, 2, "node 3 cannot win with votes nobody can verify");
    for _ in 0..5 {
        let _ = nodes[2].manager().start_election().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_ne!(nodes[2].manager().status().role, "Leader");
    }
    let invalid: u64 = nodes[..2].iter().map(|n| n.manager().status().counters.votes_invalid).sum();
    assert!(invalid > 0, "the peers counted node 3's votes as invalid");
    // The two honest nodes still form a majority and write.
    let leader = cluster_leader(&nodes).expect("a leader");
    write(nodes[leader].manager(), "k", "v").await;
    for node in &mut nodes {
        node.stop().await;
    }
}

/// Chunks of 1 KiB (the least allowed), so a store of a few hundred KiB is hundreds of them.
fn small_chunks(config: &mut DriverConfig) {
    config.snapshot_chunk_bytes = 1024;
    config.snapshot_window = 2;
}

async fn status_until(node: &Node, what: &str, ok: impl Fn(&themis_raft::driver::DriverStatus) -> bool) {
    for _ in 0..1000 {
        if ok(&node.manager().status()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("node {}: {what} within 5 s: {:?}", node.id, node.manager().status());
}

/// A three-node cluster with `values` documents of 1 KiB written and compacted away, and
/// a learner (node 4) on `learner_dir` added: it can catch up only from a snapshot.
async fn cluster_with_a_learner(values: usize, learner_dir: tempfile::TempDir) -> (Cluster, PeerInfo) {
    let mut cluster = Cluster::start_with(3, 64, small_chunks).await;
    let leader = cluster.leader().await;
    let lm = cluster.nodes[leader].manager().clone();
    let value = "x".repeat(1000);
    let writes: Vec<_> = (0..values)
        .map(|i| {
            let (m, v) = (lm.clone(), value.clone());
            tokio::spawn(async move { m.propose(put(&format!("k{i}"), &v)).await.unwrap() })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    write(&lm, "last", "1").await;
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "last", "1").await;
    // The leader's latest snapshot holds (nearly) everything, and its log is compacted.
    let half = values as u64 / 2;
    status_until(&cluster.nodes[leader], "a snapshot of the store", |s| s.snapshot_lsn > half).await;
    let id = NodeId(4);
    let mut ids: Vec<NodeId> = cluster.peers.iter().map(|p| p.id).collect();
    ids.push(id);
    let bound = bind(&cluster.ca, id, &ids, "127.0.0.1:0").await;
    let info = PeerInfo { id, raft_addr: bound.1.local_addr().unwrap(), meta: vec![] };
    let mut peers = cluster.peers.clone();
    peers.push(info.clone());
    let mut conf = ConfState::with_voters(cluster.peers.iter().map(|p| p.id));
    conf.learners.insert(id);
    cluster.nodes.push(start_node_with(id, learner_dir, bound, peers, conf, 64, small_chunks));
    lm.add_learner(info.clone()).await.unwrap();
    (cluster, info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_from_a_snapshot_of_hundreds_of_chunks() {
    let (mut cluster, _) = cluster_with_a_learner(300, tempfile::tempdir().unwrap()).await;
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "last", "1").await;
    converge(&all, "k299", &"x".repeat(1000)).await;
    let learner = cluster.nodes[3].manager().status();
    // A snapshot of at least half the 300 KB store (the leader's latest covers more than
    // half the writes) in 1 KiB chunks: far more than 10 chunks, in one snapshot.
    assert!(learner.counters.snapshot_chunks_received >= 140, "{:?}", learner.counters);
    assert_eq!(learner.counters.snapshots_received, 1, "{:?}", learner.counters);
    // The leader sent them all and has no transfer left (its status is published a tick
    // later).
    let leader = cluster.leader().await;
    status_until(&cluster.nodes[leader], "the transfer done", |s| {
        s.counters.snapshot_chunks_sent >= 140 && s.snapshot_transfers.is_empty()
    })
    .await;
    for node in &mut cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_cut_by_the_receivers_restart_resumes_from_its_part_file() {
    let (mut cluster, info) = cluster_with_a_learner(2000, tempfile::tempdir().unwrap()).await;
    // Stop the learner once it holds a part of the snapshot, then start it again on the
    // same directory and address.
    status_until(&cluster.nodes[3], "a transfer under way", |s| {
        s.snapshot_transfers.iter().any(|t| t.direction == "receive" && t.bytes_done > 100_000)
    })
    .await;
    cluster.nodes[3].stop().await;
    let dir = std::mem::replace(&mut cluster.nodes[3].dir, tempfile::tempdir().unwrap());
    assert!(dir.path().join(themis_raft::transfer::PART_FILE).exists(), "the part file is kept");
    let mut ids: Vec<NodeId> = cluster.peers.iter().map(|p| p.id).collect();
    ids.push(info.id);
    let bound = bind(&cluster.ca, info.id, &ids, &info.raft_addr.to_string()).await;
    let mut peers = cluster.peers.clone();
    peers.push(info.clone());
    let mut conf = ConfState::with_voters(cluster.peers.iter().map(|p| p.id));
    conf.learners.insert(info.id);
    cluster.nodes[3] = start_node_with(info.id, dir, bound, peers, conf, 64, small_chunks);
    let all: Vec<&Node> = cluster.nodes.iter().collect();
    converge(&all, "last", "1").await;
    let learner = cluster.nodes[3].manager().status();
    assert!(
        learner.counters.snapshot_bytes_resumed > 100_000,
        "resumed, not restarted: {:?}",
        learner.counters
    );
    assert_eq!(learner.counters.snapshots_received, 1, "{:?}", learner.counters);
    for node in &mut cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_cut_by_the_senders_loss_completes_from_the_next_leader() {
    let (mut cluster, _) = cluster_with_a_learner(2000, tempfile::tempdir().unwrap()).await;
    let leader = cluster.leader().await;
    status_until(&cluster.nodes[leader], "a transfer under way", |s| {
        s.snapshot_transfers.iter().any(|t| t.direction == "send" && t.bytes_done > 100_000)
    })
    .await;
    cluster.nodes[leader].stop().await;
    // The two others elect a leader, which sends its own snapshot (or resumes the same).
    let rest: Vec<&Node> =
        cluster.nodes.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, n)| n).collect();
    converge(&rest, "last", "1").await;
    converge(&rest, "k1999", &"x".repeat(1000)).await;
    let learner = cluster.nodes[3].manager().status();
    assert!(learner.counters.snapshots_received >= 1, "{:?}", learner.counters);
    for node in &mut cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_read_whose_answer_is_lost_times_out_instead_of_waiting() {
    use themis_testkit::proxy::{Fault, Proxy};
    // Node 3 forwards its ReadIndex to the leader; the answer comes back on the link the
    // leader dials to node 3, which passes through a proxy here that discards it.
    let (ids, bound, mut peers) = bind_three().await;
    let proxy = Proxy::start(peers[2].raft_addr).await.unwrap();
    peers[2].raft_addr = proxy.addr();
    let conf = ConfState::with_voters(ids.iter().copied());
    let mut nodes: Vec<Node> = bound
        .into_iter()
        .zip(&ids)
        .map(|(b, id)| {
            start_node_with(*id, tempfile::tempdir().unwrap(), b, peers.clone(), conf.clone(), 100_000, |c| {
                c.read_timeout = Duration::from_millis(300);
                // Node 3 hears nobody while the proxy discards: it must not campaign (and
                // fail its reads as leaderless) before the read times out.
                if c.raft.id == NodeId(3) {
                    c.raft.election_tick = 200;
                }
            })
        })
        .collect();
    let leader = first_leader(&nodes).await;
    assert_ne!(leader, 2, "node 3 waits far longer to campaign");
    write(nodes[leader].manager(), "k", "v").await;
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, "k", "v").await;
    nodes[2].manager().read_index().await.expect("a read through the leader");

    proxy.set(Fault::Blackhole);
    let started = std::time::Instant::now();
    match nodes[2].manager().read_index().await {
        Err(DriverError::ReadTimeout { after }) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected ReadTimeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");

    // Healed, reads go through again (the links reconnect).
    proxy.set(Fault::Pass);
    proxy.cut();
    let mut ok = false;
    for _ in 0..100 {
        if nodes[2].manager().read_index().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "reads work again once the link heals");
    for node in &mut nodes {
        node.stop().await;
    }
}
