//! The Themis node: a replicated JSON document store. It wires the WAL-backed Raft
//! storage, the Raft driver, mutual-TLS peer links, the applier and an in-memory
//! document store, and serves clients over TLS 1.3 with a small pipelined protocol.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use themis_node::{Client, Consistency, Credentials, Node, NodeConfig};
//!
//! let config = NodeConfig::load(std::path::Path::new("node-1.toml"))?;
//! let node = Node::start(&config).await?;
//! // certs/ holds ca.pem and an admin client certificate (`themis certs` writes them).
//! let admin = Credentials::admin_from_dir(std::path::Path::new("certs"))?;
//! let client = Client::connect(node.client_addr, &admin).await?;
//! client.put("users", "ada", br#"{"name":"Ada"}"#).await?;
//! // Read-your-writes on any node: the client keeps the session token its write returned
//! // (`client.session_token()` carries it to another client).
//! let doc = client.get("users", "ada", Consistency::Session(None)).await?;
//! assert!(doc.is_some());
//! # Ok(()) }
//! ```

pub mod active;
pub mod admin;
pub mod admin_client;
pub mod analytics;
pub mod archive;
pub mod auth;
pub mod cascade;
pub mod changes;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod doctor;
pub mod fault;
pub mod feed;
mod geo;
pub mod limits;
pub mod links;
pub mod local;
pub mod metrics;
pub mod protocol;
pub mod router;
pub mod server;
pub mod sink;
pub mod slots;
pub mod stats;
pub mod store;
pub mod tiers;
mod writes;

pub use client::{Client, ClientError, Credentials};
pub use config::{ConfigError, NodeConfig};
pub use feed::{ChangeFeed, FeedError, FeedEvent};
pub use local::{LocalCluster, LocalNode};
pub use metrics::Metrics;
pub use protocol::{Consistency, ErrorCode, Request, Response};
pub use server::{Node, NodeError};
pub use store::DocStore;
