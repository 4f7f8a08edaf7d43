//! Active-active: clusters that each accept writes and replicate them to each other.
//!
//! Every write carries a [`Stamp`]: its origin cluster, its LSN
//! there, its HLC timestamp, and what the origin had applied of each other cluster when it
//! wrote it (`seen`). A document keeps the [`DocStamp`] of the write that made its current
//! value. When a write from another cluster arrives, [`classify`] compares the two:
//!
//! - the same origin, later in its log: the origin's own order, so it applies;
//! - another origin that had already applied the current version (its `seen` reaches the
//!   current version's origin LSN): causally later, so it applies;
//! - otherwise the two are **concurrent**: a conflict, resolved per collection by a
//!   [`ConflictResolver`] (last-writer-wins by HLC, first-writer-wins, CRDT merge, siblings,
//!   custom) and recorded. Every cluster resolves the same pair the same way, so they
//!   converge.
//!
//! A link reader learns `seen` from the order of the remote cluster's own log
//! ([`CausalMarks`]): the changes the remote applied from elsewhere appear in its log, in
//! the order it applied them, before its own later writes. No version vector travels with
//! a document.
//!
//! ```
//! use themis_clock::{NodeId, Timestamp};
//! use themis_geo::active::{CausalMarks, DocStamp, Verdict, classify};
//! use themis_wal::op::Stamp;
//!
//! let ts = |ms| Timestamp::from_parts(ms, 0, NodeId(1)).unwrap();
//! // us-west wrote the document at its LSN 7.
//! let local = DocStamp { cluster: "us-west".into(), lsn: 7, hlc: ts(1_000) };
//! // us-east's stream: it had applied us-west's LSN 7, then wrote the document.
//! let mut marks = CausalMarks::default();
//! marks.observe("us-west", 7);
//! let remote = Stamp { cluster: "us-east".into(), lsn: 3, hlc: ts(2_000), seen: marks.seen() };
//! assert_eq!(classify(Some(&local), &remote), Verdict::Apply);
//! // Had it not seen LSN 7, the two writes would be concurrent.
//! let blind = Stamp { seen: Vec::new(), ..remote };
//! assert_eq!(classify(Some(&local), &blind), Verdict::Conflict);
//! ```

use std::collections::BTreeMap;

use themis_clock::{NodeId, Timestamp};
use themis_crdt::{ConflictResolver, CrdtError, Resolution, Strategy as CrdtStrategy, Version};
use themis_wal::Lsn;
use themis_wal::op::{MAX_STAMP_SEEN, Stamp};

use crate::error::GeoError;

/// The longest cluster name (names are `a-z`, `0-9` and `-`, like regions).
pub const MAX_CLUSTER_NAME: usize = 32;

/// Checks a cluster name: 1 to 32 characters of `a-z`, `0-9` and `-`.
pub fn check_cluster_name(name: &str) -> Result<(), GeoError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(GeoError::OutOfRange {
            name: "cluster",
            value: format!("{name:?}"),
            reason: format!("a cluster name is 1 to {MAX_CLUSTER_NAME} characters of a-z, 0-9 and -"),
        })
    }
}

/// The stamp a document keeps: the write that made its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocStamp {
    /// The cluster where that write was made.
    pub cluster: String,
    /// Its LSN there.
    pub lsn: Lsn,
    /// Its HLC timestamp there.
    pub hlc: Timestamp,
}

impl DocStamp {
    /// The document stamp a write's stamp leaves, the write being at `lsn` here (a stamp
    /// with LSN 0 is the entry's own).
    #[must_use]
    pub fn of(stamp: &Stamp, lsn: Lsn) -> DocStamp {
        DocStamp {
            cluster: stamp.cluster.clone(),
            lsn: if stamp.lsn == 0 { lsn } else { stamp.lsn },
            hlc: stamp.hlc,
        }
    }
}

/// What to do with a write from another cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It follows the current version (or there is none): apply it.
    Apply,
    /// The current version already follows it (a duplicate, or an older write of the
    /// same origin): nothing to do.
    Stale,
    /// The two are concurrent: resolve.
    Conflict,
}

/// Compares the current version's stamp (none: no document, or one written before the
/// cluster had links, which every linked write follows) with an incoming write's.
#[must_use]
pub fn classify(current: Option<&DocStamp>, incoming: &Stamp) -> Verdict {
    let Some(current) = current else { return Verdict::Apply };
    if current.cluster == incoming.cluster {
        return if incoming.lsn > current.lsn { Verdict::Apply } else { Verdict::Stale };
    }
    let seen = incoming.seen.iter().find(|(c, _)| *c == current.cluster).map_or(0, |(_, lsn)| *lsn);
    if seen >= current.lsn { Verdict::Apply } else { Verdict::Conflict }
}

/// What a link reader has seen of each cluster in a remote cluster's log: for each origin,
/// the highest origin LSN the remote had applied so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalMarks {
    seen: BTreeMap<String, Lsn>,
}

impl CausalMarks {
    /// The remote's log held a change from `cluster` at origin LSN `lsn`.
    pub fn observe(&mut self, cluster: &str, lsn: Lsn) {
        if let Some(at) = self.seen.get_mut(cluster) {
            *at = (*at).max(lsn);
        } else if self.seen.len() < MAX_STAMP_SEEN {
            self.seen.insert(cluster.to_string(), lsn);
        }
    }

    /// What a write the remote makes now had seen, for its stamp.
    #[must_use]
    pub fn seen(&self) -> Vec<(String, Lsn)> {
        self.seen.iter().map(|(c, l)| (c.clone(), *l)).collect()
    }
}

/// Refuses a remote write stamped further in the future than `max_skew_ms` ahead of
/// `now_ms`: a clock that far ahead would win every last-writer-wins conflict until real
/// time caught up.
pub fn check_skew(stamp: &Stamp, now_ms: u64, max_skew_ms: u64) -> Result<(), GeoError> {
    let ahead = stamp.hlc.physical_ms().saturating_sub(now_ms);
    if ahead > max_skew_ms {
        return Err(GeoError::OutOfRange {
            name: "clock skew",
            value: format!("{ahead} ms"),
            reason: format!(
                "a write from cluster {} at LSN {} is stamped {ahead} ms ahead of this clock; at most {max_skew_ms} ms is allowed",
                stamp.cluster, stamp.lsn
            ),
        });
    }
    Ok(())
}

/// A version of a document for resolution: its value (none: deleted) and stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side<'a> {
    /// The value; `None` for a delete.
    pub value: Option<&'a [u8]>,
    /// Where and when it was written.
    pub stamp: &'a DocStamp,
}

/// How a conflict ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The value to keep (`None`: the document is deleted).
    pub value: Option<Vec<u8>>,
    /// Whose stamp the document keeps.
    pub winner: Winner,
    /// The strategy's name (`last_writer_wins`, ...).
    pub strategy: String,
}

/// Which side's stamp a settled conflict keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The version already here.
    Local,
    /// The incoming one.
    Remote,
    /// A merge of both (a CRDT), stamped with the later of the two.
    Merged,
}

/// A cluster name as the node id a [`Version`] carries (FNV-1a, never 0), so the resolver
/// orders two versions with the same HLC by cluster the same way everywhere.
fn cluster_node(cluster: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    NodeId(h.max(1))
}

/// Resolves two concurrent versions of `collection`/`key` with `resolver` (which records
/// the conflict in its audit log). A delete takes part as an empty value that the
/// strategy weighs by its stamp like any other.
pub fn resolve(
    resolver: &ConflictResolver,
    collection: &str,
    key: &[u8],
    local: &Side<'_>,
    remote: &Side<'_>,
) -> Result<Settled, CrdtError> {
    // The HLC of a version is the origin's; its node is replaced by the cluster's, so
    // ties between clusters break the same way on every cluster.
    let version = |side: &Side<'_>| Version {
        value: side.value.map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp: Timestamp::from_raw(side.stamp.hlc.raw_time(), cluster_node(&side.stamp.cluster)),
        origin: cluster_node(&side.stamp.cluster),
    };
    let (l, r) = (version(local), version(remote));
    if let (CrdtStrategy::Crdt(kind), Some(lv), Some(rv)) =
        (resolver.strategy_for(collection), local.value, remote.value)
        && let Some(merged) = merge_json_counter(*kind, lv, rv)
    {
        let value = merged.map_err(|(side, reason)| decode_error(collection, key, *kind, side, reason))?;
        return Ok(Settled {
            value: Some(value),
            winner: Winner::Merged,
            strategy: format!("crdt:{}", kind.name()),
        });
    }
    let strategy = match resolver.strategy_for(collection) {
        CrdtStrategy::LastWriterWins => "last_writer_wins".to_string(),
        CrdtStrategy::FirstWriterWins => "first_writer_wins".to_string(),
        CrdtStrategy::Crdt(kind) => format!("crdt:{}", kind.name()),
        CrdtStrategy::KeepBoth => "keep_both".to_string(),
        CrdtStrategy::Custom(name) => format!("custom:{name}"),
    };
    let settled = match resolver.resolve(collection, key, &l, &r)? {
        Resolution::Keep(kept) if kept == l => {
            Settled { value: local.value.map(<[u8]>::to_vec), winner: Winner::Local, strategy }
        }
        Resolution::Keep(kept) if kept == r => {
            Settled { value: remote.value.map(<[u8]>::to_vec), winner: Winner::Remote, strategy }
        }
        Resolution::Keep(merged) => Settled { value: Some(merged.value), winner: Winner::Merged, strategy },
        Resolution::Siblings(versions) => {
            // Kept as one JSON document holding both, for the application to settle.
            let siblings: Vec<String> =
                versions.iter().map(|v| String::from_utf8_lossy(&v.value).into_owned()).collect();
            let value = format!("{{\"_siblings\":[{}]}}", siblings.join(","));
            Settled { value: Some(value.into_bytes()), winner: Winner::Merged, strategy }
        }
    };
    Ok(settled)
}

/// For a collection whose strategy is a CRDT held as JSON (a counter): any write, local
/// or remote, concurrent or not, merges into the current state rather than replacing it
/// (a client's read-modify-write may have raced a write from another cluster; the
/// merge keeps both). `None` for other collections, or values that are not JSON.
pub fn merge_into(
    resolver: &ConflictResolver,
    collection: &str,
    key: &[u8],
    current: &[u8],
    incoming: &[u8],
) -> Option<Result<Vec<u8>, CrdtError>> {
    let CrdtStrategy::Crdt(kind) = resolver.strategy_for(collection) else { return None };
    let merged = merge_json_counter(*kind, current, incoming)?;
    Some(merged.map_err(|(side, reason)| {
        let side = match side {
            "local" => "current",
            "remote" => "incoming",
            other => other,
        };
        decode_error(collection, key, *kind, side, reason)
    }))
}

/// A value a CRDT strategy could not read, named by collection, key, side and kind.
fn decode_error(
    collection: &str,
    key: &[u8],
    kind: themis_crdt::CrdtKind,
    side: &'static str,
    reason: String,
) -> CrdtError {
    CrdtError::Decode {
        collection: collection.into(),
        key: String::from_utf8_lossy(key).into_owned(),
        side,
        kind: kind.name(),
        reason,
    }
}

/// CRDTs held as JSON documents, merged the way they merge: a `g_counter` is an object of
/// per-replica counts (`{"us-west": 3, "us-east": 5}`, value 8) and merges by taking each
/// replica's larger count; a `pn_counter` is `{"p": {...}, "n": {...}}`, each side merged
/// so. Each replica (a cluster, say) only raises its own count, so a merge keeps every
/// increment made anywhere. An `or_set` is `{"add": {"<element>": ["<tag>", ...]},
/// "remove": ["<tag>", ...]}`: an element is added under a tag no one else uses and
/// removed by listing the tags its read showed; a merge is the union of both, and an
/// element is in the set while one of its tags is not removed, so an add concurrent with a
/// remove wins. `None`: another kind, or not JSON (the CRDT's own encoding then applies).
fn merge_json_counter(
    kind: themis_crdt::CrdtKind,
    local: &[u8],
    remote: &[u8],
) -> Option<Result<Vec<u8>, (&'static str, String)>> {
    use themis_crdt::CrdtKind;
    type Counts = BTreeMap<String, u64>;
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Set {
        #[serde(default)]
        add: BTreeMap<String, std::collections::BTreeSet<String>>,
        #[serde(default)]
        remove: std::collections::BTreeSet<String>,
    }
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Pn {
        #[serde(default)]
        p: Counts,
        #[serde(default)]
        n: Counts,
    }
    fn max_merge(into: &mut Counts, from: Counts) {
        for (replica, count) in from {
            let at = into.entry(replica).or_insert(0);
            *at = (*at).max(count);
        }
    }
    fn parse<T: for<'de> serde::Deserialize<'de>>(
        side: &'static str,
        bytes: &[u8],
    ) -> Result<T, (&'static str, String)> {
        serde_json::from_slice(bytes).map_err(|e| (side, e.to_string()))
    }
    let json = |b: &[u8]| b.first() == Some(&b'{');
    if !json(local) || !json(remote) {
        return None;
    }
    let merged = match kind {
        CrdtKind::OrSet => (|| {
            let mut l: Set = parse("local", local)?;
            let r: Set = parse("remote", remote)?;
            for (element, tags) in r.add {
                l.add.entry(element).or_default().extend(tags);
            }
            l.remove.extend(r.remove);
            serde_json::to_vec(&l).map_err(|e| ("merged", e.to_string()))
        })(),
        CrdtKind::GCounter => (|| {
            let mut l: Counts = parse("local", local)?;
            max_merge(&mut l, parse("remote", remote)?);
            serde_json::to_vec(&l).map_err(|e| ("merged", e.to_string()))
        })(),
        CrdtKind::PnCounter => (|| {
            let mut l: Pn = parse("local", local)?;
            let r: Pn = parse("remote", remote)?;
            max_merge(&mut l.p, r.p);
            max_merge(&mut l.n, r.n);
            serde_json::to_vec(&l).map_err(|e| ("merged", e.to_string()))
        })(),
        _ => return None,
    };
    Some(merged)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use themis_crdt::{AuditLog, Strategy};

    use super::*;

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_parts(ms, 0, NodeId(1)).unwrap()
    }

    fn stamp(cluster: &str, lsn: Lsn, ms: u64, seen: &[(&str, Lsn)]) -> Stamp {
        Stamp {
            cluster: cluster.into(),
            lsn,
            hlc: ts(ms),
            seen: seen.iter().map(|(c, l)| ((*c).to_string(), *l)).collect(),
        }
    }

    #[test]
    fn the_same_origin_is_ordered_by_its_log_and_another_by_what_it_had_seen() {
        let here = DocStamp { cluster: "a".into(), lsn: 10, hlc: ts(100) };
        assert_eq!(classify(None, &stamp("b", 1, 1, &[])), Verdict::Apply);
        assert_eq!(classify(Some(&here), &stamp("a", 11, 1, &[])), Verdict::Apply);
        assert_eq!(classify(Some(&here), &stamp("a", 10, 1, &[])), Verdict::Stale);
        assert_eq!(classify(Some(&here), &stamp("a", 9, 1, &[])), Verdict::Stale);
        assert_eq!(classify(Some(&here), &stamp("b", 1, 1, &[("a", 10)])), Verdict::Apply);
        assert_eq!(classify(Some(&here), &stamp("b", 1, 1, &[("a", 9)])), Verdict::Conflict);
        assert_eq!(classify(Some(&here), &stamp("b", 1, 1, &[("c", 99)])), Verdict::Conflict);
    }

    #[test]
    fn marks_keep_the_highest_lsn_per_cluster_and_a_bounded_number_of_clusters() {
        let mut m = CausalMarks::default();
        m.observe("a", 5);
        m.observe("a", 3);
        m.observe("b", 1);
        assert_eq!(m.seen(), vec![("a".into(), 5), ("b".into(), 1)]);
        for i in 0..2 * MAX_STAMP_SEEN {
            m.observe(&format!("x{i}"), 1);
        }
        assert_eq!(m.seen().len(), MAX_STAMP_SEEN);
    }

    #[test]
    fn skew_beyond_the_bound_and_bad_cluster_names_are_refused_by_name() {
        let s = stamp("b", 4, 10_000, &[]);
        check_skew(&s, 9_000, 1_000).unwrap();
        let err = check_skew(&s, 8_000, 1_000).unwrap_err().to_string();
        assert!(err.contains("2000 ms ahead") && err.contains("cluster b at LSN 4"), "{err}");
        for bad in ["", "US-West", "a b", &"x".repeat(33)] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
        check_cluster_name("us-west-2").unwrap();
    }

    fn lww() -> ConflictResolver {
        ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(100, None))
    }

    #[test]
    fn last_writer_wins_keeps_the_later_version_and_records_the_conflict() {
        let r = lww();
        let (old, new) = (
            DocStamp { cluster: "a".into(), lsn: 1, hlc: ts(100) },
            DocStamp { cluster: "b".into(), lsn: 1, hlc: ts(200) },
        );
        let local = Side { value: Some(b"{\"v\":1}"), stamp: &old };
        let remote = Side { value: Some(b"{\"v\":2}"), stamp: &new };
        let s = resolve(&r, "c", b"k", &local, &remote).unwrap();
        assert_eq!((s.winner, s.value.as_deref()), (Winner::Remote, Some(&b"{\"v\":2}"[..])));
        // The same pair seen from the other cluster picks the same winner.
        let s = resolve(&r, "c", b"k", &remote, &local).unwrap();
        assert_eq!((s.winner, s.value.as_deref()), (Winner::Local, Some(&b"{\"v\":2}"[..])));
        assert_eq!(r.audit().total(), 2);
        // A later delete wins too.
        let gone = Side { value: None, stamp: &new };
        let s = resolve(&r, "c", b"k", &local, &gone).unwrap();
        assert_eq!((s.winner, s.value), (Winner::Remote, None));
    }

    /// One cluster of the convergence property: the key's value and stamp, its LSN
    /// counter, what it has applied of the other, and its hybrid logical clock.
    #[derive(Clone)]
    struct Cluster {
        name: &'static str,
        doc: Option<(Vec<u8>, DocStamp)>,
        lsn: Lsn,
        seen_other: Lsn,
        clock: u64,
    }

    #[test]
    fn json_counters_and_sets_merge_so_every_increment_and_add_counts() {
        let resolver =
            ConflictResolver::new(Strategy::Crdt(themis_crdt::CrdtKind::GCounter), AuditLog::new(8, None));
        let (a, b) = (
            DocStamp { cluster: "a".into(), lsn: 1, hlc: ts(100) },
            DocStamp { cluster: "b".into(), lsn: 1, hlc: ts(200) },
        );
        let local = Side { value: Some(br#"{"a":3,"b":1}"#), stamp: &a };
        let remote = Side { value: Some(br#"{"b":4}"#), stamp: &b };
        let s = resolve(&resolver, "hits", b"k", &local, &remote).unwrap();
        assert_eq!((s.winner, s.value.as_deref()), (Winner::Merged, Some(&br#"{"a":3,"b":4}"#[..])));
        assert_eq!(s.strategy, "crdt:g_counter");
        let pn =
            ConflictResolver::new(Strategy::Crdt(themis_crdt::CrdtKind::PnCounter), AuditLog::new(8, None));
        let local = Side { value: Some(br#"{"p":{"a":5},"n":{"a":1}}"#), stamp: &a };
        let remote = Side { value: Some(br#"{"p":{"b":2},"n":{"a":2}}"#), stamp: &b };
        let s = resolve(&pn, "hits", b"k", &local, &remote).unwrap();
        assert_eq!(s.value.as_deref(), Some(&br#"{"p":{"a":5,"b":2},"n":{"a":2}}"#[..]));
        // Sets: tags union; an add concurrent with a remove survives.
        let set = ConflictResolver::new(Strategy::Crdt(themis_crdt::CrdtKind::OrSet), AuditLog::new(8, None));
        let local = Side { value: Some(br#"{"add":{"x":["a1"],"y":["a2"]},"remove":["a2"]}"#), stamp: &a };
        let remote = Side { value: Some(br#"{"add":{"x":["b1"]},"remove":["a1"]}"#), stamp: &b };
        let s = resolve(&set, "tags", b"k", &local, &remote).unwrap();
        assert_eq!(
            s.value.as_deref(),
            Some(&br#"{"add":{"x":["a1","b1"],"y":["a2"]},"remove":["a1","a2"]}"#[..]),
            "x stays (tag b1 was never removed), y is gone"
        );
        // A counter that is not one is refused, naming the side; nothing is guessed.
        let bad = Side { value: Some(br#"{"a":"x"}"#), stamp: &b };
        let err = resolve(&resolver, "hits", b"k", &Side { value: Some(br#"{"a":1}"#), stamp: &a }, &bad)
            .unwrap_err();
        assert!(err.to_string().contains("remote"), "{err}");
    }

    proptest! {
        /// Two clusters make concurrent writes to one key in any interleaving, each stamping
        /// them from a hybrid logical clock that moves past what it receives; each applies
        /// the other's, in order, through `classify` and `resolve`. Both end with the same
        /// value.
        #[test]
        fn two_clusters_converge_whatever_the_order(
            writes in proptest::collection::vec((any::<bool>(), 1u64..1_000), 1..12),
            delivery in any::<u64>(),
        ) {
            let r = lww();
            let mut cs = [
                Cluster { name: "a", doc: None, lsn: 0, seen_other: 0, clock: 0 },
                Cluster { name: "b", doc: None, lsn: 0, seen_other: 0, clock: 0 },
            ];
            let mut inboxes: [Vec<(Vec<u8>, Stamp)>; 2] = [Vec::new(), Vec::new()];
            let mut rng = delivery;
            let step = |cs: &mut [Cluster; 2], inboxes: &mut [Vec<(Vec<u8>, Stamp)>; 2], to: usize| {
                // Deliver the oldest write waiting for cluster `to`.
                if inboxes[to].is_empty() { return; }
                let (value, s) = inboxes[to].remove(0);
                let c = &mut cs[to];
                c.lsn += 1;
                c.seen_other = c.seen_other.max(s.lsn);
                // A hybrid logical clock moves past every timestamp it receives.
                c.clock = c.clock.max(s.hlc.physical_ms());
                let current = c.doc.as_ref().map(|(_, st)| st.clone());
                match classify(current.as_ref(), &s) {
                    Verdict::Apply => c.doc = Some((value, DocStamp::of(&s, c.lsn))),
                    Verdict::Stale => {}
                    Verdict::Conflict => {
                        let (lv, ls) = c.doc.clone().unwrap();
                        let incoming = DocStamp::of(&s, c.lsn);
                        let settled = resolve(&r, "c", b"k", &Side { value: Some(&lv), stamp: &ls }, &Side { value: Some(&value), stamp: &incoming }).unwrap();
                        if settled.winner == Winner::Remote { c.doc = Some((value, incoming)); }
                    }
                }
            };
            for (at_b, ms) in &writes {
                let i = usize::from(*at_b);
                let c = &mut cs[i];
                c.lsn += 1;
                // The write's HLC: past the clock, or the physical time the case drew.
                c.clock = (c.clock + 1).max(*ms);
                let value = format!("{}{}", c.name, ms).into_bytes();
                let st = Stamp { cluster: c.name.into(), lsn: c.lsn, hlc: ts(c.clock), seen: vec![((if i == 0 { "b" } else { "a" }).into(), c.seen_other)] };
                c.doc = Some((value.clone(), DocStamp::of(&st, c.lsn)));
                inboxes[1 - i].push((value, st));
                // Now and then deliver something, in an order the seed picks.
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                if rng >> 62 == 0 { step(&mut cs, &mut inboxes, (rng >> 61 & 1) as usize); }
            }
            while !inboxes[0].is_empty() || !inboxes[1].is_empty() {
                step(&mut cs, &mut inboxes, 0);
                step(&mut cs, &mut inboxes, 1);
            }
            let (a, b) = (cs[0].doc.clone().unwrap(), cs[1].doc.clone().unwrap());
            prop_assert_eq!(&a.0, &b.0, "a holds {:?}, b holds {:?}", a, b);
        }
    }
}
