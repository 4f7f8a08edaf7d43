//! Write concerns and replication tiers on the write path.
//!
//! A write is acknowledged under the cluster's mode; a per-request write concern
//! (`ONE`, `MAJORITY`, `ALL`) or the collection's tier (`tier1` = `ALL`, `tier2` =
//! `MAJORITY`, `tier3` = `ONE`) can only ask for more: the stricter applies. A tier
//! assignment is the internal document `_themis_tiers/<collection>` (`{"tier": "tier1",
//! "automatic": false}`), written through the leader like any document, so every node
//! applies the same assignments in log order. With `geo.auto_tiering`, the leader counts
//! writes per collection and moves collections between tiers by their rate
//! (`themis_geo::AutoTiering`), never one assigned by hand.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use bytes::Bytes;
use serde_json::{Value, json};
use themis_replication::geo::{
    AutoTierPolicy, AutoTiering, ReplicationTier, TierChange, TierMap, WriteConcern,
};
use themis_replication::raft::driver::ReplicationManager;

use crate::admin::{AdminState, bad_request};
use crate::protocol::{ErrorCode, Response, check_name};
use crate::server::Shared;
use crate::store::DocStore;

/// The internal collection holding tier assignments.
pub const TIERS_COLLECTION: &str = "_themis_tiers";

/// The tier table as the store last applied it, rebuilt when internal documents change.
#[derive(Debug)]
pub(crate) struct Tiers {
    /// The store's internal version the table was built at, and the table.
    cache: Mutex<(u64, TierMap)>,
    /// Automatic tiering's write counts (the leader's), when on.
    auto: Option<Mutex<AutoTiering>>,
}

impl Tiers {
    pub(crate) fn new(auto: Option<AutoTierPolicy>) -> Result<Tiers, String> {
        let auto = auto.map(AutoTiering::new).transpose().map_err(|e| format!("geo.auto_tiering: {e}"))?;
        // No store version is u64::MAX, so the first use builds the table.
        Ok(Tiers { cache: Mutex::new((u64::MAX, TierMap::default())), auto: auto.map(Mutex::new) })
    }

    /// Runs `f` on the table, rebuilt first from the store's `_themis_tiers` documents if
    /// they changed since it was built.
    fn with_map<T>(&self, store: &DocStore, f: impl FnOnce(&TierMap) -> T) -> T {
        let version = store.internal_version();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != version {
            let mut map = TierMap::default();
            for (key, value, _) in store.internal_docs(TIERS_COLLECTION) {
                if let (Ok(collection), Ok(doc)) =
                    (String::from_utf8(key.to_vec()), serde_json::from_slice::<Value>(&value))
                    && let Some(tier) = doc["tier"].as_str().and_then(|t| t.parse::<ReplicationTier>().ok())
                {
                    let automatic = doc["automatic"].as_bool().unwrap_or(false);
                    map.apply(&TierChange::Assign { collection, tier, automatic });
                }
            }
            *cache = (version, map);
        }
        f(&cache.1)
    }

    /// The table (a copy, for listing and automatic tiering).
    pub(crate) fn map(&self, store: &DocStore) -> TierMap {
        self.with_map(store, TierMap::clone)
    }

    /// The tier assigned to `collection`, if any (an unassigned collection follows the
    /// cluster's mode alone). On every write: a version check and a map lookup.
    pub(crate) fn tier_of(&self, store: &DocStore, collection: &str) -> Option<ReplicationTier> {
        self.with_map(store, |map| map.assigned(collection))
    }

    /// Counts a write for automatic tiering (a no-op when it is off).
    pub(crate) fn record(&self, collection: &str, now_ms: u64) {
        if let Some(auto) = &self.auto
            && !collection.starts_with(crate::store::INTERNAL_PREFIX)
        {
            auto.lock().unwrap_or_else(PoisonError::into_inner).record(collection, 1, now_ms);
        }
    }
}

/// Waits until `lsn` meets `concern` on the leader: `ONE` at once (the mode has already
/// been met), `MAJORITY` once committed (applied here), `ALL` once every voter holds it
/// (as the leader's replica status reports, published each tick). Errors are answers.
pub(crate) async fn await_concern(
    manager: &ReplicationManager,
    lsn: u64,
    concern: WriteConcern,
    limit: Duration,
) -> Result<(), Response> {
    let timeout = |what: &str| Response::Error {
        code: ErrorCode::Timeout,
        message: format!("write concern {concern} for LSN {lsn}: {what} within {limit:?}"),
    };
    let deadline = tokio::time::Instant::now() + limit;
    match concern {
        WriteConcern::One => Ok(()),
        WriteConcern::Majority => match tokio::time::timeout_at(deadline, manager.wait_applied(lsn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::server::driver_error(e)),
            Err(_) => Err(timeout("not committed")),
        },
        WriteConcern::All => {
            let mut status = manager.watch_status();
            loop {
                {
                    let s = status.borrow_and_update();
                    if s.role != "Leader" {
                        return Err(Response::Error {
                            code: ErrorCode::OutcomeUnknown,
                            message: format!(
                                "write concern all for LSN {lsn}: leadership moved before every voter held it"
                            ),
                        });
                    }
                    let voters_hold = s
                        .voters
                        .iter()
                        .filter(|v| **v != s.id)
                        .all(|v| s.replicas.iter().any(|r| r.id == *v && r.match_lsn >= lsn));
                    if voters_hold {
                        return Ok(());
                    }
                }
                if tokio::time::timeout_at(deadline, status.changed()).await.is_err() {
                    return Err(timeout("not every voter holds it"));
                }
            }
        }
    }
}

/// `GET /v1/tiers`: every assignment.
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> HttpResponse {
    let map = state.shared.tiers.map(&state.shared.store);
    let tiers: Vec<Value> = map
        .assignments()
        .map(|(collection, tier, automatic)| {
            json!({ "collection": collection, "tier": tier.as_str(), "automatic": automatic,
                    "write_concern": tier.write_concern().as_str() })
        })
        .collect();
    axum::Json(json!({ "tiers": tiers })).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TierBody {
    tier: String,
}

/// `PUT /v1/tiers/{collection}` with `{"tier": "tier1"}`: assigns a tier by hand (the
/// spec's `assignTier`); automatic tiering leaves it alone from then on.
pub(crate) async fn assign(
    State(state): State<Arc<AdminState>>,
    Path(collection): Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let body: TierBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("expected {{\"tier\": \"tier1|tier2|tier3\"}}: {e}")),
    };
    let tier = match body.tier.parse::<ReplicationTier>() {
        Ok(t) => t,
        Err(e) => return bad_request(&e.to_string()),
    };
    match write(&state.shared, &collection, Some((tier, false))).await {
        Ok(lsn) => {
            axum::Json(json!({ "collection": collection, "tier": tier.as_str(), "lsn": lsn })).into_response()
        }
        Err(r) => r,
    }
}

/// `DELETE /v1/tiers/{collection}`: the collection follows the cluster's mode alone again.
pub(crate) async fn clear(
    State(state): State<Arc<AdminState>>,
    Path(collection): Path<String>,
) -> HttpResponse {
    match write(&state.shared, &collection, None).await {
        Ok(lsn) => {
            axum::Json(json!({ "collection": collection, "tier": Value::Null, "lsn": lsn })).into_response()
        }
        Err(r) => r,
    }
}

/// Writes an assignment (none: removes it) through the leader and waits until this node
/// applied it.
async fn write(
    shared: &Shared,
    collection: &str,
    tier: Option<(ReplicationTier, bool)>,
) -> Result<u64, HttpResponse> {
    if let Err(m) = check_name("collection", collection) {
        return Err(bad_request(&m));
    }
    if collection.starts_with(crate::store::INTERNAL_PREFIX) {
        return Err(bad_request(&format!("collection {collection:?}: internal collections have no tier")));
    }
    let value = tier.map(|(t, automatic)| {
        Bytes::from(serde_json::to_vec(&json!({ "tier": t.as_str(), "automatic": automatic })).expect("JSON"))
    });
    crate::admin::write_internal(shared, TIERS_COLLECTION, collection, value, "tier").await
}

/// With automatic tiering on: every `every`, the leader moves collections by their write
/// rates, writing each change through the log.
pub(crate) fn start(shared: &Arc<Shared>, every: Duration) {
    if shared.tiers.auto.is_none() {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        loop {
            tick.tick().await;
            if !shared.manager.leadership().1 || started.elapsed() < every {
                continue;
            }
            let map = shared.tiers.map(&shared.store);
            let now_ms = shared.hlc.now().physical_ms();
            let changes = match &shared.tiers.auto {
                Some(auto) => auto.lock().unwrap_or_else(PoisonError::into_inner).evaluate(&map, now_ms),
                None => return,
            };
            for change in changes {
                if let TierChange::Assign { collection, tier, automatic } = change {
                    tracing::info!(%collection, tier = tier.as_str(), "automatic tiering");
                    let _ = write(&shared, &collection, Some((tier, automatic))).await;
                }
            }
        }
    });
}
