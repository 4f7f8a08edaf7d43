//! Test tooling for Themis replication (dev-only): a deterministic simulator of whole Raft
//! clusters under faults, a linearizability checker for the histories it and real-process
//! tests produce, and a fault-injecting TCP proxy ([`proxy`]) for those tests.
//!
//! ```
//! use themis_testkit::sim::{SimConfig, Simulation};
//!
//! let mut config = SimConfig::new(7, 3);
//! config.ticks = 150;
//! let report = Simulation::new(config).run().unwrap_or_else(|violation| panic!("{violation}"));
//! assert!(report.elections >= 1);
//! assert!(report.committed_lsn > 0);
//! ```
//!
//! A failing seed prints the invariant, the step and a replay command
//! (`cargo xtask sim --seed S --nodes K`).

pub mod linearizability;
pub mod network;
pub mod proxy;
pub mod sim;
