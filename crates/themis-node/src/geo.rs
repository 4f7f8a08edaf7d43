//! Reads at five consistency levels and session tokens on a node (`docs/consistency.md`).
//!
//! A read's level becomes a [`ReadConsistency`] (its session token checked: syntax, MAC,
//! age, and on the leader against the log), then [`plan_read`] decides: serve now,
//! confirm through the leader's lease or `ReadIndex`, wait up to `geo.read_wait_ms` for
//! this replica to catch up, or redirect the client. Every write and read answers with a
//! session token covering what it wrote or saw.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use themis_replication::clock::NodeId;
use themis_replication::geo::{
    ConsistencyLevel, GeoError, LagSample, ReadConsistency, ReadPlan, ReplicaState, SessionToken,
    StalenessTracker, TokenCodec, plan_read,
};
use themis_replication::raft::driver::ReplicationManager;

use crate::config::NodeConfig;
use crate::protocol::{Consistency, ErrorCode, Response};

/// How long a read may wait for the cluster in all (a strong read's `ReadIndex`, a
/// leader's session read).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting read looks again.
const POLL: Duration = Duration::from_millis(5);

/// A node's read and session settings.
#[derive(Debug)]
pub(crate) struct Geo {
    codec: TokenCodec,
    region: String,
    ttl_ms: u64,
    max_staleness_ms: u64,
    wait: Duration,
    /// The level of an HTTP read that names none.
    pub(crate) default_level: ConsistencyLevel,
    /// Regions by node id (this node's and its peers' from the configuration).
    regions: BTreeMap<u64, String>,
    /// Lag of every replica, sampled by the leader each second.
    pub(crate) staleness: Arc<Mutex<StalenessTracker>>,
}

/// Samples a replica's history keeps: an hour at one a second.
const HISTORY_SAMPLES: usize = 3_600;
/// How often the leader samples replica lag.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// An empty staleness tracker of [`HISTORY_SAMPLES`] per replica.
pub(crate) fn tracker() -> Arc<Mutex<StalenessTracker>> {
    Arc::new(Mutex::new(StalenessTracker::new(HISTORY_SAMPLES)))
}

impl Geo {
    pub(crate) fn new(config: &NodeConfig, staleness: Arc<Mutex<StalenessTracker>>) -> Result<Geo, GeoError> {
        Ok(Geo {
            codec: TokenCodec::new(&config.cluster, config.session_secret.as_deref())?,
            region: config.region.clone(),
            ttl_ms: config.geo.session_token_ttl_ms,
            max_staleness_ms: config.geo.max_staleness_ms,
            wait: Duration::from_millis(config.geo.read_wait_ms),
            default_level: config.default_consistency,
            regions: config.regions.clone(),
            staleness,
        })
    }

    /// This node's region.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// A node's region: as configured, else `local`.
    pub(crate) fn region_of(&self, id: u64) -> &str {
        self.regions.get(&id).map_or("local", String::as_str)
    }

    /// One sample of every member's lag, on the leader (the only node that knows them):
    /// the leader itself at 0, each replica as its status reports it. A node that no
    /// longer leads forgets what it sampled, so it never reports a past term's lag as now.
    fn sample(&self, manager: &ReplicationManager, now_ms: u64) {
        let status = manager.status();
        let mut tracker = self.staleness.lock().unwrap_or_else(PoisonError::into_inner);
        if status.role != "Leader" {
            for id in tracker.replicas().collect::<Vec<_>>() {
                tracker.remove(id);
            }
            return;
        }
        let zero = LagSample { at_ms: now_ms, lag_lsns: 0, lag_ms: 0 };
        tracker.update(status.id, self.region_of(status.id.0), zero);
        let mut members: BTreeSet<NodeId> = BTreeSet::from([status.id]);
        for r in &status.replicas {
            members.insert(r.id);
            let sample = LagSample { at_ms: now_ms, lag_lsns: r.lag_lsns, lag_ms: r.lag_ms };
            tracker.update(r.id, self.region_of(r.id.0), sample);
        }
        for gone in tracker.replicas().filter(|id| !members.contains(id)).collect::<Vec<_>>() {
            tracker.remove(gone);
        }
    }

    /// Staleness per region and replica with history over `window_ms`, and this node's own
    /// (`GET /v1/geo/staleness`). Only the leader knows every replica's lag; a follower
    /// reports its own and names the leader.
    pub(crate) fn report(&self, manager: &ReplicationManager, now_ms: u64, window_ms: u64) -> Value {
        let at = manager.positions();
        let safe_ms = manager.safe_time_ms();
        let tracker = self.staleness.lock().unwrap_or_else(PoisonError::into_inner);
        let regions: Vec<Value> = tracker
            .regions()
            .iter()
            .filter_map(|region| tracker.get_staleness(region))
            .map(|r| {
                let replicas: Vec<Value> = r
                    .replicas
                    .iter()
                    .map(|x| {
                        json!({
                            "replica": x.replica.0,
                            "lag_ms": x.latest.lag_ms,
                            "lag_lsns": x.latest.lag_lsns,
                            "history": tracker.history(x.replica, now_ms, window_ms),
                        })
                    })
                    .collect();
                json!({
                    "region": r.region,
                    "min_lag_ms": r.min_lag_ms,
                    "max_lag_ms": r.max_lag_ms,
                    "min_lag_lsns": r.min_lag_lsns,
                    "replicas": replicas,
                })
            })
            .collect();
        json!({
            "node": manager.id().0,
            "region": self.region,
            "leader": at.leader.map(|l| l.0),
            "is_leader": at.is_leader,
            "safe_ms": safe_ms,
            "staleness_ms": if safe_ms == 0 { None } else { Some(now_ms.saturating_sub(safe_ms)) },
            "window_ms": window_ms,
            "regions": regions,
        })
    }

    /// A token covering `lsn`, issued now in `term`.
    pub(crate) fn issue(&self, term: u64, lsn: u64, now_ms: u64) -> String {
        self.codec.encode(&SessionToken { term, lsn, region: self.region.clone(), issued_ms: now_ms })
    }

    /// The request's level as a requirement, its token checked.
    fn requirement(&self, consistency: Consistency, now_ms: u64) -> Result<ReadConsistency, GeoError> {
        Ok(match consistency {
            Consistency::Strong => ReadConsistency::Strong,
            Consistency::Bounded { max_staleness_ms, max_versions } => {
                let bound = if max_staleness_ms == 0 { self.max_staleness_ms } else { max_staleness_ms };
                ReadConsistency::BoundedStaleness {
                    max_staleness_ms: themis_replication::geo::check_staleness_ms(bound)?,
                    max_versions,
                }
            }
            Consistency::Session(None) => ReadConsistency::Session(None),
            Consistency::Session(Some(text)) => {
                let token = self.codec.decode(&text)?;
                token.check_age(now_ms, self.ttl_ms)?;
                // Its LSN and term are checked against the log only if this node has not
                // applied it: by the leader, which alone knows the log's end.
                ReadConsistency::Session(Some(token))
            }
            Consistency::Prefix => ReadConsistency::ConsistentPrefix,
            Consistency::Eventual => ReadConsistency::Eventual,
        })
    }

    /// Makes this node ready to answer a read at `consistency`: returns once its state
    /// may be read, or the answer to give instead (a bad token, a timeout, a redirect).
    pub(crate) async fn prepare(
        &self,
        consistency: Consistency,
        manager: &ReplicationManager,
        now_ms: impl Fn() -> u64,
    ) -> Result<(), Response> {
        let need = self.requirement(consistency, now_ms()).map_err(|e| bad(&e))?;
        let deadline = Instant::now() + self.wait;
        let mut waited = false;
        loop {
            let at = manager.positions();
            let state = ReplicaState {
                is_leader: at.is_leader,
                // Strong reads always go through the driver, which uses the lease itself.
                lease_valid: false,
                applied_lsn: manager.applied_lsn(),
                commit_lsn: at.commit_lsn,
                safe_ms: manager.safe_time_ms(),
                now_ms: now_ms(),
            };
            match plan_read(&need, &state, waited) {
                ReadPlan::Serve => return Ok(()),
                ReadPlan::ReadIndex => {
                    return match tokio::time::timeout(READ_TIMEOUT, manager.read_index()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(crate::server::driver_error(e)),
                        Err(_) => Err(timeout("the strong read")),
                    };
                }
                ReadPlan::Wait if waited => {
                    // Only a leader waits past the allowance, for a session token it has
                    // not applied yet: if its log holds the token's LSN it will apply it.
                    let ReadConsistency::Session(Some(token)) = &need else { return Ok(()) };
                    return leader_session_wait(manager, token).await;
                }
                ReadPlan::Wait => {
                    if Instant::now() >= deadline {
                        waited = true;
                    } else {
                        tokio::time::sleep(POLL).await;
                    }
                }
                ReadPlan::Redirect(reason) => {
                    let leader_addr = match at.leader.filter(|l| *l != manager.id()) {
                        Some(id) => manager.peer(id).await.and_then(|p| String::from_utf8(p.meta).ok()),
                        None => None,
                    };
                    // Without a leader to name (an election, a restart), the client is told
                    // at once, to try another replica or again later.
                    return Err(Response::Redirect {
                        reason: format!("node {}: {reason}", manager.id()),
                        leader: leader_addr.as_ref().and(at.leader.map(|l| l.0)),
                        leader_addr,
                    });
                }
            }
        }
    }
}

/// A leader's session read for a token it has not applied: checked against a status
/// published after the read arrived (so every write acknowledged before the token was
/// issued is in it), then waited for.
async fn leader_session_wait(manager: &ReplicationManager, token: &SessionToken) -> Result<(), Response> {
    let mut status = manager.watch_status();
    status.borrow_and_update();
    // The status is published every tick; a stopped driver fails the wait below anyway.
    let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
    let at = manager.positions();
    if at.is_leader {
        token.check_against_log(at.term, at.last_lsn, |_| None).map_err(|e| bad(&e))?;
    }
    match tokio::time::timeout(READ_TIMEOUT, manager.wait_applied(token.lsn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::server::driver_error(e)),
        Err(_) => Err(timeout("the session read")),
    }
}

/// Samples replica lag each second while the node runs (it records only while leading).
pub(crate) fn start(shared: &Arc<crate::server::Shared>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            shared.geo.sample(&shared.manager, shared.hlc.now().physical_ms());
        }
    });
}

fn bad(e: &GeoError) -> Response {
    Response::Error { code: ErrorCode::BadRequest, message: e.to_string() }
}

fn timeout(what: &str) -> Response {
    Response::Error { code: ErrorCode::Timeout, message: format!("{what} timed out after {READ_TIMEOUT:?}") }
}
