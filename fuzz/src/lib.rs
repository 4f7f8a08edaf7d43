//! The checks behind each fuzz target. A target is a function over arbitrary bytes that
//! must never panic except to report a broken invariant; the libFuzzer binaries in
//! `fuzz_targets/` and the corpus replay test in `tests/` both call them.

/// Every fuzz target: its name (also its directory under `corpus/`) and its check.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("timestamp_decode", timestamp_decode),
    ("vector_clock_decode", vector_clock_decode),
    ("wal_record_decode", wal_record_decode),
    ("wal_segment_recover", wal_segment_recover),
    ("wal_op_decode", wal_op_decode),
    ("frame_decode", frame_decode),
    ("raft_message_decode", raft_message_decode),
    ("cdc_decode", cdc_decode),
    ("logical_parse", logical_parse),
];

/// Timestamps from bytes and from text: decoding never panics, and whatever decodes
/// encodes back to the same value.
pub fn timestamp_decode(data: &[u8]) {
    use themis_clock::{NodeId, Timestamp};

    if let Ok(ts) = Timestamp::from_bytes(data) {
        assert_eq!(ts.to_bytes().as_slice(), data, "byte encoding is canonical");
        assert_eq!(ts.to_string().parse::<Timestamp>().ok(), Some(ts), "text round-trip");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ts) = text.parse::<Timestamp>() {
            assert_eq!(ts.to_string().parse::<Timestamp>().ok(), Some(ts), "text round-trip");
            assert_eq!(Timestamp::from_bytes(&ts.to_bytes()).ok(), Some(ts), "byte round-trip");
        }
        if let Ok(node) = text.parse::<NodeId>() {
            assert_eq!(node.to_string().parse::<NodeId>().ok(), Some(node));
        }
    }
}

/// Vector clocks from their postcard encoding: decoding never panics, and whatever
/// decodes is sorted, has no zero counters, fits its bound, and re-encodes to itself.
pub fn vector_clock_decode(data: &[u8]) {
    use themis_clock::VectorClock;

    if let Ok(clock) = postcard::from_bytes::<VectorClock>(data) {
        let entries: Vec<_> = clock.iter().collect();
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "entries sorted and unique");
        assert!(entries.iter().all(|&(_, counter)| counter > 0), "no zero counters");
        assert!(clock.len() <= clock.max_entries(), "within bound");
        let bytes = postcard::to_stdvec(&clock).expect("a decoded clock encodes");
        assert_eq!(postcard::from_bytes::<VectorClock>(&bytes).ok(), Some(clock), "round-trip");
    }
}

/// WAL records: decoding never panics, reads only the bytes present, and whatever decodes
/// re-encodes to exactly the bytes it came from.
pub fn wal_record_decode(data: &[u8]) {
    use themis_wal::record;

    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok((entry, size)) = record::decode(&bytes, 0, 1 << 20) {
        assert!(size <= data.len() && size == record::encoded_len(entry.payload.len()));
        let new = themis_wal::NewEntry {
            term: entry.term,
            timestamp: entry.timestamp,
            kind: entry.kind,
            payload: entry.payload.clone(),
        };
        let mut again = Vec::new();
        record::encode(&mut again, entry.lsn, &new);
        assert_eq!(again, &data[..size], "decode/encode round-trip");
    }
}

/// Segment recovery from arbitrary file bytes: the pure scan in both modes never panics
/// and indexes only records inside the file; opening a directory holding the bytes as a
/// segment either fails with a typed error or yields a log whose every entry reads back.
pub fn wal_segment_recover(data: &[u8]) {
    use themis_wal::segment::{self, OnBadRecord, SKIPPED};
    use themis_wal::{RecoveryMode, Wal, WalConfig, WalError};

    let bytes = bytes::Bytes::copy_from_slice(data);
    for mode in [OnBadRecord::Stop, OnBadRecord::Skip] {
        if let Ok(scan) = segment::scan(&bytes, 1 << 16, mode) {
            assert!(scan.valid_len <= data.len() as u64);
            let live: Vec<u32> = scan.offsets.iter().copied().filter(|&o| o != SKIPPED).collect();
            assert!(live.windows(2).all(|w| w[0] < w[1]), "offsets increase");
            assert!(live.iter().all(|&o| u64::from(o) < scan.valid_len));
        }
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join(segment::file_name(1));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    for recovery in [RecoveryMode::TolerateCorruptedTail, RecoveryMode::SkipCorrupted] {
        let config =
            WalConfig { segment_bytes: 1 << 16, max_record_bytes: 1 << 15, recovery, ..WalConfig::default() };
        match Wal::open(dir.path(), config) {
            Ok((wal, _)) => {
                for entry in wal.reader(wal.first_lsn(), 1 << 16) {
                    match entry {
                        Ok(_) | Err(WalError::Skipped { .. }) => {}
                        Err(err) => panic!("recovered log fails to read: {err}"),
                    }
                }
            }
            Err(WalError::Corrupt { .. } | WalError::Segment { .. }) => {}
            Err(err) => panic!("unexpected error kind: {err}"),
        }
    }
}

/// Document operations: decoding a single op or a batch never panics, and whatever
/// decodes re-encodes to the same bytes.
pub fn wal_op_decode(data: &[u8]) {
    use themis_wal::op::{self, Op};

    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(decoded) = Op::decode(&bytes) {
        assert_eq!(decoded.encode().expect("a decoded op encodes"), bytes, "op round-trip");
    }
    if let Ok(batch) = op::decode_batch(&bytes) {
        assert_eq!(op::encode_batch(&batch).expect("a decoded batch encodes"), bytes, "batch round-trip");
    }
}

/// Replication frames: decoding never panics and never allocates past the maximum frame
/// size; a decoded payload has the declared length; payloads that decode are handed to
/// the decoders of their kind (hello, entries), which must not panic either.
pub fn frame_decode(data: &[u8]) {
    use themis_ship::frame::{self, FrameKind};
    use themis_ship::transport::Hello;

    const MAX: usize = 1 << 20;
    let bytes = bytes::Bytes::copy_from_slice(data);
    let mut decompressor = themis_ship::Decompressor::new();
    if let Ok(Some((frame, used))) = frame::decode(&bytes, MAX, &mut decompressor) {
        assert!(used <= data.len() && frame.payload.len() <= MAX);
        assert_eq!(frame.wire_len, used);
        match frame.kind {
            FrameKind::Hello => {
                if let Ok(hello) = Hello::decode(&frame.payload) {
                    assert_eq!(
                        hello.encode().ok().and_then(|b| Hello::decode(&b).ok()),
                        Some(hello),
                        "hello round-trip"
                    );
                }
            }
            FrameKind::Entries => {
                if let Ok(Some(records)) = themis_ship::ship::decode_entries(&frame.payload, 1 << 16) {
                    let entries = records.entries();
                    assert_eq!(entries.len(), records.len());
                    assert!(
                        entries.iter().zip(records.range().first..).all(|(e, lsn)| e.lsn == lsn),
                        "dense LSNs"
                    );
                }
            }
            _ => {}
        }
    }
}

/// Raft messages from the network: decoding never panics and respects its limits, and
/// whatever decodes encodes back to bytes that decode to the same message.
pub fn raft_message_decode(data: &[u8]) {
    use themis_raft::wire::{self, WireLimits};

    let limits = WireLimits {
        max_entries: 1024,
        max_record_bytes: 1 << 16,
        max_snapshot_bytes: 1 << 20,
        max_ctx_bytes: 1024,
        max_chunk_bytes: 1 << 12,
    };
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(message) = wire::decode(&bytes, &limits) {
        let again = bytes::Bytes::from(wire::encode(&message));
        assert_eq!(wire::decode(&again, &limits).ok(), Some(message), "raft message round-trip");
    }
    // Everything a peer link carries: snapshot chunks, forwards and their answers included.
    if let Ok(packet) = wire::decode_packet(&bytes, &limits) {
        let again = bytes::Bytes::from(wire::encode_packet(&packet));
        assert_eq!(wire::decode_packet(&again, &limits).ok(), Some(packet), "raft packet round-trip");
    }
}

/// Change data capture's two inputs from outside: a subscription's filter text (from a URL
/// or a config) and a committed entry's payload. The first byte picks which. Parsing a
/// filter never panics, and one that parses matches any name without panicking; decoding
/// an entry never panics, and its events name the entry's LSN in batch order.
pub fn cdc_decode(data: &[u8]) {
    use themis_cdc::{Filter, decode_entry};
    use themis_wal::{Entry, EntryKind};

    let Some((&which, rest)) = data.split_first() else { return };
    if which % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let (ops, collections) = text.split_once('|').unwrap_or(("", &text));
        if let Ok(filter) = Filter::parse(ops, collections) {
            for name in ["", "orders", collections, ops, "tenant_acme.x"] {
                let _ = filter.matches_collection(name);
            }
        }
    } else {
        let entry = Entry {
            lsn: 9,
            term: 1,
            timestamp: themis_clock::Timestamp::ZERO,
            kind: EntryKind::DATA,
            payload: bytes::Bytes::copy_from_slice(rest),
        };
        if let Ok(events) = decode_entry(&entry) {
            assert!(events.iter().all(|e| e.lsn == 9), "events carry their entry's LSN");
            assert!(events.windows(2).all(|w| w[0].index < w[1].index), "events in batch order");
            assert!(events.last().is_none_or(|e| e.entry_end), "the last event ends the entry");
        }
    }
}

/// Logical replication's inputs from outside, picked by the first byte: a row predicate
/// (parsing never panics, nor does evaluating one that parses), a DDL statement (what
/// parses prints back to the same statement), a slot state file from disk (decoding never
/// panics), and a slot configuration from an HTTP body (compiling never panics, nor does
/// its transform).
pub fn logical_parse(data: &[u8]) {
    use themis_logical::{DdlStatement, Predicate, SlotConfig, SlotState, persist};

    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            if let Ok(p) = Predicate::parse(&text) {
                let docs = [
                    serde_json::json!({"tenant": "acme", "n": 1, "a": {"b": [true, null, "x"]}}),
                    serde_json::json!([1, 2]),
                    serde_json::json!(null),
                ];
                for doc in &docs {
                    let _ = p.eval(doc);
                }
                assert_eq!(Predicate::parse(p.source()).ok().as_ref(), Some(&p), "parsing is deterministic");
            }
        }
        1 => {
            if let Ok(statement) = DdlStatement::parse(&text) {
                let printed = statement.to_string();
                assert_eq!(DdlStatement::parse(&printed).ok(), Some(statement), "{printed:?} parses back");
            }
        }
        2 => {
            let _ = persist::decode::<SlotState>(rest);
        }
        _ => {
            if let Ok(config) = serde_json::from_slice::<SlotConfig>(rest)
                && config.compile().is_ok()
                && let Some(transform) = &config.transform
            {
                let _ = transform.validate();
            }
        }
    }
}
