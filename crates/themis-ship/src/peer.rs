//! Per-peer message links for the layer above (Raft): a bounded send queue per peer, drained
//! by a task that keeps one authenticated connection (purpose `Raft`) open, reconnecting with
//! exponential backoff and jitter, pipelining frames, and sending heartbeats so a dead peer
//! is noticed within `peer_timeout`. Messages are opaque `Message` frame payloads.
//!
//! A message queued while the link is down waits in the queue; messages written to a
//! connection that then breaks are lost, which the layer above tolerates (Raft resends).
//! The queue is bounded in messages and bytes: `try_send` refuses when full, so a slow or
//! dead peer costs bounded memory and the caller decides what to drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use themis_clock::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backoff::{Backoff, check_timing};
use crate::codec::{CodecChoice, Compressor};
use crate::error::ShipError;
use crate::frame::{self, FrameKind};
use crate::transport::{Connection, Incoming, Purpose, Transport};

/// Settings of a peer link.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Messages queued per peer before `try_send` refuses (default 4096).
    pub max_queue_msgs: usize,
    /// Payload bytes queued per peer before `try_send` refuses (default 64 MiB).
    pub max_queue_bytes: u64,
    /// Frames written before a flush while the queue has more (default 64): pipelining.
    pub max_frames_per_flush: usize,
    /// How message frames are compressed (default LZ4 above 1 KiB).
    pub codec: CodecChoice,
    /// Heartbeat period on an idle link (default 100 ms).
    pub heartbeat_interval: Duration,
    /// A peer silent this long is reconnected (default 1 s).
    pub peer_timeout: Duration,
    /// First reconnect delay (default 50 ms), doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 1 s, about one election timeout: a restarted node
    /// hears from the leader within it, instead of sitting unaware of the leader while
    /// the leader's link waits out a long backoff). Each delay is jittered by ±25%.
    pub backoff_max: Duration,
    /// Bytes sent in every hello on this link (the layer above introduces itself: Raft
    /// sends its vote public key). Default empty; at most 4 KiB.
    pub hello_extra: Bytes,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            max_queue_msgs: 4096,
            max_queue_bytes: 64 << 20,
            max_frames_per_flush: 64,
            codec: CodecChoice::default(),
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            hello_extra: Bytes::new(),
        }
    }
}

impl PeerConfig {
    /// Checks every setting; the message names the setting and the value.
    pub fn validate(&self) -> Result<(), ShipError> {
        let bad = |m: String| Err(ShipError::Config(m));
        self.codec.validate().map_err(ShipError::Config)?;
        if self.max_queue_msgs == 0 || self.max_queue_bytes == 0 {
            return bad(format!(
                "max_queue_msgs = {}, max_queue_bytes = {}: both must be at least 1",
                self.max_queue_msgs, self.max_queue_bytes
            ));
        }
        if self.hello_extra.len() > 4096 {
            return bad(format!("hello_extra is {} bytes: at most 4096", self.hello_extra.len()));
        }
        if self.max_frames_per_flush == 0 {
            return bad("max_frames_per_flush = 0: must be at least 1".into());
        }
        check_timing(self.heartbeat_interval, self.peer_timeout, self.backoff_initial, self.backoff_max)
    }
}

/// What a link has done, for status and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Whether a connection is up.
    pub connected: bool,
    /// Messages written to a connection.
    pub sent_msgs: u64,
    /// Message payload bytes written, before compression.
    pub payload_bytes: u64,
    /// Frame bytes written (headers included, after compression): what crossed the link.
    pub wire_bytes: u64,
    /// Connections made (the first and every reconnect).
    pub connects: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The queue is at its bound: the peer is slow or unreachable.
    #[error("the queue to node {peer} is full ({msgs} messages, {bytes} bytes)")]
    Full {
        /// The peer.
        peer: NodeId,
        /// Messages queued.
        msgs: usize,
        /// Bytes queued.
        bytes: u64,
    },
    /// The link's task has ended (closed, or failed permanently).
    #[error("the link to node {peer} is closed")]
    Closed {
        /// The peer.
        peer: NodeId,
    },
}

/// The sending end of a link to one peer.
#[derive(Debug)]
pub struct PeerSender {
    peer: NodeId,
    tx: mpsc::Sender<Bytes>,
    /// Dropped with the sender: tells the task to stop even while it backs off.
    _alive: watch::Sender<()>,
    queued_bytes: Arc<AtomicU64>,
    max_queue_bytes: u64,
    status: watch::Receiver<PeerStatus>,
}

impl PeerSender {
    /// Starts the link to `peer` at `addr` on the current tokio runtime. `seed` drives the
    /// backoff jitter. The task ends when every `PeerSender` is dropped or the peer fails
    /// permanently (authentication, version); its result says which.
    pub fn spawn(
        transport: Transport,
        peer: NodeId,
        addr: SocketAddr,
        config: PeerConfig,
        seed: u64,
    ) -> Result<(PeerSender, tokio::task::JoinHandle<Result<(), ShipError>>), ShipError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.max_queue_msgs);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let (status_tx, status) = watch::channel(PeerStatus::default());
        let max_queue_bytes = config.max_queue_bytes;
        let (alive, alive_rx) = watch::channel(());
        let link = Link {
            transport,
            peer,
            addr,
            config,
            rx,
            queued_bytes: queued_bytes.clone(),
            status: status_tx,
            alive: alive_rx,
        };
        let task = tokio::spawn(link.run(seed));
        Ok((PeerSender { peer, tx, _alive: alive, queued_bytes, max_queue_bytes, status }, task))
    }

    /// Queues `payload` without waiting; refuses when the queue is full.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        let len = payload.len() as u64;
        // Reserve first, then check: two threads sending at once cannot both slip under
        // the bound. An empty queue takes any one message, however large.
        let queued = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if queued > 0 && queued + len > self.max_queue_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Full { peer: self.peer, msgs: self.queued_msgs(), bytes: queued });
        }
        self.tx.try_send(payload).map_err(|err| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match err {
                mpsc::error::TrySendError::Full(_) => {
                    SendError::Full { peer: self.peer, msgs: self.queued_msgs(), bytes: queued }
                }
                mpsc::error::TrySendError::Closed(_) => SendError::Closed { peer: self.peer },
            }
        })
    }

    /// The peer this link goes to.
    #[must_use]
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Whether the link's task has ended (closed, or the peer failed permanently): nothing
    /// sent now would go anywhere.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn queued_msgs(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The link's status now.
    #[must_use]
    pub fn status(&self) -> PeerStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<PeerStatus> {
        self.status.clone()
    }
}

struct Link {
    transport: Transport,
    peer: NodeId,
    addr: SocketAddr,
    config: PeerConfig,
    rx: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicU64>,
    status: watch::Sender<PeerStatus>,
    alive: watch::Receiver<()>,
}

/// How a connection ended.
enum Ended {
    /// Every sender is gone.
    Closed,
    /// The connection failed; reconnect unless permanent.
    Failed(ShipError),
}

impl Link {
    async fn run(mut self, seed: u64) -> Result<(), ShipError> {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max, seed);
        loop {
            let sent_before = self.status.borrow().sent_msgs;
            let ended = match self
                .transport
                .connect(self.addr, self.peer, Purpose::Raft, self.config.hello_extra.clone())
                .await
            {
                Ok((conn, _)) => {
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.connects += 1;
                    });
                    self.pump(conn).await
                }
                Err(err) => Ended::Failed(err),
            };
            self.status.send_modify(|s| s.connected = false);
            match ended {
                Ended::Closed => return Ok(()),
                Ended::Failed(err) => {
                    self.status.send_modify(|s| s.last_error = Some(err.to_string()));
                    if err.is_permanent() {
                        tracing::warn!(peer = %self.peer, error = %err, "peer link failed permanently");
                        return Err(err);
                    }
                    tracing::debug!(peer = %self.peer, error = %err, "peer link down; reconnecting");
                }
            }
            if self.status.borrow().sent_msgs > sent_before {
                // The link made progress: start the backoff over.
                backoff.reset();
            }
            // Wait out the backoff; if the sender is dropped meanwhile, stop.
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                changed = self.alive.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }

    /// Drains the queue into one connection until it fails or every sender is gone.
    async fn pump(&mut self, conn: Connection) -> Ended {
        let Connection { mut reader, mut writer, peer, .. } = conn;
        // The reader runs on its own (its `recv` is not cancel-safe); it reports when it
        // last heard from the peer, and ends with the connection.
        let heard = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let reader_heard = heard.clone();
        let reader_task = tokio::spawn(async move {
            loop {
                match reader.recv().await {
                    Ok(frame) if frame.kind == FrameKind::Heartbeat => {
                        reader_heard.store(started.elapsed().as_millis() as u64, Ordering::Release);
                    }
                    Ok(frame) => {
                        return ShipError::Protocol {
                            peer,
                            reason: format!("unexpected {:?} frame on a message link", frame.kind),
                        };
                    }
                    Err(err) => return err,
                }
            }
        });
        let result = self.write_loop(&mut writer, &heard, started).await;
        reader_task.abort();
        let _ = writer.shutdown().await;
        result
    }

    async fn write_loop(
        &mut self,
        writer: &mut crate::transport::FrameWriter,
        heard: &AtomicU64,
        started: Instant,
    ) -> Ended {
        let mut compressor = match Compressor::new(self.config.codec.clone()) {
            Ok(c) => c,
            Err(reason) => return Ended::Failed(ShipError::Config(reason)),
        };
        let mut scratch = Vec::new();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout_ms = self.config.peer_timeout.as_millis() as u64;
        loop {
            tokio::select! {
                message = self.rx.recv() => {
                    let Some(first) = message else { return Ended::Closed };
                    let mut batch = vec![first];
                    while batch.len() < self.config.max_frames_per_flush {
                        match self.rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let count = batch.len() as u64;
                    let (mut payload_bytes, mut wire_bytes) = (0, 0);
                    for payload in batch {
                        self.queued_bytes.fetch_sub(payload.len() as u64, Ordering::AcqRel);
                        let frame = frame::encode(FrameKind::Message, &payload, &mut compressor, &mut scratch);
                        if let Err(err) = writer.write(&frame).await {
                            return Ended::Failed(err);
                        }
                        payload_bytes += payload.len() as u64;
                        wire_bytes += frame.len() as u64;
                    }
                    if let Err(err) = writer.flush().await {
                        return Ended::Failed(err);
                    }
                    self.status.send_modify(|s| {
                        s.sent_msgs += count;
                        s.payload_bytes += payload_bytes;
                        s.wire_bytes += wire_bytes;
                    });
                }
                _ = heartbeat.tick() => {
                    let now_ms = started.elapsed().as_millis() as u64;
                    if now_ms > timeout_ms && now_ms - heard.load(Ordering::Acquire) > timeout_ms {
                        return Ended::Failed(ShipError::Timeout {
                            peer: self.addr,
                            what: "heartbeat from the peer",
                            millis: timeout_ms,
                        });
                    }
                    if let Err(err) = writer.send(&frame::encode_plain(FrameKind::Heartbeat, &[])).await {
                        return Ended::Failed(err);
                    }
                }
            }
        }
    }
}

/// Serves one accepted message link (purpose `Raft`): welcomes it, then hands every
/// message to `deliver` as (sender, payload), answering heartbeats, until the peer goes
/// away (`Ok`) or breaks the protocol. Waits when `deliver` is full (backpressure reaches
/// the sender's queue through TCP).
pub async fn serve_messages(
    incoming: Incoming,
    deliver: mpsc::Sender<(NodeId, Bytes)>,
    config: &PeerConfig,
) -> Result<(), ShipError> {
    if incoming.hello.purpose != Purpose::Raft {
        let purpose = incoming.hello.purpose;
        let node = incoming.hello.node;
        incoming
            .refuse(crate::error::RefuseCode::Unavailable, "this listener takes message links only")
            .await?;
        return Err(ShipError::Config(format!(
            "node {node} opened a {purpose:?} link on a message listener"
        )));
    }
    let conn = incoming.welcome(&[]).await?;
    let Connection { mut reader, mut writer, peer, peer_node } = conn;
    loop {
        let frame = match tokio::time::timeout(config.peer_timeout, reader.recv()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(ShipError::Closed { .. })) => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(ShipError::Timeout {
                    peer,
                    what: "frame from the peer",
                    millis: config.peer_timeout.as_millis() as u64,
                });
            }
        };
        match frame.kind {
            FrameKind::Message => {
                if deliver.send((peer_node, frame.payload)).await.is_err() {
                    return Ok(());
                }
            }
            FrameKind::Heartbeat => writer.send(&frame::encode_plain(FrameKind::Heartbeat, &[])).await?,
            other => {
                return Err(ShipError::Protocol {
                    peer,
                    reason: format!("unexpected {other:?} frame on a message link"),
                });
            }
        }
    }
}
