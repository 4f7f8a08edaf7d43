//! Everything that moves WAL bytes between nodes, and applies them on arrival.
//!
//! - [`frame`] and [`codec`]: a versioned, CRC-checked frame whose payload is compressed
//!   with LZ4, Zstd, Snappy, or a codec picked per batch by measured throughput. Each codec
//!   is a cargo feature (`lz4`, `zstd`, `snappy`, on by default); a build pays only for
//!   the ones it keeps.
//! - `tls` (cargo feature `tls`, on by default) and [`transport`]: TLS 1.3-only mutual TLS
//!   between nodes of one cluster CA, the node id taken from the certificate, and a hello /
//!   welcome handshake.
//! - [`ship`]: [`WalShipper`] streams a WAL to a follower's
//!   [`WalReceiver`] and resumes after a reconnect with no gap and no
//!   duplicate.
//! - [`apply`]: serial and parallel appliers that keep each key's writes in log order.
//!
//! Shipping one WAL to another over loopback TLS:
//!
//! ```
//! use std::net::SocketAddr;
//! use themis_clock::{NodeId, Timestamp};
//! use themis_ship::ship::{ShipConfig, ShipStatus, WalReceiver, WalShipper};
//! use themis_ship::tls::{TlsConfig, generate_ca, issue_node_cert};
//! use themis_ship::transport::{Members, Security, Transport, TransportConfig};
//! use themis_wal::{NewEntry, Wal, WalConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (leader_dir, follower_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let (leader, _) = Wal::open(leader_dir.path(), WalConfig::default())?;
//! let (follower, _) = Wal::open(follower_dir.path(), WalConfig::default())?;
//! let ts = Timestamp::from_parts(1, 0, NodeId(1))?;
//! leader.append_async(&[NewEntry::data(ts, &b"{\"id\":1}"[..]), NewEntry::data(ts, &b"{\"id\":2}"[..])]).await?;
//!
//! // One cluster CA; each node's certificate names its id.
//! let ca = generate_ca("demo")?;
//! let node = |id| -> Result<Transport, themis_ship::ShipError> {
//!     let cert = issue_node_cert(&ca, NodeId(id), &[])?;
//!     let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key)?;
//!     Transport::new(TransportConfig::new("demo", NodeId(id), Security::Tls(tls)), Members::new([NodeId(1), NodeId(2)]))
//! };
//!
//! // The follower accepts one stream into its WAL.
//! let listener = node(2)?.bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
//! let addr = listener.local_addr()?;
//! let receiver = WalReceiver::new(follower.clone(), ShipConfig::default())?;
//! tokio::spawn(async move { receiver.serve(listener.accept().await?.handshake().await?).await });
//!
//! // The leader ships until the follower acknowledges LSN 2 as durable.
//! let shipper = WalShipper::new(leader.clone(), node(1)?, ShipConfig::default())?;
//! let (status, mut watch) = tokio::sync::watch::channel(ShipStatus::default());
//! let (stop, stop_rx) = tokio::sync::watch::channel(false);
//! let run = tokio::spawn(async move { shipper.run(NodeId(2), addr, &status, stop_rx, 1).await });
//! watch.wait_for(|s| s.acked_lsn == 2).await?;
//! stop.send(true)?;
//! run.await??;
//! assert_eq!(follower.read_raw(1, 1 << 20)?.bytes, leader.read_raw(1, 1 << 20)?.bytes);
//! # Ok(())
//! # }
//! ```
//!
//! The frame and handshake layouts are in `docs/wire-protocol.md`.

pub mod apply;
mod backoff;
pub mod codec;
pub mod error;
pub mod frame;
pub mod peer;
pub mod ship;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;

pub use apply::{
    Applier, ApplyError, ApplyStats, ApplyTask, Change, DumpRow, KeyedOp, MemoryStateMachine, OpRole,
    ParallelApplier, ParallelConfig, SerialApplier, StateMachine, TxnAssembler,
};
pub use codec::{AutoConfig, Codec, CodecChoice, CodecStats, Compressor, Decompressor};
pub use error::{FrameError, RefuseCode, ShipError};
pub use frame::{Frame, FrameHeader, FrameKind};
pub use peer::{PeerConfig, PeerSender, PeerStatus, SendError, serve_messages};
pub use ship::{ShipConfig, ShipStatus, WalReceiver, WalShipper};
pub use transport::{Members, Security, Transport, TransportConfig};
