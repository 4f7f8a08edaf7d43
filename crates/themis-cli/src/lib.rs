//! The `themis` command's building blocks: local clusters of `themis server` processes
//! ([`cluster`]), the closed-loop write workload behind `themis bench` and `themis demo`
//! ([`workload`]), the failover demo ([`demo`]) and the WAL check behind
//! `themis doctor validate-wal` ([`doctor`]), `themis cdc tail` ([`cdc`]), and `themis slot`,
//! `themis ddl` and the logical replica `themis subscribe` ([`logical`]), and the WAL archive and
//! point-in-time restore ([`pitr`]).
//!
//! ```
//! use themis_node::stats::document;
//!
//! // The bench writes JSON documents of exactly the size asked for.
//! let doc = document(3, 42, 256);
//! assert_eq!(doc.len(), 256);
//! let value: serde_json::Value = serde_json::from_slice(&doc).unwrap();
//! assert_eq!(value["n"], 42);
//! ```
//!
//! ```no_run
//! // A 3-node cluster of this program's `server` processes, left running.
//! let exe = std::env::current_exe().unwrap();
//! let (file, _children) =
//!     themis_cli::cluster::start(&exe, std::path::Path::new("/tmp/themis"), 3, "semi_sync", true).unwrap();
//! println!("leader candidates: {:?}", file.nodes.iter().map(|n| n.client).collect::<Vec<_>>());
//! ```

pub mod cdc;
pub mod cluster;
pub mod demo;
pub mod doctor;
pub mod logical;
pub mod pitr;
pub mod workload;
