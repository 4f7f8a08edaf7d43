//! Cascading read replicas: a learner that streams the committed log from another member
//! instead of from the leader (the replication driver's `cascade`), so one replica in a
//! distant region feeds the others there and the leader sends across the ocean once.
//!
//! The topology is the internal collection `_themis_cascade`: one document per cascaded
//! learner (`<id>` → `{"upstream": 2}`), written through the leader like any document, so
//! every node applies the same topology in log order. A task on each node hands the
//! topology to its driver whenever the store's internal documents change. The leader
//! checks each change against the members and `themis_geo::Cascade` (a chain at most
//! five hops deep, no cycle) before writing it, and the table is rebuilt with the same
//! check, so no node's driver is ever given a chain the check refuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use bytes::Bytes;
use serde_json::{Value, json};
use themis_replication::clock::NodeId;
use themis_replication::geo::{Cascade, GeoError};
use themis_replication::raft::DriverStatus;

use crate::admin::{AdminState, bad_request, error};
use crate::server::Shared;
use crate::store::DocStore;

/// The internal collection holding the cascade topology.
pub const CASCADE_COLLECTION: &str = "_themis_cascade";

/// How often each node looks for a changed topology.
const POLL: Duration = Duration::from_millis(100);

/// The topology as the store holds it. A document that would break the chain rules (two
/// leaders' concurrent writes, say) is left out, the same way on every node.
pub(crate) fn topology(store: &DocStore) -> Cascade {
    let mut cascade = Cascade::new();
    for (key, value, _) in store.internal_docs(CASCADE_COLLECTION) {
        let replica = std::str::from_utf8(&key).ok().and_then(|k| k.parse::<u64>().ok());
        let upstream = serde_json::from_slice::<Value>(&value).ok().and_then(|v| v["upstream"].as_u64());
        match (replica, upstream) {
            (Some(replica), Some(upstream)) => {
                if let Err(e) = cascade.set_upstream(NodeId(replica), NodeId(upstream)) {
                    tracing::warn!(error = %e, "a cascade entry breaks the chain rules; node {replica} streams from the leader");
                }
            }
            _ => {
                tracing::warn!(key = %String::from_utf8_lossy(&key), "an undecodable cascade entry; ignored");
            }
        }
    }
    cascade
}

/// Checks that `replica` may stream from `upstream` under `status`'s membership and the
/// current topology, and returns the topology with the change. `joining`: the replica is
/// being added as a learner now, so it is not one yet.
pub(crate) fn check(
    status: &DriverStatus,
    current: &Cascade,
    replica: NodeId,
    upstream: NodeId,
    joining: bool,
) -> Result<Cascade, (StatusCode, String)> {
    let unprocessable = |m: String| (StatusCode::UNPROCESSABLE_ENTITY, m);
    if !joining && !status.learners.contains(&replica) {
        let what = if status.voters.contains(&replica) { "a voter" } else { "not a member" };
        return Err(unprocessable(format!(
            "node {replica} is {what}: only a read replica (a learner) streams from another member; voters replicate from the leader"
        )));
    }
    if !status.voters.contains(&upstream) && !status.learners.contains(&upstream) {
        return Err(unprocessable(format!("upstream {upstream} is not a member of the cluster")));
    }
    let mut next = current.clone();
    next.set_upstream(replica, upstream).map_err(|e| match e {
        GeoError::Chain { .. } => unprocessable(format!("node {replica} cannot stream from {upstream}: {e}")),
        other => (StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    Ok(next)
}

/// The map a driver takes.
fn upstreams(cascade: &Cascade, status: &DriverStatus) -> BTreeMap<NodeId, NodeId> {
    status
        .voters
        .iter()
        .chain(&status.learners)
        .filter_map(|id| cascade.upstream(*id).map(|up| (*id, up)))
        .collect()
}

/// Hands the topology to the driver whenever the store's internal documents (or the
/// membership) change.
pub(crate) fn start(shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = None;
        loop {
            tick.tick().await;
            let status = shared.manager.status();
            let key = (shared.store.internal_version(), status.voters.clone(), status.learners.clone());
            if seen.as_ref() == Some(&key) {
                continue;
            }
            let map = upstreams(&topology(&shared.store), &status);
            if map != status.upstreams && shared.manager.set_upstreams(map).await.is_err() {
                return; // The driver has stopped; so does the node.
            }
            seen = Some(key);
        }
    });
}

/// `GET /v1/cluster/cascade`: each cascaded replica, its upstream, its chain to the
/// leader and whether the leader serves it directly for now.
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> HttpResponse {
    let status = state.shared.manager.status();
    let cascade = topology(&state.shared.store);
    let mut replicas = Vec::new();
    for id in status.voters.iter().chain(&status.learners) {
        let Some(upstream) = cascade.upstream(*id) else { continue };
        let chain = cascade.chain(*id).unwrap_or_default();
        replicas.push(json!({
            "replica": id.0,
            "upstream": upstream.0,
            "chain": chain.iter().map(|n| n.0).collect::<Vec<_>>(),
            "hops": chain.len(),
            "active": status.upstreams.get(id) == Some(&upstream),
            "direct": status.cascade_direct.contains(id),
        }));
    }
    axum::Json(json!({
        "replicas": replicas,
        "max_hops": themis_replication::geo::MAX_CHAIN_HOPS,
        "observed_by": status.id.0,
        "leader": status.leader.map(|l| l.0),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamBody {
    upstream: u64,
}

/// `PUT /v1/cluster/cascade/{id}` with `{"upstream": 2}`: learner `id` streams from
/// member 2. Refused (422) for a voter, a non-member, a chain deeper than five hops or a
/// cycle, naming the chain.
pub(crate) async fn set(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let replica = match crate::admin::node_id(&id) {
        Ok(id) => NodeId(id),
        Err(e) => return bad_request(&e),
    };
    let body: UpstreamBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("expected {{\"upstream\": <node id>}}: {e}")),
    };
    if body.upstream == 0 {
        return bad_request("upstream = 0: node ids start at 1");
    }
    match write(&state.shared, replica, Some(NodeId(body.upstream)), false).await {
        Ok(lsn) => {
            axum::Json(json!({ "replica": replica.0, "upstream": body.upstream, "lsn": lsn })).into_response()
        }
        Err(r) => r,
    }
}

/// `DELETE /v1/cluster/cascade/{id}`: learner `id` streams from the leader again.
pub(crate) async fn clear(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> HttpResponse {
    let replica = match crate::admin::node_id(&id) {
        Ok(id) => NodeId(id),
        Err(e) => return bad_request(&e),
    };
    match write(&state.shared, replica, None, false).await {
        Ok(lsn) => {
            axum::Json(json!({ "replica": replica.0, "upstream": Value::Null, "lsn": lsn })).into_response()
        }
        Err(r) => r,
    }
}

/// Checks (on this node, which must lead for the write to succeed) and writes a change
/// of `replica`'s upstream, serialized with the other read-modify-writes of internal
/// documents, and waits until this node applied it.
pub(crate) async fn write(
    shared: &Shared,
    replica: NodeId,
    upstream: Option<NodeId>,
    joining: bool,
) -> Result<u64, HttpResponse> {
    let _serial = shared.slot_writes.lock().await;
    let value = match upstream {
        Some(upstream) => {
            let status = shared.manager.status();
            check(&status, &topology(&shared.store), replica, upstream, joining)
                .map_err(|(code, m)| error(code, "invalid_topology", &m))?;
            Some(Bytes::from(serde_json::to_vec(&json!({ "upstream": upstream.0 })).expect("JSON")))
        }
        None => None,
    };
    crate::admin::write_internal(shared, CASCADE_COLLECTION, &replica.0.to_string(), value, "cascade").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(voters: &[u64], learners: &[u64]) -> DriverStatus {
        DriverStatus {
            voters: voters.iter().map(|v| NodeId(*v)).collect(),
            learners: learners.iter().map(|v| NodeId(*v)).collect(),
            ..DriverStatus::default()
        }
    }

    #[test]
    fn only_a_learner_streams_from_a_member_within_five_hops_and_without_a_cycle() {
        let s = status(&[1, 2, 3], &[4, 5, 6, 7, 8, 9]);
        let mut c = Cascade::new();
        // 4 <- 2 (a follower), 5 <- 4, 6 <- 5, 7 <- 6: chains of 2 to 5 hops.
        for (replica, upstream) in [(4, 2), (5, 4), (6, 5), (7, 6)] {
            c = check(&s, &c, NodeId(replica), NodeId(upstream), false).unwrap();
        }
        assert_eq!(c.chain(NodeId(7)).unwrap().len(), 5);
        // A sixth hop is refused, naming the chain.
        let (code, m) = check(&s, &c, NodeId(8), NodeId(7), false).unwrap_err();
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            m,
            "node 8 cannot stream from 7: replication chain 8 -> 7 -> 6 -> 5 -> 4 -> 2 -> leader is 6 hops \
             from the leader; at most 5 are allowed"
        );
        // A cycle is refused.
        let (_, m) = check(&s, &c, NodeId(4), NodeId(7), false).unwrap_err();
        assert!(m.contains("cycle"), "{m}");
        // A voter does not cascade; an upstream must be a member; a joining node may.
        let (_, m) = check(&s, &c, NodeId(3), NodeId(2), false).unwrap_err();
        assert!(m.contains("node 3 is a voter"), "{m}");
        let (_, m) = check(&s, &c, NodeId(9), NodeId(42), false).unwrap_err();
        assert!(m.contains("upstream 42 is not a member"), "{m}");
        let (_, m) = check(&s, &c, NodeId(10), NodeId(2), false).unwrap_err();
        assert!(m.contains("node 10 is not a member"), "{m}");
        assert!(check(&s, &c, NodeId(10), NodeId(2), true).is_ok());
        // The driver's map holds members only.
        let map = upstreams(&c, &status(&[1, 2, 3], &[4, 5]));
        assert_eq!(map, BTreeMap::from([(NodeId(4), NodeId(2)), (NodeId(5), NodeId(4))]));
    }
}
