//! The logical document operations every upper layer shares: what a data entry's payload
//! holds. Versioned and hand-framed (little-endian, `u32` length prefixes):
//!
//! ```text
//! op     = version:u8 (1, 2 or 3) kind:u8 origin:u64 txn:u64 body [stamp: version 3]
//! body   = insert | upsert (kinds 1, 3): collection:str key:bytes value:bytes
//!        | update (2): collection:str key:bytes value:bytes before
//!        | delete (4): collection:str key:bytes before
//!        | ddl (5): statement:str schema_version:u64
//!        | begin (6) | commit (7): empty
//! before = (version 1: nothing) | (version 2: 1:u8 bytes) | (version 3: 0:u8 | 1:u8 bytes)
//! stamp  = cluster:str lsn:u64 hlc:16 bytes seen_count:u32 (cluster:str lsn:u64){seen_count}
//! str    = len:u32 utf-8 bytes        bytes = len:u32 bytes
//! batch  = count:u32 (len:u32 op){count}
//! ```
//!
//! A *stamp* (version 3) says where a write was first made when clusters replicate to
//! each other (active-active): the origin cluster, the LSN there (0: this entry's own),
//! its HLC timestamp, and what the origin had applied of each other cluster when it wrote
//! it (`seen`), so a receiver can tell a causally later write from a concurrent one.
//!
//! An update or delete may carry the document it replaces (its *before-image*, as
//! PostgreSQL logs the old row under `REPLICA IDENTITY FULL`), so any reader of the log,
//! change data capture included, can tell what changed without the store. An op with a
//! before-image is written as version 2; every other op as version 1, so logs written
//! before version 2 existed read unchanged and sizes of ops without one do not move.
//!
//! Decoding checks every length against the bytes present before slicing, allocates
//! nothing sized by a stored length, and rejects trailing bytes: an unknown version or
//! kind is an [`OpError`], never a panic.

use bytes::{BufMut, Bytes};
use themis_clock::{NodeId, Timestamp};

use crate::Lsn;

/// The newest format version this crate reads and writes (ops without a before-image or a
/// stamp are still written as version 1, with a before-image and no stamp as version 2).
pub const OP_VERSION: u8 = 3;

/// The most `seen` entries a stamp carries (one per other cluster of a mesh).
pub const MAX_STAMP_SEEN: usize = 64;

/// Where a write was first made, for replication between clusters (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The origin cluster's name.
    pub cluster: String,
    /// The write's LSN in the origin cluster (0: the LSN of the entry holding the op).
    pub lsn: Lsn,
    /// When it was written, on the origin's clock.
    pub hlc: Timestamp,
    /// For each other cluster, the highest of its origin LSNs the origin cluster had
    /// applied when it made the write.
    pub seen: Vec<(String, Lsn)>,
}

/// A document operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The node where the operation originated (for loop prevention and conflicts).
    pub origin: NodeId,
    /// The transaction it belongs to (0: none).
    pub txn: u64,
    /// What it does.
    pub kind: OpKind,
    /// Where it was first made, for ops of clusters that replicate to each other.
    pub stamp: Option<Stamp>,
}

/// What an [`Op`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Create a document that must not exist.
    Insert {
        /// The collection.
        collection: String,
        /// The document key.
        key: Bytes,
        /// The document.
        value: Bytes,
    },
    /// Replace a document that must exist.
    Update {
        /// The collection.
        collection: String,
        /// The document key.
        key: Bytes,
        /// The new document.
        value: Bytes,
        /// The document it replaces, when the writer logs before-images.
        before: Option<Bytes>,
    },
    /// Create or replace a document.
    Upsert {
        /// The collection.
        collection: String,
        /// The document key.
        key: Bytes,
        /// The document.
        value: Bytes,
    },
    /// Remove a document.
    Delete {
        /// The collection.
        collection: String,
        /// The document key.
        key: Bytes,
        /// The document it removes, when the writer logs before-images.
        before: Option<Bytes>,
    },
    /// A schema change.
    Ddl {
        /// The statement.
        statement: String,
        /// The schema version it produces.
        schema_version: u64,
    },
    /// Start of transaction `txn`.
    Begin,
    /// Commit of transaction `txn`.
    Commit,
}

impl OpKind {
    fn code(&self) -> u8 {
        match self {
            OpKind::Insert { .. } => 1,
            OpKind::Update { .. } => 2,
            OpKind::Upsert { .. } => 3,
            OpKind::Delete { .. } => 4,
            OpKind::Ddl { .. } => 5,
            OpKind::Begin => 6,
            OpKind::Commit => 7,
        }
    }

    /// The (collection, key) it touches, for dependency tracking.
    #[must_use]
    pub fn target(&self) -> Option<(&str, &Bytes)> {
        match self {
            OpKind::Insert { collection, key, .. }
            | OpKind::Update { collection, key, .. }
            | OpKind::Upsert { collection, key, .. }
            | OpKind::Delete { collection, key, .. } => Some((collection, key)),
            OpKind::Ddl { .. } | OpKind::Begin | OpKind::Commit => None,
        }
    }
}

/// Why bytes are not a valid operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// A version this build does not know.
    #[error("unknown op format version {0} (this build reads version {OP_VERSION})")]
    UnknownVersion(u8),
    /// A kind this build does not know.
    #[error("unknown op kind {0}")]
    UnknownKind(u8),
    /// The bytes end inside a field.
    #[error("op truncated: {field} needs {needed} bytes at offset {offset}, {available} remain")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where.
        offset: usize,
        /// Bytes it needs.
        needed: u64,
        /// Bytes present.
        available: usize,
    },
    /// A string field is not UTF-8.
    #[error("op field {field} at offset {offset} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
        /// Where.
        offset: usize,
    },
    /// Bytes follow the last field.
    #[error("{0} unexpected bytes after the op")]
    Trailing(usize),
    /// A version this kind is never written in (version 2 is only for updates and
    /// deletes that carry a before-image).
    #[error("op kind {kind} is never written as version {version}")]
    VersionForKind {
        /// The version found.
        version: u8,
        /// The kind found.
        kind: u8,
    },
    /// The byte before a version 2 field is not 1.
    #[error(
        "op field {field} at offset {offset}: marker byte {flag}, expected 1 (an op without it is version 1)"
    )]
    BadFlag {
        /// The field.
        field: &'static str,
        /// Where.
        offset: usize,
        /// The byte found.
        flag: u8,
    },
    /// A field is longer than the `u32` length prefix allows, or a stamp has more
    /// `seen` entries than [`MAX_STAMP_SEEN`].
    #[error("op field {0} is longer than its limit")]
    TooLong(&'static str),
    /// A count above its bound.
    #[error("op field {field} counts {count}, above the limit of {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// The count found.
        count: usize,
        /// The bound.
        max: usize,
    },
}

impl Op {
    /// An op without a stamp.
    #[must_use]
    pub fn new(origin: NodeId, txn: u64, kind: OpKind) -> Op {
        Op { origin, txn, kind, stamp: None }
    }

    /// The before-image it carries, if any.
    #[must_use]
    pub fn before(&self) -> Option<&Bytes> {
        match &self.kind {
            OpKind::Update { before, .. } | OpKind::Delete { before, .. } => before.as_ref(),
            _ => None,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), OpError> {
        let before = self.before();
        let version = match (&self.stamp, before) {
            (Some(_), _) => 3,
            (None, Some(_)) => 2,
            (None, None) => 1,
        };
        out.put_u8(version);
        out.put_u8(self.kind.code());
        out.put_u64_le(self.origin.0);
        out.put_u64_le(self.txn);
        let put_before = |out: &mut Vec<u8>| -> Result<(), OpError> {
            match before {
                Some(before) => {
                    out.put_u8(1);
                    put_field(out, "before", before)?;
                }
                None if version == 3 => out.put_u8(0),
                None => {}
            }
            Ok(())
        };
        match &self.kind {
            OpKind::Insert { collection, key, value } | OpKind::Upsert { collection, key, value } => {
                put_field(out, "collection", collection.as_bytes())?;
                put_field(out, "key", key)?;
                put_field(out, "value", value)?;
            }
            OpKind::Update { collection, key, value, .. } => {
                put_field(out, "collection", collection.as_bytes())?;
                put_field(out, "key", key)?;
                put_field(out, "value", value)?;
                put_before(out)?;
            }
            OpKind::Delete { collection, key, .. } => {
                put_field(out, "collection", collection.as_bytes())?;
                put_field(out, "key", key)?;
                put_before(out)?;
            }
            OpKind::Ddl { statement, schema_version } => {
                put_field(out, "statement", statement.as_bytes())?;
                out.put_u64_le(*schema_version);
            }
            OpKind::Begin | OpKind::Commit => {}
        }
        if let Some(stamp) = &self.stamp {
            put_stamp(out, stamp)?;
        }
        Ok(())
    }

    /// The encoding.
    pub fn encode(&self) -> Result<Bytes, OpError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out.into())
    }

    /// Decodes exactly one op; keys and values are slices of `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Op, OpError> {
        let mut r = Reader { bytes, at: 0 };
        let op = r.op()?;
        r.finish()?;
        Ok(op)
    }
}

/// Bytes of an op's fixed part: version, kind, origin and txn.
const OP_FIXED_LEN: usize = 1 + 1 + 8 + 8;

/// The encoded size of a one-op batch (what [`encode_batch`] writes for a single insert,
/// update or upsert) holding a `collection_len`-byte collection name, a `key_len`-byte key
/// and a `value_len`-byte value. Limits above the codec (the largest document a node
/// accepts) are derived from it, so they stay exact if the layout changes.
#[must_use]
pub const fn single_write_batch_len(collection_len: usize, key_len: usize, value_len: usize) -> usize {
    // count, op length, fixed part, then three length-prefixed fields.
    4 + 4 + OP_FIXED_LEN + (4 + collection_len) + (4 + key_len) + (4 + value_len)
}

/// Encodes a batch of ops (one data entry's payload).
pub fn encode_batch(ops: &[Op]) -> Result<Bytes, OpError> {
    let mut out = Vec::new();
    out.put_u32_le(u32::try_from(ops.len()).map_err(|_| OpError::TooLong("batch"))?);
    for op in ops {
        let at = out.len();
        out.put_u32_le(0);
        op.encode_into(&mut out)?;
        let len = u32::try_from(out.len() - at - 4).map_err(|_| OpError::TooLong("op"))?;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(out.into())
}

/// Decodes a batch written by [`encode_batch`].
pub fn decode_batch(bytes: &Bytes) -> Result<Vec<Op>, OpError> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32("count")?;
    // Each op takes at least 22 bytes, so the count cannot ask for more than the input holds.
    let mut ops = Vec::with_capacity((count as usize).min(bytes.len() / 22));
    for _ in 0..count {
        let body = r.field("op")?;
        ops.push(Op::decode(&body)?);
    }
    r.finish()?;
    Ok(ops)
}

fn put_stamp(out: &mut Vec<u8>, stamp: &Stamp) -> Result<(), OpError> {
    if stamp.seen.len() > MAX_STAMP_SEEN {
        return Err(OpError::TooLong("stamp seen"));
    }
    put_field(out, "stamp cluster", stamp.cluster.as_bytes())?;
    out.put_u64_le(stamp.lsn);
    out.put_slice(&stamp.hlc.to_bytes());
    out.put_u32_le(stamp.seen.len() as u32);
    for (cluster, lsn) in &stamp.seen {
        put_field(out, "stamp seen cluster", cluster.as_bytes())?;
        out.put_u64_le(*lsn);
    }
    Ok(())
}

fn put_field(out: &mut Vec<u8>, field: &'static str, bytes: &[u8]) -> Result<(), OpError> {
    out.put_u32_le(u32::try_from(bytes.len()).map_err(|_| OpError::TooLong(field))?);
    out.put_slice(bytes);
    Ok(())
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, field: &'static str, n: u64) -> Result<Bytes, OpError> {
        let available = self.bytes.len() - self.at;
        if n > available as u64 {
            return Err(OpError::Truncated { field, offset: self.at, needed: n, available });
        }
        let n = n as usize;
        let out = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, OpError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, OpError> {
        Ok(u32::from_le_bytes(self.take(field, 4)?[..].try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, OpError> {
        Ok(u64::from_le_bytes(self.take(field, 8)?[..].try_into().expect("8 bytes")))
    }

    fn field(&mut self, field: &'static str) -> Result<Bytes, OpError> {
        let len = self.u32(field)?;
        self.take(field, u64::from(len))
    }

    fn string(&mut self, field: &'static str) -> Result<String, OpError> {
        let offset = self.at;
        let bytes = self.field(field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| OpError::NotUtf8 { field, offset })
    }

    fn op(&mut self) -> Result<Op, OpError> {
        let version = self.u8("version")?;
        if !(1..=OP_VERSION).contains(&version) {
            return Err(OpError::UnknownVersion(version));
        }
        let code = self.u8("kind")?;
        if !(1..=7).contains(&code) {
            return Err(OpError::UnknownKind(code));
        }
        // Only updates and deletes carrying a before-image are written as version 2; any
        // other op as version 2 would be a second encoding of a version 1 op.
        if version == 2 && code != 2 && code != 4 {
            return Err(OpError::VersionForKind { version, kind: code });
        }
        let origin = NodeId(self.u64("origin")?);
        let txn = self.u64("txn")?;
        let kind = match code {
            1..=3 => {
                let collection = self.string("collection")?;
                let key = self.field("key")?;
                let value = self.field("value")?;
                match code {
                    1 => OpKind::Insert { collection, key, value },
                    2 => OpKind::Update { collection, key, value, before: self.before(version)? },
                    _ => OpKind::Upsert { collection, key, value },
                }
            }
            4 => {
                let collection = self.string("collection")?;
                let key = self.field("key")?;
                OpKind::Delete { collection, key, before: self.before(version)? }
            }
            5 => OpKind::Ddl {
                statement: self.string("statement")?,
                schema_version: self.u64("schema_version")?,
            },
            6 => OpKind::Begin,
            _ => OpKind::Commit,
        };
        let stamp = if version == 3 { Some(self.stamp()?) } else { None };
        Ok(Op { origin, txn, kind, stamp })
    }

    /// A before-image: absent in version 1; in version 2 the byte 1, then the bytes (any
    /// other byte is refused, 0 included: an op without a before-image is version 1, so
    /// each op has one encoding); in version 3 the byte 0 (none) or 1 and the bytes.
    fn before(&mut self, version: u8) -> Result<Option<Bytes>, OpError> {
        if version < 2 {
            return Ok(None);
        }
        let offset = self.at;
        match self.u8("before")? {
            1 => Ok(Some(self.field("before")?)),
            0 if version == 3 => Ok(None),
            flag => Err(OpError::BadFlag { field: "before", offset, flag }),
        }
    }

    fn stamp(&mut self) -> Result<Stamp, OpError> {
        let cluster = self.string("stamp cluster")?;
        let lsn = self.u64("stamp lsn")?;
        let hlc = self.take("stamp hlc", Timestamp::ENCODED_LEN as u64)?;
        let hlc = Timestamp::from_bytes(&hlc).expect("16 bytes taken");
        let count = self.u32("stamp seen count")? as usize;
        if count > MAX_STAMP_SEEN {
            return Err(OpError::TooMany { field: "stamp seen", count, max: MAX_STAMP_SEEN });
        }
        let mut seen = Vec::with_capacity(count);
        for _ in 0..count {
            seen.push((self.string("stamp seen cluster")?, self.u64("stamp seen lsn")?));
        }
        Ok(Stamp { cluster, lsn, hlc, seen })
    }

    fn finish(&self) -> Result<(), OpError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(OpError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Op> {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let kinds = vec![
            OpKind::Insert { collection: "users".into(), key: b("u1"), value: b("{\"n\":1}") },
            OpKind::Update { collection: "users".into(), key: b("u1"), value: b("{}"), before: None },
            OpKind::Upsert { collection: "c".into(), key: b(""), value: b("") },
            OpKind::Delete { collection: "users".into(), key: b("u1"), before: None },
            OpKind::Update {
                collection: "users".into(),
                key: b("u1"),
                value: b("{}"),
                before: Some(b("{\"n\":1}")),
            },
            OpKind::Delete { collection: "users".into(), key: b("u1"), before: Some(b("")) },
            OpKind::Ddl { statement: "CREATE COLLECTION x".into(), schema_version: 4 },
            OpKind::Begin,
            OpKind::Commit,
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Op { origin: NodeId(3), txn: i as u64, kind, stamp: None })
            .collect()
    }

    #[test]
    fn every_kind_round_trips_alone_and_in_a_batch() {
        for op in all_kinds() {
            assert_eq!(Op::decode(&op.encode().unwrap()).unwrap(), op);
        }
        let batch = encode_batch(&all_kinds()).unwrap();
        assert_eq!(decode_batch(&batch).unwrap(), all_kinds());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let good = all_kinds()[0].encode().unwrap().to_vec();
        let mut v4 = good.clone();
        v4[0] = 4;
        assert_eq!(Op::decode(&v4.into()), Err(OpError::UnknownVersion(4)));
        let mut k9 = good.clone();
        k9[1] = 9;
        assert_eq!(Op::decode(&k9.into()), Err(OpError::UnknownKind(9)));
        for cut in 0..good.len() {
            let err = Op::decode(&Bytes::copy_from_slice(&good[..cut])).unwrap_err();
            assert!(matches!(err, OpError::Truncated { .. }), "cut {cut}: {err}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Op::decode(&trailing.into()), Err(OpError::Trailing(1)));
        let mut bad_utf8 = good;
        bad_utf8[22] = 0xff;
        assert!(matches!(Op::decode(&bad_utf8.into()), Err(OpError::NotUtf8 { field: "collection", .. })));
        let huge_count = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decode_batch(&huge_count), Err(OpError::Truncated { field: "op", .. })));
    }

    #[test]
    fn before_images_are_version_2_and_other_ops_stay_version_1() {
        let ops = all_kinds();
        let versions: Vec<u8> = ops.iter().map(|op| op.encode().unwrap()[0]).collect();
        assert_eq!(versions, [1, 1, 1, 1, 2, 2, 1, 1, 1]);
        // A version 2 delete whose marker byte is not 1 is refused, naming it.
        let mut bad = ops[5].encode().unwrap().to_vec();
        let flag_at = 18 + 4 + "users".len() + 4 + 2;
        bad[flag_at] = 7;
        assert_eq!(
            Op::decode(&bad.into()),
            Err(OpError::BadFlag { field: "before", offset: flag_at, flag: 7 })
        );
        // Version 2 with the byte 0 (no before-image) is refused: that op is version 1, and
        // each op has one encoding (the fuzzer's round-trip check found the second one).
        let mut absent = ops[3].encode().unwrap().to_vec();
        absent[0] = 2;
        absent.push(0);
        let offset = absent.len() - 1;
        assert_eq!(Op::decode(&absent.into()), Err(OpError::BadFlag { field: "before", offset, flag: 0 }));
        // Kinds that never carry a before-image are never version 2.
        for op in [&ops[0], &ops[2], &ops[6], &ops[7]] {
            let mut v2 = op.encode().unwrap().to_vec();
            v2[0] = 2;
            assert!(
                matches!(Op::decode(&v2.into()), Err(OpError::VersionForKind { version: 2, .. })),
                "{op:?}"
            );
        }
    }

    fn stamp(seen: usize) -> Stamp {
        Stamp {
            cluster: "us-east".into(),
            lsn: 42,
            hlc: Timestamp::from_parts(1_700_000_000_000, 3, NodeId(2)).unwrap(),
            seen: (0..seen).map(|i| (format!("c{i}"), i as Lsn * 10)).collect(),
        }
    }

    #[test]
    fn stamped_ops_are_version_3_round_trip_and_refuse_damage() {
        for seen in [0, 2] {
            let ops: Vec<Op> =
                all_kinds().into_iter().map(|op| Op { stamp: Some(stamp(seen)), ..op }).collect();
            for op in &ops {
                let bytes = op.encode().unwrap();
                assert_eq!(bytes[0], 3, "{op:?}");
                assert_eq!(Op::decode(&bytes).unwrap(), *op);
                for cut in 0..bytes.len() {
                    assert!(Op::decode(&bytes.slice(..cut)).is_err(), "cut {cut} of {op:?}");
                }
            }
            assert_eq!(decode_batch(&encode_batch(&ops).unwrap()).unwrap(), ops);
        }
        // A version 3 update without a before-image carries the byte 0; any other marker
        // but 0 and 1 is refused.
        let update = Op { stamp: Some(stamp(0)), ..all_kinds()[1].clone() };
        let mut bad = update.encode().unwrap().to_vec();
        let flag_at = 18 + 4 + "users".len() + 4 + 2 + 4 + 2;
        assert_eq!(bad[flag_at], 0);
        bad[flag_at] = 2;
        assert_eq!(
            Op::decode(&bad.into()),
            Err(OpError::BadFlag { field: "before", offset: flag_at, flag: 2 })
        );
        // Too many `seen` entries: refused when encoding and when decoding.
        let crowded = Op { stamp: Some(stamp(MAX_STAMP_SEEN + 1)), ..all_kinds()[0].clone() };
        assert_eq!(crowded.encode(), Err(OpError::TooLong("stamp seen")));
        let mut bytes = Op { stamp: Some(stamp(0)), ..all_kinds()[0].clone() }.encode().unwrap().to_vec();
        let count_at = bytes.len() - 4;
        bytes[count_at..].copy_from_slice(&(MAX_STAMP_SEEN as u32 + 1).to_le_bytes());
        assert_eq!(
            Op::decode(&bytes.into()),
            Err(OpError::TooMany { field: "stamp seen", count: MAX_STAMP_SEEN + 1, max: MAX_STAMP_SEEN })
        );
    }

    #[test]
    fn targets_name_collection_and_key() {
        let ops = all_kinds();
        assert_eq!(ops[0].kind.target().map(|(c, k)| (c, &k[..])), Some(("users", &b"u1"[..])));
        assert_eq!(ops[6].kind.target(), None);
    }

    #[test]
    fn the_single_write_size_is_what_the_encoder_writes() {
        for (c, k, v) in [(1, 1, 0), (5, 9, 100), (255, 255, 4096)] {
            let op = Op {
                origin: NodeId(3),
                txn: 7,
                kind: OpKind::Upsert {
                    collection: "c".repeat(c),
                    key: Bytes::from(vec![b'k'; k]),
                    value: Bytes::from(vec![b'v'; v]),
                },
                stamp: None,
            };
            assert_eq!(encode_batch(&[op]).unwrap().len(), single_write_batch_len(c, k, v));
        }
    }
}
