//! The byte layout of a [`Message`], carried in a themis-ship `Message` frame (which adds
//! the frame CRC and compression). Hand-written and little-endian; entries travel as
//! themis-wal records, so an entry's bytes on the wire are its bytes on disk and its record
//! CRC is checked on arrival. The layout is drawn in docs/wire-protocol.md.
//!
//! Decoding never panics and allocates nothing sized by an unchecked length: every length is
//! checked against the bytes left and against [`WireLimits`].

use bytes::{BufMut, Bytes};
use themis_clock::NodeId;
use themis_wal::{Entry, Lsn, record};

use crate::error::RaftError;
use crate::message::{Body, Message};
use crate::signing::{Signature, VoteClaim};
use crate::types::{Snapshot, SnapshotMeta};

/// The layout version.
pub const WIRE_VERSION: u8 = 2;

/// LSNs and terms on the wire stay below this, so no arithmetic on them (`lsn + 1`, a
/// count of entries after `prev_lsn`) can overflow in the decoder or in the core. A cluster
/// writing a million entries a second takes 146,000 years to reach it.
pub const MAX_WIRE_LSN: u64 = 1 << 62;

/// Bounds a decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Most entries in one append.
    pub max_entries: usize,
    /// Largest record (header and payload) in an append.
    pub max_record_bytes: usize,
    /// Largest snapshot data.
    pub max_snapshot_bytes: usize,
    /// Largest read context.
    pub max_ctx_bytes: usize,
    /// Largest data of one snapshot chunk.
    pub max_chunk_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_entries: 1 << 16,
            max_record_bytes: 16 << 20,
            max_snapshot_bytes: 1 << 30,
            max_ctx_bytes: 1 << 16,
            max_chunk_bytes: 16 << 20,
        }
    }
}

/// Bytes of an append message before its records: version, tag, from, to, term,
/// previous LSN and term, commit, and the record count.
pub const APPEND_HEADER_LEN: usize = 1 + 1 + 8 + 8 + 8 + 8 + 8 + 8 + 4;

const TAG_VOTE: u8 = 1;
const TAG_VOTE_RESPONSE: u8 = 2;
const TAG_APPEND: u8 = 3;
const TAG_APPEND_RESPONSE: u8 = 4;
const TAG_HEARTBEAT: u8 = 5;
const TAG_HEARTBEAT_RESPONSE: u8 = 6;
const TAG_SNAPSHOT: u8 = 7;
const TAG_TIMEOUT_NOW: u8 = 8;
const TAG_READ_INDEX: u8 = 9;
const TAG_READ_INDEX_RESPONSE: u8 = 10;
const TAG_SNAPSHOT_CHUNK: u8 = 11;
const TAG_SNAPSHOT_ACK: u8 = 12;
const TAG_FORWARD: u8 = 13;
const TAG_FORWARD_ACK: u8 = 14;

/// Which snapshot a chunked transfer carries: its LSN and term, its size and the CRC32C
/// of all its bytes. Two transfers with the same id carry the same bytes, so a receiver
/// resumes one from what it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The snapshot's last LSN.
    pub lsn: Lsn,
    /// The term of that entry.
    pub term: u64,
    /// Bytes of snapshot data.
    pub total: u64,
    /// CRC32C of the whole data.
    pub crc: u32,
}

/// One piece of a snapshot on its way to a follower (the driver's, not the core's: the
/// receiver hands the core the whole snapshot once every chunk is on its disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The sender (the leader).
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term.
    pub term: u64,
    /// The snapshot.
    pub id: SnapshotId,
    /// Its metadata (membership and policy), in every chunk so any chunk starts a transfer.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The bytes; their CRC32C travels beside them and is checked on decoding.
    pub data: Bytes,
}

/// A receiver's answer: how many leading bytes of the snapshot it holds. The sender goes
/// on from there, so a transfer resumes after a lost link or a restart of either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotAck {
    /// The receiver.
    pub from: NodeId,
    /// The sender of the chunks.
    pub to: NodeId,
    /// The snapshot.
    pub id: SnapshotId,
    /// Bytes held, from the start; `id.total` once the snapshot is complete and verified.
    pub received: u64,
}

/// What a peer link carries: a Raft message for the core, or a snapshot transfer's chunk
/// or answer for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A Raft message.
    Message(Message),
    /// A snapshot chunk.
    Chunk(SnapshotChunk),
    /// A snapshot chunk's answer.
    Ack(SnapshotAck),
    /// Committed entries a member passes on to a learner that streams from it (cascading
    /// replication): `message` is the `Append` the learner steps as if from the leader it
    /// names, whose committed log the entries are a part of.
    Forward {
        /// The member passing the entries on (the learner's upstream).
        from: NodeId,
        /// The learner.
        to: NodeId,
        /// An `Append` from the leader to the learner.
        message: Message,
    },
    /// A learner's answer to a [`Packet::Forward`]: its commit LSN after the entries (the
    /// upstream goes on from there; on a mismatch, from what it holds for certain).
    ForwardAck {
        /// The learner.
        from: NodeId,
        /// Its upstream.
        to: NodeId,
        /// The learner's commit LSN.
        commit: Lsn,
    },
}

const VOTE_PRE: u8 = 1;
const VOTE_GRANTED: u8 = 2;
const VOTE_FORCE: u8 = 4;
const VOTE_RESPONSE: u8 = 8;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_claim(out: &mut Vec<u8>, claim: &VoteClaim, signature: &Signature, force: bool) {
    let mut flags = 0;
    if claim.pre_vote {
        flags |= VOTE_PRE;
    }
    if claim.granted {
        flags |= VOTE_GRANTED;
    }
    if force {
        flags |= VOTE_FORCE;
    }
    if claim.response {
        flags |= VOTE_RESPONSE;
    }
    out.put_u8(flags);
    for word in [claim.term, claim.candidate.0, claim.voter.0, claim.last_lsn, claim.last_term] {
        out.put_u64_le(word);
    }
    put_bytes(out, claim.cluster.as_bytes());
    put_bytes(out, &signature.0);
}

/// Encodes `message`.
#[must_use]
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.payload_bytes() as usize);
    out.put_u8(WIRE_VERSION);
    let tag = match &message.body {
        Body::Vote { .. } => TAG_VOTE,
        Body::VoteResponse { .. } => TAG_VOTE_RESPONSE,
        Body::Append { .. } => TAG_APPEND,
        Body::AppendResponse { .. } => TAG_APPEND_RESPONSE,
        Body::Heartbeat { .. } => TAG_HEARTBEAT,
        Body::HeartbeatResponse { .. } => TAG_HEARTBEAT_RESPONSE,
        Body::Snapshot(_) => TAG_SNAPSHOT,
        Body::TimeoutNow => TAG_TIMEOUT_NOW,
        Body::ReadIndex { .. } => TAG_READ_INDEX,
        Body::ReadIndexResponse { .. } => TAG_READ_INDEX_RESPONSE,
    };
    out.put_u8(tag);
    out.put_u64_le(message.from.0);
    out.put_u64_le(message.to.0);
    out.put_u64_le(message.term);
    match &message.body {
        Body::Vote { claim, signature, force } => put_claim(&mut out, claim, signature, *force),
        Body::VoteResponse { claim, signature } => put_claim(&mut out, claim, signature, false),
        Body::Append { prev_lsn, prev_term, entries, commit } => {
            out.put_u64_le(*prev_lsn);
            out.put_u64_le(*prev_term);
            out.put_u64_le(*commit);
            out.put_u32_le(entries.len() as u32);
            for entry in entries {
                record::encode(&mut out, entry.lsn, &entry.to_new());
            }
        }
        Body::AppendResponse { reject, lsn, hint_lsn, hint_term } => {
            out.put_u8(u8::from(*reject));
            out.put_u64_le(*lsn);
            out.put_u64_le(*hint_lsn);
            out.put_u64_le(*hint_term);
        }
        Body::Heartbeat { commit, round, closed, closed_ms } => {
            out.put_u64_le(*commit);
            out.put_u64_le(*round);
            out.put_u64_le(*closed);
            out.put_u64_le(*closed_ms);
        }
        Body::HeartbeatResponse { round } => out.put_u64_le(*round),
        Body::Snapshot(snapshot) => {
            // Encoding plain integers and sets into a Vec cannot fail.
            let meta = postcard::to_allocvec(&snapshot.meta).unwrap_or_default();
            put_bytes(&mut out, &meta);
            out.put_u64_le(snapshot.data.len() as u64);
            out.put_slice(&snapshot.data);
        }
        Body::TimeoutNow => {}
        Body::ReadIndex { ctx } => put_bytes(&mut out, ctx),
        Body::ReadIndexResponse { ctx, lsn } => {
            put_bytes(&mut out, ctx);
            out.put_u8(u8::from(lsn.is_some()));
            out.put_u64_le(lsn.unwrap_or(0));
        }
    }
    out
}

fn put_header(out: &mut Vec<u8>, tag: u8, from: NodeId, to: NodeId) {
    out.put_u8(WIRE_VERSION);
    out.put_u8(tag);
    out.put_u64_le(from.0);
    out.put_u64_le(to.0);
}

fn put_snapshot_id(out: &mut Vec<u8>, id: &SnapshotId) {
    out.put_u64_le(id.lsn);
    out.put_u64_le(id.term);
    out.put_u64_le(id.total);
    out.put_u32_le(id.crc);
}

/// Encodes a snapshot chunk: the header (version, tag 11, from, to), the sender's term,
/// the snapshot id (LSN, term, total, CRC), the offset, the metadata (length-prefixed
/// postcard), then the data's CRC32C and the data (length-prefixed).
#[must_use]
pub fn encode_chunk(chunk: &SnapshotChunk) -> Vec<u8> {
    // Encoding plain integers and sets into a Vec cannot fail.
    let meta = postcard::to_allocvec(&chunk.meta).unwrap_or_default();
    let mut out = Vec::with_capacity(96 + meta.len() + chunk.data.len());
    put_header(&mut out, TAG_SNAPSHOT_CHUNK, chunk.from, chunk.to);
    out.put_u64_le(chunk.term);
    put_snapshot_id(&mut out, &chunk.id);
    out.put_u64_le(chunk.offset);
    put_bytes(&mut out, &meta);
    out.put_u32_le(crc32c::crc32c(&chunk.data));
    put_bytes(&mut out, &chunk.data);
    out
}

/// Encodes a snapshot chunk's answer: the header (tag 12), the snapshot id, the bytes held.
#[must_use]
pub fn encode_ack(ack: &SnapshotAck) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_header(&mut out, TAG_SNAPSHOT_ACK, ack.from, ack.to);
    put_snapshot_id(&mut out, &ack.id);
    out.put_u64_le(ack.received);
    out
}

/// Encodes a forwarded `Append` (cascading replication): the header (tag 13, the
/// upstream, the learner), then `message` as [`encode`] lays it out.
#[must_use]
pub fn encode_forward(from: NodeId, to: NodeId, message: &Message) -> Vec<u8> {
    let inner = encode(message);
    let mut out = Vec::with_capacity(18 + inner.len());
    put_header(&mut out, TAG_FORWARD, from, to);
    out.extend_from_slice(&inner);
    out
}

/// Encodes a learner's answer to a forward: the header (tag 14), its commit LSN.
#[must_use]
pub fn encode_forward_ack(from: NodeId, to: NodeId, commit: Lsn) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    put_header(&mut out, TAG_FORWARD_ACK, from, to);
    out.put_u64_le(commit);
    out
}

/// Encodes any [`Packet`].
#[must_use]
pub fn encode_packet(packet: &Packet) -> Vec<u8> {
    match packet {
        Packet::Message(m) => encode(m),
        Packet::Chunk(c) => encode_chunk(c),
        Packet::Ack(a) => encode_ack(a),
        Packet::Forward { from, to, message } => encode_forward(*from, *to, message),
        Packet::ForwardAck { from, to, commit } => encode_forward_ack(*from, *to, *commit),
    }
}

/// Decodes whatever a peer link carries ([`Packet`]).
pub fn decode_packet(buf: &Bytes, limits: &WireLimits) -> Result<Packet, RaftError> {
    let tag = buf.get(1).copied();
    if buf.first() != Some(&WIRE_VERSION)
        || !matches!(tag, Some(TAG_SNAPSHOT_CHUNK | TAG_SNAPSHOT_ACK | TAG_FORWARD | TAG_FORWARD_ACK))
    {
        return decode(buf, limits).map(Packet::Message);
    }
    let mut r = Reader { buf, at: 2 };
    let from = r.node("from")?;
    let to = r.node("to")?;
    if tag == Some(TAG_FORWARD) {
        let message =
            decode(&buf.slice(r.at..), limits).map_err(|err| r.bad(format!("forwarded message: {err}")))?;
        if !matches!(message.body, Body::Append { .. }) || message.to != to {
            return Err(r.bad(format!(
                "a forward must carry an Append to {to}, not a {} to {}",
                message.body.name(),
                message.to
            )));
        }
        return Ok(Packet::Forward { from, to, message });
    }
    let packet = if tag == Some(TAG_FORWARD_ACK) {
        Packet::ForwardAck { from, to, commit: r.lsn("commit")? }
    } else if tag == Some(TAG_SNAPSHOT_CHUNK) {
        let term = r.lsn("term")?;
        let id = r.snapshot_id(limits)?;
        let offset = r.u64("chunk offset")?;
        let meta = r.bytes(1 << 20, "snapshot metadata")?;
        let meta: SnapshotMeta =
            postcard::from_bytes(&meta).map_err(|err| r.bad(format!("snapshot metadata: {err}")))?;
        if (meta.lsn, meta.term) != (id.lsn, id.term) {
            return Err(r.bad(format!(
                "the metadata says LSN {} term {}, the chunk LSN {} term {}",
                meta.lsn, meta.term, id.lsn, id.term
            )));
        }
        let crc = r.u32("chunk CRC")?;
        let data = r.bytes(limits.max_chunk_bytes, "chunk data")?;
        if data.is_empty() || offset > id.total || data.len() as u64 > id.total - offset {
            return Err(r.bad(format!(
                "a chunk of {} bytes at offset {offset} of a {}-byte snapshot",
                data.len(),
                id.total
            )));
        }
        let actual = crc32c::crc32c(&data);
        if actual != crc {
            return Err(
                r.bad(format!("chunk at offset {offset}: checksum {actual:#010x}, expected {crc:#010x}"))
            );
        }
        Packet::Chunk(SnapshotChunk { from, to, term, id, meta, offset, data })
    } else {
        let id = r.snapshot_id(limits)?;
        let received = r.u64("bytes received")?;
        if received > id.total {
            return Err(r.bad(format!("{received} bytes received of a {}-byte snapshot", id.total)));
        }
        Packet::Ack(SnapshotAck { from, to, id, received })
    };
    if r.at != buf.len() {
        return Err(r.bad(format!("{} trailing bytes", buf.len() - r.at)));
    }
    Ok(packet)
}

/// Reads fields off a buffer, naming the offset of anything short or invalid.
struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn bad(&self, reason: impl Into<String>) -> RaftError {
        RaftError::Wire { offset: self.at, reason: reason.into() }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], RaftError> {
        let left = self.buf.len() - self.at;
        if n > left {
            return Err(self.bad(format!("{what}: needs {n} bytes, {left} left")));
        }
        let slice = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, RaftError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, RaftError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, RaftError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// An LSN or term, below [`MAX_WIRE_LSN`].
    fn lsn(&mut self, what: &str) -> Result<u64, RaftError> {
        let value = self.u64(what)?;
        if value >= MAX_WIRE_LSN {
            return Err(self.bad(format!("{what} {value} is out of range")));
        }
        Ok(value)
    }

    fn node(&mut self, what: &str) -> Result<NodeId, RaftError> {
        match self.u64(what)? {
            0 => Err(self.bad(format!("{what}: node 0"))),
            id => Ok(NodeId(id)),
        }
    }

    /// A length-prefixed byte string of at most `max` bytes, shared with the buffer.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Bytes, RaftError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(self.bad(format!("{what}: {len} bytes, above the limit of {max}")));
        }
        let start = self.at;
        self.take(len, what)?;
        Ok(self.buf.slice(start..start + len))
    }

    fn snapshot_id(&mut self, limits: &WireLimits) -> Result<SnapshotId, RaftError> {
        let lsn = self.lsn("snapshot LSN")?;
        let term = self.lsn("snapshot term")?;
        let total = self.u64("snapshot length")?;
        if total > limits.max_snapshot_bytes as u64 {
            return Err(self.bad(format!(
                "snapshot of {total} bytes, above the limit of {}",
                limits.max_snapshot_bytes
            )));
        }
        Ok(SnapshotId { lsn, term, total, crc: self.u32("snapshot CRC")? })
    }

    fn claim(&mut self) -> Result<(VoteClaim, Signature, bool), RaftError> {
        let flags = self.u8("vote flags")?;
        if flags & !(VOTE_PRE | VOTE_GRANTED | VOTE_FORCE | VOTE_RESPONSE) != 0 {
            return Err(self.bad(format!("unknown vote flags {flags:#04x}")));
        }
        let term = self.lsn("vote term")?;
        let candidate = self.node("vote candidate")?;
        let voter = self.node("vote voter")?;
        let last_lsn = self.lsn("vote last LSN")?;
        let last_term = self.lsn("vote last term")?;
        let cluster = self.bytes(255, "cluster name")?;
        let cluster =
            String::from_utf8(cluster.to_vec()).map_err(|_| self.bad("cluster name is not UTF-8"))?;
        let signature = Signature(self.bytes(1024, "vote signature")?.to_vec());
        let claim = VoteClaim {
            cluster,
            term,
            candidate,
            voter,
            last_lsn,
            last_term,
            pre_vote: flags & VOTE_PRE != 0,
            response: flags & VOTE_RESPONSE != 0,
            granted: flags & VOTE_GRANTED != 0,
        };
        Ok((claim, signature, flags & VOTE_FORCE != 0))
    }
}

/// Decodes a message; entries' payloads and snapshot data share `buf`.
pub fn decode(buf: &Bytes, limits: &WireLimits) -> Result<Message, RaftError> {
    let mut r = Reader { buf, at: 0 };
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(r.bad(format!("unknown message version {version} (this node speaks {WIRE_VERSION})")));
    }
    let tag = r.u8("message kind")?;
    let from = r.node("from")?;
    let to = r.node("to")?;
    let term = r.lsn("term")?;
    let body = match tag {
        TAG_VOTE | TAG_VOTE_RESPONSE => {
            let (claim, signature, force) = r.claim()?;
            if tag == TAG_VOTE {
                Body::Vote { claim, signature, force }
            } else {
                Body::VoteResponse { claim, signature }
            }
        }
        TAG_APPEND => {
            let prev_lsn = r.lsn("prev LSN")?;
            let prev_term = r.lsn("prev term")?;
            let commit = r.lsn("commit")?;
            let count = r.u32("entry count")? as usize;
            // prev_lsn < 2^62 and count < 2^32: the LSNs below cannot overflow.
            if count > limits.max_entries {
                return Err(r.bad(format!("{count} entries, above the limit of {}", limits.max_entries)));
            }
            let mut entries: Vec<Entry> = Vec::with_capacity(count.min(1024));
            for i in 0..count {
                let (entry, used) = record::decode(buf, r.at, limits.max_record_bytes)
                    .map_err(|err| r.bad(format!("entry {i}: {err}")))?;
                let expected: Lsn = prev_lsn + 1 + i as Lsn;
                if entry.lsn != expected {
                    return Err(r.bad(format!("entry {i} has LSN {}, expected {expected}", entry.lsn)));
                }
                r.at += used;
                entries.push(entry);
            }
            Body::Append { prev_lsn, prev_term, entries, commit }
        }
        TAG_APPEND_RESPONSE => {
            let reject = match r.u8("reject")? {
                0 => false,
                1 => true,
                other => return Err(r.bad(format!("reject flag {other}"))),
            };
            Body::AppendResponse {
                reject,
                lsn: r.lsn("LSN")?,
                hint_lsn: r.lsn("hint LSN")?,
                hint_term: r.lsn("hint term")?,
            }
        }
        TAG_HEARTBEAT => Body::Heartbeat {
            commit: r.lsn("commit")?,
            round: r.u64("round")?,
            closed: r.lsn("closed")?,
            closed_ms: r.u64("closed_ms")?,
        },
        TAG_HEARTBEAT_RESPONSE => Body::HeartbeatResponse { round: r.u64("round")? },
        TAG_SNAPSHOT => {
            let meta = r.bytes(1 << 20, "snapshot metadata")?;
            let meta: SnapshotMeta =
                postcard::from_bytes(&meta).map_err(|err| r.bad(format!("snapshot metadata: {err}")))?;
            if meta.lsn >= MAX_WIRE_LSN || meta.term >= MAX_WIRE_LSN {
                return Err(r.bad(format!("snapshot LSN {} or term {} is out of range", meta.lsn, meta.term)));
            }
            let len = r.u64("snapshot length")?;
            if len > limits.max_snapshot_bytes as u64 {
                return Err(r.bad(format!(
                    "snapshot of {len} bytes, above the limit of {}",
                    limits.max_snapshot_bytes
                )));
            }
            let start = r.at;
            r.take(len as usize, "snapshot data")?;
            Body::Snapshot(Snapshot { meta, data: buf.slice(start..r.at) })
        }
        TAG_TIMEOUT_NOW => Body::TimeoutNow,
        TAG_READ_INDEX => Body::ReadIndex { ctx: r.bytes(limits.max_ctx_bytes, "read context")? },
        TAG_READ_INDEX_RESPONSE => {
            let ctx = r.bytes(limits.max_ctx_bytes, "read context")?;
            let has = r.u8("has LSN")?;
            let lsn = r.lsn("read LSN")?;
            let lsn = match has {
                0 => None,
                1 => Some(lsn),
                other => return Err(r.bad(format!("has-LSN flag {other}"))),
            };
            Body::ReadIndexResponse { ctx, lsn }
        }
        other => return Err(r.bad(format!("unknown message kind {other}"))),
    };
    if r.at != buf.len() {
        return Err(r.bad(format!("{} trailing bytes", buf.len() - r.at)));
    }
    Ok(Message { from, to, term, body })
}

#[cfg(test)]
mod tests {
    use themis_clock::Timestamp;
    use themis_wal::EntryKind;

    use super::*;
    use crate::types::ConfState;

    fn claim(response: bool) -> VoteClaim {
        VoteClaim {
            cluster: "prod".into(),
            term: 7,
            candidate: NodeId(1),
            voter: NodeId(2),
            last_lsn: 40,
            last_term: 6,
            pre_vote: true,
            response,
            granted: response,
        }
    }

    pub(crate) fn samples() -> Vec<Message> {
        let entry = |lsn| Entry {
            lsn,
            term: 3,
            timestamp: Timestamp::from_parts(1_700_000_000_000, 2, NodeId(1)).unwrap(),
            kind: EntryKind::DATA,
            payload: Bytes::from(vec![lsn as u8; 10]),
        };
        let mut meta = SnapshotMeta { lsn: 9, term: 2, ..SnapshotMeta::default() };
        meta.conf_state = ConfState::with_voters([NodeId(1), NodeId(2)]);
        let bodies = vec![
            Body::Vote { claim: claim(false), signature: Signature(vec![9; 64]), force: true },
            Body::VoteResponse { claim: claim(true), signature: Signature(vec![8; 64]) },
            Body::Append { prev_lsn: 4, prev_term: 3, entries: vec![entry(5), entry(6)], commit: 4 },
            Body::Append { prev_lsn: 4, prev_term: 3, entries: vec![], commit: 4 },
            Body::AppendResponse { reject: true, lsn: 4, hint_lsn: 2, hint_term: 1 },
            Body::Heartbeat { commit: 3, round: 11, closed: 5, closed_ms: 1_700_000_000_000 },
            Body::HeartbeatResponse { round: 11 },
            Body::Snapshot(Snapshot { meta, data: Bytes::from_static(b"state") }),
            Body::TimeoutNow,
            Body::ReadIndex { ctx: Bytes::from_static(b"ctx") },
            Body::ReadIndexResponse { ctx: Bytes::from_static(b"ctx"), lsn: Some(5) },
            Body::ReadIndexResponse { ctx: Bytes::new(), lsn: None },
        ];
        bodies.into_iter().map(|body| Message { from: NodeId(1), to: NodeId(2), term: 7, body }).collect()
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = Bytes::from(encode(&message));
            assert_eq!(decode(&bytes, &WireLimits::default()).unwrap(), message, "{}", message.body.name());
        }
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_offset() {
        for message in samples() {
            let bytes = encode(&message);
            for cut in 0..bytes.len() {
                let err = decode(&Bytes::copy_from_slice(&bytes[..cut]), &WireLimits::default()).unwrap_err();
                assert!(matches!(err, RaftError::Wire { .. }), "{err}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&Bytes::from(longer), &WireLimits::default()).is_err(), "trailing byte");
        }
    }

    fn chunk_samples() -> (SnapshotChunk, SnapshotAck) {
        let meta = SnapshotMeta {
            lsn: 9,
            term: 2,
            conf_state: ConfState::with_voters([NodeId(1)]),
            ..SnapshotMeta::default()
        };
        let id = SnapshotId { lsn: 9, term: 2, total: 10, crc: crc32c::crc32c(b"0123456789") };
        let chunk = SnapshotChunk {
            from: NodeId(1),
            to: NodeId(2),
            term: 3,
            id,
            meta,
            offset: 4,
            data: Bytes::from_static(b"456789"),
        };
        (chunk, SnapshotAck { from: NodeId(2), to: NodeId(1), id, received: 4 })
    }

    #[test]
    fn snapshot_chunks_and_answers_round_trip_and_damage_is_refused() {
        let (chunk, ack) = chunk_samples();
        let limits = WireLimits::default();
        let bytes = encode_chunk(&chunk);
        assert_eq!(
            decode_packet(&Bytes::from(bytes.clone()), &limits).unwrap(),
            Packet::Chunk(chunk.clone())
        );
        let ack_bytes = encode_ack(&ack);
        assert_eq!(decode_packet(&Bytes::from(ack_bytes.clone()), &limits).unwrap(), Packet::Ack(ack));
        for message in samples() {
            let bytes = Bytes::from(encode(&message));
            assert_eq!(decode_packet(&bytes, &limits).unwrap(), Packet::Message(message));
        }
        for whole in [&bytes, &ack_bytes] {
            for cut in 0..whole.len() {
                assert!(
                    decode_packet(&Bytes::copy_from_slice(&whole[..cut]), &limits).is_err(),
                    "cut at {cut}"
                );
            }
        }
        // A flipped data byte fails the chunk's CRC.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = decode_packet(&Bytes::from(flipped), &limits).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // A chunk past the end, an ack past the end, and a snapshot above the limit.
        let past = SnapshotChunk { offset: 5, ..chunk.clone() };
        let err = decode_packet(&Bytes::from(encode_chunk(&past)), &limits).unwrap_err();
        assert!(err.to_string().contains("6 bytes at offset 5 of a 10-byte snapshot"), "{err}");
        let err = decode_packet(&Bytes::from(encode_ack(&SnapshotAck { received: 11, ..ack })), &limits)
            .unwrap_err();
        assert!(err.to_string().contains("11 bytes received"), "{err}");
        let small = WireLimits { max_snapshot_bytes: 9, max_chunk_bytes: 4, ..limits };
        let err = decode_packet(&Bytes::from(bytes.clone()), &small).unwrap_err();
        assert!(err.to_string().contains("above the limit of 9"), "{err}");
        let small = WireLimits { max_chunk_bytes: 4, ..limits };
        let err = decode_packet(&Bytes::from(bytes), &small).unwrap_err();
        assert!(err.to_string().contains("chunk data: 6 bytes, above the limit of 4"), "{err}");
        // Metadata that disagrees with the id.
        let mut other = chunk;
        other.meta.lsn = 8;
        let err = decode_packet(&Bytes::from(encode_chunk(&other)), &limits).unwrap_err();
        assert!(err.to_string().contains("the metadata says LSN 8"), "{err}");
    }

    #[test]
    fn forwards_and_their_answers_round_trip_and_a_forward_carries_only_an_append_to_its_learner() {
        let limits = WireLimits::default();
        let mut append = samples()[2].clone();
        append.to = NodeId(4);
        let forward = Packet::Forward { from: NodeId(2), to: NodeId(4), message: append.clone() };
        let ack = Packet::ForwardAck { from: NodeId(4), to: NodeId(2), commit: 6 };
        for packet in [&forward, &ack] {
            let bytes = encode_packet(packet);
            assert_eq!(&decode_packet(&Bytes::from(bytes.clone()), &limits).unwrap(), packet);
            for cut in 0..bytes.len() {
                assert!(
                    decode_packet(&Bytes::copy_from_slice(&bytes[..cut]), &limits).is_err(),
                    "cut at {cut}"
                );
            }
        }
        // A vote, or an append addressed to another node, is not a forward.
        let vote = samples()[0].clone();
        let err =
            decode_packet(&Bytes::from(encode_forward(NodeId(2), vote.to, &vote)), &limits).unwrap_err();
        assert!(err.to_string().contains("must carry an Append"), "{err}");
        let err =
            decode_packet(&Bytes::from(encode_forward(NodeId(2), NodeId(5), &append)), &limits).unwrap_err();
        assert!(err.to_string().contains("to 5"), "{err}");
        // The inner message's damage is named.
        let mut bytes = encode_forward(NodeId(2), NodeId(4), &append);
        bytes.push(0);
        let err = decode_packet(&Bytes::from(bytes), &limits).unwrap_err();
        assert!(
            err.to_string().contains("forwarded message") && err.to_string().contains("trailing"),
            "{err}"
        );
        let mut bytes = encode_packet(&ack);
        bytes[18..26].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_packet(&Bytes::from(bytes), &limits).is_err(), "an out-of-range commit");
    }

    #[test]
    fn a_flipped_entry_byte_fails_the_record_crc() {
        let message = &samples()[2];
        let mut bytes = encode(message);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = decode(&Bytes::from(bytes), &WireLimits::default()).unwrap_err();
        assert!(err.to_string().contains("entry 1") && err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn limits_are_enforced_before_reading() {
        let limits = WireLimits { max_entries: 1, max_ctx_bytes: 2, ..WireLimits::default() };
        let err = decode(&Bytes::from(encode(&samples()[2])), &limits).unwrap_err();
        assert!(err.to_string().contains("2 entries, above the limit of 1"), "{err}");
        let err = decode(&Bytes::from(encode(&samples()[9])), &limits).unwrap_err();
        assert!(err.to_string().contains("3 bytes, above the limit of 2"), "{err}");
        let mut bytes = encode(&samples()[4]);
        bytes[18..26].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = decode(&Bytes::from(bytes), &limits).unwrap_err();
        assert!(err.to_string().contains("term 18446744073709551615 is out of range"), "{err}");
        let mut bytes = encode(&samples()[0]);
        bytes[0] = 9;
        let err = decode(&Bytes::from(bytes), &limits).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }
}
