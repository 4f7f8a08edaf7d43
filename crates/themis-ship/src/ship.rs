//! WAL streaming: a [`WalShipper`] on the node that has the entries, a [`WalReceiver`] on
//! the node that needs them.
//!
//! The shipper dials; the receiver's welcome carries the last LSN it holds, and the
//! stream starts right after it, so a reconnect resumes with no gap and no duplicate.
//! Entries frames carry the WAL records exactly as they are on disk; the receiver checks
//! every record's CRC and LSN and appends them at the same LSNs, pipelined: it queues
//! each batch and acknowledges the highest durable LSN, batched per interval or per N
//! frames. The shipper keeps at most `max_in_flight_bytes` unacknowledged and sends
//! heartbeats when idle; either side gives up on a silent peer after `peer_timeout`.
//!
//! Payload layouts (inside frames, little-endian):
//!
//! ```text
//! entries   = first_lsn:u64 count:u32 record{count}      (records as in the WAL)
//! ack       = durable_lsn:u64
//! heartbeat = last_lsn:u64
//! segment   = the whole segment file
//! welcome   = last_lsn:u64                                (Purpose::Ship)
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use themis_clock::NodeId;
use themis_wal::record::CheckedRecords;
use themis_wal::segment::{self, OnBadRecord};
use themis_wal::{Lsn, LsnRange, Wal};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::{Backoff, check_timing};
use crate::codec::{CodecChoice, CodecStats, Compressor};
use crate::error::{FrameError, ShipError};
use crate::frame::{self, FrameKind};
use crate::transport::{Connection, FrameWriter, Incoming, Purpose, Transport};

/// Settings of shipping, on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipConfig {
    /// How entries frames are compressed (default LZ4).
    pub codec: CodecChoice,
    /// Bytes of records per entries frame (default 1 MiB).
    pub max_batch_bytes: usize,
    /// Bytes sent and not yet acknowledged before the shipper waits (default 16 MiB).
    pub max_in_flight_bytes: usize,
    /// Heartbeat period on an idle stream (default 100 ms).
    pub heartbeat_interval: Duration,
    /// A peer silent this long is dropped (default 1 s).
    pub peer_timeout: Duration,
    /// The receiver acknowledges at least this often while entries arrive (default 2 ms)…
    pub ack_interval: Duration,
    /// …or after this many frames, whichever comes first (default 8).
    pub ack_every_frames: u64,
    /// First reconnect delay (default 50 ms), doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 5 s). Each delay is jittered by ±25%.
    pub backoff_max: Duration,
    /// Entries frames a shipper reads and compresses at once, on blocking threads, ahead
    /// of the one it sends (default 3). With 1, or with no compression, frames are
    /// prepared one at a time on the stream's own task.
    pub compress_ahead: usize,
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            codec: CodecChoice::default(),
            max_batch_bytes: 1 << 20,
            max_in_flight_bytes: 16 << 20,
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(1),
            ack_interval: Duration::from_millis(2),
            ack_every_frames: 8,
            backoff_initial: Duration::from_millis(50),
            compress_ahead: 3,
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl ShipConfig {
    /// Checks every setting; the message names the setting and the value.
    pub fn validate(&self) -> Result<(), ShipError> {
        let bad = |m: String| Err(ShipError::Config(m));
        self.codec.validate().map_err(ShipError::Config)?;
        if self.max_batch_bytes < 4096 || self.max_batch_bytes > 64 << 20 {
            return bad(format!(
                "max_batch_bytes = {}: must be between 4 KiB and 64 MiB",
                self.max_batch_bytes
            ));
        }
        if self.max_in_flight_bytes < self.max_batch_bytes {
            return bad(format!(
                "max_in_flight_bytes = {}: must be at least max_batch_bytes ({})",
                self.max_in_flight_bytes, self.max_batch_bytes
            ));
        }
        check_timing(self.heartbeat_interval, self.peer_timeout, self.backoff_initial, self.backoff_max)?;
        if self.ack_interval.is_zero() || self.ack_interval >= self.peer_timeout {
            return bad(format!(
                "ack_interval = {:?}: must be above zero and below peer_timeout",
                self.ack_interval
            ));
        }
        if self.ack_every_frames == 0 {
            return bad("ack_every_frames = 0: must be at least 1".into());
        }
        if !(1..=64).contains(&self.compress_ahead) {
            return bad(format!("compress_ahead = {}: must be 1 to 64", self.compress_ahead));
        }
        Ok(())
    }
}

/// Encodes an entries payload from records read with [`Wal::read_raw`].
#[must_use]
pub fn encode_entries(range: LsnRange, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + records.len());
    out.put_u64_le(range.first);
    out.put_u32_le((range.last - range.first + 1) as u32);
    out.put_slice(records);
    out
}

/// Decodes an entries payload: every record's CRC is checked, LSNs must run from
/// `first_lsn` without a gap, and the count must match. The records stay as they were
/// encoded, for the follower's log to append as they are; `None` for a payload of no
/// records.
pub fn decode_entries(payload: &Bytes, max_record: usize) -> Result<Option<CheckedRecords>, FrameError> {
    let bad = |reason: String| FrameError::Payload { kind: "entries", reason };
    if payload.len() < 12 {
        return Err(bad(format!("{} bytes, shorter than the 12-byte prefix", payload.len())));
    }
    let first = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
    if payload.len() == 12 {
        return if count == 0 {
            Ok(None)
        } else {
            Err(bad(format!("no records where the prefix says {count}")))
        };
    }
    let records = CheckedRecords::check(payload.slice(12..), first, max_record)
        .map_err(|e| bad(format!("after the 12-byte prefix, {e}")))?;
    if records.len() != count {
        return Err(bad(format!("{} records where the prefix says {count}", records.len())));
    }
    Ok(Some(records))
}

fn lsn_payload(lsn: Lsn) -> [u8; 8] {
    lsn.to_le_bytes()
}

fn read_lsn(kind: &'static str, payload: &Bytes) -> Result<Lsn, FrameError> {
    let bytes: [u8; 8] = payload[..].try_into().map_err(|_| FrameError::Payload {
        kind,
        reason: format!("{} bytes where an 8-byte LSN belongs", payload.len()),
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Encoded entries frames shared by every stream of one WAL: a batch compressed for one
/// follower is sent to the others without compressing or copying it again. Frames are
/// read and compressed outside the cache's lock, each with a compressor from a pool, so
/// a shipper can prepare several at once.
#[derive(Debug)]
pub struct BatchCache {
    codec: CodecChoice,
    inner: Mutex<CacheInner>,
    /// Signalled when a frame being prepared is done (in the cache, or failed).
    prepared: std::sync::Condvar,
}

#[derive(Debug)]
struct CacheInner {
    by_first: HashMap<Lsn, (LsnRange, Bytes)>,
    order: VecDeque<Lsn>,
    capacity: usize,
    /// Compressors (with their scratch buffers) not in use.
    idle: Vec<(Compressor, Vec<u8>)>,
    /// Every compressor's work, added up.
    stats: CodecStats,
    hits: u64,
    /// Bumped by `invalidate_from`: a frame made from records read before it is not kept.
    epoch: u64,
    /// First LSNs of frames being read and compressed: a stream asking for one waits for
    /// it instead of compressing it again (followers in step ask for the same frames).
    preparing: std::collections::HashSet<Lsn>,
}

impl BatchCache {
    /// A cache of up to `capacity` frames compressed with `codec`.
    pub fn new(codec: CodecChoice, capacity: usize) -> Result<BatchCache, ShipError> {
        let compressor = Compressor::new(codec.clone()).map_err(ShipError::Config)?;
        Ok(BatchCache {
            codec,
            inner: Mutex::new(CacheInner {
                by_first: HashMap::new(),
                order: VecDeque::new(),
                capacity: capacity.max(1),
                idle: vec![(compressor, Vec::new())],
                stats: CodecStats::default(),
                hits: 0,
                epoch: 0,
                preparing: std::collections::HashSet::new(),
            }),
            prepared: std::sync::Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The frame for the records from `from` up to `last` (at most `max_bytes`), encoded
    /// once. A shipper passes its WAL's acknowledged LSN as `last`; a cached frame holds
    /// records that were acknowledged when it was made, and acknowledgement only grows
    /// (a suffix truncation calls [`invalidate_from`](Self::invalidate_from)).
    pub fn frame(
        &self,
        wal: &Wal,
        from: Lsn,
        last: Lsn,
        max_bytes: usize,
    ) -> Result<(LsnRange, Bytes), ShipError> {
        let (epoch, idle) = {
            let mut c = self.lock();
            loop {
                if let Some(hit) = c.by_first.get(&from).cloned() {
                    c.hits += 1;
                    return Ok(hit);
                }
                if !c.preparing.contains(&from) {
                    break;
                }
                c = self.prepared.wait(c).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            c.preparing.insert(from);
            let idle = c.idle.pop();
            (c.epoch, idle)
        };
        // Whatever happens from here on (an error, even a panic), waiters are released.
        let _preparing = Preparing { cache: self, from };
        // Another thread holds every compressor: this one adds one to the pool.
        let pair = match idle {
            Some(pair) => Ok(pair),
            None => Compressor::new(self.codec.clone()).map(|c| (c, Vec::new())).map_err(ShipError::Config),
        };
        let (mut compressor, mut scratch) = pair?;
        let made = wal.read_raw_upto(from, last, max_bytes).map(|raw| {
            let before = compressor.stats();
            let payload = encode_entries(raw.range, &raw.bytes);
            let frame = frame::encode(FrameKind::Entries, &payload, &mut compressor, &mut scratch);
            (raw.range, frame, before)
        });
        let mut c = self.lock();
        let result = match made {
            Ok((range, frame, before)) => {
                c.stats.add_since(&before, &compressor.stats());
                if c.epoch == epoch && !c.by_first.contains_key(&from) {
                    if c.order.len() >= c.capacity
                        && let Some(old) = c.order.pop_front()
                    {
                        c.by_first.remove(&old);
                    }
                    c.order.push_back(from);
                    c.by_first.insert(from, (range, frame.clone()));
                }
                Ok((range, frame))
            }
            Err(e) => Err(e.into()),
        };
        c.idle.push((compressor, scratch));
        result
    }

    /// Drops frames holding LSNs at or above `lsn` (after the WAL's suffix was truncated).
    pub fn invalidate_from(&self, lsn: Lsn) {
        let mut c = self.lock();
        c.epoch += 1;
        c.by_first.retain(|_, (range, _)| range.last < lsn);
        let CacheInner { order, by_first, .. } = &mut *c;
        order.retain(|first| by_first.contains_key(first));
    }

    /// Compression counters, and frames served from the cache.
    #[must_use]
    pub fn stats(&self) -> (CodecStats, u64) {
        let c = self.lock();
        (c.stats, c.hits)
    }
}

/// A frame being prepared by one thread; dropping it tells the others.
struct Preparing<'a> {
    cache: &'a BatchCache,
    from: Lsn,
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        self.cache.lock().preparing.remove(&self.from);
        self.cache.prepared.notify_all();
    }
}

/// What a shipper's stream to one follower is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipStatus {
    /// Whether a stream is up.
    pub connected: bool,
    /// The highest LSN sent.
    pub sent_lsn: Lsn,
    /// The highest LSN the follower reported durable.
    pub acked_lsn: Lsn,
    /// Connections made.
    pub connections: u64,
    /// Frame bytes sent.
    pub bytes_sent: u64,
    /// The last error that ended a stream.
    pub last_error: Option<String>,
}

/// Streams a WAL to followers; see the module docs.
#[derive(Debug, Clone)]
pub struct WalShipper {
    wal: Wal,
    transport: Transport,
    cache: Arc<BatchCache>,
    config: Arc<ShipConfig>,
}

impl WalShipper {
    /// A shipper of `wal` over `transport`.
    pub fn new(wal: Wal, transport: Transport, config: ShipConfig) -> Result<WalShipper, ShipError> {
        config.validate()?;
        let cache = Arc::new(BatchCache::new(config.codec.clone(), 64)?);
        Ok(WalShipper { wal, transport, cache, config: Arc::new(config) })
    }

    /// The shared frame cache (its statistics, or invalidation after a truncation).
    #[must_use]
    pub fn cache(&self) -> &Arc<BatchCache> {
        &self.cache
    }

    /// Streams to `follower` at `addr` until `shutdown` turns true, reconnecting after
    /// transient failures with exponential backoff and jitter; returns the first
    /// permanent failure. `status` is updated as the stream moves. `seed` drives the
    /// jitter, so a test can replay it.
    pub async fn run(
        &self,
        follower: NodeId,
        addr: SocketAddr,
        status: &watch::Sender<ShipStatus>,
        mut shutdown: watch::Receiver<bool>,
        seed: u64,
    ) -> Result<(), ShipError> {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max, seed);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let before = status.borrow().acked_lsn;
            let result = self.stream(follower, addr, status, shutdown.clone()).await;
            status.send_modify(|s| {
                s.connected = false;
                s.last_error = result.as_ref().err().map(ToString::to_string);
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => tracing::debug!(follower = follower.0, error = %e, "stream ended; reconnecting"),
            }
            if status.borrow().acked_lsn > before {
                // The stream made progress: start the backoff over.
                backoff.reset();
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One connection: handshake, then stream until an error or shutdown.
    pub async fn stream(
        &self,
        follower: NodeId,
        addr: SocketAddr,
        status: &watch::Sender<ShipStatus>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ShipError> {
        let (conn, welcome) = self.transport.connect(addr, follower, Purpose::Ship, Bytes::new()).await?;
        let follower_last =
            read_lsn("welcome", &welcome).map_err(|source| ShipError::Frame { peer: addr, source })?;
        let mut next = follower_last + 1;
        if next < self.wal.first_lsn() {
            return Err(ShipError::BehindRetention { peer: addr, needed: next, first: self.wal.first_lsn() });
        }
        if follower_last > self.wal.last_lsn() {
            return Err(ShipError::Protocol {
                peer: addr,
                reason: format!(
                    "the follower holds LSN {follower_last}, beyond this WAL's last {}",
                    self.wal.last_lsn()
                ),
            });
        }
        status.send_modify(|s| {
            s.connected = true;
            s.connections += 1;
            s.sent_lsn = follower_last;
            s.acked_lsn = follower_last;
        });
        let Connection { reader, mut writer, peer, .. } = conn;
        // Acknowledgements arrive on their own task, so the loop below can select on them.
        let (mut ack_rx, _stop_acks) = read_acks(reader, self.config.peer_timeout, follower_last);
        let mut in_flight: VecDeque<(Lsn, usize)> = VecDeque::new();
        let mut in_flight_bytes = 0usize;
        let mut acked = follower_last;
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + self.config.heartbeat_interval,
            self.config.heartbeat_interval,
        );
        let mut sent_since_tick = false;
        loop {
            let room = in_flight_bytes < self.config.max_in_flight_bytes;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        let _ = writer.shutdown().await;
                        return Ok(());
                    }
                }
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        return Err(ShipError::Closed { peer });
                    }
                    let lsn = match &*ack_rx.borrow_and_update() {
                        Ok(lsn) => *lsn,
                        Err(reason) => return Err(ShipError::Protocol { peer, reason: reason.clone() }),
                    };
                    if lsn < acked || lsn > status.borrow().sent_lsn {
                        return Err(ShipError::Protocol { peer, reason: format!("acknowledged LSN {lsn} outside {acked}..={}", status.borrow().sent_lsn) });
                    }
                    acked = lsn;
                    while in_flight.front().is_some_and(|&(last, _)| last <= acked) {
                        in_flight_bytes -= in_flight.pop_front().map_or(0, |(_, n)| n);
                    }
                    status.send_modify(|s| s.acked_lsn = acked);
                }
                durable = self.wal.acknowledged_async(next), if room => {
                    durable?;
                    next = self.send_acknowledged(&mut writer, peer, next, &mut in_flight, &mut in_flight_bytes).await?;
                    writer.flush().await?;
                    sent_since_tick = true;
                    let bytes = writer.bytes();
                    status.send_modify(|s| {
                        s.sent_lsn = next - 1;
                        s.bytes_sent = bytes;
                    });
                }
                _ = heartbeat.tick() => {
                    if !sent_since_tick {
                        writer.send(&frame::encode_plain(FrameKind::Heartbeat, &lsn_payload(self.wal.acknowledged_lsn()))).await?;
                    }
                    sent_since_tick = false;
                }
            }
        }
    }

    /// Sends what the WAL has acknowledged from `next` on, in frames of up to
    /// `max_batch_bytes`, while the window has room; returns the next LSN to send. The
    /// caller flushes once for the lot.
    ///
    /// Only acknowledged records go out: a frame read up to the written LSN could carry
    /// records that a crash of this node then loses, which the follower would keep. The
    /// next frames are planned from the index, and read and compressed on blocking
    /// threads, `compress_ahead` at once, while this task sends them in order.
    async fn send_acknowledged(
        &self,
        writer: &mut FrameWriter,
        peer: SocketAddr,
        mut next: Lsn,
        in_flight: &mut VecDeque<(Lsn, usize)>,
        in_flight_bytes: &mut usize,
    ) -> Result<Lsn, ShipError> {
        let acknowledged = self.wal.acknowledged_lsn();
        let max = self.config.max_batch_bytes;
        // With nothing to overlap, a hop to a blocking thread per frame only costs: frames
        // are then prepared one at a time on this task.
        let inline =
            self.config.compress_ahead == 1 || self.config.codec == CodecChoice::Fixed(crate::Codec::None);
        let mut preparing = VecDeque::new();
        // The window is planned with raw sizes, an upper bound of what the frames take.
        let (mut plan, mut planned_bytes) = (next, *in_flight_bytes);
        loop {
            let (range, frame) = if inline {
                if next > acknowledged || *in_flight_bytes >= self.config.max_in_flight_bytes {
                    return Ok(next);
                }
                self.cache.frame(&self.wal, next, acknowledged, max)?
            } else {
                while preparing.len() < self.config.compress_ahead
                    && plan <= acknowledged
                    && planned_bytes < self.config.max_in_flight_bytes
                {
                    let (range, raw_bytes) = self.wal.raw_extent(plan, acknowledged, max)?;
                    let (cache, wal) = (Arc::clone(&self.cache), self.wal.clone());
                    preparing.push_back(tokio::task::spawn_blocking(move || {
                        cache.frame(&wal, range.first, acknowledged, max)
                    }));
                    planned_bytes += raw_bytes;
                    plan = range.last + 1;
                }
                let Some(job) = preparing.pop_front() else { return Ok(next) };
                match job.await {
                    Ok(prepared) => prepared?,
                    // A panic while preparing is a bug: it goes on up, not into a retry.
                    // Cancelled means the runtime is shutting down.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return Err(ShipError::Closed { peer }),
                }
            };
            writer.write(&frame).await?;
            in_flight.push_back((range.last, frame.len()));
            *in_flight_bytes += frame.len();
            next = range.last + 1;
        }
    }

    /// Sends one whole sealed segment to `follower`, whose WAL must end right before the
    /// segment's first LSN, and waits until the follower acknowledges all of it.
    pub async fn ship_segment(
        &self,
        path: &Path,
        follower: NodeId,
        addr: SocketAddr,
    ) -> Result<LsnRange, ShipError> {
        let file =
            std::fs::read(path).map_err(|source| ShipError::Io { op: "read segment", peer: addr, source })?;
        let file = Bytes::from(file);
        let range = segment_records(&file, self.wal.config().max_record_bytes)
            .map_err(|e| ShipError::Config(format!("{}: {e}", path.display())))?
            .range();
        if file.len() > self.transport.config().max_frame {
            return Err(ShipError::Config(format!(
                "{}: {} bytes do not fit in a frame of at most {} (max_frame)",
                path.display(),
                file.len(),
                self.transport.config().max_frame
            )));
        }
        let (conn, welcome) = self.transport.connect(addr, follower, Purpose::Ship, Bytes::new()).await?;
        let Connection { mut reader, mut writer, peer, .. } = conn;
        let last = read_lsn("welcome", &welcome).map_err(|source| ShipError::Frame { peer, source })?;
        if last + 1 != range.first {
            return Err(ShipError::Gap { expected: last + 1, got: range.first });
        }
        let mut compressor = Compressor::new(self.config.codec.clone()).map_err(ShipError::Config)?;
        writer.send(&frame::encode(FrameKind::Segment, &file, &mut compressor, &mut Vec::new())).await?;
        loop {
            let frame = tokio::time::timeout(self.config.peer_timeout * 10, reader.recv()).await.map_err(
                |_| ShipError::Timeout {
                    peer,
                    what: "segment acknowledgement",
                    millis: 10 * self.config.peer_timeout.as_millis() as u64,
                },
            )??;
            if frame.kind == FrameKind::Ack
                && read_lsn("ack", &frame.payload).map_err(|source| ShipError::Frame { peer, source })?
                    >= range.last
            {
                let _ = writer.shutdown().await;
                return Ok(range);
            }
        }
    }
}

/// The receiver's latest acknowledged LSN, or why its stream broke.
type AckWatch = watch::Receiver<Result<Lsn, String>>;

/// Reads the receiver's frames on a task of their own and publishes each acknowledged LSN,
/// or why the stream broke.
fn read_acks(
    mut reader: crate::transport::FrameReader,
    peer_timeout: Duration,
    initial: Lsn,
) -> (AckWatch, AbortOnDrop<()>) {
    let (ack_tx, ack_rx) = watch::channel(Ok(initial));
    let task = tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(peer_timeout, reader.recv()).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    let _ = ack_tx.send(Err(e.to_string()));
                    return;
                }
                Err(_) => {
                    let _ =
                        ack_tx.send(Err(format!("no acknowledgement or heartbeat within {peer_timeout:?}")));
                    return;
                }
            };
            match frame.kind {
                FrameKind::Ack => match read_lsn("ack", &frame.payload) {
                    Ok(lsn) => {
                        if ack_tx.send(Ok(lsn)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = ack_tx.send(Err(e.to_string()));
                        return;
                    }
                },
                FrameKind::Heartbeat => {}
                other => {
                    let _ = ack_tx.send(Err(format!("unexpected {other:?} frame from the receiver")));
                    return;
                }
            }
        }
    });
    (ack_rx, AbortOnDrop(task))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a receiver has taken in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Frames received.
    pub frames: u64,
    /// Entries appended.
    pub entries: u64,
    /// Bytes received on the wire.
    pub bytes: u64,
}

/// Appends shipped entries to a local WAL; see the module docs.
#[derive(Debug, Clone)]
pub struct WalReceiver {
    wal: Wal,
    config: Arc<ShipConfig>,
}

impl WalReceiver {
    /// A receiver into `wal`.
    pub fn new(wal: Wal, config: ShipConfig) -> Result<WalReceiver, ShipError> {
        config.validate()?;
        Ok(WalReceiver { wal, config: Arc::new(config) })
    }

    /// Serves one accepted connection (its hello must be for [`Purpose::Ship`]) until the
    /// shipper closes it or it fails. Entries are appended at the LSNs they carry: a gap
    /// or a duplicate is an error and nothing of that frame is appended.
    pub async fn serve(&self, incoming: Incoming) -> Result<ReceiveStats, ShipError> {
        if incoming.hello.purpose != Purpose::Ship {
            let reason = format!("this endpoint receives WAL streams, not {:?}", incoming.hello.purpose);
            incoming.refuse(crate::error::RefuseCode::Unavailable, &reason).await?;
            return Err(ShipError::Config(reason));
        }
        let last = self.wal.next_lsn() - 1;
        let conn = incoming.welcome(&lsn_payload(last)).await?;
        let Connection { mut reader, writer, peer, .. } = conn;
        let mut next = last + 1;
        let mut stats = ReceiveStats::default();
        let (frames_tx, frames_rx) = watch::channel(0u64);
        let acker =
            tokio::spawn(acknowledge(self.wal.clone(), writer, Arc::clone(&self.config), last, frames_rx));
        let _stop_acker = AbortOnDrop(acker);
        let max_record = self.wal.config().max_record_bytes;
        loop {
            let frame = match tokio::time::timeout(self.config.peer_timeout, reader.recv()).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(ShipError::Closed { .. })) => return Ok(stats),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(ShipError::Timeout {
                        peer,
                        what: "frame",
                        millis: self.config.peer_timeout.as_millis() as u64,
                    });
                }
            };
            stats.frames += 1;
            stats.bytes = reader.bytes();
            let records = match frame.kind {
                FrameKind::Entries => decode_entries(&frame.payload, max_record)
                    .map_err(|source| ShipError::Frame { peer, source })?,
                FrameKind::Segment => Some(
                    segment_records(&frame.payload, max_record)
                        .map_err(|source| ShipError::Frame { peer, source })?,
                ),
                FrameKind::Heartbeat => continue,
                other => {
                    return Err(ShipError::Protocol {
                        peer,
                        reason: format!("unexpected {other:?} frame from the shipper"),
                    });
                }
            };
            let Some(records) = records else { continue };
            let first = records.range().first;
            if first != next {
                return Err(ShipError::Gap { expected: next, got: first });
            }
            // Checked above; appended as they are, not decoded and encoded again.
            let range = self.wal.submit_checked_async(&records).await?;
            next = range.last + 1;
            stats.entries += records.len() as u64;
            frames_tx.send_modify(|n| *n += 1);
        }
    }
}

/// The records of a whole segment file shipped in one frame, checked.
fn segment_records(file: &Bytes, max_record: usize) -> Result<CheckedRecords, FrameError> {
    let bad = |reason: String| FrameError::Payload { kind: "segment", reason };
    let scan = segment::scan(file, max_record, OnBadRecord::Stop).map_err(bad)?;
    if let Some(stop) = scan.stopped {
        return Err(bad(format!("damaged at offset {}: {}", stop.offset, stop.reason)));
    }
    let records = file.slice(segment::HEADER_LEN..scan.valid_len as usize);
    CheckedRecords::check(records, scan.header.first_lsn, max_record).map_err(|e| bad(e.to_string()))
}

/// The receiver's acknowledging task: sends the acknowledged LSN (durable under
/// `FsyncPolicy::Always`, written under the others) when it advances, batched per
/// `ack_interval` or `ack_every_frames`, and heartbeats when idle.
async fn acknowledge(
    wal: Wal,
    mut writer: FrameWriter,
    config: Arc<ShipConfig>,
    mut acked: Lsn,
    mut frames: watch::Receiver<u64>,
) -> Result<(), ShipError> {
    let mut frames_at_ack = 0;
    let mut last_send = Instant::now();
    loop {
        tokio::select! {
            durable = wal.acknowledged_async(acked + 1) => {
                durable?;
                // Batch: wait until the interval has passed or enough frames arrived.
                let due = last_send + config.ack_interval;
                while Instant::now() < due && *frames.borrow() - frames_at_ack < config.ack_every_frames {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        _ = frames.changed() => {}
                    }
                }
                acked = wal.acknowledged_lsn();
                frames_at_ack = *frames.borrow();
                writer.send(&frame::encode_plain(FrameKind::Ack, &lsn_payload(acked))).await?;
                last_send = Instant::now();
            }
            () = tokio::time::sleep_until(last_send + config.heartbeat_interval) => {
                writer.send(&frame::encode_plain(FrameKind::Heartbeat, &lsn_payload(acked))).await?;
                last_send = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_wal::{NewEntry, record};

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn cached_frames_hold_no_record_above_the_bound_they_were_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), themis_wal::WalConfig::default()).unwrap();
        let entries: Vec<NewEntry> =
            (0..10u8).map(|i| NewEntry::data(themis_clock::Timestamp::ZERO, vec![i; 100])).collect();
        wal.append(&entries).unwrap();
        let cache = BatchCache::new(CodecChoice::Fixed(crate::Codec::Lz4), 4).unwrap();
        let (range, frame) = cache.frame(&wal, 1, 4, 1 << 20).unwrap();
        assert_eq!(range, LsnRange { first: 1, last: 4 });
        let (decoded, _) = frame::decode(&frame, 1 << 20, &mut crate::Decompressor::new()).unwrap().unwrap();
        assert_eq!(decode_entries(&decoded.payload, 1 << 20).unwrap().unwrap().range(), range);
        // The next frame starts after it; a later, larger bound does not stretch a cached frame.
        assert_eq!(cache.frame(&wal, 5, 10, 1 << 20).unwrap().0, LsnRange { first: 5, last: 10 });
        assert_eq!(cache.frame(&wal, 1, 10, 1 << 20).unwrap(), (range, frame));
        assert!(cache.frame(&wal, 6, 5, 1 << 20).is_err(), "nothing to send below the bound");
        wal.close().unwrap();
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn streams_asking_for_one_frame_at_once_compress_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), themis_wal::WalConfig::default()).unwrap();
        let entries: Vec<NewEntry> = (0..2000u32)
            .map(|i| NewEntry::data(themis_clock::Timestamp::ZERO, format!("{{\"n\":{i}}}")))
            .collect();
        wal.append(&entries).unwrap();
        let cache = Arc::new(BatchCache::new(CodecChoice::Fixed(crate::Codec::Lz4), 16).unwrap());
        for round in 0..20u64 {
            let from = 1 + round * 100;
            let frames: Vec<_> = (0..4)
                .map(|_| {
                    let (cache, wal) = (Arc::clone(&cache), wal.clone());
                    std::thread::spawn(move || cache.frame(&wal, from, from + 99, 1 << 20).unwrap())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            assert!(frames.iter().all(|f| *f == frames[0]), "one frame for one position");
        }
        let (stats, hits) = cache.stats();
        assert_eq!((stats.batches, hits), (20, 60), "each frame compressed once, then served");
        assert!(stats.bytes_in > stats.bytes_out && stats.last == Some(crate::Codec::Lz4), "{stats:?}");
        // After a truncation, frames made before it are gone and are made again.
        cache.invalidate_from(1);
        cache.frame(&wal, 1, 100, 1 << 20).unwrap();
        assert_eq!(cache.stats().0.batches, 21);
        wal.close().unwrap();
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn bad_settings_name_themselves() {
        let ok = ShipConfig::default();
        ok.validate().unwrap();
        for (config, needle) in [
            (ShipConfig { max_batch_bytes: 10, ..ok.clone() }, "max_batch_bytes = 10"),
            (ShipConfig { max_in_flight_bytes: 4096, ..ok.clone() }, "max_in_flight_bytes = 4096"),
            (ShipConfig { heartbeat_interval: Duration::from_secs(2), ..ok.clone() }, "heartbeat_interval"),
            (ShipConfig { ack_every_frames: 0, ..ok.clone() }, "ack_every_frames = 0"),
            (ShipConfig { compress_ahead: 0, ..ok.clone() }, "compress_ahead = 0"),
            (ShipConfig { compress_ahead: 65, ..ok.clone() }, "compress_ahead = 65"),
            (
                ShipConfig {
                    codec: CodecChoice::Fixed(crate::codec::Codec::Zstd { level: 30 }),
                    ..ok.clone()
                },
                "zstd level 30",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn entries_payloads_are_checked() {
        let mut records = Vec::new();
        let entry = |lsn: u64| {
            NewEntry::data(
                themis_clock::Timestamp::from_parts(lsn, 0, NodeId(1)).unwrap(),
                Bytes::from(vec![lsn as u8; 40]),
            )
        };
        for lsn in 5..=7 {
            record::encode(&mut records, lsn, &entry(lsn));
        }
        let good = Bytes::from(encode_entries(LsnRange { first: 5, last: 7 }, &records));
        let checked = decode_entries(&good, 1 << 20).unwrap().unwrap();
        assert_eq!(checked.range(), LsnRange { first: 5, last: 7 });
        assert_eq!(checked.entries().iter().map(|e| e.lsn).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(&checked.bytes()[..], &records[..], "the records as they were encoded");
        let mut empty = 8u64.to_le_bytes().to_vec();
        empty.extend(0u32.to_le_bytes());
        assert!(decode_entries(&Bytes::from(empty.clone()), 1 << 20).unwrap().is_none());
        empty[8] = 1;
        assert!(decode_entries(&Bytes::from(empty), 1 << 20).is_err(), "a count with no records");
        // Wrong first LSN, wrong count, a flipped payload bit, a cut: all errors.
        let mut wrong_first = good.to_vec();
        wrong_first[0] = 4;
        let mut wrong_count = good.to_vec();
        wrong_count[8] = 2;
        let mut flipped = good.to_vec();
        flipped[60] ^= 1;
        for bad in [wrong_first, wrong_count, flipped, good[..good.len() - 1].to_vec(), good[..5].to_vec()] {
            assert!(decode_entries(&Bytes::from(bad), 1 << 20).is_err());
        }
    }
}
