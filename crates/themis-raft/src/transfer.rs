//! Snapshots in bounded chunks: the sender's window over a snapshot it holds in memory,
//! and the receiver's part file, written as chunks arrive and verified whole before the
//! core sees the snapshot.
//!
//! The core emits a snapshot as one message; the driver never sends it as one. It sends
//! [`SnapshotChunk`]s of at most `snapshot_chunk_bytes`, a window of them ahead of what the
//! receiver has answered, and the receiver answers each with the number of leading bytes it
//! holds ([`SnapshotAck`]). Each chunk carries its own CRC32C (checked on decoding) and the
//! snapshot's id carries the CRC32C of the whole, checked when the last byte is on disk. The
//! receiver's file survives a restart, and the sender always goes on from the receiver's
//! answer, so a transfer cut by a lost link or by either side's crash resumes instead of
//! starting over (a new leader resumes it too, when it sends the same snapshot).
//!
//! The part file (`incoming-snapshot.part` in the Raft directory):
//!
//! ```text
//! magic "THSNAPRX" | version u32 = 1 | lsn u64 | term u64 | total u64 | crc u32
//!   | meta_len u32 | meta (postcard SnapshotMeta) | header_crc u32 (CRC32C of all before)
//!   | data: the snapshot's leading bytes, as received
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_clock::NodeId;

use crate::types::{Snapshot, SnapshotMeta};
use crate::wire::{SnapshotAck, SnapshotChunk, SnapshotId};

/// The receiver's file, in the Raft directory.
pub const PART_FILE: &str = "incoming-snapshot.part";
const MAGIC: &[u8; 8] = b"THSNAPRX";
const VERSION: u32 = 1;
/// The least time between two rewinds on answers that do not move (so the duplicates a
/// rewind sends do not each cause another).
const REWIND_GAP: Duration = Duration::from_millis(100);

/// The CRC32C of a snapshot's data: what its [`SnapshotId`] carries.
#[must_use]
pub fn snapshot_id(snapshot: &Snapshot) -> SnapshotId {
    SnapshotId {
        lsn: snapshot.meta.lsn,
        term: snapshot.meta.term,
        total: snapshot.data.len() as u64,
        crc: crc32c::crc32c(&snapshot.data),
    }
}

/// One snapshot on its way to one follower.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: SnapshotId,
    meta: SnapshotMeta,
    data: Bytes,
    /// Bytes the receiver said it holds.
    pub(crate) acked: u64,
    /// The next byte to send.
    next: u64,
    /// When the receiver last answered with progress (or the transfer started).
    progress_at: Instant,
    /// When chunks were last sent from `acked` again.
    resent_at: Instant,
}

/// What [`Outgoing::ack`] makes of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// The receiver holds the whole snapshot, verified.
    Done,
    /// More to send.
    Going,
    /// An answer about another snapshot (an earlier transfer); ignored.
    Stale,
}

impl Outgoing {
    pub(crate) fn new(snapshot: &Snapshot, id: SnapshotId, now: Instant) -> Outgoing {
        Outgoing {
            id,
            meta: snapshot.meta.clone(),
            data: snapshot.data.clone(),
            acked: 0,
            next: 0,
            progress_at: now,
            resent_at: now,
        }
    }

    /// The next chunk to send, if the window (`window` chunks of `chunk` bytes past what is
    /// answered) has room; advances past it.
    pub(crate) fn next_chunk(
        &mut self,
        from: NodeId,
        to: NodeId,
        term: u64,
        chunk: usize,
        window: usize,
    ) -> Option<SnapshotChunk> {
        let total = self.id.total;
        let limit = self.acked.saturating_add((chunk * window) as u64);
        if self.next >= total || self.next >= limit {
            return None;
        }
        let start = self.next as usize;
        let end = (start + chunk).min(total as usize);
        self.next = end as u64;
        Some(SnapshotChunk {
            from,
            to,
            term,
            id: self.id,
            meta: self.meta.clone(),
            offset: start as u64,
            data: self.data.slice(start..end),
        })
    }

    /// A chunk from `offset` could not be sent (the link's queue is full): it goes next.
    pub(crate) fn unsend(&mut self, offset: u64) {
        self.next = self.next.min(offset);
    }

    /// Takes the receiver's answer. The sender goes on from what the receiver holds,
    /// also when that is less than before (it restarted and lost part of its file).
    pub(crate) fn ack(&mut self, ack: &SnapshotAck, now: Instant) -> AckOutcome {
        if ack.id != self.id {
            return AckOutcome::Stale;
        }
        if ack.received >= self.id.total {
            return AckOutcome::Done;
        }
        let received = ack.received;
        if received > self.acked {
            self.progress_at = now;
        } else if received < self.acked {
            // The receiver lost what it held (a restart, a checksum failure): start again
            // from what it has.
            self.progress_at = now;
            self.next = received;
        } else if self.next > received && now.duration_since(self.resent_at) >= REWIND_GAP {
            // An answer that does not move: a chunk before this one was lost (with a link);
            // the ones in flight after it are not written, so send again from the gap.
            self.next = received;
            self.resent_at = now;
        }
        self.acked = received;
        self.next = self.next.max(received);
        AckOutcome::Going
    }

    /// When no answer has moved the transfer for `resend_after`, sends again from what the
    /// receiver last said it holds (chunks or answers were lost with a link).
    pub(crate) fn maybe_rewind(&mut self, now: Instant, resend_after: Duration) -> bool {
        let quiet = now.duration_since(self.progress_at.max(self.resent_at));
        if quiet >= resend_after && self.next > self.acked {
            self.next = self.acked;
            self.resent_at = now;
            return true;
        }
        false
    }

    /// Whether nothing has moved the transfer for `limit` (the receiver is gone).
    pub(crate) fn stalled(&self, now: Instant, limit: Duration) -> bool {
        now.duration_since(self.progress_at) >= limit
    }
}

/// A chunk's result at the receiver.
#[derive(Debug)]
pub(crate) struct Received {
    /// The answer to send back.
    pub(crate) ack: SnapshotAck,
    /// The whole snapshot, verified, once its last chunk arrived.
    pub(crate) complete: Option<Snapshot>,
    /// Bytes a transfer found already on disk when it resumed after a restart.
    pub(crate) resumed: u64,
}

/// Where a snapshot being received is held.
#[derive(Debug)]
enum Sink {
    /// The part file (resumable after a restart).
    File(File),
    /// Memory, for a store without a staging directory.
    Memory(Vec<u8>),
}

/// The snapshot being received.
#[derive(Debug)]
struct Part {
    id: SnapshotId,
    meta: SnapshotMeta,
    sink: Sink,
    header_len: u64,
    written: u64,
    /// CRC32C of the `written` bytes.
    crc: u32,
    /// Bytes loaded from disk at start, not yet reported as resumed.
    loaded: u64,
}

/// The receiving side: at most one snapshot at a time (a chunk of another snapshot
/// replaces it: the newest sender's snapshot wins).
#[derive(Debug)]
pub(crate) struct Receiver {
    me: NodeId,
    /// The part file; `None` holds snapshots in memory.
    path: Option<PathBuf>,
    part: Option<Part>,
}

fn encode_header(id: &SnapshotId, meta: &SnapshotMeta) -> Vec<u8> {
    // Encoding plain integers and sets into a Vec cannot fail.
    let meta = postcard::to_allocvec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(48 + meta.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for word in [id.lsn, id.term, id.total] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&id.crc.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a part file's header; `Err` says why it is unusable.
fn read_header(file: &mut File) -> Result<(SnapshotId, SnapshotMeta, u64), String> {
    let mut fixed = [0u8; 8 + 4 + 8 * 3 + 4 + 4];
    file.read_exact(&mut fixed).map_err(|e| format!("header: {e}"))?;
    if &fixed[..8] != MAGIC {
        return Err("not a snapshot part file".into());
    }
    let word = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
    if half(8) != VERSION {
        return Err(format!("version {}", half(8)));
    }
    let id = SnapshotId { lsn: word(12), term: word(20), total: word(28), crc: half(36) };
    let meta_len = half(40) as usize;
    if meta_len > 1 << 20 {
        return Err(format!("metadata of {meta_len} bytes"));
    }
    let mut rest = vec![0u8; meta_len + 4];
    file.read_exact(&mut rest).map_err(|e| format!("header: {e}"))?;
    let stored = u32::from_le_bytes(rest[meta_len..].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &rest[..meta_len]);
    if stored != crc {
        return Err("header checksum mismatch".into());
    }
    let meta: SnapshotMeta = postcard::from_bytes(&rest[..meta_len]).map_err(|e| format!("metadata: {e}"))?;
    Ok((id, meta, (fixed.len() + meta_len + 4) as u64))
}

impl Receiver {
    /// The receiver for node `me` with its part file in `dir`, resuming the part file a
    /// previous run left if it is intact (anything unusable is removed, with a warning).
    /// Without a directory, snapshots are received in memory.
    pub(crate) fn open(me: NodeId, dir: Option<&Path>) -> Receiver {
        let mut receiver = Receiver { me, path: dir.map(|d| d.join(PART_FILE)), part: None };
        let Some(path) = receiver.path.clone() else { return receiver };
        match Receiver::load(&path) {
            Ok(Some(part)) => {
                tracing::info!(node = %me, lsn = part.id.lsn, held = part.written, total = part.id.total, "resuming a snapshot transfer from its part file");
                receiver.part = Some(part);
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(node = %me, path = %path.display(), %reason, "an unusable snapshot part file is removed");
                let _ = fs::remove_file(&path);
            }
        }
        receiver
    }

    fn load(path: &Path) -> Result<Option<Part>, String> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let (id, meta, header_len) = read_header(&mut file)?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        // A crash may leave more than was ever answered, never more than the snapshot.
        let written = (len - header_len.min(len)).min(id.total);
        file.set_len(header_len + written).map_err(|e| e.to_string())?;
        let mut crc = 0;
        let mut left = written;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            left -= n as u64;
        }
        Ok(Some(Part { id, meta, sink: Sink::File(file), header_len, written, crc, loaded: written }))
    }

    /// What the receiver holds: the snapshot and its bytes so far.
    #[cfg(test)]
    pub(crate) fn progress(&self) -> Option<(SnapshotId, u64)> {
        self.part.as_ref().map(|p| (p.id, p.written))
    }

    fn start(&mut self, chunk: &SnapshotChunk) -> io::Result<()> {
        self.part = None;
        let (sink, header_len) = match &self.path {
            Some(path) => {
                let header = encode_header(&chunk.id, &chunk.meta);
                let mut file =
                    OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
                file.write_all(&header)?;
                (Sink::File(file), header.len() as u64)
            }
            // Grown as chunks arrive: the total is the sender's claim, not yet checked.
            None => (Sink::Memory(Vec::new()), 0),
        };
        self.part = Some(Part {
            id: chunk.id,
            meta: chunk.meta.clone(),
            sink,
            header_len,
            written: 0,
            crc: 0,
            loaded: 0,
        });
        Ok(())
    }

    /// Takes one chunk: writes it if it is the next one, and answers with the bytes held
    /// (a chunk before or past that point is not written; the answer tells the sender where
    /// to go on). The last chunk's arrival checks the whole CRC and reads the snapshot back;
    /// a mismatch discards the file and answers 0, so the sender starts over.
    pub(crate) fn chunk(&mut self, chunk: &SnapshotChunk) -> io::Result<Received> {
        if self.part.as_ref().is_none_or(|p| p.id != chunk.id) {
            self.start(chunk)?;
        }
        let part = self.part.as_mut().expect("started above");
        let resumed = std::mem::take(&mut part.loaded);
        if chunk.offset == part.written {
            match &mut part.sink {
                Sink::File(file) => {
                    file.seek(SeekFrom::Start(part.header_len + part.written))?;
                    file.write_all(&chunk.data)?;
                }
                Sink::Memory(held) => held.extend_from_slice(&chunk.data),
            }
            part.written += chunk.data.len() as u64;
            part.crc = crc32c::crc32c_append(part.crc, &chunk.data);
        }
        let me = self.me;
        let ack = |received| SnapshotAck { from: me, to: chunk.from, id: chunk.id, received };
        if part.written < part.id.total {
            return Ok(Received { ack: ack(part.written), complete: None, resumed });
        }
        let (id, crc) = (part.id, part.crc);
        if crc != id.crc {
            tracing::warn!(node = %self.me, lsn = id.lsn, "a received snapshot fails its checksum; it is sent again");
            self.discard();
            return Ok(Received { ack: ack(0), complete: None, resumed });
        }
        let data = match &mut part.sink {
            Sink::File(file) => {
                let mut data = vec![0u8; usize::try_from(id.total).unwrap_or(usize::MAX)];
                file.seek(SeekFrom::Start(part.header_len))?;
                file.read_exact(&mut data)?;
                data
            }
            Sink::Memory(held) => std::mem::take(held),
        };
        let meta = part.meta.clone();
        self.discard();
        Ok(Received {
            ack: ack(id.total),
            complete: Some(Snapshot { meta, data: Bytes::from(data) }),
            resumed,
        })
    }

    /// Drops the part file (done with, or damaged).
    pub(crate) fn discard(&mut self) {
        self.part = None;
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    fn snapshot(len: usize) -> Snapshot {
        let meta = SnapshotMeta {
            lsn: 40,
            term: 3,
            conf_state: ConfState::with_voters([NodeId(1)]),
            ..SnapshotMeta::default()
        };
        Snapshot { meta, data: Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()) }
    }

    /// Runs a transfer until done, dropping every chunk `lose` says and restarting the
    /// receiver when `restart` says; returns the snapshot received and the rounds taken.
    fn transfer(
        dir: Option<&Path>,
        snap: &Snapshot,
        chunk: usize,
        mut lose: impl FnMut(u64) -> bool,
        mut restart: impl FnMut(u64) -> bool,
    ) -> (Snapshot, u64) {
        let id = snapshot_id(snap);
        let mut now = Instant::now();
        let mut out = Outgoing::new(snap, id, now);
        let mut rx = Receiver::open(NodeId(2), dir);
        for round in 0..100_000u64 {
            now += Duration::from_millis(10);
            while let Some(c) = out.next_chunk(NodeId(1), NodeId(2), 5, chunk, 3) {
                if lose(c.offset) {
                    continue;
                }
                let got = rx.chunk(&c).unwrap();
                if let Some(done) = got.complete {
                    assert_eq!(out.ack(&got.ack, now), AckOutcome::Done);
                    return (done, round);
                }
                assert_eq!(out.ack(&got.ack, now), AckOutcome::Going);
            }
            out.maybe_rewind(now, Duration::from_millis(50));
            if restart(round) {
                rx = Receiver::open(NodeId(2), dir);
            }
        }
        panic!("the transfer never finished");
    }

    #[test]
    fn a_snapshot_arrives_whole_through_lost_chunks_and_receiver_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(100_003);
        // Lossless.
        let (got, _) = transfer(Some(dir.path()), &snap, 4096, |_| false, |_| false);
        assert_eq!(got, snap);
        assert!(!dir.path().join(PART_FILE).exists(), "the part file is removed once complete");
        // Every seventh chunk lost, and the receiver restarting every few rounds.
        let mut n = 0;
        let (got, _) = transfer(
            Some(dir.path()),
            &snap,
            1000,
            |_| {
                n += 1;
                n % 7 == 0
            },
            |round| round % 5 == 4,
        );
        assert_eq!(got, snap);
    }

    #[test]
    fn a_restarted_receiver_resumes_from_its_file_and_a_torn_or_foreign_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(10_000);
        let id = snapshot_id(&snap);
        let mut out = Outgoing::new(&snap, id, Instant::now());
        let mut rx = Receiver::open(NodeId(2), Some(dir.path()));
        for _ in 0..3 {
            let c = out.next_chunk(NodeId(1), NodeId(2), 5, 1000, 3).unwrap();
            out.ack(&rx.chunk(&c).unwrap().ack, Instant::now());
        }
        drop(rx);
        // A restart finds the 3000 bytes; the sender's next chunk (wherever it is) is
        // answered with 3000, and the bytes count as resumed.
        let mut rx = Receiver::open(NodeId(2), Some(dir.path()));
        assert_eq!(rx.progress(), Some((id, 3000)));
        let mut fresh = Outgoing::new(&snap, id, Instant::now());
        let c = fresh.next_chunk(NodeId(1), NodeId(2), 5, 1000, 3).unwrap();
        let got = rx.chunk(&c).unwrap();
        assert_eq!((got.ack.received, got.resumed), (3000, 3000));
        fresh.ack(&got.ack, Instant::now());
        assert_eq!(fresh.next_chunk(NodeId(1), NodeId(2), 5, 1000, 3).unwrap().offset, 3000);
        drop(rx);

        // Garbage past the data a crash left is cut at the snapshot's size; damage inside
        // the data fails the whole checksum at the end and the transfer starts over.
        let path = dir.path().join(PART_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let mut rx = Receiver::open(NodeId(2), Some(dir.path()));
        let mut out = Outgoing::new(&snap, id, Instant::now());
        out.acked = 3000;
        out.next = 3000;
        let mut last = None;
        while let Some(c) = out.next_chunk(NodeId(1), NodeId(2), 5, 1000, 100) {
            last = Some(rx.chunk(&c).unwrap());
        }
        let last = last.unwrap();
        assert!(last.complete.is_none());
        assert_eq!(last.ack.received, 0, "a checksum failure starts over");
        assert!(!path.exists());

        // A damaged header is removed at open.
        fs::write(&path, b"THSNAPRXgarbage").unwrap();
        let rx = Receiver::open(NodeId(2), Some(dir.path()));
        assert!(rx.progress().is_none() && !path.exists());
    }

    /// A store without a staging directory receives in memory: whole through lost chunks,
    /// and a snapshot that fails its checksum starts over, as with a part file.
    #[test]
    fn a_snapshot_received_in_memory_arrives_whole_and_a_damaged_one_starts_over() {
        let snap = snapshot(50_001);
        let mut n = 0;
        let lose_every_fifth = |_| {
            n += 1;
            n % 5 == 0
        };
        let (got, _) = transfer(None, &snap, 1000, lose_every_fifth, |_| false);
        assert_eq!(got, snap);

        let id = snapshot_id(&snap);
        let mut out = Outgoing::new(&snap, id, Instant::now());
        let mut rx = Receiver::open(NodeId(2), None);
        let mut last = None;
        while let Some(mut c) = out.next_chunk(NodeId(1), NodeId(2), 5, 4096, 100) {
            if c.offset == 8192 {
                let mut data = c.data.to_vec();
                data[7] ^= 0xff;
                c.data = Bytes::from(data);
            }
            last = Some(rx.chunk(&c).unwrap());
        }
        let last = last.unwrap();
        assert!(last.complete.is_none());
        assert_eq!(last.ack.received, 0, "a checksum failure starts over");
        assert!(rx.progress().is_none(), "the damaged snapshot is dropped");
    }

    #[test]
    fn a_chunk_of_another_snapshot_replaces_the_one_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = (snapshot(5000), snapshot(6000));
        b.meta.lsn = 50;
        let mut rx = Receiver::open(NodeId(2), Some(dir.path()));
        let mut out_a = Outgoing::new(&a, snapshot_id(&a), Instant::now());
        rx.chunk(&out_a.next_chunk(NodeId(1), NodeId(2), 5, 1000, 3).unwrap()).unwrap();
        let mut out_b = Outgoing::new(&b, snapshot_id(&b), Instant::now());
        let got = rx.chunk(&out_b.next_chunk(NodeId(3), NodeId(2), 6, 1000, 3).unwrap()).unwrap();
        assert_eq!((got.ack.id, got.ack.received, got.ack.to), (snapshot_id(&b), 1000, NodeId(3)));
        // A's sender hears about B: not its transfer.
        assert_eq!(out_a.ack(&got.ack, Instant::now()), AckOutcome::Stale);
    }
}
