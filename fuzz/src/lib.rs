//! The checks behind each fuzz target. A target is a function over arbitrary bytes that
//! must never panic except to report a broken invariant; the libFuzzer binaries in
//! `fuzz_targets/` and the corpus replay test in `tests/` both call them.

/// Every fuzz target: its name (also its directory under `corpus/`) and its check.
pub const TARGETS: &[(&str, fn(&[u8]))] =
    &[("timestamp_decode", timestamp_decode), ("vector_clock_decode", vector_clock_decode)];

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
