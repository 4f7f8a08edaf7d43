//! Writes the seed corpus for the WAL targets. Run once after a format change:
//! `cargo test --manifest-path fuzz/Cargo.toml --test seed_corpus -- --ignored`.

use std::path::Path;

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_wal::op::{self, Op, OpKind};
use themis_wal::segment::SegmentHeader;
use themis_wal::{NewEntry, record};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
#[ignore = "writes files; run by hand after a format change"]
fn write_seed_corpus() {
    let ts = Timestamp::from_parts(1_700_000_000_000, 1, NodeId(2)).unwrap();
    let mut one = Vec::new();
    record::encode(&mut one, 1, &NewEntry::data(ts, &b"hello"[..]));
    write("wal_record_decode", "valid", &one);
    write("wal_record_decode", "truncated", &one[..20]);
    let mut flipped = one.clone();
    flipped[30] ^= 4;
    write("wal_record_decode", "bad_crc", &flipped);
    let mut huge = one.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    write("wal_record_decode", "huge_length", &huge);
    write("wal_record_decode", "zeros", &[0u8; 64]);

    let header = SegmentHeader { id: 1, first_lsn: 1, created: ts, tail_window: 1 << 20, recycled: false };
    let mut segment = header.encode().to_vec();
    for lsn in 1..=3 {
        record::encode(
            &mut segment,
            lsn,
            &NewEntry::data(ts, Bytes::from(vec![lsn as u8; 10 * lsn as usize])),
        );
    }
    write("wal_segment_recover", "three_records", &segment);
    write("wal_segment_recover", "torn_tail", &segment[..segment.len() - 5]);
    let mut middle = segment.clone();
    middle[64 + 50] ^= 1;
    write("wal_segment_recover", "corrupt_middle", &middle);
    write("wal_segment_recover", "header_only", &header.encode());
    // A recycled segment: the file held `segment` before; one new record and its
    // terminator now lie over the start of the old records.
    let reused = SegmentHeader { id: 5, first_lsn: 40, created: ts, tail_window: 64, recycled: true };
    let mut recycled = reused.encode().to_vec();
    record::encode(&mut recycled, 40, &NewEntry::data(ts, &b"new"[..]));
    recycled.extend_from_slice(&[0; themis_wal::segment::TERMINATOR_LEN]);
    let mut over_old = segment.clone();
    over_old.extend_from_slice(&segment[64..]);
    over_old[..recycled.len()].copy_from_slice(&recycled);
    write("wal_segment_recover", "recycled", &over_old);
    let unterminated = recycled.len() - themis_wal::segment::TERMINATOR_LEN;
    over_old[unterminated..recycled.len()].fill(0xab);
    write("wal_segment_recover", "recycled_torn", &over_old);
    write("wal_segment_recover", "short", b"THEMISWL");

    let ops = vec![
        Op {
            origin: NodeId(1),
            txn: 7,
            kind: OpKind::Upsert {
                collection: "users".into(),
                key: Bytes::from_static(b"u1"),
                value: Bytes::from_static(b"{}"),
            },
            stamp: None,
        },
        Op { origin: NodeId(1), txn: 7, kind: OpKind::Commit, stamp: None },
        Op {
            origin: NodeId(1),
            txn: 0,
            kind: OpKind::Ddl { statement: "CREATE x".into(), schema_version: 2 },
            stamp: None,
        },
    ];
    write("wal_op_decode", "upsert", &ops[0].encode().unwrap());
    write("wal_op_decode", "batch", &op::encode_batch(&ops).unwrap());
    let update = Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Update {
            collection: "orders".into(),
            key: Bytes::from_static(b"o1"),
            value: Bytes::from_static(b"{\"n\":2}"),
            before: Some(Bytes::from_static(b"{\"n\":1}")),
        },
        stamp: None,
    };
    write("wal_op_decode", "update_with_before_image", &update.encode().unwrap());
    // A write made in another cluster (active-active), with what its origin had seen.
    let stamped = Op {
        stamp: Some(op::Stamp {
            cluster: "us-east".into(),
            lsn: 42,
            hlc: ts,
            seen: vec![("us-west".into(), 17)],
        }),
        ..update.clone()
    };
    write("wal_op_decode", "stamped_update", &stamped.encode().unwrap());
    write("wal_op_decode", "unknown_kind", &[1, 99, 0, 0]);
    write("wal_op_decode", "huge_count", &[0xff, 0xff, 0xff, 0xff, 1]);

    // Replication frames: one of each codec, a hello, an entries frame, and damaged ones.
    use themis_ship::frame::{FrameKind, encode, encode_plain};
    use themis_ship::{Codec, CodecChoice, Compressor};
    let mut records = Vec::new();
    for lsn in 1..=3 {
        record::encode(&mut records, lsn, &NewEntry::data(ts, Bytes::from(format!("{{\"id\":{lsn}}}"))));
    }
    let entries = themis_ship::ship::encode_entries(themis_wal::LsnRange { first: 1, last: 3 }, &records);
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd { level: 1 }, Codec::Snappy] {
        let mut c = Compressor::new(CodecChoice::Fixed(codec)).unwrap();
        let frame = encode(FrameKind::Entries, &entries, &mut c, &mut Vec::new());
        write("frame_decode", &format!("entries_{}", codec.id()), &frame);
    }
    let hello = themis_ship::transport::Hello {
        protocol: 1,
        cluster: "c".into(),
        node: NodeId(2),
        purpose: themis_ship::transport::Purpose::Ship,
        extra: Bytes::new(),
    };
    let frame = encode_plain(FrameKind::Hello, &hello.encode().unwrap());
    write("frame_decode", "hello", &frame);
    write("frame_decode", "truncated", &frame[..frame.len() - 3]);
    let mut flipped = frame.to_vec();
    flipped[30] ^= 1;
    write("frame_decode", "bad_crc", &flipped);
    write("frame_decode", "tls_client_hello", &[0x16, 0x03, 0x01, 0x00, 0xc4, 0x01]);
}

#[test]
#[ignore = "writes files; run by hand after a format change"]
fn write_raft_seed_corpus() {
    use themis_raft::wire;
    use themis_raft::{Body, Message, Signature, VoteClaim};
    use themis_wal::{Entry, EntryKind};

    let ts = Timestamp::from_parts(1_700_000_000_000, 1, NodeId(2)).unwrap();
    let claim = VoteClaim {
        cluster: "c".into(),
        term: 2,
        candidate: NodeId(1),
        voter: NodeId(2),
        last_lsn: 5,
        last_term: 1,
        pre_vote: false,
        response: false,
        granted: false,
    };
    let entries = (6..=8)
        .map(|lsn| Entry {
            lsn,
            term: 2,
            timestamp: ts,
            kind: EntryKind::DATA,
            payload: Bytes::from(vec![lsn as u8; 12]),
        })
        .collect();
    let bodies = [
        ("vote", Body::Vote { claim, signature: Signature(vec![7; 64]), force: false }),
        ("append", Body::Append { prev_lsn: 5, prev_term: 1, entries, commit: 5 }),
        ("append_response", Body::AppendResponse { reject: true, lsn: 5, hint_lsn: 3, hint_term: 1 }),
        ("heartbeat", Body::Heartbeat { commit: 5, round: 9, closed: 6, closed_ms: 1_700_000_000_000 }),
        ("read_index", Body::ReadIndex { ctx: Bytes::from_static(b"ctx") }),
    ];
    for (name, body) in bodies {
        let message = Message { from: NodeId(1), to: NodeId(2), term: 2, body };
        let bytes = wire::encode(&message);
        write("raft_message_decode", name, &bytes);
        if name == "append" {
            // The same append forwarded by an upstream to a learner (cascading), and its answer.
            write("raft_message_decode", "forward", &wire::encode_forward(NodeId(3), NodeId(2), &message));
            write("raft_message_decode", "forward_ack", &wire::encode_forward_ack(NodeId(2), NodeId(3), 8));
            write("raft_message_decode", "append_truncated", &bytes[..bytes.len() - 5]);
            let mut flipped = bytes.clone();
            flipped[60] ^= 1;
            write("raft_message_decode", "append_bad_crc", &flipped);
        }
    }
}
