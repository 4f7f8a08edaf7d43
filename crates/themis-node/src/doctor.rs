//! What `themis doctor` asks of each node: hashes of the store's key ranges, the documents
//! of one range, and a range's repair (docs/operations.md#doctor).
//!
//! - `GET /v1/doctor/ranges?buckets=N&at_lsn=X`: once this node has applied `X` (waiting
//!   up to 10 s), the count and digest sum of each of `N` buckets as of `X`
//!   ([`DocStore::range_hashes`](crate::store::DocStore::range_hashes)). Every node splits
//!   by the same hash, so buckets compare one to one.
//! - `GET /v1/doctor/ranges/{bucket}?buckets=N`: the documents of one bucket.
//! - `POST /v1/doctor/repair`: `{"buckets", "bucket", "at_lsn", "docs"}` makes a bucket
//!   hold the given documents (the leader's). The leader refuses: its state is the
//!   reference.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use themis_replication::logical::SnapshotDoc;

use crate::admin::{AdminState, bad_request, error};

/// The most buckets a request may ask for.
pub const MAX_BUCKETS: u32 = 1 << 20;
/// The largest repair body.
pub const MAX_REPAIR_BYTES: usize = 64 << 20;
/// How long a hash request waits for this node to apply the LSN asked for.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// `?buckets=N&at_lsn=X`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RangeQuery {
    buckets: u32,
    at_lsn: Option<u64>,
}

fn check_buckets(buckets: u32) -> Result<(), Box<HttpResponse>> {
    if (1..=MAX_BUCKETS).contains(&buckets) {
        Ok(())
    } else {
        Err(Box::new(bad_request(&format!("buckets = {buckets}: must be 1 to {MAX_BUCKETS}"))))
    }
}

/// `GET /v1/doctor/ranges`.
pub(crate) async fn ranges(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    let Ok(Query(q)) = query else {
        return bad_request("query: expected buckets=<1 to 1048576> and at_lsn=<LSN>");
    };
    if let Err(e) = check_buckets(q.buckets) {
        return *e;
    }
    let shared = &state.shared;
    let at_lsn = q.at_lsn.unwrap_or_else(|| shared.manager.applied_lsn());
    if tokio::time::timeout(APPLY_WAIT, shared.manager.wait_applied(at_lsn)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            &format!(
                "this node has applied LSN {} and did not reach {at_lsn} within {} s",
                shared.manager.applied_lsn(),
                APPLY_WAIT.as_secs()
            ),
        );
    }
    let store = Arc::clone(&shared.store);
    let buckets = q.buckets;
    let Ok(hashes) = tokio::task::spawn_blocking(move || store.range_hashes(buckets, at_lsn)).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing the store failed");
    };
    axum::Json(json!({
        "node": shared.manager.id().0,
        "applied_lsn": shared.manager.applied_lsn(),
        "at_lsn": at_lsn,
        "buckets": buckets,
        "docs": hashes.docs,
        "newer": hashes.newer,
        "counts": hashes.counts,
        "hashes": hashes.sums.iter().map(|s| format!("{s:032x}")).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// One document on the wire: key and value in base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireDoc {
    /// The collection.
    pub collection: String,
    /// The key, base64.
    pub key: String,
    /// The value, base64.
    pub value: String,
    /// The LSN of this version.
    pub lsn: u64,
}

impl WireDoc {
    fn from_doc(d: &SnapshotDoc) -> WireDoc {
        let b64 = base64::engine::general_purpose::STANDARD;
        WireDoc {
            collection: d.collection.clone(),
            key: b64.encode(&d.key),
            value: b64.encode(&d.value),
            lsn: d.lsn,
        }
    }

    fn to_doc(&self, at: usize) -> Result<SnapshotDoc, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(&self.key).map_err(|e| format!("docs[{at}].key: not base64 ({e})"))?;
        let value = b64.decode(&self.value).map_err(|e| format!("docs[{at}].value: not base64 ({e})"))?;
        crate::protocol::check_name("collection", &self.collection)
            .map_err(|e| format!("docs[{at}]: {e}"))?;
        Ok(SnapshotDoc {
            collection: self.collection.clone(),
            key: key.into(),
            value: value.into(),
            lsn: self.lsn,
        })
    }
}

/// `?buckets=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketQuery {
    buckets: u32,
}

/// `GET /v1/doctor/ranges/{bucket}`.
pub(crate) async fn bucket(
    State(state): State<Arc<AdminState>>,
    Path(bucket): Path<String>,
    query: Result<Query<BucketQuery>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    let Ok(Query(q)) = query else {
        return bad_request("query: expected buckets=<1 to 1048576>");
    };
    if let Err(e) = check_buckets(q.buckets) {
        return *e;
    }
    let Some(bucket) = bucket.parse::<u32>().ok().filter(|b| *b < q.buckets) else {
        return bad_request(&format!("bucket {bucket:?}: must be a number below buckets = {}", q.buckets));
    };
    // Read before the documents: everything at or below it is in them.
    let applied_lsn = state.shared.manager.applied_lsn();
    let docs: Vec<WireDoc> =
        state.shared.store.bucket_docs(q.buckets, bucket).iter().map(WireDoc::from_doc).collect();
    axum::Json(json!({ "node": state.shared.manager.id().0, "bucket": bucket, "applied_lsn": applied_lsn, "docs": docs }))
        .into_response()
}

/// `POST /v1/doctor/repair` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepairBody {
    buckets: u32,
    bucket: u32,
    at_lsn: u64,
    docs: Vec<WireDoc>,
}

/// `POST /v1/doctor/repair`.
pub(crate) async fn repair(State(state): State<Arc<AdminState>>, body: Bytes) -> HttpResponse {
    if body.len() > MAX_REPAIR_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("a repair body is at most {MAX_REPAIR_BYTES} bytes; use more buckets"),
        );
    }
    let r: RepairBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(&format!(
                "body: {e} (expected {{\"buckets\", \"bucket\", \"at_lsn\", \"docs\"}})"
            ));
        }
    };
    if let Err(e) = check_buckets(r.buckets) {
        return *e;
    }
    if r.bucket >= r.buckets {
        return bad_request(&format!("bucket = {}: must be below buckets = {}", r.bucket, r.buckets));
    }
    let shared = &state.shared;
    if shared.manager.status().role == "Leader" {
        return error(
            StatusCode::CONFLICT,
            "is_leader",
            "this node leads: its state is what replicas are repaired from, not repaired itself",
        );
    }
    let docs = match r.docs.iter().enumerate().map(|(i, d)| d.to_doc(i)).collect::<Result<Vec<_>, _>>() {
        Ok(docs) => docs,
        Err(e) => return bad_request(&e),
    };
    let (written, removed) = shared.store.repair_bucket(r.buckets, r.bucket, r.at_lsn, &docs);
    if written + removed > 0 {
        tracing::warn!(node = %shared.manager.id(), bucket = r.bucket, written, removed, "doctor repaired a diverged range");
    }
    axum::Json(
        json!({ "node": shared.manager.id().0, "bucket": r.bucket, "written": written, "removed": removed }),
    )
    .into_response()
}
