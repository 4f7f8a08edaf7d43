//! Connections between nodes: TCP, TLS 1.3 with mutual authentication, framed messages,
//! and the hello / welcome handshake.
//!
//! The dialer opens TCP, runs TLS asking for the name `node-<id>.themis` of the node it
//! means to reach, and sends a `Hello` (protocol version, cluster, its node id, purpose,
//! and purpose-specific bytes). The acceptor reads the dialer's node id from its client
//! certificate, checks that the hello names the same id, the same cluster, a protocol it
//! speaks and a current member, and answers `Welcome` (with its own purpose-specific
//! bytes, such as the LSN to resume from) or `Refuse` with a code and a reason.
//!
//! A plaintext dialer that meets a TLS node is told so in a plaintext `Refuse`; a TLS
//! dialer that meets a plaintext node sees a non-TLS answer. Both sides report a typed
//! error naming the peer.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rustls_pki_types::CertificateDer;
use themis_clock::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::codec::Decompressor;
use crate::error::{FrameError, RefuseCode, ShipError};
use crate::frame::{self, Frame, FrameHeader, FrameKind, HEADER_LEN, MAGIC};
#[cfg(feature = "tls")]
use crate::tls::TlsConfig;

/// The handshake protocol version.
pub const PROTOCOL_VERSION: u16 = 1;

/// What a connection is for; the acceptor routes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Purpose {
    /// WAL streaming: the dialer ships, the acceptor receives.
    Ship = 1,
    /// Raft messages.
    Raft = 2,
}

impl Purpose {
    fn from_u8(b: u8) -> Result<Purpose, FrameError> {
        match b {
            1 => Ok(Purpose::Ship),
            2 => Ok(Purpose::Raft),
            other => Err(payload_err("hello", format!("unknown purpose {other}"))),
        }
    }
}

fn payload_err(kind: &'static str, reason: String) -> FrameError {
    FrameError::Payload { kind, reason }
}

/// The dialer's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Its protocol version.
    pub protocol: u16,
    /// The cluster it belongs to.
    pub cluster: String,
    /// Its node id.
    pub node: NodeId,
    /// What the connection is for.
    pub purpose: Purpose,
    /// Purpose-specific bytes.
    pub extra: Bytes,
}

impl Hello {
    /// `protocol:u16 node:u64 purpose:u8 cluster_len:u16 cluster extra…`. A cluster name
    /// longer than a `u16` can count is an error, not a truncation.
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        let len = u16::try_from(self.cluster.len()).map_err(|_| {
            payload_err("hello", format!("cluster name of {} bytes exceeds 65535", self.cluster.len()))
        })?;
        let mut out = BytesMut::with_capacity(13 + self.cluster.len() + self.extra.len());
        out.put_u16_le(self.protocol);
        out.put_u64_le(self.node.0);
        out.put_u8(self.purpose as u8);
        out.put_u16_le(len);
        out.put_slice(self.cluster.as_bytes());
        out.put_slice(&self.extra);
        Ok(out.freeze())
    }

    /// Decodes a hello payload.
    pub fn decode(payload: &Bytes) -> Result<Hello, FrameError> {
        let bad = |reason: &str| payload_err("hello", reason.to_owned());
        if payload.len() < 13 {
            return Err(bad("shorter than 13 bytes"));
        }
        let protocol = u16::from_le_bytes([payload[0], payload[1]]);
        let node = NodeId(u64::from_le_bytes(payload[2..10].try_into().expect("8 bytes")));
        let purpose = Purpose::from_u8(payload[10])?;
        let len = usize::from(u16::from_le_bytes([payload[11], payload[12]]));
        let cluster = payload.get(13..13 + len).ok_or_else(|| bad("cluster name truncated"))?;
        let cluster = std::str::from_utf8(cluster).map_err(|_| bad("cluster name is not UTF-8"))?.to_owned();
        Ok(Hello { protocol, cluster, node, purpose, extra: payload.slice(13 + len..) })
    }
}

fn encode_welcome(node: NodeId, extra: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + extra.len());
    out.put_u16_le(PROTOCOL_VERSION);
    out.put_u64_le(node.0);
    out.put_slice(extra);
    out.freeze()
}

fn decode_welcome(payload: &Bytes) -> Result<(u16, NodeId, Bytes), FrameError> {
    if payload.len() < 10 {
        return Err(payload_err("welcome", "shorter than 10 bytes".into()));
    }
    let protocol = u16::from_le_bytes([payload[0], payload[1]]);
    let node = NodeId(u64::from_le_bytes(payload[2..10].try_into().expect("8 bytes")));
    Ok((protocol, node, payload.slice(10..)))
}

fn encode_refuse(code: RefuseCode, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(1024)];
    let mut out = BytesMut::with_capacity(2 + reason.len());
    out.put_u16_le(code as u16);
    out.put_slice(reason);
    out.freeze()
}

fn decode_refuse(payload: &Bytes) -> (RefuseCode, String) {
    if payload.len() < 2 {
        return (RefuseCode::Other, "malformed refusal".into());
    }
    let code = RefuseCode::from_u16(u16::from_le_bytes([payload[0], payload[1]]));
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

/// How nodes protect their connections.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS 1.3 with the cluster CA (the default and the only safe choice; cargo
    /// feature `tls`).
    #[cfg(feature = "tls")]
    Tls(TlsConfig),
    /// No encryption and no authentication: `insecure_plaintext = true`, for tests on
    /// one machine only. A warning is logged when a transport starts this way.
    InsecurePlaintext,
}

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster name; hellos from other clusters are refused.
    pub cluster: String,
    /// This node's id (with TLS it must be the id in the certificate).
    pub node: NodeId,
    /// TLS or plaintext.
    pub security: Security,
    /// The largest frame payload accepted (default 64 MiB).
    pub max_frame: usize,
    /// TCP connect timeout (default 3 s).
    pub connect_timeout: Duration,
    /// TLS plus hello / welcome timeout (default 5 s).
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    /// Defaults for `cluster`, `node` and `security`.
    #[must_use]
    pub fn new(cluster: impl Into<String>, node: NodeId, security: Security) -> TransportConfig {
        TransportConfig {
            cluster: cluster.into(),
            node,
            security,
            max_frame: frame::DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Checks every setting; the message names the setting and the value.
    pub fn validate(&self) -> Result<(), ShipError> {
        let bad = |m: String| Err(ShipError::Config(m));
        if self.cluster.is_empty() || self.cluster.len() > 255 {
            return bad(format!("cluster = {:?}: must be 1 to 255 bytes", self.cluster));
        }
        if !(64 << 10..=1 << 30).contains(&self.max_frame) {
            return bad(format!("max_frame = {}: must be between 64 KiB and 1 GiB", self.max_frame));
        }
        for (name, d) in
            [("connect_timeout", self.connect_timeout), ("handshake_timeout", self.handshake_timeout)]
        {
            if d.is_zero() {
                return bad(format!("{name} = 0: must be above zero"));
            }
        }
        #[cfg(feature = "tls")]
        if let Security::Tls(tls) = &self.security
            && tls.node() != self.node
        {
            return bad(format!("node = {}: the certificate is for node {}", self.node.0, tls.node().0));
        }
        Ok(())
    }
}

/// The set of node ids allowed to connect; shared and updated as membership changes.
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<RwLock<BTreeSet<NodeId>>>);

impl Members {
    /// A set holding `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Members {
        Members(Arc::new(RwLock::new(nodes.into_iter().collect())))
    }

    /// Admits a node.
    pub fn add(&self, node: NodeId) {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node);
    }

    /// Removes a node; its new connections are refused.
    pub fn remove(&self, node: NodeId) {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&node);
    }

    /// Whether `node` may connect.
    #[must_use]
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&node)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// Maps a socket error, telling TLS failures (wrapped by tokio-rustls) apart.
fn io_error(op: &'static str, peer: SocketAddr, e: io::Error) -> ShipError {
    #[cfg(feature = "tls")]
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return tls_error(peer, tls);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            ShipError::Closed { peer }
        }
        _ => ShipError::Io { op, peer, source: e },
    }
}

#[cfg(feature = "tls")]
fn tls_error(peer: SocketAddr, e: &rustls::Error) -> ShipError {
    match e {
        // Records that are not TLS at all: the peer speaks plaintext.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            ShipError::PlaintextPeer { peer }
        }
        // A record that fails its MAC was damaged in transit: retry on a new connection.
        rustls::Error::DecryptError
        | rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
            | rustls::AlertDescription::DecryptError
            | rustls::AlertDescription::DecodeError,
        ) => ShipError::Tls { peer, reason: e.to_string(), permanent: false },
        other => ShipError::Tls { peer, reason: other.to_string(), permanent: true },
    }
}

/// Reads frames from one side of a connection.
pub struct FrameReader {
    io: ReadHalf<BoxIo>,
    peer: SocketAddr,
    max_frame: usize,
    plaintext: bool,
    decompressor: Decompressor,
    /// Bytes received, frames included.
    bytes: u64,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("peer", &self.peer)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    /// The next frame, checked and decompressed. Not cancel-safe: run it in its own task
    /// rather than in a `select!` that may drop it.
    pub async fn recv(&mut self) -> Result<Frame, ShipError> {
        let peer = self.peer;
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            let n = self.io.read(&mut header[filled..]).await.map_err(|e| io_error("read", peer, e))?;
            if n == 0 {
                return Err(if filled == 0 {
                    ShipError::Closed { peer }
                } else {
                    self.bad_start(&header[..filled])
                });
            }
            filled += n;
            if header[..filled.min(4)] != MAGIC[..filled.min(4)] {
                return Err(self.bad_start(&header[..filled]));
            }
        }
        let frame_err = |source| ShipError::Frame { peer, source };
        let h = FrameHeader::decode(&header, self.max_frame).map_err(frame_err)?;
        let mut wire = BytesMut::zeroed(h.wire_len);
        self.io.read_exact(&mut wire).await.map_err(|e| io_error("read", peer, e))?;
        let frame = frame::finish(&header, &h, wire.freeze(), &mut self.decompressor).map_err(frame_err)?;
        self.bytes += h.frame_len() as u64;
        Ok(frame)
    }

    /// The first bytes are not a frame: TLS from a TLS peer, or another protocol.
    fn bad_start(&self, start: &[u8]) -> ShipError {
        // TLS records start with a content type of 20 to 23 and a major version of 3.
        if self.plaintext && (20..=23).contains(&start[0]) && start.get(1).is_none_or(|&b| b == 3) {
            return ShipError::TlsPeer { peer: self.peer };
        }
        let mut magic = [0; 4];
        let n = start.len().min(4);
        magic[..n].copy_from_slice(&start[..n]);
        ShipError::Frame { peer: self.peer, source: FrameError::BadMagic(magic) }
    }

    /// Bytes received so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Bytes of small frames gathered before they go to the socket: the frames written
/// between two flushes leave in one TLS record and one system call (under TLS every
/// unbuffered write is a record and a `writev` of its own). Larger frames bypass it.
const WRITE_BUFFER: usize = 64 * 1024;

/// Writes frames to one side of a connection.
pub struct FrameWriter {
    io: tokio::io::BufWriter<WriteHalf<BoxIo>>,
    peer: SocketAddr,
    bytes: u64,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("peer", &self.peer)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl FrameWriter {
    /// Writes an encoded frame without flushing (pipelining); call [`flush`](Self::flush).
    pub async fn write(&mut self, frame: &Bytes) -> Result<(), ShipError> {
        self.io.write_all(frame).await.map_err(|e| io_error("write", self.peer, e))?;
        self.bytes += frame.len() as u64;
        Ok(())
    }

    /// Pushes written frames onto the wire.
    pub async fn flush(&mut self) -> Result<(), ShipError> {
        self.io.flush().await.map_err(|e| io_error("flush", self.peer, e))
    }

    /// Writes and flushes one frame.
    pub async fn send(&mut self, frame: &Bytes) -> Result<(), ShipError> {
        self.write(frame).await?;
        self.flush().await
    }

    /// Closes the sending side.
    pub async fn shutdown(&mut self) -> Result<(), ShipError> {
        self.io.shutdown().await.map_err(|e| io_error("shutdown", self.peer, e))
    }

    /// Bytes sent so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// An authenticated connection to another node, after the handshake.
#[derive(Debug)]
pub struct Connection {
    /// The receiving half.
    pub reader: FrameReader,
    /// The sending half.
    pub writer: FrameWriter,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's node id (from its certificate under TLS).
    pub peer_node: NodeId,
}

impl Connection {
    fn new(io: BoxIo, peer: SocketAddr, peer_node: NodeId, max_frame: usize, plaintext: bool) -> Connection {
        let (r, w) = tokio::io::split(io);
        Connection {
            reader: FrameReader {
                io: r,
                peer,
                max_frame,
                plaintext,
                decompressor: Decompressor::new(),
                bytes: 0,
            },
            writer: FrameWriter { io: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, w), peer, bytes: 0 },
            peer,
            peer_node,
        }
    }
}

/// Dials and accepts connections for one node.
#[derive(Debug, Clone)]
pub struct Transport {
    config: Arc<TransportConfig>,
    members: Members,
}

async fn timed<T>(
    limit: Duration,
    peer: SocketAddr,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, ShipError>>,
) -> Result<T, ShipError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(ShipError::Timeout {
            peer,
            what,
            millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

impl Transport {
    /// A transport for this node; `members` are the nodes allowed to connect.
    pub fn new(config: TransportConfig, members: Members) -> Result<Transport, ShipError> {
        config.validate()?;
        if matches!(config.security, Security::InsecurePlaintext) {
            tracing::warn!(
                node = config.node.0,
                "insecure_plaintext = true: replication traffic is neither encrypted nor authenticated"
            );
        }
        Ok(Transport { config: Arc::new(config), members })
    }

    /// This node's settings.
    #[must_use]
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// The nodes allowed to connect.
    #[must_use]
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Listens on `addr` (port 0 picks a free port).
    pub async fn bind(&self, addr: SocketAddr) -> Result<Listener, ShipError> {
        let tcp = TcpListener::bind(addr).await.map_err(|source| ShipError::Io {
            op: "bind",
            peer: addr,
            source,
        })?;
        Ok(Listener { tcp, transport: self.clone() })
    }

    /// Connects to node `expect` at `addr` for `purpose`, sending `extra` in the hello.
    /// Returns the connection and the welcome's extra bytes.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expect: NodeId,
        purpose: Purpose,
        extra: Bytes,
    ) -> Result<(Connection, Bytes), ShipError> {
        let c = &self.config;
        let tcp = timed(c.connect_timeout, addr, "TCP connection", async {
            TcpStream::connect(addr).await.map_err(|source| ShipError::Io {
                op: "connect",
                peer: addr,
                source,
            })
        })
        .await?;
        tcp.set_nodelay(true).map_err(|source| ShipError::Io {
            op: "set TCP_NODELAY",
            peer: addr,
            source,
        })?;
        timed(c.handshake_timeout, addr, "handshake", async {
            let (io, plaintext): (BoxIo, bool) = match &c.security {
                #[cfg(feature = "tls")]
                Security::Tls(tls) => {
                    let stream = tls
                        .connector()
                        .connect(TlsConfig::server_name(expect), tcp)
                        .await
                        .map_err(|e| io_error("TLS handshake", addr, e))?;
                    (Box::new(stream), false)
                }
                Security::InsecurePlaintext => (Box::new(tcp), true),
            };
            let mut conn = Connection::new(io, addr, expect, c.max_frame, plaintext);
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                cluster: c.cluster.clone(),
                node: c.node,
                purpose,
                extra,
            };
            let hello = hello.encode().map_err(|e| ShipError::Config(e.to_string()))?;
            conn.writer.send(&frame::encode_plain(FrameKind::Hello, &hello)).await?;
            let answer = conn.reader.recv().await?;
            match answer.kind {
                FrameKind::Welcome => {
                    let (_, node, extra) = decode_welcome(&answer.payload)
                        .map_err(|source| ShipError::Frame { peer: addr, source })?;
                    if node != expect {
                        return Err(ShipError::UnknownNode {
                            peer: addr,
                            reason: format!("expected node {}, reached node {}", expect.0, node.0),
                        });
                    }
                    Ok((conn, extra))
                }
                FrameKind::Refuse => {
                    let (code, reason) = decode_refuse(&answer.payload);
                    if code == RefuseCode::TlsRequired {
                        return Err(ShipError::TlsPeer { peer: addr });
                    }
                    Err(ShipError::Refused { peer: addr, code, reason })
                }
                other => Err(ShipError::Protocol {
                    peer: addr,
                    reason: format!("expected a welcome, got {other:?}"),
                }),
            }
        })
        .await
    }
}

/// A bound listener; see [`Transport::bind`].
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    transport: Transport,
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, ShipError> {
        self.tcp.local_addr().map_err(|source| ShipError::Io {
            op: "local address",
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// Waits for a TCP connection. Run its [`Pending::handshake`] in its own task, so a
    /// slow peer cannot hold up the next accept.
    pub async fn accept(&self) -> Result<Pending, ShipError> {
        let (tcp, peer) = self.tcp.accept().await.map_err(|source| ShipError::Io {
            op: "accept",
            peer: self.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })?;
        tcp.set_nodelay(true).map_err(|source| ShipError::Io { op: "set TCP_NODELAY", peer, source })?;
        Ok(Pending { tcp, peer, transport: self.transport.clone() })
    }
}

/// An accepted TCP connection before its handshake.
#[derive(Debug)]
pub struct Pending {
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
}

impl Pending {
    /// The peer's address.
    #[must_use]
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Runs TLS and reads the hello, checking protocol, cluster, identity and membership.
    /// A refused peer is told why before the error is returned.
    #[cfg_attr(
        not(feature = "tls"),
        allow(clippy::unnecessary_literal_unwrap, reason = "without TLS no certificate names a node")
    )]
    pub async fn handshake(self) -> Result<Incoming, ShipError> {
        let Pending { tcp, peer, transport } = self;
        let c = Arc::clone(&transport.config);
        timed(c.handshake_timeout, peer, "handshake", async move {
            let (io, certificate, plaintext): (BoxIo, Option<CertificateDer<'static>>, bool) = match &c
                .security
            {
                #[cfg(feature = "tls")]
                Security::Tls(tls) => {
                    let mut first = [0u8; 4];
                    let n = tcp.peek(&mut first).await.map_err(|e| io_error("read", peer, e))?;
                    if n > 0 && first[..n] == MAGIC[..n] {
                        // A plaintext hello: say so in plaintext, then fail.
                        let mut tcp = tcp;
                        let refuse = encode_refuse(RefuseCode::TlsRequired, "this node requires TLS 1.3");
                        let _ = tcp.write_all(&frame::encode_plain(FrameKind::Refuse, &refuse)).await;
                        return Err(ShipError::PlaintextPeer { peer });
                    }
                    let stream =
                        tls.acceptor().accept(tcp).await.map_err(|e| io_error("TLS handshake", peer, e))?;
                    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                    let cert = cert.ok_or_else(|| ShipError::UnknownNode {
                        peer,
                        reason: "no client certificate".into(),
                    })?;
                    (Box::new(stream), Some(cert), false)
                }
                Security::InsecurePlaintext => (Box::new(tcp), None, true),
            };
            #[cfg(feature = "tls")]
            let cert_node = match &certificate {
                Some(cert) => Some(
                    crate::tls::node_id_of(cert).map_err(|reason| ShipError::UnknownNode { peer, reason })?,
                ),
                None => None,
            };
            #[cfg(not(feature = "tls"))]
            let cert_node: Option<NodeId> = None;
            let mut conn = Connection::new(io, peer, NodeId(0), c.max_frame, plaintext);
            let first = conn.reader.recv().await?;
            if first.kind != FrameKind::Hello {
                return Err(ShipError::Protocol {
                    peer,
                    reason: format!("expected a hello, got {:?}", first.kind),
                });
            }
            let hello = Hello::decode(&first.payload).map_err(|source| ShipError::Frame { peer, source })?;
            let refusal = if hello.protocol != PROTOCOL_VERSION {
                Some((
                    RefuseCode::Version,
                    format!("protocol {} is not spoken here (only {PROTOCOL_VERSION})", hello.protocol),
                ))
            } else if hello.cluster != c.cluster {
                Some((
                    RefuseCode::Cluster,
                    format!("this is cluster {:?}, not {:?}", c.cluster, hello.cluster),
                ))
            } else if cert_node.is_some_and(|n| n != hello.node) {
                let cert = cert_node.unwrap_or(NodeId(0));
                Some((
                    RefuseCode::Identity,
                    format!("the hello says node {}, the certificate node {}", hello.node.0, cert.0),
                ))
            } else if !transport.members.contains(hello.node) {
                Some((
                    RefuseCode::UnknownNode,
                    format!("node {} is not a member of cluster {:?}", hello.node.0, c.cluster),
                ))
            } else {
                None
            };
            if let Some((code, reason)) = refusal {
                let _ = conn
                    .writer
                    .send(&frame::encode_plain(FrameKind::Refuse, &encode_refuse(code, &reason)))
                    .await;
                return Err(match code {
                    RefuseCode::UnknownNode | RefuseCode::Identity => ShipError::UnknownNode { peer, reason },
                    _ => ShipError::Refused { peer, code, reason },
                });
            }
            conn.peer_node = hello.node;
            Ok(Incoming { conn, hello, certificate, node: c.node })
        })
        .await
    }
}

/// A connection whose hello was accepted, waiting for the application to welcome or refuse
/// it.
#[derive(Debug)]
pub struct Incoming {
    conn: Connection,
    /// The dialer's hello.
    pub hello: Hello,
    /// The dialer's certificate, verified against the cluster CA and naming the node the
    /// hello names (`None` under `InsecurePlaintext`).
    pub certificate: Option<CertificateDer<'static>>,
    node: NodeId,
}

impl Incoming {
    /// Answers with a welcome carrying `extra` and returns the connection.
    pub async fn welcome(mut self, extra: &[u8]) -> Result<Connection, ShipError> {
        self.conn
            .writer
            .send(&frame::encode_plain(FrameKind::Welcome, &encode_welcome(self.node, extra)))
            .await?;
        Ok(self.conn)
    }

    /// Answers with a refusal and closes.
    pub async fn refuse(mut self, code: RefuseCode, reason: &str) -> Result<(), ShipError> {
        self.conn.writer.send(&frame::encode_plain(FrameKind::Refuse, &encode_refuse(code, reason))).await?;
        self.conn.writer.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_bad_ones_are_errors() {
        let hello = Hello {
            protocol: 1,
            cluster: "prod".into(),
            node: NodeId(3),
            purpose: Purpose::Ship,
            extra: Bytes::from_static(b"xyz"),
        };
        assert_eq!(Hello::decode(&hello.encode().unwrap()).unwrap(), hello);
        let bytes = hello.encode().unwrap();
        for cut in 0..13 + 4 {
            assert!(Hello::decode(&bytes.slice(..cut)).is_err(), "cut {cut}");
        }
        let mut bad = bytes.to_vec();
        bad[10] = 9;
        assert!(Hello::decode(&Bytes::from(bad)).unwrap_err().to_string().contains("unknown purpose 9"));
        let long = Hello { cluster: "x".repeat(70_000), ..hello };
        assert!(long.encode().unwrap_err().to_string().contains("70000 bytes"));
    }

    #[test]
    fn configuration_is_validated() {
        let ok = TransportConfig::new("c", NodeId(1), Security::InsecurePlaintext);
        ok.validate().unwrap();
        let bad = [
            (TransportConfig { cluster: String::new(), ..ok.clone() }, "cluster"),
            (TransportConfig { max_frame: 10, ..ok.clone() }, "max_frame = 10"),
            (TransportConfig { connect_timeout: Duration::ZERO, ..ok.clone() }, "connect_timeout"),
        ];
        for (config, needle) in bad {
            assert!(config.validate().unwrap_err().to_string().contains(needle), "{needle}");
        }
        #[cfg(feature = "tls")]
        {
            let ca = crate::tls::generate_ca("c").unwrap();
            let cert = crate::tls::issue_node_cert(&ca, NodeId(2), &[]).unwrap();
            let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key).unwrap();
            let err = TransportConfig::new("c", NodeId(1), Security::Tls(tls)).validate().unwrap_err();
            assert!(err.to_string().contains("certificate is for node 2"), "{err}");
        }
    }
}
