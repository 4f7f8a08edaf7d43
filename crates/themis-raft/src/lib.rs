//! I/O-free Raft for Themis replication, in the style of etcd-io/raft and tikv/raft-rs:
//! ticks, messages and proposals go in; a [`Ready`] comes out saying what to persist, send
//! and apply. No clock, file, socket or thread inside, so a simulator can run thousands of
//! seeded clusters under faults (crate `themis-testkit`).
//!
//! On top of Raft (elections with pre-vote and check-quorum, pipelined replication with
//! flow control, snapshots, `ReadIndex` and lease reads, learners, joint consensus, leadership
//! transfer) it computes an acknowledged LSN per [`ReplicationMode`] (SYNC, `SEMI_SYNC`,
//! ASYNC), changed at run time through the log, and signs every vote with ed25519.
//!
//! The async `Driver` (default cargo feature `driver`) runs the core on tokio over a log
//! store and a network given as traits (`io::LogStore`, `io::Network`): `WalStorage` (a
//! themis-wal log) and `ShipNetwork` (themis-ship peer links, mutual TLS) are the provided
//! ones. Without the feature the crate is the core, `WalStorage` and the wire codec.
//!
//! A three-node cluster, driven by hand:
//!
//! ```
//! use std::collections::BTreeMap;
//! use themis_clock::{NodeId, Timestamp};
//! use themis_raft::{ConfState, Config, Ed25519Votes, MemStorage, RawNode, Role};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ids = [NodeId(1), NodeId(2), NodeId(3)];
//! // Every node knows every node's vote key.
//! let keys: Vec<_> = ids.iter().map(|id| Ed25519Votes::from_seed(*id, &[id.0 as u8; 32])).collect::<Result<_, _>>()?;
//! let public: Vec<_> = keys.iter().map(Ed25519Votes::public_key).collect();
//! let mut nodes = BTreeMap::new();
//! for (id, mut signer) in ids.into_iter().zip(keys) {
//!     for (peer, key) in ids.iter().zip(&public) {
//!         signer.add_peer(*peer, key)?;
//!     }
//!     let storage = MemStorage::new(ConfState::with_voters(ids));
//!     let node = RawNode::new(Config::new(id, "demo"), storage, Box::new(signer), || Timestamp::ZERO)?;
//!     nodes.insert(id, node);
//! }
//!
//! // The driver loop: tick, then persist, send and apply what each Ready says.
//! let mut committed: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
//! let mut proposed = false;
//! for _ in 0..200 {
//!     let mut inbox = Vec::new();
//!     for (id, node) in nodes.iter_mut() {
//!         node.tick()?;
//!         while node.has_ready() {
//!             let ready = node.ready()?;
//!             let mut log = node.storage().wl();
//!             if let Some(hard_state) = ready.hard_state {
//!                 log.set_hard_state(hard_state);
//!             }
//!             log.append(&ready.entries)?;
//!             drop(log);
//!             inbox.extend(ready.messages);
//!             inbox.extend(ready.persisted_messages);
//!             for entry in ready.committed_entries {
//!                 if !entry.payload.is_empty() {
//!                     committed.entry(*id).or_default().push(entry.payload.to_vec());
//!                 }
//!             }
//!             node.advance()?;
//!         }
//!     }
//!     for message in inbox {
//!         nodes.get_mut(&message.to).unwrap().step(message)?;
//!     }
//!     if !proposed {
//!         if let Some(leader) = nodes.values_mut().find(|n| n.status().soft_state.role == Role::Leader) {
//!             leader.propose(&b"hello"[..])?;
//!             proposed = true;
//!         }
//!     }
//! }
//! assert!(ids.iter().all(|id| committed[id] == [b"hello".to_vec()]));
//! # Ok(())
//! # }
//! ```
//!
//! `docs/raft.md` describes the messages, the roles, how the modes map to acknowledgement
//! and why the lease is safe.

#[cfg(feature = "driver")]
pub mod cascade;
mod confchange;
mod config;
#[cfg(feature = "driver")]
pub mod driver;
pub mod durable;
mod error;
#[cfg(feature = "driver")]
pub mod io;
mod log;
mod message;
#[cfg(feature = "mutation")]
pub mod mutation;
#[cfg(feature = "driver")]
mod net;
mod progress;
mod quorum;
mod raft;
mod raw_node;
mod signing;
mod storage;
#[cfg(feature = "driver")]
pub mod transfer;
mod types;
pub mod wire;

pub use confchange::{ConfigChange, MemberChange};
pub use config::{Config, MAX_CLOCK_DRIFT_PPM};
#[cfg(feature = "driver")]
pub use driver::{
    AlertEvent, CommitObserver, Driver, DriverConfig, DriverCounters, DriverError, DriverStatus,
    FailoverEvent, HealthAlert, PeerInfo, Positions, ReplicaStatus, ReplicationManager, STOPPED_ROLE,
};
pub use durable::WalStorage;
pub use error::{RaftError, StorageError};
#[cfg(feature = "driver")]
pub use io::{Inbox, Link, LinkCounters, LinkError, LogStore, Network};
pub use message::{Body, Message};
#[cfg(feature = "driver")]
pub use net::ShipNetwork;
pub use progress::ProgressState;
pub use quorum::{VoteResult, committed_lsn, is_quorum, vote_result};
pub use raw_node::{Acknowledged, ProgressStatus, RawNode, Ready, Status};
pub use signing::{
    ED25519_KEY_LEN, Ed25519Votes, SharedVotes, Signature, VoteClaim, VoteRejections, VoteSigner,
};
pub use storage::{InitialState, MemStorage, MemStorageCore, Storage, limit_size};
pub use types::{
    AckPolicy, ConfState, HardState, ReadOnlyOption, ReadState, ReplicationMode, Role, Snapshot,
    SnapshotMeta, SoftState,
};
