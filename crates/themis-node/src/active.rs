//! The store's side of active-active replication: deciding, as each write from another
//! cluster is applied, whether it follows the document's current version, is stale, or is
//! concurrent with it, and settling a conflict by the collection's strategy
//! (`themis_geo::active`). Every node of a cluster applies the same log in the same
//! order and so decides the same; every cluster settles the same pair the same way.
//!
//! Each conflict is recorded as the internal document `_themis_conflicts/<lsn>.<index>`
//! (both stamps, both values, the strategy and the winner), written by the store itself
//! as it applies, so the record is replicated, survives snapshots and is on every node.
//! The newest [`MAX_CONFLICT_RECORDS`] are kept.

use bytes::Bytes;
use serde_json::{Value, json};
use themis_replication::crdt::ConflictResolver;
use themis_replication::geo::active::{self, DocStamp, Side, Verdict, Winner};
use themis_replication::wal::Lsn;
use themis_replication::wal::op::Stamp;

/// The internal collection of conflict records.
pub const CONFLICTS_COLLECTION: &str = "_themis_conflicts";

/// Conflict records kept; the oldest go first.
pub const MAX_CONFLICT_RECORDS: usize = 10_000;

/// What a cluster with links knows when applying: its own name and how each collection
/// settles conflicts.
#[derive(Debug)]
pub struct Active {
    cluster: String,
    resolver: ConflictResolver,
}

/// What to do with a write from another cluster.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Apply it as written.
    Apply,
    /// Leave the document as it is.
    Skip,
    /// A conflict, settled: store `value` (none: delete) with `stamp`, or leave the
    /// document alone when `keep_local`; `record` is the conflict record.
    Settled { keep_local: bool, value: Option<Bytes>, stamp: DocStamp, record: Value },
}

impl Active {
    /// A cluster named `cluster` settling conflicts with `resolver`.
    #[must_use]
    pub fn new(cluster: String, resolver: ConflictResolver) -> Active {
        Active { cluster, resolver }
    }

    /// For a counter collection, `incoming` merged into `current` (see
    /// `themis_geo::active::merge_into`); `None` for other collections or values. A value
    /// that is not a counter of the declared kind is not merged (it replaces, as in any
    /// collection) and is reported.
    pub(crate) fn merge_into(
        &self,
        collection: &str,
        key: &[u8],
        current: &Bytes,
        incoming: &Bytes,
    ) -> Option<Bytes> {
        match active::merge_into(&self.resolver, collection, key, current, incoming)? {
            Ok(merged) => Some(Bytes::from(merged)),
            Err(e) => {
                tracing::warn!(collection, error = %e, "a counter write that is not a counter replaces the document");
                None
            }
        }
    }

    /// This cluster's name.
    #[must_use]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Decides a write stamped `incoming` (from another cluster) that would set
    /// `collection`/`key` to `value` (none: delete) at `lsn`, against the current version
    /// (`None`: no document; a document without a stamp was written before the cluster
    /// had links, and every linked write follows it).
    pub(crate) fn decide(
        &self,
        collection: &str,
        key: &[u8],
        current: Option<(&Bytes, Option<&DocStamp>)>,
        incoming: &Stamp,
        value: Option<&Bytes>,
        lsn: Lsn,
    ) -> Decision {
        let Some((current_value, Some(current_stamp))) = current else { return Decision::Apply };
        match active::classify(Some(current_stamp), incoming) {
            Verdict::Apply => return Decision::Apply,
            Verdict::Stale => return Decision::Skip,
            Verdict::Conflict => {}
        }
        let remote_stamp = DocStamp::of(incoming, lsn);
        let local = Side { value: Some(current_value), stamp: current_stamp };
        let remote = Side { value: value.map(|v| &v[..]), stamp: &remote_stamp };
        let (keep_local, kept, stamp, strategy, error) =
            match active::resolve(&self.resolver, collection, key, &local, &remote) {
                Ok(settled) => {
                    let remote_wins = settled.winner == Winner::Remote
                        || (settled.winner == Winner::Merged && remote_stamp.hlc > current_stamp.hlc);
                    let stamp = if remote_wins { remote_stamp.clone() } else { current_stamp.clone() };
                    let value = settled.value.map(Bytes::from);
                    (settled.winner == Winner::Local, value, stamp, settled.strategy, None)
                }
                // A value the strategy cannot read (a CRDT collection holding something
                // else): nothing is lost, the local version stays and the record holds
                // the remote one and why.
                Err(e) => (
                    true,
                    Some(current_value.clone()),
                    current_stamp.clone(),
                    String::new(),
                    Some(e.to_string()),
                ),
            };
        let winner = match (keep_local, &kept) {
            (true, _) => "local",
            (false, v) if v.as_deref() == value.map(|v| &v[..]) => "remote",
            _ => "merged",
        };
        let side = |s: &DocStamp, v: Option<&[u8]>| {
            json!({
                "cluster": s.cluster,
                "lsn": s.lsn,
                "hlc": s.hlc.to_string(),
                "deleted": v.is_none(),
                "value": v.map(|v| String::from_utf8_lossy(v).into_owned()),
            })
        };
        let record = json!({
            "collection": collection,
            "id": String::from_utf8_lossy(key),
            "lsn": lsn,
            "strategy": strategy,
            "winner": winner,
            "error": error,
            "local": side(current_stamp, Some(current_value)),
            "remote": side(&remote_stamp, value.map(|v| &v[..])),
        });
        Decision::Settled { keep_local, value: kept, stamp, record }
    }
}

#[cfg(test)]
mod tests {
    use themis_replication::clock::{NodeId, Timestamp};
    use themis_replication::crdt::{AuditLog, Strategy};

    use super::*;

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_parts(ms, 0, NodeId(1)).unwrap()
    }

    #[test]
    fn a_concurrent_remote_write_is_settled_and_recorded_with_both_versions() {
        let a = Active::new(
            "us-west".into(),
            ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(8, None)),
        );
        let here = DocStamp { cluster: "us-west".into(), lsn: 5, hlc: ts(100) };
        let value = Bytes::from_static(b"{\"v\":\"west\"}");
        let later =
            Stamp { cluster: "us-east".into(), lsn: 9, hlc: ts(200), seen: vec![("us-west".into(), 4)] };
        let remote = Bytes::from_static(b"{\"v\":\"east\"}");
        let Decision::Settled { keep_local, value: kept, stamp, record } =
            a.decide("c", b"k", Some((&value, Some(&here))), &later, Some(&remote), 30)
        else {
            panic!("a conflict")
        };
        assert!(!keep_local);
        assert_eq!(kept.as_deref(), Some(&remote[..]));
        assert_eq!((stamp.cluster.as_str(), stamp.lsn), ("us-east", 9));
        assert_eq!(record["winner"], "remote");
        assert_eq!(record["local"]["value"], "{\"v\":\"west\"}", "the loser is in the record");
        assert_eq!(record["strategy"], "last_writer_wins");
        // Had us-east seen LSN 5, it would simply apply; the same write again is stale.
        let after = Stamp { seen: vec![("us-west".into(), 5)], ..later.clone() };
        assert!(matches!(
            a.decide("c", b"k", Some((&value, Some(&here))), &after, Some(&remote), 30),
            Decision::Apply
        ));
        let east = DocStamp::of(&later, 30);
        assert!(matches!(
            a.decide("c", b"k", Some((&remote, Some(&east))), &later, Some(&remote), 31),
            Decision::Skip
        ));
        // No document, or one from before the links: apply.
        assert!(matches!(a.decide("c", b"k", None, &later, Some(&remote), 30), Decision::Apply));
        assert!(matches!(
            a.decide("c", b"k", Some((&value, None)), &later, Some(&remote), 30),
            Decision::Apply
        ));
    }
}
