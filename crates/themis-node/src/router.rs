//! Read scale-out on the client: a router that spreads reads over every replica by a
//! strategy, takes failing replicas out and brings them back, and reads from a quorum.
//!
//! Each replica has a small pool of connections; the choice among replicas is
//! [`themis_replication::geo::Router`] (round-robin, least-connections, latency EWMA,
//! random, power-of-two-choices). Strong reads and writes go to the leader. A replica that
//! redirects a read (too stale for a bounded read, behind the session) hands it to the
//! leader; one that fails (refused, broken, timed out) is reported, and three failures in a
//! row take it out for a while (doubling), after which one read tries it again.
//!
//! ```no_run
//! # async fn run(addrs: &[std::net::SocketAddr], credentials: &themis_node::Credentials) -> Result<(), themis_node::ClientError> {
//! use themis_node::router::{ReadRouter, RouterConfig};
//! use themis_node::Consistency;
//! use themis_replication::geo::Strategy;
//!
//! let router = ReadRouter::connect(addrs, credentials, RouterConfig::new(Strategy::PowerOfTwoChoices)).await?;
//! router.put("users", "ada", br#"{"name":"Ada"}"#).await?;
//! // Read-your-writes from whichever replica the strategy picks.
//! let doc = router.get("users", "ada", Consistency::Session(None)).await?;
//! let quorum = router.quorum_get("users", "ada", 2, true).await?;
//! assert_eq!(quorum.result.value, doc);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use themis_replication::geo::quorum::{self, QuorumResult, ReplicaAnswer};
use themis_replication::geo::{
    ConsistencyLevel, HealthPolicy, RegionView, ReplicaHealth, Router, Strategy, select_read_region,
};

use crate::client::{Client, ClientError, Credentials};
use crate::protocol::{Consistency, Request, Response};

/// How a [`ReadRouter`] spreads reads.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Connections per replica (1 to 16; default 2): requests are pipelined on each.
    pub pool_size: usize,
    /// When replicas are taken out and for how long.
    pub health: HealthPolicy,
    /// Replicas tried for one read before it fails (default 3).
    pub attempts: usize,
    /// A read's deadline at one replica (default 5 s).
    pub timeout: Duration,
    /// The seed of the random strategies.
    pub seed: u64,
    /// The client's region: reads go to the region `select_read_region` picks for their
    /// level (this one first when healthy, else the nearest by measured round trip);
    /// `None` spreads them over every replica.
    pub local_region: Option<String>,
}

impl RouterConfig {
    /// The defaults with `strategy`.
    #[must_use]
    pub fn new(strategy: Strategy) -> RouterConfig {
        RouterConfig {
            strategy,
            pool_size: 2,
            health: HealthPolicy::default(),
            attempts: 3,
            timeout: Duration::from_secs(5),
            seed: u64::from(std::process::id()),
            local_region: None,
        }
    }
}

/// One replica: its address and a pool of connections, each opened on first use and
/// again after it broke.
#[derive(Debug)]
pub struct Replica {
    /// Its client address.
    pub addr: SocketAddr,
    /// Its region, as it reported at connect (`local` if it did not answer).
    pub region: String,
    pool: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl Replica {
    /// A connection of the pool (round-robin), and its slot.
    async fn client(&self, credentials: &Credentials) -> Result<(usize, Arc<Client>), ClientError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut held = self.pool[slot].lock().await;
        if let Some(client) = &*held {
            return Ok((slot, Arc::clone(client)));
        }
        let client = Arc::new(Client::connect(self.addr, credentials).await?);
        *held = Some(Arc::clone(&client));
        Ok((slot, client))
    }

    /// Forgets a connection that failed, so the next use opens a new one.
    async fn broke(&self, slot: usize) {
        *self.pool[slot].lock().await = None;
    }

    /// Sends `request` on one of the pool's connections within `timeout`.
    async fn call(
        &self,
        credentials: &Credentials,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let (slot, client) = self.client(credentials).await?;
        let answer = match tokio::time::timeout(timeout, client.call(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Connection {
                addr: self.addr,
                reason: format!("no answer within {timeout:?}"),
            }),
        };
        if answer.is_err() {
            self.broke(slot).await;
        }
        answer
    }
}

/// A quorum read's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumRead {
    /// The newest answer, who disagreed, who answered (`source`: the replica's address).
    pub result: QuorumResult<SocketAddr, Vec<u8>>,
    /// Stale replicas that caught up to the newest answer when asked (read repair).
    pub repaired: Vec<SocketAddr>,
    /// A session token covering the newest answer.
    pub session_token: String,
}

/// Spreads reads over every replica of a cluster (see the module documentation).
#[derive(Debug)]
pub struct ReadRouter {
    router: Router<Replica>,
    credentials: Credentials,
    leader: Client,
    config: RouterConfig,
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
        .unwrap_or(u64::MAX)
}

impl ReadRouter {
    /// A router over the nodes at `addrs` (every replica a read may go to); the leader is
    /// found through them.
    pub async fn connect(
        addrs: &[SocketAddr],
        credentials: &Credentials,
        config: RouterConfig,
    ) -> Result<ReadRouter, ClientError> {
        if !(1..=16).contains(&config.pool_size) || config.attempts == 0 {
            return Err(ClientError::Unexpected(format!(
                "router: pool_size = {} (1 to 16), attempts = {} (at least 1)",
                config.pool_size, config.attempts
            )));
        }
        let leader = Client::connect_any(addrs, credentials).await?;
        let mut replicas = Vec::new();
        for &addr in addrs {
            let mut replica = Replica {
                addr,
                region: "local".into(),
                pool: (0..config.pool_size).map(|_| tokio::sync::Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
            };
            if config.local_region.is_some()
                && let Ok(Response::Status { json }) =
                    replica.call(credentials, Request::Status, Duration::from_secs(2)).await
                && let Some(region) = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|s| s["region"].as_str().map(String::from))
            {
                replica.region = region;
            }
            replicas.push(replica);
        }
        Ok(ReadRouter {
            router: Router::new(replicas, config.strategy, config.health, config.seed),
            credentials: credentials.clone(),
            leader,
            config,
        })
    }

    /// The session token covering everything written and read through this router.
    #[must_use]
    pub fn session_token(&self) -> Option<String> {
        self.leader.session_token()
    }

    /// Joins the session `token` names ([`Client::set_session_token`]).
    pub fn set_session_token(&self, token: &str) {
        self.leader.set_session_token(token);
    }

    /// Each replica's address and state (reads in flight, EWMA, failures, out until).
    #[must_use]
    pub fn health(&self) -> Vec<(SocketAddr, ReplicaHealth)> {
        self.router
            .replicas()
            .enumerate()
            .filter_map(|(i, r)| self.router.health(i).map(|h| (r.addr, h)))
            .collect()
    }

    /// Writes through the leader; returns the write's LSN.
    pub async fn put(&self, collection: &str, id: &str, value: &[u8]) -> Result<u64, ClientError> {
        self.leader.put(collection, id, value).await
    }

    /// Reads at `consistency`: strong reads on the leader, the others on the replica the
    /// strategy picks (a redirect goes to the leader; a failure to the next replica, up to
    /// `attempts`). A session read without a token uses the router's session.
    pub async fn get(
        &self,
        collection: &str,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        if consistency == Consistency::Strong {
            return self.leader.get(collection, id, consistency).await;
        }
        let consistency = match consistency {
            Consistency::Session(None) => Consistency::Session(self.session_token()),
            other => other,
        };
        let region = self.read_region(&consistency);
        let request = Request::Get { collection: collection.into(), id: id.into(), consistency };
        let mut last = None;
        // A replica that failed this read is not tried again for it; the others are, in
        // the chosen region first.
        let mut failed: Vec<SocketAddr> = Vec::new();
        for _ in 0..self.config.attempts {
            let untried = |r: &Replica| !failed.contains(&r.addr);
            let pick = match &region {
                Some(region) => self.router.pick(now_ms(), |r| r.region == *region && untried(r)),
                None => None,
            };
            let Some(pick) = pick.or_else(|| self.router.pick(now_ms(), untried)) else { break };
            let started = Instant::now();
            match pick.replica().call(&self.credentials, request.clone(), self.config.timeout).await {
                Ok(Response::Value { value, session_token, .. }) => {
                    pick.succeeded(started.elapsed());
                    self.leader.set_session_token(&session_token);
                    return Ok(value);
                }
                Ok(Response::Redirect { .. }) => {
                    // The replica is healthy, only behind for this read: the leader has it.
                    pick.succeeded(started.elapsed());
                    return self.leader_read(request).await;
                }
                Ok(other) => {
                    pick.succeeded(started.elapsed());
                    return Err(crate::client::unexpected(other));
                }
                Err(e) => {
                    failed.push(pick.replica().addr);
                    pick.failed(now_ms());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoLeader { leader: None, addr: None }))
    }

    /// The region a read at `consistency` goes to, when the router knows its own region:
    /// `select_read_region` over each region's health (a replica not taken out) and round
    /// trip (the fastest replica's EWMA; an unmeasured region counts as near when it is
    /// the local one and far otherwise). The leader's region is not tracked here: STRONG
    /// reads go to the leader before this.
    fn read_region(&self, consistency: &Consistency) -> Option<String> {
        let local = self.config.local_region.as_deref()?;
        let now = now_ms();
        let mut views: Vec<RegionView> = Vec::new();
        for (i, replica) in self.router.replicas().enumerate() {
            let Some(health) = self.router.health(i) else { continue };
            let healthy = health.out_until_ms <= now;
            let rtt_ms = match health.ewma_rtt_us {
                0 if replica.region == local => 0,
                0 => 1_000,
                us => us / 1_000,
            };
            match views.iter_mut().find(|v| v.name == replica.region) {
                Some(v) => {
                    v.healthy |= healthy;
                    v.rtt_ms = v.rtt_ms.min(rtt_ms);
                }
                None => views.push(RegionView {
                    name: replica.region.clone(),
                    healthy,
                    rtt_ms,
                    lag_ms: 0,
                    has_leader: false,
                }),
            }
        }
        let (level, bound) = match consistency {
            Consistency::Bounded { max_staleness_ms, .. } => {
                (ConsistencyLevel::BoundedStaleness, *max_staleness_ms)
            }
            Consistency::Session(_) => (ConsistencyLevel::Session, 0),
            Consistency::Prefix => (ConsistencyLevel::ConsistentPrefix, 0),
            Consistency::Eventual => (ConsistencyLevel::Eventual, 0),
            Consistency::Strong => return None,
        };
        select_read_region(level, local, &views, bound).map(String::from)
    }

    async fn leader_read(&self, request: Request) -> Result<Option<Vec<u8>>, ClientError> {
        match self.leader.call_leader(request).await? {
            Response::Value { value, session_token, .. } => {
                self.leader.set_session_token(&session_token);
                Ok(value)
            }
            other => Err(crate::client::unexpected(other)),
        }
    }

    /// Reads `collection/id` from every replica at the router's session (so the answers
    /// include its own writes; a replica that cannot catch up in time redirects and does
    /// not count) and answers once `r` have: the newest version (a document's LSN; for an
    /// absent one, the LSN its replica had applied, since every replica applies one log),
    /// with `had_conflicts`, the sources, and who was stale or divergent. With `repair`, each stale replica is asked to catch up to
    /// the newest answer (a session read at its token), and those that did are listed in
    /// `repaired`; a divergent one (same version, another value) is only reported.
    pub async fn quorum_get(
        &self,
        collection: &str,
        id: &str,
        r: usize,
        repair: bool,
    ) -> Result<QuorumRead, ClientError> {
        let replicas: Vec<&Replica> = self.router.replicas().collect();
        let n = replicas.len();
        quorum::check_quorum(r, n).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        // Each replica answers at the router's session, so a quorum read sees this
        // session's writes; one too far behind redirects and does not count.
        let consistency = Consistency::Session(self.session_token());
        let request = Request::Get { collection: collection.into(), id: id.into(), consistency };
        let mut asks: futures_util::stream::FuturesUnordered<_> = replicas
            .iter()
            .map(|replica| {
                let request = request.clone();
                async move {
                    let answer = replica.call(&self.credentials, request, self.config.timeout).await?;
                    Ok::<_, ClientError>((replica.addr, answer))
                }
            })
            .collect();
        let mut answers = Vec::new();
        let mut tokens = Vec::new();
        while let Some(answer) = futures_util::StreamExt::next(&mut asks).await {
            if let Ok((source, Response::Value { value, applied_lsn, version, session_token })) = answer {
                let version = if value.is_some() { version } else { applied_lsn };
                answers.push(ReplicaAnswer { source, version, value, applied_lsn });
                tokens.push((applied_lsn, session_token));
                if answers.len() == r {
                    break;
                }
            }
        }
        let result = quorum::resolve(&answers, r, n).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let session_token =
            tokens.into_iter().max_by_key(|(lsn, _)| *lsn).map(|(_, t)| t).unwrap_or_default();
        self.leader.set_session_token(&session_token);
        let mut repaired = Vec::new();
        if repair {
            for stale in &result.stale {
                let Some(replica) = replicas.iter().find(|x| x.addr == *stale) else { continue };
                let catch_up = Request::Get {
                    collection: collection.into(),
                    id: id.into(),
                    consistency: Consistency::Session(Some(session_token.clone())),
                };
                if let Ok(Response::Value { .. }) =
                    replica.call(&self.credentials, catch_up, self.config.timeout).await
                {
                    repaired.push(*stale);
                }
            }
        }
        Ok(QuorumRead { result, repaired, session_token })
    }
}
