//! Geo-replication: regions, five read consistency levels, session tokens, staleness,
//! read routing, quorum reads, write concerns and replication tiers.
//!
//! The pieces are I/O-free, so a node, a client and a simulator use the same rules:
//!
//! - [`ConsistencyLevel`] and [`ReadConsistency`]: strong, bounded staleness, session,
//!   consistent prefix and eventual (Cosmos DB's five), per request;
//! - [`plan_read`]: what a replica does with a read at a level (serve, confirm with a
//!   quorum, wait for its log, or redirect);
//! - [`TokenCodec`] and [`SessionToken`]: session tokens (term, LSN, region, issue time)
//!   with a MAC, a lifetime and checks against the log, so a forged token is refused, not
//!   waited on;
//! - [`StalenessTracker`]: lag per replica and region, with history (p50, p95, p99, max);
//! - [`select_read_region`] and [`Router`]: where a read goes, by region and by strategy
//!   (round-robin, least-connections, latency EWMA, random, power-of-two-choices), with
//!   failing replicas taken out and brought back;
//! - [`quorum::resolve`]: R-of-N reads that answer the newest version and name the stale
//!   replicas to repair;
//! - [`WriteConcern`], [`ReplicationTier`], [`TierMap`], [`AutoTiering`]: per-request
//!   write concerns and per-collection tiers changed through the log;
//! - [`GeoConfig`] and [`Cascade`]: regions, replica counts, bounds, and cascading chains
//!   of at most [`MAX_CHAIN_HOPS`].
//!
//! ```
//! use themis_geo::{plan_read, ReadConsistency, ReadPlan, ReplicaState, SessionToken, TokenCodec};
//!
//! # fn main() -> Result<(), themis_geo::GeoError> {
//! // A write on the leader returns a token; the client sends it with its next read.
//! let codec = TokenCodec::new("prod", Some(b"a secret of 16+ bytes"))?;
//! let written = SessionToken { term: 2, lsn: 120, region: "us-east".into(), issued_ms: 1_000 };
//! let text = codec.encode(&written);
//!
//! // A follower in another region checks it, then plans the read.
//! let token = codec.decode(&text)?;
//! token.check_age(2_000, 3_600_000)?;
//! let follower = ReplicaState { applied_lsn: 118, commit_lsn: 120, safe_ms: 1_900, now_ms: 2_000, ..Default::default() };
//! let session = ReadConsistency::Session(Some(token));
//! assert_eq!(plan_read(&session, &follower, false), ReadPlan::Wait); // not yet at 120
//! let caught_up = ReplicaState { applied_lsn: 120, ..follower };
//! assert_eq!(plan_read(&session, &caught_up, false), ReadPlan::Serve);
//!
//! // A bounded read within 50 ms: this replica is 100 ms behind, so after its brief
//! // wait it sends the client on.
//! let bounded = ReadConsistency::BoundedStaleness { max_staleness_ms: 50, max_versions: None };
//! assert!(matches!(plan_read(&bounded, &caught_up, true), ReadPlan::Redirect(_)));
//!
//! // A forged token is an error, not a wait.
//! assert!(codec.decode(&text.replace(".120.", ".999999.")).is_err());
//! # Ok(())
//! # }
//! ```

pub mod active;
mod config;
mod error;
mod level;
pub mod quorum;
mod read;
mod routing;
mod staleness;
mod tier;
mod token;

pub use config::{Cascade, GeoConfig, MAX_CHAIN_HOPS};
pub use error::GeoError;
pub use level::{
    ConsistencyLevel, MAX_STALENESS_MS, ReadConsistency, check_staleness_ms, parse_staleness_ms,
};
pub use quorum::{QuorumResult, ReplicaAnswer};
pub use read::{ReadPlan, ReplicaState, plan_read};
pub use routing::{HealthPolicy, Pick, RegionView, ReplicaHealth, Router, Strategy, select_read_region};
pub use staleness::{
    DEFAULT_HISTORY, LagHistory, LagSample, LagStats, RegionStaleness, ReplicaStaleness, StalenessTracker,
};
pub use tier::{AutoTierPolicy, AutoTiering, ReplicationTier, TierChange, TierMap, WriteConcern};
pub use token::{MAX_ISSUE_SKEW_MS, MAX_TOKEN_LEN, SessionToken, TokenCodec, check_region};
