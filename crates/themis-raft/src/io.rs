//! What the [`Driver`](crate::Driver) needs from the world, as traits: a [`LogStore`] that
//! makes the log durable, and a [`Network`] that carries messages between members.
//!
//! The crate provides one of each: [`WalStorage`](crate::WalStorage) (the themis-wal log
//! with its group commit, the hard state and snapshots in files) and
//! [`ShipNetwork`](crate::ShipNetwork) (themis-ship peer links, mutual TLS 1.3 by
//! default). A store of its own or a transport of its own implements these instead; the
//! driver's loop, acknowledgement modes, snapshots in chunks, health and cascading work
//! the same over any of them.
//!
//! The driver runs on a tokio runtime and calls these from its loop task, so no method may
//! block for long: [`LogStore::append`] is async, and the driver moves
//! [`LogStore::set_hard_state`] (when [`LogStore::hard_state_needs_write`] says it writes),
//! [`LogStore::install_snapshot`] and [`LogStore::compact`] to tokio's blocking pool.

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use themis_clock::NodeId;
use themis_wal::Entry;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::driver::{DriverError, PeerInfo};
use crate::error::StorageError;
use crate::signing::SharedVotes;
use crate::storage::Storage;
use crate::types::{HardState, Snapshot, SnapshotMeta};

/// The durable log under a driver: what the core reads ([`Storage`]) and what the driver
/// writes. Cloned handles share one store.
///
/// What must hold, for Raft's safety: once [`append`](Self::append) or
/// [`set_hard_state`](Self::set_hard_state) (of a changed term or vote) returns `Ok`, what
/// it was given survives a crash of the process and of the machine.
pub trait LogStore: Storage + Clone + Send + Sync + 'static {
    /// The largest entry one record of this log holds, header included: a proposal whose
    /// record would be larger is refused before the core sees it. `usize::MAX` when the
    /// store has no bound of its own (the wire's still applies).
    fn max_record_bytes(&self) -> usize;

    /// Appends `entries` (dense, from a `Ready`), replacing any entries at or after the
    /// first one's LSN, and returns once they are durable.
    fn append(&self, entries: &[Entry]) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Whether [`set_hard_state`](Self::set_hard_state) of `hs` blocks on I/O (the driver
    /// then runs it on the blocking pool). The term and vote must be durable before a vote
    /// or an append is answered; a commit-only change may stay in memory.
    fn hard_state_needs_write(&self, hs: &HardState) -> bool;

    /// Records `hs` (durably when its term or vote changed).
    fn set_hard_state(&self, hs: HardState) -> Result<(), StorageError>;

    /// Replaces the log with a snapshot received from the leader: every entry at or before
    /// its LSN is dropped (and any after it that disagree with it). Blocking.
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Keeps a snapshot this node took and drops the entries it covers. Blocking.
    fn compact(&self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// The latest snapshot's metadata (without its data).
    fn snapshot_meta(&self) -> SnapshotMeta;

    /// Entries held after the latest snapshot: the driver takes a new snapshot once there
    /// are enough.
    fn entries_since_snapshot(&self) -> u64;

    /// A directory where a snapshot being received is written as its chunks arrive, so a
    /// transfer cut by a restart resumes where it stopped. `None` (the default) keeps the
    /// chunks in memory: a restart starts the transfer over.
    fn snapshot_staging_dir(&self) -> Option<&Path> {
        None
    }
}

/// Where a node's messages are delivered to its driver: `(sender, message bytes)`. A
/// [`Network`] pushes every message it receives here; bytes are decoded (and bounded) by
/// the driver.
pub type Inbox = mpsc::Sender<(NodeId, Bytes)>;

/// Carries the driver's messages between members. Messages are opaque bytes; each link
/// is one-way and in order, and may lose messages when it breaks (Raft retries).
pub trait Network: Send + 'static {
    /// A link to one peer.
    type Link: Link;

    /// The largest message a link carries. The driver refuses to start when it is too
    /// small for its largest record or snapshot chunk.
    fn max_message_bytes(&self) -> usize;

    /// Starts taking peers' messages into `inbox`; called once, before any
    /// [`connect`](Self::connect). `votes` holds this node's signing key and learns each
    /// peer's key as the network authenticates it (a network that cannot must have them
    /// added beforehand). The driver aborts the returned task when it stops.
    fn serve(&mut self, inbox: Inbox, votes: SharedVotes) -> Result<AbortHandle, DriverError>;

    /// Opens a link to `peer`; it connects, and reconnects, by itself. `seed` seeds its
    /// retry jitter.
    fn connect(&mut self, peer: &PeerInfo, seed: u64) -> Result<Self::Link, DriverError>;

    /// Whether messages from `node` are taken: the driver admits exactly the members.
    fn admit(&mut self, node: NodeId, member: bool);
}

/// Why [`Link::try_send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link's queue is full: the message is dropped (Raft sends it again).
    #[error("the link to node {peer} is full")]
    Full {
        /// The peer.
        peer: NodeId,
    },
    /// The link has ended for good: the driver drops it and connects again later.
    #[error("the link to node {peer} is closed")]
    Closed {
        /// The peer.
        peer: NodeId,
    },
}

/// What a link has sent, for the driver's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Messages sent.
    pub sent_msgs: u64,
    /// Their bytes as given to [`Link::try_send`].
    pub payload_bytes: u64,
    /// Bytes put on the wire (after framing and compression).
    pub wire_bytes: u64,
}

/// One peer's outgoing link, owned by the driver.
pub trait Link: Send + 'static {
    /// Queues `message` without waiting.
    fn try_send(&self, message: Bytes) -> Result<(), LinkError>;
    /// Whether the link has ended for good (it will send nothing more).
    fn is_closed(&self) -> bool;
    /// What it has sent so far.
    fn counters(&self) -> LinkCounters;
}
