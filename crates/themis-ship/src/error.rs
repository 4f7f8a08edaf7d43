//! Errors of framing, transport, shipping and applying.

use std::io;
use std::net::SocketAddr;

use themis_wal::{Lsn, WalError};

use crate::codec::Codec;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The bytes do not start with the frame magic (another protocol, or TLS).
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// A frame version this build does not speak.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// An unknown codec byte.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// Flags this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// Reserved header bytes are not zero.
    #[error("reserved frame header bytes are not zero")]
    Reserved,
    /// A length above the receiver's maximum frame size.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The payload does not match its CRC32C.
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The frame names a codec this build leaves out (a cargo feature of themis-ship).
    #[error(
        "the frame is compressed with {codec}, which this build leaves out (cargo feature `{feature}` of themis-ship)"
    )]
    CodecNotBuilt {
        /// The codec named by the header.
        codec: Codec,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
    /// The payload did not decompress.
    #[error("{codec} payload does not decompress: {reason}")]
    Decompress {
        /// The codec named by the header.
        codec: Codec,
        /// What the codec said.
        reason: String,
    },
    /// The decompressed payload's length differs from the header's.
    #[error("payload length {actual} differs from the declared {declared}")]
    LengthMismatch {
        /// The length in the header.
        declared: usize,
        /// The length found.
        actual: usize,
    },
    /// A payload that does not hold what its kind requires.
    #[error("bad {kind} payload: {reason}")]
    Payload {
        /// The frame kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A code a node sends with a refusal, so the other side can tell a permanent failure
/// from a transient one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RefuseCode {
    /// The protocol versions do not overlap.
    Version = 1,
    /// The hello names another cluster.
    Cluster = 2,
    /// The node is not a member.
    UnknownNode = 3,
    /// The node id in the hello differs from the certificate's.
    Identity = 4,
    /// The request cannot be served (for example, an LSN the WAL no longer holds).
    Unavailable = 5,
    /// The dialer sent plaintext to a node that requires TLS.
    TlsRequired = 6,
    /// A code this build does not know.
    Other = 0xffff,
}

impl RefuseCode {
    /// The code for a wire value.
    #[must_use]
    pub fn from_u16(value: u16) -> RefuseCode {
        match value {
            1 => RefuseCode::Version,
            2 => RefuseCode::Cluster,
            3 => RefuseCode::UnknownNode,
            4 => RefuseCode::Identity,
            5 => RefuseCode::Unavailable,
            6 => RefuseCode::TlsRequired,
            _ => RefuseCode::Other,
        }
    }
}

/// An error of the transport, the shipper or the receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// A socket operation failed.
    #[error("{op} {peer}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The peer's address.
        peer: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake or a TLS record failed.
    #[error("TLS with {peer}: {reason}")]
    Tls {
        /// The peer's address.
        peer: SocketAddr,
        /// What rustls said.
        reason: String,
        /// Whether it is about trust (certificates, versions), which retrying cannot fix,
        /// rather than a damaged record.
        permanent: bool,
    },
    /// A plaintext peer reached a node that requires TLS.
    #[error(
        "{peer} speaks plaintext, but this node requires TLS 1.3 (set insecure_plaintext only on both sides)"
    )]
    PlaintextPeer {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// This node is in plaintext mode and the peer speaks TLS.
    #[error("{peer} requires TLS, but this node runs with insecure_plaintext = true")]
    TlsPeer {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A frame from the peer was invalid.
    #[error("bad frame from {peer}: {source}")]
    Frame {
        /// The peer's address.
        peer: SocketAddr,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The peer refused the connection.
    #[error("{peer} refused the connection ({code:?}): {reason}")]
    Refused {
        /// The peer's address.
        peer: SocketAddr,
        /// Why, as a code.
        code: RefuseCode,
        /// Why, in words.
        reason: String,
    },
    /// A peer's certificate is valid but names no node id, or an id that is not a member.
    #[error("peer {peer} is not a member: {reason}")]
    UnknownNode {
        /// The peer's address.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The peer broke the protocol (an unexpected frame, an LSN out of order).
    #[error("protocol violation by {peer}: {reason}")]
    Protocol {
        /// The peer's address.
        peer: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// Nothing arrived within the timeout.
    #[error("{peer}: no {what} within {millis} ms")]
    Timeout {
        /// The peer's address.
        peer: SocketAddr,
        /// What was awaited.
        what: &'static str,
        /// The timeout.
        millis: u64,
    },
    /// The peer closed the connection.
    #[error("{peer} closed the connection")]
    Closed {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// The follower needs entries the WAL no longer holds: it needs a snapshot first.
    #[error("{peer} needs LSN {needed}, but this WAL starts at {first}")]
    BehindRetention {
        /// The follower's address.
        peer: SocketAddr,
        /// The LSN it needs next.
        needed: Lsn,
        /// The first LSN held.
        first: Lsn,
    },
    /// A shipped range is not where the WAL can take it.
    #[error("received LSN {got} where {expected} was expected")]
    Gap {
        /// The LSN the receiver needed next.
        expected: Lsn,
        /// The LSN that arrived.
        got: Lsn,
    },
    /// The local WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Bad configuration; the message names the setting and the value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificates could not be made, read or used.
    #[error("certificate: {0}")]
    Certificate(String),
}

impl ShipError {
    /// Whether retrying cannot help: authentication, identity, version and configuration
    /// failures are permanent; I/O, timeouts, closed connections and corrupt frames are not.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        match self {
            ShipError::Tls { permanent, .. } => *permanent,
            ShipError::PlaintextPeer { .. }
            | ShipError::BehindRetention { .. }
            | ShipError::TlsPeer { .. }
            | ShipError::UnknownNode { .. }
            | ShipError::Config(_)
            | ShipError::Certificate(_) => true,
            ShipError::Refused { code, .. } => *code != RefuseCode::Unavailable,
            ShipError::Frame { source, .. } => {
                matches!(source, FrameError::UnsupportedVersion(_) | FrameError::BadMagic(_))
            }
            ShipError::Io { .. }
            | ShipError::Protocol { .. }
            | ShipError::Timeout { .. }
            | ShipError::Closed { .. }
            | ShipError::Gap { .. } => false,
            ShipError::Wal(e) => matches!(e, WalError::Closed(_) | WalError::Config(_)),
        }
    }
}
