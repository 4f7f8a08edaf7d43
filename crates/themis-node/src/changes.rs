//! The node's change stream over HTTP: `GET /v1/cdc/events` as Server-Sent Events, and
//! the Debezium-shaped JSON envelope every consumer of this node's changes gets (SSE,
//! `themis cdc tail`).
//!
//! ```text
//! id: 42
//! event: change
//! data: {"op":"u","ts_ms":...,"before":{...},"after":{...},
//! data:  "source":{"node":1,"origin":1,"collection":"orders","id":"o1","lsn":42,"index":0,
//! data:            "hlc":"...","ts_ms":...,"txn":0}}
//! ```
//!
//! (one `data:` line in practice). `id:` is the LSN and is set only on an entry's last
//! event, so an SSE client that reconnects with `Last-Event-ID` resumes after a whole
//! entry and never skips part of one. Heartbeats (`event: heartbeat`) carry the LSN up to
//! which everything has been delivered, as their `id:` too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use bytes::Bytes;
use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use themis_replication::cdc::{CdcError, ChangeEvent, ChangeOp, Filter, Subscription};
use themis_replication::wal::Lsn;

use crate::admin::{AdminState, Caller, bad_request, error};
use crate::auth::Identity;

/// A document as JSON: itself when it is JSON (the node only stores JSON), else a string.
#[derive(Serialize)]
#[serde(untagged)]
enum Doc<'a> {
    Json(&'a RawValue),
    Text(std::borrow::Cow<'a, str>),
}

fn doc(bytes: &[u8]) -> Doc<'_> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .map_or_else(|| Doc::Text(String::from_utf8_lossy(bytes)), Doc::Json)
}

#[derive(Serialize)]
struct Source<'a> {
    node: u64,
    origin: u64,
    collection: &'a str,
    id: std::borrow::Cow<'a, str>,
    lsn: Lsn,
    index: u32,
    hlc: String,
    ts_ms: u64,
    txn: u64,
}

#[derive(Serialize)]
struct Ddl<'a> {
    statement: &'a str,
    schema_version: u64,
}

/// Where a change was first made (active-active): its origin cluster, its LSN there, its
/// HLC, and what the origin had applied of each other cluster.
#[derive(Serialize)]
struct StampOut<'a> {
    cluster: &'a str,
    lsn: Lsn,
    hlc: String,
    seen: std::collections::BTreeMap<&'a str, Lsn>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    op: &'static str,
    ts_ms: u64,
    before: Option<Doc<'a>>,
    after: Option<Doc<'a>>,
    source: Source<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stamp: Option<StampOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ddl: Option<Ddl<'a>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The JSON envelope of `event` as served by `node`: `op` is Debezium's letter (`c`,
/// `u`, `d`, `t` for DDL), `ts_ms` when it was served, `source.ts_ms` the commit time.
#[must_use]
pub fn envelope(event: &ChangeEvent, node: u64) -> String {
    if event.op == ChangeOp::Heartbeat {
        return serde_json::json!({
            "lsn": event.lsn,
            "hlc": event.hlc.to_string(),
            "ts_ms": event.hlc.physical_ms(),
        })
        .to_string();
    }
    let envelope = Envelope {
        op: event.op.debezium(),
        ts_ms: now_ms(),
        before: event.before.as_deref().map(doc),
        after: event.after.as_deref().map(doc),
        source: Source {
            node,
            origin: event.origin.0,
            collection: &event.collection,
            id: event.key_str(),
            lsn: event.lsn,
            index: event.index,
            hlc: event.hlc.to_string(),
            ts_ms: event.hlc.physical_ms(),
            txn: event.txn,
        },
        ddl: event.ddl.as_ref().map(|d| Ddl { statement: &d.statement, schema_version: d.schema_version }),
        stamp: event.stamp.as_ref().map(|s| StampOut {
            cluster: &s.cluster,
            lsn: if s.lsn == 0 { event.lsn } else { s.lsn },
            hlc: s.hlc.to_string(),
            seen: s.seen.iter().map(|(c, l)| (c.as_str(), *l)).collect(),
        }),
    };
    serde_json::to_string(&envelope).expect("the envelope serializes")
}

/// One SSE frame for `event`.
fn frame(event: &ChangeEvent, node: u64) -> Bytes {
    let mut out = String::with_capacity(256);
    if event.entry_end {
        out.push_str("id: ");
        out.push_str(&event.lsn.to_string());
        out.push('\n');
    }
    out.push_str(if event.op == ChangeOp::Heartbeat { "event: heartbeat\n" } else { "event: change\n" });
    out.push_str("data: ");
    out.push_str(&envelope(event, node));
    out.push_str("\n\n");
    Bytes::from(out)
}

/// Events that are already waiting are sent together, up to about this many bytes.
const MAX_CHUNK_BYTES: usize = 64 << 10;

/// The query of `GET /v1/cdc/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    #[serde(default)]
    collections: String,
    #[serde(default)]
    ops: String,
    from_lsn: Option<String>,
}

/// The HTTP answer to a subscription that cannot start.
fn refused(e: &CdcError) -> HttpResponse {
    match e {
        CdcError::Gone { .. } => error(StatusCode::GONE, "gone", &e.to_string()),
        CdcError::BeyondLog { .. } => error(StatusCode::RANGE_NOT_SATISFIABLE, "beyond_log", &e.to_string()),
        _ => bad_request(&e.to_string()),
    }
}

/// `GET /v1/cdc/events`: see the module documentation.
pub(crate) async fn sse(
    State(state): State<Arc<AdminState>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> HttpResponse {
    let filter = match Filter::parse(&query.ops, &query.collections) {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    if filter.ops().contains(&ChangeOp::Snapshot) && filter.ops().len() == 1 {
        return bad_request("ops=snapshot: initial snapshots are served by logical slots, not this stream");
    }
    if let Some(axum::Extension(Caller(identity))) = &caller
        && let Identity::Known(principal) = identity.as_ref()
        && !principal.covers(filter.patterns())
    {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "{} may stream only collections {:?}; ask for those (collections=...)",
                principal.name,
                principal.collections.as_deref().unwrap_or_default()
            ),
        );
    }
    // Last-Event-ID (an SSE client reconnecting) wins over from_lsn; neither: from now.
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim);
    let from = match resume.or(query.from_lsn.as_deref()) {
        Some(text) => match text.parse::<Lsn>() {
            Ok(lsn) => lsn,
            Err(_) => return bad_request(&format!("from_lsn = {text:?}: not an LSN (a whole number)")),
        },
        None => state.shared.cdc.resolved().0,
    };
    let Ok(slot) = Arc::clone(&state.streams).try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many change streams are open on this node (cdc.max_subscribers); retry later",
        );
    };
    let subscription = match state.shared.cdc.subscribe(filter, from) {
        Ok(s) => s,
        Err(e) => return refused(&e),
    };
    let node = state.shared.manager.id().0;
    // The stream ends when the client goes away (hyper drops the body, and with it the
    // subscription and the slot) or the node closes the change stream. Events already
    // waiting go out together in one chunk (one TLS record and write for many events).
    let body = futures_util::stream::unfold(
        Some((subscription, slot)),
        move |state: Option<(Subscription, tokio::sync::OwnedSemaphorePermit)>| async move {
            let (mut subscription, slot) = state?;
            let ended = |e: CdcError| {
                let data = serde_json::json!({ "code": "stream_ended", "message": e.to_string() });
                Bytes::from(format!("event: error\ndata: {data}\n\n"))
            };
            let mut chunk = match subscription.next().await {
                Ok(event) => frame(&event, node),
                Err(e) => return Some((Ok::<_, Infallible>(ended(e)), None)),
            };
            if chunk.len() < MAX_CHUNK_BYTES {
                let mut more = bytes::BytesMut::from(&chunk[..]);
                while more.len() < MAX_CHUNK_BYTES {
                    match subscription.next().now_or_never() {
                        Some(Ok(event)) => more.extend_from_slice(&frame(&event, node)),
                        Some(Err(e)) => {
                            more.extend_from_slice(&ended(e));
                            return Some((Ok(more.freeze()), None));
                        }
                        None => break,
                    }
                }
                chunk = more.freeze();
            }
            Some((Ok(chunk), Some((subscription, slot))))
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(body),
    )
        .into_response()
}
