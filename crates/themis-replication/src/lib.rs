//! Themis replication: the facade over every replication crate.
//!
//! Depend on this crate to get the whole toolkit; each layer is re-exported as a module
//! under its own name, and [`prelude`] brings the types most programs use into scope.
//! This crate holds no logic of its own.
//!
//! ```
//! use themis_replication::prelude::*;
//!
//! let hlc = Hlc::new(NodeId(1));
//! let (first, second) = (hlc.now(), hlc.now());
//! assert!(first < second);
//!
//! // The crates are also reachable by name.
//! let mut clock = themis_replication::clock::VectorClock::new();
//! clock.increment(NodeId(1))?;
//! # Ok::<(), themis_replication::clock::ClockError>(())
//! ```

pub use themis_cdc as cdc;
pub use themis_clock as clock;
pub use themis_crdt as crdt;
pub use themis_geo as geo;
pub use themis_logical as logical;
pub use themis_pitr as pitr;
pub use themis_raft as raft;
pub use themis_ship as ship;
pub use themis_wal as wal;

/// The types most users of the toolkit need, for a glob import.
pub mod prelude {
    pub use themis_cdc::{
        CdcConfig, CdcError, CdcStream, ChangeEvent, ChangeOp, Filter as CdcFilter, Subscription,
    };
    pub use themis_clock::{CausalOrder, ClockError, Hlc, NodeId, PhysicalClock, Timestamp, VectorClock};
    pub use themis_crdt::{
        ConflictResolver, Crdt, CrdtError, GCounter, LwwRegister, OrSet, PnCounter, Resolution, Strategy,
    };
    pub use themis_geo::{
        ConsistencyLevel, GeoConfig, GeoError, ReadConsistency, ReplicationTier, SessionToken, TokenCodec,
        WriteConcern,
    };
    pub use themis_logical::{
        ChangeBatch, LogicalChange, LogicalConfig, LogicalError, LogicalReplicationManager, OutputPlugin,
        SlotConfig, SlotInfo,
    };
    pub use themis_raft::driver::{Driver, DriverConfig, PeerInfo, ReplicationManager};
    pub use themis_raft::{
        AckPolicy, ConfState, Config as RaftConfig, DriverError, Ed25519Votes, Link, LinkError, LogStore,
        Network, RaftError, RawNode, Ready, ReplicationMode, SharedVotes, ShipNetwork, Storage, StorageError,
        WalStorage,
    };
    pub use themis_ship::tls::{CertPem, TlsConfig, generate_ca, issue_node_cert};
    pub use themis_ship::{
        Applier, ApplyError, Change, Codec, CodecChoice, KeyedOp, Members, MemoryStateMachine, OpRole,
        ParallelApplier, PeerConfig, Security, SerialApplier, ShipConfig, ShipError, StateMachine, Transport,
        TransportConfig, WalReceiver, WalShipper,
    };
    pub use themis_wal::op::{Op, OpKind, encode_batch};
    pub use themis_wal::{
        Entry, EntryKind, FsyncPolicy, Lsn, NewEntry, RecoveryMode, Wal, WalConfig, WalError,
    };
}
