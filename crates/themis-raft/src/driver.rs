//! The async driver: the I/O around a [`RawNode`]. It ticks from a timer, persists each
//! `Ready` in a [`LogStore`] (the provided one, [`WalStorage`](crate::WalStorage), writes
//! entries through the WAL's group commit and the hard state to its file), sends messages
//! over a [`Network`] (the provided one, [`ShipNetwork`](crate::ShipNetwork), over
//! themis-ship peer links with mutual TLS), applies committed entries on an applier thread
//! through a themis-ship [`Applier`], answers each write by the acknowledgement mode's
//! rule, takes snapshots and compacts the log, and watches replica health.
//!
//! [`ReplicationManager`] is the handle applications hold: writes, linearizable reads,
//! elections, the acknowledgement mode, membership and leadership transfer, status,
//! failover history and health alerts.
//!
//! One task owns the node and runs the loop: wait for a tick, a message, a command or a
//! finished snapshot; take everything else already queued (so proposals that arrive
//! together share one `Ready`, one WAL write and one append per follower); then work
//! through the `Ready`. Applying runs on its own thread, fed in log order, so a slow
//! state machine does not hold up replication.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use themis_clock::{NodeId, Timestamp};
use themis_ship::{Applier, ApplyError, ParallelApplier, ParallelConfig, SerialApplier, StateMachine};
use themis_wal::{Entry, EntryKind, Lsn, record};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cascade::CascadeState;
use crate::confchange::MemberChange;
use crate::config::Config;
use crate::error::{RaftError, StorageError};
use crate::io::{Link, LinkError, LogStore, Network};
use crate::message::{Body, Message};
use crate::progress::ProgressState;
use crate::raw_node::{RawNode, Ready, Status};
use crate::signing::SharedVotes;
use crate::transfer::{AckOutcome, Outgoing, Received, Receiver};
use crate::types::{AckPolicy, ConfState, Role, Snapshot, SnapshotMeta};
use crate::wire::{self, Packet, SnapshotAck, SnapshotChunk, SnapshotId, WireLimits};

/// The entry kind that records a member's addresses in the log, so every node (and every
/// node that joins later) learns where its peers are.
pub const PEER_ENTRY: EntryKind = match EntryKind::new(4) {
    Some(kind) => kind,
    None => panic!("4 is a valid entry kind"),
};

/// A member's addresses, as the log records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node.
    pub id: NodeId,
    /// Where it accepts Raft links.
    pub raft_addr: SocketAddr,
    /// Opaque to the driver: the node layer stores its client address here.
    pub meta: Vec<u8>,
}

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The Raft core's settings.
    pub raft: Config,
    /// Wall time per tick (default 50 ms: with `heartbeat_tick` 2 and `election_tick` 10,
    /// heartbeats every 100 ms and election timeouts of 500 to 1000 ms).
    pub tick: Duration,
    /// The bootstrap members' addresses (this node's own included).
    pub peers: Vec<PeerInfo>,
    /// Bounds on decoded messages.
    pub wire: WireLimits,
    /// Take a snapshot and compact once this many entries follow the last snapshot
    /// (default 100,000)...
    pub snapshot_entries: u64,
    /// ...and once the entries written since hold at least this percentage of the last
    /// snapshot's bytes (default 100; 0 looks at `snapshot_entries` alone). A snapshot
    /// rewrites the whole state machine, so without this a large store would be rewritten
    /// every `snapshot_entries` writes however little of it they changed; with it, the
    /// bytes snapshots write stay proportional to the bytes written (Redis rewrites its
    /// append-only file by the same rule).
    pub snapshot_log_percent: u32,
    /// Applier threads: 1 applies serially, 2 to 64 in parallel by key (default 1).
    pub apply_workers: usize,
    /// Proposals waiting for acknowledgement before new ones are refused (default 65,536).
    pub max_pending: usize,
    /// A replica behind by more LSNs than this raises a lag alert (default 10,000).
    pub lag_alert_lsns: u64,
    /// A replica behind by more than this raises a lag alert (default 1 s).
    pub lag_alert: Duration,
    /// A read whose confirmation has not come back within this (a `ReadIndex` forwarded
    /// to a leader whose answer was lost) fails with [`DriverError::ReadTimeout`] instead
    /// of waiting forever (default 5 s).
    pub read_timeout: Duration,
    /// Snapshots travel in chunks of at most this many bytes (default 1 MiB; 1 KiB to
    /// `wire.max_chunk_bytes`), so a snapshot of any size fits the peer frame limit.
    pub snapshot_chunk_bytes: usize,
    /// Chunks sent ahead of the receiver's answers (default 4, 1 to 64).
    pub snapshot_window: usize,
    /// Told of every committed entry once it is applied, in log order, on the applier
    /// thread (change data capture hangs here). None by default.
    pub commit_observer: Option<Arc<dyn CommitObserver>>,
}

/// Sees what the applier thread applies, in log order: every committed entry once the
/// state machine holds it, and every snapshot the state machine is restored from. Called
/// on the applier thread between batches, so it must not block: hand the entries on (the
/// CDC queue takes them without waiting) and return.
pub trait CommitObserver: Send + Sync + std::fmt::Debug + 'static {
    /// `entries` (every kind, in LSN order) were applied.
    fn applied(&self, entries: &[Entry]);
    /// The state machine was replaced by a snapshot taken at `lsn`; entries after it
    /// follow.
    fn restored(&self, lsn: Lsn);
}

impl DriverConfig {
    /// Defaults around `raft`, with `peers` as the bootstrap addresses.
    #[must_use]
    pub fn new(raft: Config, peers: Vec<PeerInfo>) -> DriverConfig {
        DriverConfig {
            raft,
            tick: Duration::from_millis(50),
            peers,
            wire: WireLimits::default(),
            snapshot_entries: 100_000,
            snapshot_log_percent: 100,
            apply_workers: 1,
            max_pending: 65_536,
            lag_alert_lsns: 10_000,
            lag_alert: Duration::from_secs(1),
            read_timeout: Duration::from_secs(5),
            snapshot_chunk_bytes: 1 << 20,
            snapshot_window: 4,
            commit_observer: None,
        }
    }

    /// Checks every setting; the message names the setting and the value.
    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::Config(m));
        self.raft.validate()?;
        if self.tick < Duration::from_millis(1) || self.tick > Duration::from_secs(10) {
            return bad(format!("tick = {:?}: must be 1 ms to 10 s", self.tick));
        }
        if self.snapshot_entries < 16 {
            return bad(format!("snapshot_entries = {}: must be at least 16", self.snapshot_entries));
        }
        if self.snapshot_log_percent > 10_000 {
            return bad(format!("snapshot_log_percent = {}: must be 0 to 10000", self.snapshot_log_percent));
        }
        if !(1..=64).contains(&self.apply_workers) {
            return bad(format!("apply_workers = {}: must be 1 to 64", self.apply_workers));
        }
        if self.max_pending == 0 {
            return bad("max_pending = 0: must be at least 1".into());
        }
        if !(1024..=self.wire.max_chunk_bytes).contains(&self.snapshot_chunk_bytes) {
            return bad(format!(
                "snapshot_chunk_bytes = {}: must be 1024 to {} (wire.max_chunk_bytes)",
                self.snapshot_chunk_bytes, self.wire.max_chunk_bytes
            ));
        }
        if !(1..=64).contains(&self.snapshot_window) {
            return bad(format!("snapshot_window = {}: must be 1 to 64", self.snapshot_window));
        }
        if self.read_timeout < self.tick {
            return bad(format!(
                "read_timeout = {:?}: must be at least one tick ({:?})",
                self.read_timeout, self.tick
            ));
        }
        if self.wire.max_record_bytes <= record::RECORD_HEADER_LEN {
            return bad(format!(
                "wire.max_record_bytes = {}: must be above the {}-byte record header",
                self.wire.max_record_bytes,
                record::RECORD_HEADER_LEN
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.id) {
                return bad(format!("peers: node {} is listed twice", peer.id));
            }
        }
        if !seen.contains(&self.raft.id) {
            return bad(format!("peers: this node ({}) has no address", self.raft.id));
        }
        Ok(())
    }
}

/// Why a driver call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// This node is not the leader; `leader` (with its addresses when known) is.
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        /// This node.
        node: NodeId,
        /// The leader, if known.
        leader: Option<NodeId>,
        /// The leader's addresses, if known.
        leader_info: Option<PeerInfo>,
    },
    /// Leadership changed before the write was acknowledged: it may or may not commit.
    #[error("the outcome of LSN {lsn} is unknown: leadership changed before it was acknowledged")]
    OutcomeUnknown {
        /// The write's LSN.
        lsn: Lsn,
    },
    /// Too many writes wait for acknowledgement.
    #[error("{pending} writes are waiting for acknowledgement (the bound); retry later")]
    Busy {
        /// Writes waiting.
        pending: usize,
    },
    /// A proposal's payload is larger than one log record can hold; it was refused before
    /// it was proposed, so nothing was written.
    #[error("a {size}-byte entry payload is above the largest one log record holds ({max} bytes)")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest payload accepted.
        max: usize,
    },
    /// A read was not confirmed in time (its confirmation may have been lost); retry.
    #[error("the read was not confirmed within {after:?}")]
    ReadTimeout {
        /// How long it waited.
        after: Duration,
    },
    /// The Raft core refused.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// Storage failed; the driver stops.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Applying failed; the driver stops.
    #[error("apply: {0}")]
    Apply(String),
    /// A bad setting.
    #[error("invalid driver configuration: {0}")]
    Config(String),
    /// The driver has stopped.
    #[error("the driver has stopped: {0}")]
    Stopped(String),
}

/// A member's replication, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The member.
    pub id: NodeId,
    /// Whether it is a learner.
    pub learner: bool,
    /// The highest LSN known to match the leader's log.
    pub match_lsn: Lsn,
    /// LSNs behind the leader's last.
    pub lag_lsns: u64,
    /// How old the oldest entry it lacks is, in milliseconds (0 when caught up).
    pub lag_ms: u64,
    /// Milliseconds since it last answered.
    pub last_contact_ms: u64,
    /// The round trip of its latest answered heartbeat, in microseconds (0 until one is
    /// answered): the time from the leader sending the heartbeat to its answer arriving,
    /// which includes the replica's wait for its own pending log write.
    #[serde(default)]
    pub rtt_us: u64,
    /// Replication state: `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
    /// Answering heartbeats and within the lag bounds.
    pub healthy: bool,
}

/// A node's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DriverStatus {
    /// This node.
    pub id: NodeId,
    /// `Leader`, `Follower`, `Candidate` or `PreCandidate`; [`STOPPED_ROLE`] once the
    /// driver has stopped.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The last LSN in the log.
    pub last_lsn: Lsn,
    /// The commit LSN.
    pub commit_lsn: Lsn,
    /// The LSN the state machine has applied.
    pub applied_lsn: Lsn,
    /// The leader's acknowledged LSN under the mode (0 elsewhere).
    pub acknowledged_lsn: Lsn,
    /// The acknowledgement policy, e.g. `SEMI_SYNC(min_sync_replicas=1)`.
    pub mode: String,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Whether the leader holds a valid read lease.
    pub lease_valid: bool,
    /// Per replica, on the leader.
    pub replicas: Vec<ReplicaStatus>,
    /// Running totals since the driver started.
    pub counters: DriverCounters,
    /// Snapshot transfers in progress.
    pub snapshot_transfers: Vec<SnapshotTransfer>,
    /// The LSN of this node's latest snapshot (its log is compacted up to there).
    pub snapshot_lsn: Lsn,
    /// The newest time (the leader's clock, HLC physical ms) as of which this node has
    /// applied every committed write; 0 until known. A leader holding its lease with
    /// everything committed applied is fresh as of now; a follower as of the heartbeat
    /// whose whole commit LSN it has applied.
    pub safe_ms: u64,
    /// Cascading replication: each cascaded learner and the member it streams from
    /// ([`ReplicationManager::set_upstreams`]).
    #[serde(default)]
    pub upstreams: BTreeMap<NodeId, NodeId>,
    /// Leader: cascaded learners it serves directly for now (their upstream is silent, or
    /// they stalled behind it).
    #[serde(default)]
    pub cascade_direct: Vec<NodeId>,
}

/// Running totals of a driver, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DriverCounters {
    /// Entries this node proposed as leader (writes, mode and membership changes).
    pub proposals: u64,
    /// Elections this node started (it became a pre-candidate or candidate).
    pub elections: u64,
    /// Changes of leader this node saw (including to "no leader known").
    pub leader_changes: u64,
    /// Messages sent to peers.
    pub sent_msgs: u64,
    /// Message bytes sent to peers before compression.
    pub sent_payload_bytes: u64,
    /// Bytes that crossed the links to peers (frame headers included, after compression).
    pub sent_wire_bytes: u64,
    /// Vote requests and answers refused for a missing signature.
    pub votes_unsigned: u64,
    /// Vote requests and answers whose signature does not verify under the key the
    /// sender's certificate certifies (a forged vote, or a node signing with another key).
    pub votes_invalid: u64,
    /// Vote requests and answers with a valid signature over another term, candidate or
    /// vote kind (a replay).
    pub votes_replayed: u64,
    /// Snapshot chunks sent to followers.
    pub snapshot_chunks_sent: u64,
    /// Snapshot chunks received (written or already held).
    pub snapshot_chunks_received: u64,
    /// Snapshots a follower received whole and verified.
    pub snapshots_sent: u64,
    /// Snapshots received whole and verified, handed to the core.
    pub snapshots_received: u64,
    /// Bytes of snapshot transfers that resumed from a part file after a restart.
    pub snapshot_bytes_resumed: u64,
    /// Entries this node passed on to learners streaming from it (cascading).
    #[serde(default)]
    pub forwarded_entries: u64,
    /// Forward batches it sent (probes included).
    #[serde(default)]
    pub forward_batches: u64,
    /// Leader: appends it left to a cascaded learner's upstream instead of sending.
    #[serde(default)]
    pub appends_left_to_upstream: u64,
}

/// A snapshot transfer in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTransfer {
    /// The other side.
    pub peer: NodeId,
    /// `"send"` (this node leads) or `"receive"`.
    pub direction: String,
    /// The snapshot's LSN.
    pub lsn: Lsn,
    /// Bytes the receiver holds.
    pub bytes_done: u64,
    /// The snapshot's size.
    pub bytes_total: u64,
}

/// A change of leader this node saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// The term.
    pub term: u64,
    /// The new leader (None: leaderless).
    pub leader: Option<NodeId>,
    /// The previous leader.
    pub previous: Option<NodeId>,
    /// Milliseconds since the driver started.
    pub at_ms: u64,
}

/// A health problem the leader noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthAlert {
    /// A replica missed two heartbeat intervals.
    MissingHeartbeats {
        /// The replica.
        id: NodeId,
        /// Milliseconds since it last answered.
        silent_ms: u64,
    },
    /// A replica is further behind than the lag bounds.
    Lagging {
        /// The replica.
        id: NodeId,
        /// LSNs behind.
        lag_lsns: u64,
        /// Age of the oldest entry it lacks.
        lag_ms: u64,
    },
    /// A replica is healthy again.
    Recovered {
        /// The replica.
        id: NodeId,
    },
}

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

enum Command {
    Propose { kind: EntryKind, payload: Bytes, reply: Reply<Lsn> },
    Read { reply: Reply<Lsn> },
    Campaign { reply: Reply<()> },
    SetPolicy { policy: AckPolicy, reply: Reply<Lsn> },
    Membership { change: MemberChange, reply: Reply<Lsn> },
    Transfer { to: NodeId, reply: Reply<()> },
    Peer { id: NodeId, reply: oneshot::Sender<Option<PeerInfo>> },
    SetUpstreams { upstreams: BTreeMap<NodeId, NodeId>, reply: oneshot::Sender<()> },
    Shutdown,
}

enum ApplyMsg {
    Entries(Vec<Entry>),
    Restore { lsn: Lsn, data: Bytes },
    Snapshot { lsn: Lsn, reply: oneshot::Sender<Result<Bytes, DriverError>> },
}

/// What the driver stores as snapshot data: the members' addresses and the state
/// machine's image, at one LSN. Encoded as postcard `(peers, machine as bytes)`.
#[derive(Debug, Default)]
struct DriverSnapshot {
    peers: Vec<PeerInfo>,
    /// Shares the buffer the snapshot was decoded from.
    machine: Bytes,
}

#[derive(Serialize)]
struct DriverSnapshotOut<'a> {
    peers: &'a [PeerInfo],
    #[serde(with = "serde_bytes")]
    machine: &'a [u8],
}

#[derive(Deserialize)]
struct DriverSnapshotIn<'a> {
    peers: Vec<PeerInfo>,
    #[serde(borrow, with = "serde_bytes")]
    machine: &'a [u8],
}

impl DriverSnapshot {
    /// Encodes straight into one buffer of the right size: a store's image can be hundreds
    /// of MiB, and growing a buffer byte by byte cost more than taking the image.
    fn encode(peers: &[PeerInfo], machine: &[u8]) -> Bytes {
        let out = Vec::with_capacity(machine.len() + 16 + peers.len() * 64);
        let out =
            postcard::to_extend(&DriverSnapshotOut { peers, machine }, out).expect("a snapshot encodes");
        Bytes::from(out)
    }

    fn decode(data: &Bytes) -> Result<DriverSnapshot, DriverError> {
        if data.is_empty() {
            return Ok(DriverSnapshot::default());
        }
        let decoded: DriverSnapshotIn<'_> = postcard::from_bytes(data)
            .map_err(|e| DriverError::Storage(StorageError::Other(format!("snapshot data: {e}"))))?;
        Ok(DriverSnapshot { peers: decoded.peers, machine: data.slice_ref(decoded.machine) })
    }
}

/// The state machine's image inside a snapshot's data (the driver keeps the members'
/// addresses beside it): what a base backup of the store archives.
pub fn snapshot_machine(data: &Bytes) -> Result<Bytes, DriverError> {
    Ok(DriverSnapshot::decode(data)?.machine)
}

/// Snapshot data holding a state machine image and no member addresses (those come from
/// the configuration): the first snapshot of a node restored from an archive.
#[must_use]
pub fn snapshot_data(machine: &[u8]) -> Bytes {
    DriverSnapshot::encode(&[], machine)
}

/// The latest events of one kind, oldest first, bounded; shared by the loop (which
/// records) and the handles (which read).
#[derive(Debug)]
struct Recent<T>(Arc<std::sync::Mutex<VecDeque<T>>>);

impl<T> Clone for Recent<T> {
    fn clone(&self) -> Self {
        Recent(Arc::clone(&self.0))
    }
}

/// Events kept per kind.
const RECENT_EVENTS: usize = 256;

impl<T: Clone> Recent<T> {
    fn new() -> Self {
        Recent(Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(RECENT_EVENTS))))
    }

    fn push(&self, event: T) {
        let mut events = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() == RECENT_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }

    fn to_vec(&self) -> Vec<T> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

/// The handle to a running node's replication. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicationManager {
    id: NodeId,
    commands: mpsc::Sender<Command>,
    applied: watch::Receiver<Result<Lsn, String>>,
    status: watch::Receiver<DriverStatus>,
    history: Recent<FailoverEvent>,
    alerts: broadcast::Sender<HealthAlert>,
    alert_history: Recent<AlertEvent>,
    safe_ms: Arc<AtomicU64>,
}

/// Where a node stands, as last published ([`ReplicationManager::positions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Positions {
    /// The current term.
    pub term: u64,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The commit LSN (a follower's: as the leader last told it).
    pub commit_lsn: Lsn,
    /// The last LSN in the log.
    pub last_lsn: Lsn,
}

/// A health alert with when it was raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Milliseconds since the driver started.
    pub at_ms: u64,
    /// The alert.
    pub alert: HealthAlert,
}

impl ReplicationManager {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| DriverError::Stopped("the loop has ended".into()))?;
        rx.await.map_err(|_| DriverError::Stopped("the loop dropped the request".into()))?
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Writes `payload` (an op batch for the state machine) and returns its LSN once the
    /// acknowledgement mode's rule is met. Fails with [`DriverError::NotLeader`] on a
    /// follower.
    pub async fn propose(&self, payload: Bytes) -> Result<Lsn, DriverError> {
        self.call(|reply| Command::Propose { kind: EntryKind::DATA, payload, reply }).await
    }

    /// Queues `payload` for proposal and returns once it is queued, with a future that
    /// resolves as [`ReplicationManager::propose`] does. Proposals reach the log in the
    /// order they were queued, so a caller that queues under its own lock knows the log
    /// order of its writes (the node's write sequencer relies on this).
    pub async fn propose_queued(
        &self,
        payload: Bytes,
    ) -> Result<impl Future<Output = Result<Lsn, DriverError>> + Send + 'static, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Propose { kind: EntryKind::DATA, payload, reply: tx })
            .await
            .map_err(|_| DriverError::Stopped("the loop has ended".into()))?;
        Ok(async move { rx.await.map_err(|_| DriverError::Stopped("the loop dropped the request".into()))? })
    }

    /// This node's term and whether it leads, as last published (every tick and on every
    /// change); cheaper than [`ReplicationManager::status`], which copies everything.
    #[must_use]
    pub fn leadership(&self) -> (u64, bool) {
        let status = self.status.borrow();
        (status.term, status.role == "Leader")
    }

    /// This node's term, leader, commit and last LSN as last published (every tick and on
    /// every change), without copying the status.
    #[must_use]
    pub fn positions(&self) -> Positions {
        let status = self.status.borrow();
        Positions {
            term: status.term,
            leader: status.leader,
            is_leader: status.role == "Leader",
            commit_lsn: status.commit_lsn,
            last_lsn: status.last_lsn,
        }
    }

    /// A linearizable read point: returns an LSN once the state machine has applied it;
    /// reading the state machine then sees every write acknowledged before the call
    /// (lease or `ReadIndex`, as the Raft config says).
    pub async fn read_index(&self) -> Result<Lsn, DriverError> {
        let lsn = self.call(|reply| Command::Read { reply }).await?;
        self.wait_applied(lsn).await?;
        Ok(lsn)
    }

    /// Waits until the state machine has applied `lsn` (a session read's token).
    pub async fn wait_applied(&self, lsn: Lsn) -> Result<(), DriverError> {
        let mut applied = self.applied.clone();
        loop {
            match &*applied.borrow_and_update() {
                Ok(at) if *at >= lsn => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(DriverError::Apply(e.clone())),
            }
            applied.changed().await.map_err(|_| DriverError::Stopped("the applier has ended".into()))?;
        }
    }

    /// The newest time (the leader's clock, HLC physical ms) as of which this node has
    /// applied every committed write; 0 until known ([`DriverStatus::safe_ms`], without
    /// copying the status).
    #[must_use]
    pub fn safe_time_ms(&self) -> u64 {
        self.safe_ms.load(Ordering::Relaxed)
    }

    /// The LSN the state machine has applied.
    #[must_use]
    pub fn applied_lsn(&self) -> Lsn {
        self.applied.borrow().clone().unwrap_or(0)
    }

    /// Starts an election on this node now.
    pub async fn start_election(&self) -> Result<(), DriverError> {
        self.call(|reply| Command::Campaign { reply }).await
    }

    /// Changes the acknowledgement mode for the whole cluster, through the log; returns
    /// once the change is acknowledged (leader only). Waits for a pending configuration
    /// change first, as membership changes do.
    pub async fn set_mode(&self, policy: AckPolicy) -> Result<Lsn, DriverError> {
        self.config_change(|reply| Command::SetPolicy { policy, reply }).await
    }

    /// Adds `peer` as a learner: its addresses go into the log first, then the
    /// membership change. Promote it with [`promote`](Self::promote) once it caught up.
    pub async fn add_learner(&self, peer: PeerInfo) -> Result<Lsn, DriverError> {
        let id = peer.id;
        let payload = Bytes::from(postcard::to_stdvec(&peer).expect("peer info encodes"));
        self.call(|reply| Command::Propose { kind: PEER_ENTRY, payload, reply }).await?;
        self.change(MemberChange::AddLearner(id)).await
    }

    /// Makes learner `id` a voter (through joint consensus).
    pub async fn promote(&self, id: NodeId) -> Result<Lsn, DriverError> {
        self.change(MemberChange::AddVoter(id)).await
    }

    /// Removes member `id`.
    pub async fn remove(&self, id: NodeId) -> Result<Lsn, DriverError> {
        self.change(MemberChange::Remove(id)).await
    }

    /// Proposes one membership change. Changes go one at a time: while an earlier one
    /// (or the automatic leave of a joint configuration) is still uncommitted, this waits
    /// for it, up to [`CONFIG_CHANGE_WAIT`].
    async fn change(&self, change: MemberChange) -> Result<Lsn, DriverError> {
        self.config_change(|reply| Command::Membership { change, reply }).await
    }

    async fn config_change(&self, make: impl Fn(Reply<Lsn>) -> Command) -> Result<Lsn, DriverError> {
        let deadline = tokio::time::Instant::now() + CONFIG_CHANGE_WAIT;
        loop {
            match self.call(&make).await {
                Err(DriverError::Raft(RaftError::ConfigChangePending { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Hands leadership to `to` once it has caught up.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), DriverError> {
        self.call(|reply| Command::Transfer { to, reply }).await
    }

    /// The addresses the log records for `id`.
    pub async fn peer(&self, id: NodeId) -> Option<PeerInfo> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Peer { id, reply: tx }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Sets cascading replication: each learner in `upstreams` streams the committed log
    /// from the member named beside it instead of from the leader (see
    /// [`cascade`](crate::cascade)). Every node must be given the same map (the node layer
    /// keeps it in the replicated store); checking chains and cycles is the caller's.
    pub async fn set_upstreams(&self, upstreams: BTreeMap<NodeId, NodeId>) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::SetUpstreams { upstreams, reply: tx })
            .await
            .map_err(|_| DriverError::Stopped("the driver has stopped".into()))?;
        rx.await.map_err(|_| DriverError::Stopped("the driver has stopped".into()))
    }

    /// Stops the driver: the loop ends after the work in hand, waiting writes fail with
    /// [`DriverError::Stopped`], links close. Every handle then reports `Stopped`.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }

    /// The replication state now.
    #[must_use]
    pub fn status(&self) -> DriverStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status updates (published every tick and on every change).
    #[must_use]
    pub fn watch_status(&self) -> watch::Receiver<DriverStatus> {
        self.status.clone()
    }

    /// Leader changes this node saw, oldest first (the last 256).
    #[must_use]
    pub fn failover_history(&self) -> Vec<FailoverEvent> {
        self.history.to_vec()
    }

    /// Health alerts from now on.
    #[must_use]
    pub fn alerts(&self) -> broadcast::Receiver<HealthAlert> {
        self.alerts.subscribe()
    }

    /// The latest health alerts this node raised as leader, oldest first (the last 256).
    #[must_use]
    pub fn recent_alerts(&self) -> Vec<AlertEvent> {
        self.alert_history.to_vec()
    }
}

/// The role a [`DriverStatus`] reports once the driver has stopped.
pub const STOPPED_ROLE: &str = "Stopped";

/// The largest entry payload that fits one record of both the WAL and the wire.
fn max_payload_bytes(config: &DriverConfig, storage: &impl LogStore) -> usize {
    let record = storage.max_record_bytes().min(config.wire.max_record_bytes);
    record - record::RECORD_HEADER_LEN
}

/// Refuses a network message limit that could not carry one append of the largest record
/// or one snapshot chunk: that follower would stall for good.
fn check_frame(config: &DriverConfig, frame: usize) -> Result<(), DriverError> {
    // An append carries up to `max_msg_bytes` of entries plus one more, each a record;
    // a frame that cannot hold the largest record would stall that follower for good.
    let needed = config.wire.max_record_bytes + wire::APPEND_HEADER_LEN;
    if frame < needed {
        return Err(DriverError::Config(format!(
            "network max_message_bytes = {frame}: below the {needed} bytes one append of the largest record needs"
        )));
    }
    // A chunk carries the snapshot metadata beside its data (up to 1 MiB, bounded by
    // the decoder).
    let chunk_frame = config.snapshot_chunk_bytes + (1 << 20) + 128;
    if frame < chunk_frame {
        return Err(DriverError::Config(format!(
            "network max_message_bytes = {frame}: below the {chunk_frame} bytes a snapshot chunk of \
             snapshot_chunk_bytes = {} may need",
            config.snapshot_chunk_bytes
        )));
    }
    Ok(())
}

/// Starts replication. See the module documentation.
#[derive(Debug)]
pub struct Driver;

impl Driver {
    /// Starts the driver on the current tokio runtime: the loop task, `network`'s serving
    /// task, the snapshot receiver thread and the applier thread over `machine`, with the
    /// log in `storage`. `votes` signs this node's votes and holds its peers' keys (the
    /// network binds them as it authenticates peers: [`ShipNetwork`](crate::ShipNetwork)
    /// takes each from its TLS certificate); `clock` stamps entries (an HLC's `now`).
    /// The returned handle ends when the loop stops (storage or apply failure, or every
    /// [`ReplicationManager`] dropped).
    pub fn start<S: StateMachine, St: LogStore, N: Network>(
        mut config: DriverConfig,
        storage: St,
        mut network: N,
        machine: Arc<S>,
        votes: SharedVotes,
        clock: impl Fn() -> Timestamp + Send + Sync + 'static,
    ) -> Result<(ReplicationManager, JoinHandle<Result<(), DriverError>>), DriverError> {
        config.validate()?;
        let id = config.raft.id;
        let max_payload_bytes = max_payload_bytes(&config, &storage);
        check_frame(&config, network.max_message_bytes())?;
        let clock: Arc<dyn Fn() -> Timestamp + Send + Sync> = Arc::new(clock);
        // Restore the state machine from the snapshot before the log replays after it.
        let snapshot = storage.snapshot()?;
        let restored = DriverSnapshot::decode(&snapshot.data)?;
        if !restored.machine.is_empty() {
            machine.restore(&restored.machine).map_err(|e| DriverError::Apply(e.to_string()))?;
        }
        config.raft.applied = snapshot.meta.lsn;
        let node_clock = Arc::clone(&clock);
        let node = RawNode::new(config.raft.clone(), storage.clone(), Box::new(votes.clone()), move || {
            node_clock()
        })?;

        let (applied_tx, applied) = watch::channel(Ok(snapshot.meta.lsn));
        let (apply_tx, apply_rx) = mpsc::channel(1024);
        let workers = config.apply_workers;
        let observer = config.commit_observer.clone();
        std::thread::Builder::new()
            .name(format!("themis-apply-{}", id.0))
            .spawn(move || apply_thread(&machine, workers, observer.as_deref(), apply_rx, &applied_tx))
            .map_err(|e| DriverError::Apply(format!("spawn the applier thread: {e}")))?;

        let (chunks_tx, chunks_rx) = mpsc::channel(config.snapshot_window * 2);
        let (reports_tx, reports) = mpsc::channel(config.snapshot_window * 2);
        let staging = storage.snapshot_staging_dir().map(std::path::Path::to_path_buf);
        std::thread::Builder::new()
            .name(format!("themis-snap-{}", id.0))
            .spawn(move || receiver_thread(id, staging.as_deref(), chunks_rx, &reports_tx))
            .map_err(|e| DriverError::Apply(format!("spawn the snapshot receiver thread: {e}")))?;

        let (inbound_tx, inbound) = mpsc::channel(4096);
        let serving = network.serve(inbound_tx, votes)?;
        let (commands_tx, commands) = mpsc::channel(config.max_pending.min(1 << 16));
        let (status_tx, status) = watch::channel(DriverStatus::default());
        let safe_ms = Arc::new(AtomicU64::new(0));
        let history = Recent::new();
        let (alerts, _) = broadcast::channel(256);
        let alert_history = Recent::new();
        let peers = initial_peers(restored.peers, &config.peers);
        let mut driver = Loop {
            id,
            node,
            storage,
            network,
            config,
            clock,
            peers,
            pending: BTreeMap::new(),
            reads: HashMap::new(),
            next_read: 0,
            max_payload_bytes,
            apply_tx,
            applied: applied.clone(),
            status_tx,
            history: history.clone(),
            alerts: alerts.clone(),
            alert_history: alert_history.clone(),
            alerting: BTreeMap::new(),
            rtt: BTreeMap::new(),
            started: Instant::now(),
            leading_since: None,
            last_leader: None,
            snapshotting: None,
            compacting: None,
            handed_lsn: snapshot.meta.lsn,
            log_bytes_since_snapshot: 0,
            last_snapshot_bytes: snapshot.data.len() as u64,
            last_role: Role::Follower,
            counters: DriverCounters::default(),
            outgoing: BTreeMap::new(),
            sent_id: None,
            chunks_tx,
            incoming: None,
            freshness: Freshness { closed: VecDeque::new(), safe_ms: Arc::clone(&safe_ms) },
            cascade: CascadeState::default(),
            tick_time: Instant::now(),
        };
        driver.sync_peers();
        let handle = tokio::spawn(async move {
            let result = driver.run(inbound, commands, reports).await;
            serving.abort();
            if let Err(err) = &result {
                // The caller owns the handle and decides what a stop means (the node exits
                // with one error line); here it is only traced.
                tracing::debug!(node = %driver.id, error = %err, "the replication driver stopped");
            }
            driver.fail_all(&result);
            // A stopped driver leads and follows nobody: its last status must not say it does.
            driver.status_tx.send_modify(|s| {
                s.role = STOPPED_ROLE.to_string();
                s.leader = None;
                s.lease_valid = false;
                s.replicas.clear();
            });
            result
        });
        let commands = commands_tx;
        Ok((
            ReplicationManager { id, commands, applied, status, history, alerts, alert_history, safe_ms },
            handle,
        ))
    }
}

/// The peers a driver starts with: those its snapshot recorded, then the configured
/// bootstrap members (a recorded address wins).
fn initial_peers<L>(restored: Vec<PeerInfo>, configured: &[PeerInfo]) -> BTreeMap<NodeId, Peer<L>> {
    let mut peers = BTreeMap::new();
    for info in restored.into_iter().chain(configured.iter().cloned()) {
        peers.entry(info.id).or_insert(Peer { info, sender: None, retry_at: None });
    }
    peers
}

fn apply_thread<S: StateMachine>(
    machine: &Arc<S>,
    workers: usize,
    observer: Option<&dyn CommitObserver>,
    mut rx: mpsc::Receiver<ApplyMsg>,
    published: &watch::Sender<Result<Lsn, String>>,
) {
    let mut queue: Box<dyn Applier<Op = S::Op>> = if workers <= 1 {
        Box::new(SerialApplier::new(Arc::clone(machine)))
    } else {
        match ParallelApplier::new(machine, ParallelConfig { workers, ..ParallelConfig::default() }) {
            Ok(a) => Box::new(a),
            Err(e) => {
                let _ = published.send_replace(Err(e.to_string()));
                return;
            }
        }
    };
    let fail = |published: &watch::Sender<Result<Lsn, String>>, e: &ApplyError| {
        tracing::error!(error = %e, "applying failed; this node applies nothing more");
        let _ = published.send_replace(Err(e.to_string()));
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            ApplyMsg::Entries(entries) => {
                let Some(last) = entries.last().map(|e| e.lsn) else { continue };
                let result = entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::DATA)
                    .try_for_each(|e| queue.submit_entry(e))
                    .and_then(|()| queue.sync());
                queue.take_changes();
                match result {
                    Ok(_) => {
                        let _ = published.send_replace(Ok(last));
                        if let Some(observer) = observer {
                            observer.applied(&entries);
                        }
                    }
                    Err(e) => return fail(published, &e),
                }
            }
            ApplyMsg::Restore { lsn, data } => {
                let result = queue.sync().and_then(|_| machine.restore(&data));
                match result {
                    Ok(()) => {
                        let _ = published.send_replace(Ok(lsn));
                        if let Some(observer) = observer {
                            observer.restored(lsn);
                        }
                    }
                    Err(e) => return fail(published, &e),
                }
            }
            ApplyMsg::Snapshot { lsn, reply } => {
                let result = queue.sync().and_then(|_| machine.snapshot());
                let _ =
                    reply.send(result.map_err(|e| DriverError::Apply(format!("snapshot at LSN {lsn}: {e}"))));
            }
        }
    }
}

struct Peer<L> {
    info: PeerInfo,
    sender: Option<L>,
    /// When a link that ended (a permanent failure, such as a peer that did not admit
    /// this node yet) is started again.
    retry_at: Option<Instant>,
}

/// The heartbeats sent to one replica and not yet answered, and the latest round trip.
#[derive(Debug, Default)]
struct RoundTrips {
    /// Round and send time, oldest first; at most [`RoundTrips::PENDING`].
    pending: std::collections::VecDeque<(u64, Instant)>,
    /// The latest round trip, in microseconds.
    last_us: u64,
}

impl RoundTrips {
    /// Heartbeats remembered per replica: at a 100 ms interval, a 3.2 s round trip.
    const PENDING: usize = 32;

    fn sent(&mut self, round: u64, at: Instant) {
        if self.pending.back().is_some_and(|(r, _)| *r >= round) {
            return;
        }
        if self.pending.len() == Self::PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((round, at));
    }

    /// An answer to `round`: its round trip, and older rounds are no longer awaited.
    fn answered(&mut self, round: u64, at: Instant) {
        while let Some(&(r, sent)) = self.pending.front() {
            if r > round {
                break;
            }
            self.pending.pop_front();
            if r == round {
                self.last_us = u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
            }
        }
    }
}

/// How long a membership change waits for the one before it to commit.
pub const CONFIG_CHANGE_WAIT: Duration = Duration::from_secs(5);

/// How long after a link ends for good it is started again.
const LINK_RETRY: Duration = Duration::from_secs(1);

struct Snapshotting {
    lsn: Lsn,
    conf_state: ConfState,
    policy: AckPolicy,
    peers: Vec<PeerInfo>,
    reply: oneshot::Receiver<Result<Bytes, DriverError>>,
}

struct Loop<St: LogStore, N: Network> {
    id: NodeId,
    node: RawNode<St>,
    storage: St,
    network: N,
    config: DriverConfig,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    peers: BTreeMap<NodeId, Peer<N::Link>>,
    /// Writes waiting for acknowledgement: LSN → (term, reply).
    pending: BTreeMap<Lsn, (u64, Reply<Lsn>)>,
    /// Reads waiting for confirmation, with when each was asked.
    reads: HashMap<u64, (Instant, Reply<Lsn>)>,
    next_read: u64,
    /// The largest entry payload one log record holds (the WAL's and the wire's record
    /// limit, less the record header): a larger proposal is refused before the core sees
    /// it, since the log could never persist it.
    max_payload_bytes: usize,
    apply_tx: mpsc::Sender<ApplyMsg>,
    applied: watch::Receiver<Result<Lsn, String>>,
    status_tx: watch::Sender<DriverStatus>,
    history: Recent<FailoverEvent>,
    alerts: broadcast::Sender<HealthAlert>,
    alert_history: Recent<AlertEvent>,
    /// Replicas currently alerting.
    alerting: BTreeMap<NodeId, bool>,
    /// Heartbeat round trips per replica (leader).
    rtt: BTreeMap<NodeId, RoundTrips>,
    started: Instant,
    /// When this node last became leader: replicas' match LSNs are unknown until they
    /// answer, so lag is not judged for two heartbeat intervals.
    leading_since: Option<Instant>,
    last_leader: Option<NodeId>,
    snapshotting: Option<Snapshotting>,
    /// A compaction writing its snapshot file in the background: the loop goes on
    /// replicating meanwhile.
    compacting: Option<JoinHandle<Result<Lsn, StorageError>>>,
    /// The last LSN handed to the applier.
    handed_lsn: Lsn,
    /// Payload bytes of the entries persisted since the last snapshot was started (zero
    /// after a restart: the next snapshot then waits for that much again).
    log_bytes_since_snapshot: u64,
    /// Size of the last snapshot's data.
    last_snapshot_bytes: u64,
    last_role: Role,
    /// Totals; the link byte counts of links already closed are kept here.
    counters: DriverCounters,
    /// Snapshots on their way to followers (leader only).
    outgoing: BTreeMap<NodeId, Outgoing>,
    /// The id (with its CRC) of the last snapshot sent, so each is checksummed once.
    sent_id: Option<SnapshotId>,
    /// Chunks for the receiver thread, which writes them to the part file.
    chunks_tx: mpsc::Sender<SnapshotChunk>,
    /// The snapshot this node is receiving: from whom, which, bytes held.
    incoming: Option<(NodeId, SnapshotId, u64)>,
    freshness: Freshness,
    /// Cascading replication: this node as a learner's upstream, and as a leader.
    cascade: CascadeState,
    /// The monotonic time the tick count stands for: one period per tick from the start,
    /// plus what [`Loop::catch_up_time`] counted.
    tick_time: Instant,
}

/// What a node knows of how fresh its state is.
struct Freshness {
    /// Closed points (whole commit LSN, leader clock ms) from heartbeats, not yet applied.
    closed: VecDeque<(Lsn, u64)>,
    /// See [`DriverStatus::safe_ms`].
    safe_ms: Arc<AtomicU64>,
}

/// Most closed points a follower keeps while its applier catches up.
const MAX_CLOSED: usize = 64;

/// How long a snapshot transfer may go without an answer that moves it before chunks are
/// sent again from what the receiver holds.
const SNAPSHOT_RESEND_AFTER: Duration = Duration::from_secs(2);
/// How long it may go before it is given up (the core then decides again).
const SNAPSHOT_GIVE_UP_AFTER: Duration = Duration::from_mins(1);

/// What the receiver thread reports for one chunk: the sender's term and the result.
type ChunkReport = (u64, Received);

/// Writes snapshot chunks to the part file in the Raft directory, off the loop: file I/O
/// never delays heartbeats. Ends when the loop drops its sender.
fn receiver_thread(
    me: NodeId,
    dir: Option<&std::path::Path>,
    mut chunks: mpsc::Receiver<SnapshotChunk>,
    reports: &mpsc::Sender<ChunkReport>,
) {
    let mut receiver = Receiver::open(me, dir);
    while let Some(chunk) = chunks.blocking_recv() {
        let term = chunk.term;
        let result = match receiver.chunk(&chunk) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(node = %me, error = %e, "writing a snapshot chunk failed; the transfer starts over");
                receiver.discard();
                Received {
                    ack: SnapshotAck { from: me, to: chunk.from, id: chunk.id, received: 0 },
                    complete: None,
                    resumed: 0,
                }
            }
        };
        if reports.blocking_send((term, result)).is_err() {
            return;
        }
    }
}

/// Closes a peer's link, keeping what it sent in the totals.
fn close_link<L: Link>(peer: &mut Peer<L>, counters: &mut DriverCounters) {
    if let Some(sender) = peer.sender.take() {
        let sent = sender.counters();
        counters.sent_msgs += sent.sent_msgs;
        counters.sent_payload_bytes += sent.payload_bytes;
        counters.sent_wire_bytes += sent.wire_bytes;
    }
}

/// Most queued inputs taken per loop turn before the `Ready` is worked through.
const MAX_BATCH: usize = 4096;

impl<St: LogStore, N: Network> Loop<St, N> {
    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<(NodeId, Bytes)>,
        mut commands: mpsc::Receiver<Command>,
        mut reports: mpsc::Receiver<ChunkReport>,
    ) -> Result<(), DriverError> {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.tick_time = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick()?;
                    self.tick_time += self.config.tick;
                    // An applier that failed applies nothing more: a node that went on
                    // leading or voting over it would serve stale state. Checked once a
                    // tick, so the hot path does not wake for every applied batch.
                    if let Err(e) = &*self.applied.borrow() {
                        return Err(DriverError::Apply(e.clone()));
                    }
                    self.expire_reads();
                    self.tick_transfers();
                    self.repair_links();
                    self.publish_status();
                }
                msg = inbound.recv() => {
                    let Some((from, bytes)) = msg else { return Err(DriverError::Stopped("inbound closed".into())) };
                    self.step(from, &bytes);
                }
                cmd = commands.recv() => {
                    match cmd {
                        None | Some(Command::Shutdown) => return Ok(()),
                        Some(cmd) => self.command(cmd),
                    }
                }
                snap = wait_snapshot(&mut self.snapshotting) => {
                    self.finish_snapshot(snap)?;
                }
                report = reports.recv() => {
                    let Some((term, received)) = report else {
                        return Err(DriverError::Stopped("the snapshot receiver thread has ended".into()));
                    };
                    self.chunk_received(term, received);
                }
            }
            for _ in 0..MAX_BATCH {
                match inbound.try_recv() {
                    Ok((from, bytes)) => self.step(from, &bytes),
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_BATCH {
                match commands.try_recv() {
                    Ok(Command::Shutdown) => return Ok(()),
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            while self.node.has_ready() {
                let ready = self.node.ready()?;
                self.handle_ready(ready).await?;
            }
            self.forward();
            self.maybe_snapshot().await?;
        }
    }

    /// Before a read may be answered from the lease: counts the tick periods the monotonic
    /// clock has passed beyond the tick count ([`RawNode::advance_time`]). The ticker drops
    /// the ticks a stalled loop missed, which a lease must not: a process that was stopped
    /// (`SIGSTOP`, a VM pause) would resume with a tick count that lost the pause and
    /// answer from a lease a newer leader has since outlived. Counted, its lease has
    /// expired and the read goes to a quorum.
    fn catch_up_time(&mut self) {
        let tick = self.config.tick;
        let now = Instant::now();
        let behind = now.saturating_duration_since(self.tick_time).as_nanos() / tick.as_nanos().max(1);
        if behind == 0 {
            return;
        }
        if behind > u128::from(self.config.raft.election_tick / 2) {
            tracing::warn!(node = %self.id, ticks = behind as u64, "the loop fell behind its clock (paused?); a lease read waits for a quorum");
        }
        self.node.advance_time(u64::try_from(behind).unwrap_or(u64::MAX / 2));
        self.tick_time += tick * u32::try_from(behind).unwrap_or(u32::MAX);
    }

    /// Fails reads whose confirmation is overdue: a `ReadIndex` forwarded to the leader,
    /// or its answer, can be lost on the way, and nothing else would ever answer it.
    fn expire_reads(&mut self) {
        let limit = self.config.read_timeout;
        let overdue: Vec<u64> =
            self.reads.iter().filter(|(_, (at, _))| at.elapsed() >= limit).map(|(id, _)| *id).collect();
        for id in overdue {
            if let Some((_, reply)) = self.reads.remove(&id) {
                let _ = reply.send(Err(DriverError::ReadTimeout { after: limit }));
            }
        }
    }

    fn step(&mut self, from: NodeId, bytes: &Bytes) {
        let packet = match wire::decode_packet(bytes, &self.config.wire) {
            Ok(packet) => packet,
            Err(err) => {
                tracing::warn!(%from, error = %err, "undecodable message dropped");
                return;
            }
        };
        let (claims, to) = match &packet {
            Packet::Message(m) => (m.from, m.to),
            Packet::Chunk(c) => (c.from, c.to),
            Packet::Ack(a) => (a.from, a.to),
            Packet::Forward { from, to, .. } | Packet::ForwardAck { from, to, .. } => (*from, *to),
        };
        if claims != from || to != self.id {
            tracing::warn!(link = %from, %claims, %to, "a message names another sender or receiver; dropped");
            return;
        }
        match packet {
            Packet::Message(message) => {
                // A follower's read index may be answered from this leader's lease.
                if matches!(message.body, Body::ReadIndex { .. }) {
                    self.catch_up_time();
                }
                if let Body::HeartbeatResponse { round } = message.body
                    && let Some(rtt) = self.rtt.get_mut(&from)
                {
                    rtt.answered(round, Instant::now());
                }
                if let Err(err) = self.node.step(message) {
                    tracing::debug!(%from, error = %err, "message refused");
                }
            }
            Packet::Chunk(chunk) => {
                // A chunk from a leader of an older term is not this term's snapshot.
                if chunk.term < self.node.term() {
                    return;
                }
                // A full queue drops the chunk; the sender sends it again.
                let _ = self.chunks_tx.try_send(chunk);
            }
            Packet::Ack(ack) => self.snapshot_acked(&ack),
            Packet::Forward { from, message, .. } => self.forwarded(from, message),
            Packet::ForwardAck { from, commit, .. } => {
                self.cascade.acked(from, commit);
            }
        }
    }

    /// A learner steps what its upstream forwarded as the `Append` of the leader it
    /// names, and tells the upstream where it stands. Only a learner streams from another
    /// member, and only entries of a voter's leadership. It need not know the topology
    /// itself: a new learner learns it from the very log it is forwarded, and any member
    /// forwards only committed entries, which every leader's log holds.
    fn forwarded(&mut self, from: NodeId, message: Message) {
        let conf = self.node.conf_state();
        if !conf.learners.contains(&self.id) {
            tracing::debug!(node = %self.id, %from, "a forward to a node that is not a learner; dropped");
            return;
        }
        if !conf.all_voters().contains(&message.from) {
            tracing::warn!(node = %self.id, %from, leader = %message.from, "a forward names a leader that is not a voter; dropped");
            return;
        }
        if let Err(err) = self.node.step(message) {
            tracing::debug!(%from, error = %err, "forwarded entries refused");
        }
        let commit = self.node.committed();
        if !self.send_bytes(from, Bytes::from(wire::encode_forward_ack(self.id, from, commit))) {
            tracing::debug!(node = %self.id, upstream = %from, "no link to answer a forward on");
        }
    }

    /// As a learner's upstream: passes on what this node holds committed and durable, one
    /// batch in flight per learner.
    fn forward(&mut self) {
        if self.cascade.upstreams().is_empty() {
            return;
        }
        let leading = self.node.role() == Role::Leader;
        let Some(leader) = self.node.leader() else { return };
        let commit = self.node.committed().min(self.storage.last_lsn().unwrap_or(0));
        let now = Instant::now();
        for due in self.cascade.due(self.id, leading, commit, now) {
            self.cascade.sent(due.learner, now);
            let prev_lsn = due.from - 1;
            let batch = self.storage.term(prev_lsn).and_then(|prev_term| {
                let entries = if due.from <= commit {
                    self.storage.entries(due.from, commit + 1, self.config.raft.max_msg_bytes)?
                } else {
                    Vec::new()
                };
                Ok((prev_term, entries))
            });
            let (prev_term, mut entries) = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    // Compacted away, say: the leader takes the learner back when it stalls.
                    tracing::debug!(node = %self.id, learner = %due.learner, error = %err, "cannot forward");
                    continue;
                }
            };
            entries.truncate(self.config.wire.max_entries);
            let count = entries.len() as u64;
            let message = Message {
                from: leader,
                to: due.learner,
                term: self.node.term(),
                body: Body::Append { prev_lsn, prev_term, entries, commit },
            };
            let bytes = Bytes::from(wire::encode_forward(self.id, due.learner, &message));
            if self.send_bytes(due.learner, bytes) {
                self.counters.forward_batches += 1;
                self.counters.forwarded_entries += count;
            } else {
                tracing::debug!(node = %self.id, learner = %due.learner, "no link to forward on; sent again later");
            }
        }
    }

    /// The receiver thread has taken a chunk: answer its sender, and hand a snapshot that
    /// is complete and verified to the core as if it had arrived whole.
    fn chunk_received(&mut self, term: u64, received: Received) {
        let Received { ack, complete, resumed } = received;
        self.counters.snapshot_chunks_received += 1;
        self.counters.snapshot_bytes_resumed += resumed;
        if resumed > 0 {
            tracing::info!(node = %self.id, lsn = ack.id.lsn, resumed, "a snapshot transfer resumed from what this node held");
        }
        self.incoming = (ack.received < ack.id.total).then_some((ack.to, ack.id, ack.received));
        if let Some(sender) = self.peers.get(&ack.to).and_then(|p| p.sender.as_ref()) {
            let _ = sender.try_send(Bytes::from(wire::encode_ack(&ack)));
        }
        if let Some(snapshot) = complete {
            self.counters.snapshots_received += 1;
            tracing::info!(node = %self.id, from = %ack.to, lsn = snapshot.meta.lsn, bytes = snapshot.data.len(), "snapshot received whole");
            let message = Message { from: ack.to, to: self.id, term, body: Body::Snapshot(snapshot) };
            if let Err(err) = self.node.step(message) {
                tracing::debug!(from = %ack.to, error = %err, "snapshot refused");
            }
        }
    }

    /// A follower's answer to snapshot chunks.
    fn snapshot_acked(&mut self, ack: &SnapshotAck) {
        let peer = ack.from;
        let Some(out) = self.outgoing.get_mut(&peer) else { return };
        match out.ack(ack, Instant::now()) {
            AckOutcome::Done => {
                self.outgoing.remove(&peer);
                self.counters.snapshots_sent += 1;
                tracing::info!(node = %self.id, to = %peer, lsn = ack.id.lsn, "snapshot delivered");
                self.node.report_snapshot(peer, true);
            }
            AckOutcome::Going => self.pump(peer),
            AckOutcome::Stale => {}
        }
    }

    /// Starts sending `snapshot` to `to` in chunks, unless that very snapshot is already
    /// on its way (the core asks again when its wait for the answer runs out).
    fn start_transfer(&mut self, to: NodeId, snapshot: &Snapshot) {
        let same = |id: &SnapshotId| {
            (id.lsn, id.term, id.total) == (snapshot.meta.lsn, snapshot.meta.term, snapshot.data.len() as u64)
        };
        if self.outgoing.get(&to).is_some_and(|o| same(&o.id)) {
            return;
        }
        let id = match self.sent_id {
            Some(id) if same(&id) => id,
            _ => crate::transfer::snapshot_id(snapshot),
        };
        self.sent_id = Some(id);
        tracing::info!(node = %self.id, %to, lsn = id.lsn, bytes = id.total, chunk = self.config.snapshot_chunk_bytes, "sending a snapshot in chunks");
        self.outgoing.insert(to, Outgoing::new(snapshot, id, Instant::now()));
        self.pump(to);
    }

    /// Sends chunks to `to` while its window has room and its link takes them.
    fn pump(&mut self, to: NodeId) {
        let term = self.node.term();
        let (Some(out), Some(peer)) = (self.outgoing.get_mut(&to), self.peers.get_mut(&to)) else { return };
        let Some(sender) = peer.sender.as_ref() else { return };
        while let Some(chunk) =
            out.next_chunk(self.id, to, term, self.config.snapshot_chunk_bytes, self.config.snapshot_window)
        {
            match sender.try_send(Bytes::from(wire::encode_chunk(&chunk))) {
                Ok(()) => self.counters.snapshot_chunks_sent += 1,
                Err(LinkError::Full { .. }) => {
                    out.unsend(chunk.offset);
                    return;
                }
                // Closed, or a failure this driver does not know: the link is redialled.
                Err(_) => {
                    out.unsend(chunk.offset);
                    close_link(peer, &mut self.counters);
                    peer.retry_at = Some(Instant::now() + LINK_RETRY);
                    return;
                }
            }
        }
    }

    /// Once a tick: transfers of a node that no longer leads end; quiet ones send again
    /// from what the receiver holds; one quiet for too long is given up.
    fn tick_transfers(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        if self.node.leader() != Some(self.id) {
            self.outgoing.clear();
            return;
        }
        let now = Instant::now();
        let progress = self.node.status().progress;
        let peers: Vec<NodeId> = self.outgoing.keys().copied().collect();
        for peer in peers {
            let out = self.outgoing.get_mut(&peer).expect("listed above");
            // A follower that already holds everything the snapshot does (it installed it,
            // or caught up from the log) needs no more of it.
            if progress.get(&peer).is_none_or(|p| p.match_lsn >= out.id.lsn) {
                self.outgoing.remove(&peer);
                continue;
            }
            if out.stalled(now, SNAPSHOT_GIVE_UP_AFTER) {
                tracing::warn!(node = %self.id, %peer, lsn = out.id.lsn, "a snapshot transfer made no progress for a minute; given up");
                self.outgoing.remove(&peer);
                self.node.report_snapshot(peer, false);
                continue;
            }
            out.maybe_rewind(now, SNAPSHOT_RESEND_AFTER);
            self.pump(peer);
        }
    }

    fn not_leader(&self) -> DriverError {
        let leader = self.node.leader();
        DriverError::NotLeader {
            node: self.id,
            leader,
            leader_info: leader.and_then(|l| self.peers.get(&l)).map(|p| p.info.clone()),
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { reply, .. }
            | Command::SetPolicy { reply, .. }
            | Command::Membership { reply, .. }
                if self.pending.len() >= self.config.max_pending =>
            {
                // Refused before proposing: a write that is not answered is not written.
                let _ = reply.send(Err(DriverError::Busy { pending: self.pending.len() }));
            }
            Command::Propose { payload, reply, .. } if payload.len() > self.max_payload_bytes => {
                let _ = reply
                    .send(Err(DriverError::TooLarge { size: payload.len(), max: self.max_payload_bytes }));
            }
            Command::Propose { kind, payload, reply } => {
                let result = self.node.propose_entry(kind, payload);
                self.track(result, reply);
            }
            Command::SetPolicy { policy, reply } => {
                let result = self.node.set_policy(policy);
                self.track(result, reply);
            }
            Command::Membership { change, reply } => {
                let conf = self.node.conf_state();
                // The manager promotes learners and removes members; anything else is a
                // mistake to refuse, not a change to make (a voter without an address).
                let leading = self.node.leader() == Some(self.id);
                let refusal = match change {
                    _ if !leading => None, // the core answers NotLeader
                    MemberChange::AddVoter(id) if !conf.learners.contains(&id) => {
                        Some(format!("node {id} is not a learner; add it as a learner first"))
                    }
                    MemberChange::Remove(id) if !conf.members().contains(&id) => {
                        Some(format!("node {id} is not a member"))
                    }
                    _ => None,
                };
                let result = match refusal {
                    Some(reason) => Err(RaftError::Membership { reason }),
                    None => self.node.change_membership(vec![change]),
                };
                self.track(result, reply);
            }
            Command::Read { reply } => {
                self.catch_up_time();
                self.next_read += 1;
                let id = self.next_read;
                match self.node.read_index(Bytes::copy_from_slice(&id.to_le_bytes())) {
                    Ok(()) => {
                        self.reads.insert(id, (Instant::now(), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.refusal(e)));
                    }
                }
            }
            Command::Campaign { reply } => {
                let _ = reply.send(self.node.campaign().map_err(DriverError::from));
            }
            Command::Transfer { to, reply } => {
                let _ = reply.send(self.node.transfer_leader(to).map_err(|e| self.refusal(e)));
            }
            Command::Peer { id, reply } => {
                let _ = reply.send(self.peers.get(&id).map(|p| p.info.clone()));
            }
            Command::SetUpstreams { upstreams, reply } => {
                if &upstreams != self.cascade.upstreams() {
                    tracing::info!(node = %self.id, ?upstreams, "cascading replication set");
                    self.cascade.set(upstreams);
                    self.publish_status();
                }
                let _ = reply.send(());
            }
            Command::Shutdown => {}
        }
    }

    fn refusal(&self, err: RaftError) -> DriverError {
        match err {
            RaftError::NotLeader { .. } => self.not_leader(),
            other => DriverError::Raft(other),
        }
    }

    fn track(&mut self, result: Result<Lsn, RaftError>, reply: Reply<Lsn>) {
        match result {
            Ok(lsn) => {
                self.counters.proposals += 1;
                self.pending.insert(lsn, (self.node.term(), reply));
            }
            Err(e) => {
                let _ = reply.send(Err(self.refusal(e)));
            }
        }
    }

    async fn handle_ready(&mut self, mut ready: Ready) -> Result<(), DriverError> {
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft.role, soft.leader);
        }
        let messages = std::mem::take(&mut ready.messages);
        self.send(messages);
        // What this Ready acknowledges, commits and reads was made durable by earlier
        // Readies (the core hands out committed entries only up to its persisted LSN, and
        // acknowledges only durable copies), so clients are answered and entries applied
        // now, while this Ready's own entries are written: a write does not wait for the
        // fsync of the batch behind it.
        if let Some(ack) = ready.acknowledged {
            let done: Vec<Lsn> = self.pending.range(..=ack.lsn).map(|(lsn, _)| *lsn).collect();
            for lsn in done {
                if let Some((term, reply)) = self.pending.remove(&lsn) {
                    let result =
                        if term == ack.term { Ok(lsn) } else { Err(DriverError::OutcomeUnknown { lsn }) };
                    let _ = reply.send(result);
                }
            }
        }
        if !ready.committed_entries.is_empty() {
            for entry in &ready.committed_entries {
                if entry.kind == PEER_ENTRY {
                    self.learn_peer(entry);
                }
            }
            self.handed_lsn = ready.committed_entries.last().map_or(self.handed_lsn, |e| e.lsn);
            self.apply_tx
                .send(ApplyMsg::Entries(std::mem::take(&mut ready.committed_entries)))
                .await
                .map_err(|_| DriverError::Apply("the applier thread has ended".into()))?;
        }
        for read in ready.read_states.drain(..) {
            let id = read.ctx.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
            if let Some((_, reply)) = self.reads.remove(&id) {
                let _ = reply.send(Ok(read.lsn));
            }
        }
        if let Some(snapshot) = ready.snapshot.take() {
            self.install(snapshot).await?;
        }
        if !ready.entries.is_empty() {
            self.storage.append(&ready.entries).await?;
            self.log_bytes_since_snapshot +=
                ready.entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        }
        if let Some(hs) = ready.hard_state {
            if self.storage.hard_state_needs_write(&hs) {
                let storage = self.storage.clone();
                spawn_blocking(move || storage.set_hard_state(hs)).await?;
            } else {
                // A commit-only change is kept in memory: no file, no blocking thread (a
                // hand-off to the blocking pool and back cost two context switches per
                // Ready on every node).
                self.storage.set_hard_state(hs)?;
            }
        }
        let persisted = std::mem::take(&mut ready.persisted_messages);
        self.send(persisted);
        if ready.conf_state.is_some() {
            self.sync_peers();
        }
        self.node.advance()?;
        if ready.soft_state.is_some() || ready.conf_state.is_some() {
            self.publish_status();
        }
        Ok(())
    }

    fn on_soft_state(&mut self, role: Role, leader: Option<NodeId>) {
        self.leading_since = (role == Role::Leader).then(Instant::now);
        let campaigning = |r: Role| matches!(r, Role::PreCandidate | Role::Candidate);
        if campaigning(role) && !campaigning(self.last_role) {
            self.counters.elections += 1;
        }
        self.last_role = role;
        if role != Role::Leader {
            // Writes this node proposed as leader may or may not commit under the next.
            for (lsn, (_, reply)) in std::mem::take(&mut self.pending) {
                let _ = reply.send(Err(DriverError::OutcomeUnknown { lsn }));
            }
            let error = self.not_leader();
            for (_, (_, reply)) in self.reads.drain() {
                let _ = reply.send(Err(error.clone()));
            }
        }
        if leader != self.last_leader {
            let event = FailoverEvent {
                term: self.node.term(),
                leader,
                previous: self.last_leader,
                at_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            tracing::info!(node = %self.id, term = event.term, leader = ?leader, "leader changed");
            self.history.push(event);
            self.counters.leader_changes += 1;
            self.last_leader = leader;
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if let Body::Snapshot(snapshot) = &message.body {
                // Never as one message: in chunks, answered as they arrive.
                self.start_transfer(to, snapshot);
                continue;
            }
            if matches!(message.body, Body::Append { .. }) && self.cascade.left_to_upstream(to) {
                // The learner's upstream forwards the committed log; its answers still come
                // here and keep its progress.
                self.counters.appends_left_to_upstream += 1;
                continue;
            }
            if let Body::Heartbeat { round, .. } = message.body {
                self.rtt.entry(to).or_default().sent(round, Instant::now());
            }
            if !self.send_bytes(to, Bytes::from(wire::encode(&message))) {
                self.node.report_unreachable(to);
            }
        }
    }

    /// Once a tick: a link whose task ended (the peer refused it, say, not knowing this
    /// node as a member yet) is dropped and dialled again after [`LINK_RETRY`], without
    /// waiting for a message to find it closed; links due again are dialled.
    fn repair_links(&mut self) {
        let now = Instant::now();
        for peer in self.peers.values_mut() {
            if peer.sender.as_ref().is_some_and(Link::is_closed) {
                close_link(peer, &mut self.counters);
                peer.retry_at = Some(now + LINK_RETRY);
            }
        }
        if self.peers.values().any(|p| p.retry_at.is_some_and(|at| at <= now)) {
            self.sync_peers();
        }
    }

    /// Queues `bytes` on the link to `to`; false if there is none or it is full. A closed
    /// link is dropped and dialled again after [`LINK_RETRY`].
    fn send_bytes(&mut self, to: NodeId, bytes: Bytes) -> bool {
        let Some(peer) = self.peers.get_mut(&to) else { return false };
        match peer.sender.as_ref().map(|s| s.try_send(bytes)) {
            Some(Ok(())) => true,
            Some(Err(LinkError::Full { .. })) | None => false,
            // Closed, or a failure this driver does not know: the link is redialled.
            Some(Err(_)) => {
                close_link(peer, &mut self.counters);
                peer.retry_at = Some(Instant::now() + LINK_RETRY);
                false
            }
        }
    }

    fn learn_peer(&mut self, entry: &Entry) {
        match postcard::from_bytes::<PeerInfo>(&entry.payload) {
            Ok(info) => {
                let id = info.id;
                match self.peers.get_mut(&id) {
                    Some(peer) if peer.info.raft_addr != info.raft_addr => {
                        peer.info = info;
                        close_link(peer, &mut self.counters);
                    }
                    Some(peer) => peer.info = info,
                    None => {
                        self.peers.insert(id, Peer { info, sender: None, retry_at: None });
                    }
                }
                self.sync_peers();
            }
            Err(e) => tracing::warn!(lsn = entry.lsn, error = %e, "undecodable peer entry ignored"),
        }
    }

    /// Links to every member (and only members), and admits them at the network.
    fn sync_peers(&mut self) {
        let members = self.node.conf_state().members();
        for (id, peer) in &mut self.peers {
            let member = members.contains(id);
            self.network.admit(*id, member);
            if *id == self.id {
                continue;
            }
            if member && peer.sender.is_none() && peer.retry_at.is_none_or(|at| at <= Instant::now()) {
                peer.retry_at = None;
                match self.network.connect(&peer.info, self.config.raft.seed ^ id.0) {
                    Ok(sender) => peer.sender = Some(sender),
                    Err(e) => tracing::warn!(peer = %id, error = %e, "could not start the peer link"),
                }
            } else if !member {
                close_link(peer, &mut self.counters);
            }
        }
    }

    async fn install(&mut self, snapshot: Snapshot) -> Result<(), DriverError> {
        // A compaction of an older snapshot must not write its file after this one.
        if let Some(task) = self.compacting.take() {
            task.await.map_err(|e| DriverError::Stopped(format!("a compaction panicked: {e}")))??;
        }
        let decoded = DriverSnapshot::decode(&snapshot.data)?;
        // A local snapshot still being taken describes an older state than this one.
        self.snapshotting = None;
        let storage = self.storage.clone();
        let lsn = snapshot.meta.lsn;
        let to_install = snapshot.clone();
        spawn_blocking(move || storage.install_snapshot(&to_install)).await?;
        for info in decoded.peers {
            self.peers.entry(info.id).or_insert(Peer { info, sender: None, retry_at: None });
        }
        self.sync_peers();
        self.handed_lsn = lsn;
        self.last_snapshot_bytes = snapshot.data.len() as u64;
        self.log_bytes_since_snapshot = 0;
        self.apply_tx
            .send(ApplyMsg::Restore { lsn, data: decoded.machine })
            .await
            .map_err(|_| DriverError::Apply("the applier thread has ended".into()))
    }

    /// Asks the applier for a snapshot once enough entries follow the last one and
    /// everything committed has been handed over (so the membership is the one at that LSN).
    async fn maybe_snapshot(&mut self) -> Result<(), DriverError> {
        if let Some(task) = self.compacting.take_if(|t| t.is_finished()) {
            let lsn =
                task.await.map_err(|e| DriverError::Stopped(format!("a compaction panicked: {e}")))??;
            tracing::info!(node = %self.id, lsn, "snapshot taken; log compacted");
        }
        if self.snapshotting.is_some()
            || self.compacting.is_some()
            || self.storage.entries_since_snapshot() < self.config.snapshot_entries
            || self.log_bytes_since_snapshot * 100
                < self.last_snapshot_bytes * u64::from(self.config.snapshot_log_percent)
        {
            return Ok(());
        }
        let status = self.node.status();
        if status.hard_state.commit != self.handed_lsn || self.handed_lsn <= self.storage.snapshot_meta().lsn
        {
            return Ok(());
        }
        let lsn = self.handed_lsn;
        let (tx, rx) = oneshot::channel();
        self.apply_tx
            .send(ApplyMsg::Snapshot { lsn, reply: tx })
            .await
            .map_err(|_| DriverError::Apply("the applier thread has ended".into()))?;
        // Entries already appended past the snapshot's LSN (uncommitted ones) are not in
        // it: they count toward the next.
        self.log_bytes_since_snapshot = self
            .storage
            .entries(lsn + 1, status.last_lsn + 1, u64::MAX)
            .map_or(0, |entries| entries.iter().map(|e| e.payload.len() as u64).sum());
        self.snapshotting = Some(Snapshotting {
            lsn,
            conf_state: status.conf_state,
            policy: status.policy,
            peers: self.peers.values().map(|p| p.info.clone()).collect(),
            reply: rx,
        });
        Ok(())
    }

    fn finish_snapshot(&mut self, machine: Result<Bytes, DriverError>) -> Result<(), DriverError> {
        let Some(s) = self.snapshotting.take() else { return Ok(()) };
        let machine = machine?;
        // A snapshot from the leader installed meanwhile covers this one: the log below it
        // is gone (its term reads `Compacted`), and the local image is older than the state.
        if s.lsn <= self.storage.snapshot_meta().lsn {
            tracing::debug!(node = %self.id, lsn = s.lsn, "a local snapshot was superseded by an installed one");
            return Ok(());
        }
        let data = DriverSnapshot::encode(&s.peers, &machine);
        drop(machine);
        self.last_snapshot_bytes = data.len() as u64;
        let term = self.storage.term(s.lsn)?;
        let snapshot = Snapshot {
            meta: SnapshotMeta { lsn: s.lsn, term, conf_state: s.conf_state, policy: s.policy },
            data,
        };
        let storage = self.storage.clone();
        let lsn = s.lsn;
        self.compacting = Some(tokio::task::spawn_blocking(move || storage.compact(&snapshot).map(|()| lsn)));
        Ok(())
    }

    fn publish_status(&mut self) {
        let status = self.node.status();
        for learner in self.cascade.review(&status, self.config.raft.election_tick) {
            tracing::info!(node = %self.id, %learner, "a cascaded learner's upstream is silent or it stalled: replicating to it directly");
            // The appends left to the upstream were counted in flight: start over.
            self.node.report_unreachable(learner);
        }
        let last_lsn = status.last_lsn;
        let now_ms = (self.clock)().physical_ms();
        let tick_ms = u64::try_from(self.config.tick.as_millis()).unwrap_or(u64::MAX);
        let silent_limit = 2 * self.config.raft.heartbeat_tick;
        let lag_limit_ms = u64::try_from(self.config.lag_alert.as_millis()).unwrap_or(u64::MAX);
        let settle =
            self.config.tick * u32::try_from(2 * self.config.raft.heartbeat_tick).unwrap_or(u32::MAX);
        let settled = self.leading_since.is_some_and(|at| at.elapsed() >= settle);
        let mut replicas = Vec::new();
        for (id, pr) in &status.progress {
            let lag_lsns = last_lsn.saturating_sub(pr.match_lsn);
            let lag_ms = if lag_lsns == 0 {
                0
            } else {
                self.storage
                    .entries(pr.match_lsn + 1, pr.match_lsn + 2, 0)
                    .ok()
                    .and_then(|e| e.first().map(|e| now_ms.saturating_sub(e.timestamp.physical_ms())))
                    .unwrap_or(0)
            };
            let silent = pr.last_contact_ticks >= silent_limit;
            let lagging = settled && (lag_lsns > self.config.lag_alert_lsns || lag_ms > lag_limit_ms);
            let healthy = !silent && !lagging;
            let was_alerting = self.alerting.get(id).copied().unwrap_or(false);
            if !healthy && !was_alerting {
                let alert = if silent {
                    HealthAlert::MissingHeartbeats { id: *id, silent_ms: pr.last_contact_ticks * tick_ms }
                } else {
                    HealthAlert::Lagging { id: *id, lag_lsns, lag_ms }
                };
                tracing::warn!(node = %self.id, ?alert, "replica health alert");
                self.raise(alert);
            } else if healthy && was_alerting {
                self.raise(HealthAlert::Recovered { id: *id });
            }
            self.alerting.insert(*id, !healthy);
            replicas.push(ReplicaStatus {
                id: *id,
                learner: pr.learner,
                match_lsn: pr.match_lsn,
                lag_lsns,
                lag_ms,
                last_contact_ms: pr.last_contact_ticks * tick_ms,
                rtt_us: self.rtt.get(id).map_or(0, |r| r.last_us),
                state: match pr.state {
                    ProgressState::Probe => "Probe",
                    ProgressState::Replicate => "Replicate",
                    ProgressState::Snapshot => "Snapshot",
                }
                .to_string(),
                healthy,
            });
        }
        if status.soft_state.role != Role::Leader {
            self.alerting.clear();
            self.rtt.clear();
        }
        let applied_lsn = self.applied.borrow().clone().unwrap_or(0);
        let safe_ms = self.advance_safe_time(&status, applied_lsn, now_ms);
        self.status_tx.send_replace(DriverStatus {
            id: self.id,
            role: format!("{:?}", status.soft_state.role),
            term: status.hard_state.term,
            leader: status.soft_state.leader,
            last_lsn,
            commit_lsn: status.hard_state.commit,
            applied_lsn,
            acknowledged_lsn: status.acknowledged_lsn,
            mode: status.policy.to_string(),
            voters: status.conf_state.all_voters().into_iter().collect(),
            learners: status.conf_state.learners.iter().copied().collect(),
            lease_valid: status.lease_valid,
            replicas,
            counters: DriverCounters {
                votes_unsigned: status.vote_rejections.unsigned,
                votes_invalid: status.vote_rejections.invalid,
                votes_replayed: status.vote_rejections.replayed,
                ..self.totals()
            },
            snapshot_transfers: self.transfers(),
            snapshot_lsn: self.storage.snapshot_meta().lsn,
            safe_ms,
            upstreams: self.cascade.upstreams().clone(),
            cascade_direct: self.cascade.direct(),
        });
    }

    /// Moves the safe time on: queues the newest closed point a heartbeat brought, takes
    /// those the applier has reached, and, on a leader holding its lease with everything
    /// committed applied, is now.
    fn advance_safe_time(&mut self, status: &Status, applied_lsn: Lsn, now_ms: u64) -> u64 {
        let mut safe = self.freshness.safe_ms.load(Ordering::Relaxed);
        if status.soft_state.role == Role::Leader {
            self.freshness.closed.clear();
            if status.lease_valid && applied_lsn >= status.hard_state.commit {
                safe = safe.max(now_ms);
            }
        } else if let Some(point) = self.node.closed()
            && self.freshness.closed.back().is_none_or(|last| point.1 > last.1)
        {
            if self.freshness.closed.len() == MAX_CLOSED {
                self.freshness.closed.pop_front();
            }
            self.freshness.closed.push_back(point);
        }
        while let Some(&(lsn, ms)) = self.freshness.closed.front() {
            if lsn > applied_lsn {
                break;
            }
            safe = safe.max(ms);
            self.freshness.closed.pop_front();
        }
        self.freshness.safe_ms.store(safe, Ordering::Relaxed);
        safe
    }

    /// The snapshot transfers in progress, both ways.
    fn transfers(&self) -> Vec<SnapshotTransfer> {
        let mut out: Vec<SnapshotTransfer> = self
            .outgoing
            .iter()
            .map(|(peer, o)| SnapshotTransfer {
                peer: *peer,
                direction: "send".into(),
                lsn: o.id.lsn,
                bytes_done: o.acked,
                bytes_total: o.id.total,
            })
            .collect();
        if let Some((peer, id, done)) = self.incoming {
            out.push(SnapshotTransfer {
                peer,
                direction: "receive".into(),
                lsn: id.lsn,
                bytes_done: done,
                bytes_total: id.total,
            });
        }
        out
    }

    /// The totals, with what the open links have sent so far.
    fn totals(&self) -> DriverCounters {
        let mut totals = self.counters;
        for sender in self.peers.values().filter_map(|p| p.sender.as_ref()) {
            let sent = sender.counters();
            totals.sent_msgs += sent.sent_msgs;
            totals.sent_payload_bytes += sent.payload_bytes;
            totals.sent_wire_bytes += sent.wire_bytes;
        }
        totals
    }

    fn raise(&self, alert: HealthAlert) {
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.alert_history.push(AlertEvent { at_ms, alert: alert.clone() });
        let _ = self.alerts.send(alert);
    }

    fn fail_all(&mut self, result: &Result<(), DriverError>) {
        let reason = match result {
            Ok(()) => "the driver stopped".to_string(),
            Err(e) => e.to_string(),
        };
        for (_, (_, reply)) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(DriverError::Stopped(reason.clone())));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Err(DriverError::Stopped(reason.clone())));
        }
    }
}

async fn wait_snapshot(snapshotting: &mut Option<Snapshotting>) -> Result<Bytes, DriverError> {
    match snapshotting {
        Some(s) => (&mut s.reply)
            .await
            .unwrap_or_else(|_| Err(DriverError::Apply("the applier dropped a snapshot request".into()))),
        None => std::future::pending().await,
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Stopped(format!("a storage task panicked: {e}")))?
        .map_err(DriverError::Storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> PeerInfo {
        PeerInfo {
            id: NodeId(id),
            raft_addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            meta: vec![],
        }
    }

    #[test]
    fn a_round_trip_is_timed_from_its_heartbeat_and_older_rounds_are_dropped() {
        let t0 = Instant::now();
        let mut rtt = RoundTrips::default();
        rtt.sent(1, t0);
        rtt.sent(1, t0 + Duration::from_millis(5)); // a round goes to each peer once
        rtt.sent(2, t0 + Duration::from_millis(100));
        rtt.sent(3, t0 + Duration::from_millis(200));
        rtt.answered(2, t0 + Duration::from_millis(130));
        assert_eq!(rtt.last_us, 30_000);
        assert_eq!(rtt.pending.len(), 1, "round 1 is no longer awaited");
        rtt.answered(2, t0 + Duration::from_millis(400)); // a duplicate answer changes nothing
        assert_eq!(rtt.last_us, 30_000);
        for round in 4..100 {
            rtt.sent(round, t0);
        }
        assert_eq!(rtt.pending.len(), RoundTrips::PENDING);
    }

    #[test]
    fn every_bad_setting_is_named() {
        let good = DriverConfig::new(Config::new(NodeId(1), "t"), vec![peer(1), peer(2)]);
        good.validate().unwrap();
        let cases = [
            (DriverConfig { tick: Duration::ZERO, ..good.clone() }, "tick = 0ns"),
            (DriverConfig { snapshot_entries: 3, ..good.clone() }, "snapshot_entries = 3"),
            (DriverConfig { snapshot_log_percent: 20_000, ..good.clone() }, "snapshot_log_percent = 20000"),
            (DriverConfig { apply_workers: 65, ..good.clone() }, "apply_workers = 65"),
            (DriverConfig { max_pending: 0, ..good.clone() }, "max_pending = 0"),
            (DriverConfig { peers: vec![peer(1), peer(1)], ..good.clone() }, "node 1 is listed twice"),
            (DriverConfig { peers: vec![peer(2)], ..good.clone() }, "this node (1) has no address"),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, DriverError::Config(_)) && err.to_string().contains(needle),
                "{needle}: {err}"
            );
        }
    }

    #[test]
    fn recent_events_keep_the_latest_in_order() {
        let recent = Recent::new();
        for i in 0..RECENT_EVENTS + 10 {
            recent.push(i);
        }
        let kept = recent.to_vec();
        assert_eq!((kept.len(), kept[0], *kept.last().unwrap()), (RECENT_EVENTS, 10, RECENT_EVENTS + 9));
    }

    #[test]
    fn snapshot_data_that_is_not_a_driver_snapshot_is_a_storage_error() {
        assert!(DriverSnapshot::decode(&Bytes::new()).unwrap().peers.is_empty());
        let err = DriverSnapshot::decode(&Bytes::from_static(&[0xff; 3])).unwrap_err();
        assert!(matches!(err, DriverError::Storage(_)) && err.to_string().contains("snapshot data"), "{err}");
    }

    #[test]
    fn snapshot_data_round_trips_and_keeps_the_postcard_layout_of_peers_and_a_byte_vector() {
        #[derive(Serialize)]
        struct Plain {
            peers: Vec<PeerInfo>,
            machine: Vec<u8>,
        }
        let peers = vec![PeerInfo {
            id: NodeId(2),
            raft_addr: "127.0.0.1:7002".parse().unwrap(),
            meta: b"x".to_vec(),
        }];
        let machine: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let encoded = DriverSnapshot::encode(&peers, &machine);
        let plain = postcard::to_stdvec(&Plain { peers: peers.clone(), machine: machine.clone() }).unwrap();
        assert_eq!(encoded.as_ref(), plain.as_slice(), "files written before keep decoding");
        let decoded = DriverSnapshot::decode(&encoded).unwrap();
        assert_eq!((decoded.peers, decoded.machine.as_ref()), (peers, machine.as_slice()));
    }

    #[test]
    fn chunk_settings_and_the_frame_limit_are_checked_at_start() {
        let config = |edit: fn(&mut DriverConfig)| {
            let me = PeerInfo { id: NodeId(1), raft_addr: "127.0.0.1:1".parse().unwrap(), meta: Vec::new() };
            let mut c = DriverConfig::new(Config::new(NodeId(1), "c"), vec![me]);
            edit(&mut c);
            c
        };
        let ok = config(|_| {});
        ok.validate().unwrap();
        for (edit, needle) in [
            (
                (|c: &mut DriverConfig| c.snapshot_chunk_bytes = 1023) as fn(&mut DriverConfig),
                "snapshot_chunk_bytes = 1023",
            ),
            (
                |c: &mut DriverConfig| c.snapshot_chunk_bytes = (16 << 20) + 1,
                "snapshot_chunk_bytes = 16777217",
            ),
            (|c: &mut DriverConfig| c.snapshot_window = 0, "snapshot_window = 0"),
            (|c: &mut DriverConfig| c.snapshot_window = 65, "snapshot_window = 65"),
        ] {
            let err = config(edit).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        // The frame must carry one append of the largest record and one chunk with its
        // metadata: 16 MiB records need 16 MiB and a little more; 1 MiB chunks 2 MiB.
        assert!(check_frame(&ok, 64 << 20).is_ok());
        let err = check_frame(&ok, 16 << 20).unwrap_err().to_string();
        assert!(err.contains("one append of the largest record"), "{err}");
        let small_records = config(|c| {
            c.wire.max_record_bytes = 1 << 16;
            c.snapshot_chunk_bytes = 4 << 20;
        });
        let err = check_frame(&small_records, 4 << 20).unwrap_err().to_string();
        assert!(err.contains("a snapshot chunk of snapshot_chunk_bytes = 4194304"), "{err}");
        assert!(check_frame(&small_records, 6 << 20).is_ok());
    }
}
