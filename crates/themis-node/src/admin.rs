//! The HTTP admin API (axum over TLS 1.3 with the node certificate, or plain HTTP under
//! `insecure_plaintext`): cluster status and operations, documents, the topology, and
//! Prometheus metrics. Every route is listed in [`ROUTES`] and described in the `OpenAPI`
//! document served at `GET /v1/openapi.json` (a test checks the two agree).
//!
//! Errors are JSON `{"code": "...", "message": "..."}` with a stable code; a bad request
//! is a 400 that says what was wrong. Cluster operations and writes sent to a follower are
//! a 421 naming the leader (`leader`, `leader_client_addr`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use themis_replication::clock::NodeId;
use themis_replication::geo::{ConsistencyLevel, WriteConcern, parse_staleness_ms};
use themis_replication::raft::DriverStatus;
use tokio::net::TcpListener;

use crate::auth::{AuthError, Identity, Role};
use crate::config::NodeConfig;
use crate::limits::{HEADER_READ_TIMEOUT, MAX_ADMIN_CONNECTIONS, MAX_DOCUMENT_BYTES, MAX_HTTP_HEAD_BYTES};
use crate::protocol::{Consistency, ErrorCode, Request, Response};
use crate::server::{Shared, handle};

/// Every route: method and path (axum's `{param}` syntax, as in the `OpenAPI` document).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/cluster/status"),
    ("POST", "/v1/cluster/election"),
    ("PUT", "/v1/cluster/mode"),
    ("POST", "/v1/cluster/members"),
    ("DELETE", "/v1/cluster/members/{id}"),
    ("POST", "/v1/cluster/members/{id}/promote"),
    ("POST", "/v1/cluster/transfer"),
    ("GET", "/v1/cluster/topology"),
    ("GET", "/v1/cluster/cascade"),
    ("PUT", "/v1/cluster/cascade/{id}"),
    ("DELETE", "/v1/cluster/cascade/{id}"),
    ("GET", "/v1/geo/staleness"),
    ("GET", "/v1/links"),
    ("POST", "/v1/links"),
    ("GET", "/v1/links/conflicts"),
    ("POST", "/v1/links/conflicts/resolve"),
    ("GET", "/v1/links/{name}"),
    ("DELETE", "/v1/links/{name}"),
    ("GET", "/v1/tiers"),
    ("PUT", "/v1/tiers/{collection}"),
    ("DELETE", "/v1/tiers/{collection}"),
    ("PUT", "/v1/collections/{collection}/docs/{id}"),
    ("GET", "/v1/collections/{collection}/docs/{id}"),
    ("DELETE", "/v1/collections/{collection}/docs/{id}"),
    ("GET", "/v1/cdc/events"),
    ("GET", "/v1/slots"),
    ("POST", "/v1/slots"),
    ("GET", "/v1/slots/{name}"),
    ("DELETE", "/v1/slots/{name}"),
    ("GET", "/v1/slots/{name}/changes"),
    ("POST", "/v1/slots/{name}/advance"),
    ("POST", "/v1/slots/{name}/pause"),
    ("POST", "/v1/slots/{name}/resume"),
    ("GET", "/v1/logical/schemas/ids/{id}"),
    ("GET", "/v1/logical/schemas/protobuf"),
    ("POST", "/v1/ddl"),
    ("GET", "/v1/collections"),
    ("GET", "/v1/doctor/ranges"),
    ("GET", "/v1/doctor/ranges/{bucket}"),
    ("POST", "/v1/doctor/repair"),
    ("GET", "/v1/analytics/lag"),
    ("GET", "/v1/analytics/insights"),
    ("GET", "/v1/analytics/bottlenecks"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/ui"),
    ("GET", "/ui/app.js"),
    ("GET", "/ui/app.css"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
];

/// The `OpenAPI` 3 document for [`ROUTES`].
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The header carrying a session token (the LSN of a write) in and out.
pub const SESSION_HEADER: &str = "x-themis-session-token";
/// The header carrying the LSN a read was served at.
pub const APPLIED_HEADER: &str = "x-themis-applied-lsn";

/// Leader, term, voters, learners: a change of any is a topology change.
type TopologyKey = (Option<NodeId>, u64, Vec<NodeId>, Vec<NodeId>);

/// The topology as last seen, with a version that moves on every change.
#[derive(Debug, Default)]
struct Topology {
    version: u64,
    key: Option<TopologyKey>,
}

/// What the admin handlers share.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) shared: Arc<Shared>,
    /// Change streams open now (`cdc.max_subscribers` at most).
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    id: u64,
    regions: BTreeMap<u64, String>,
    topology: Mutex<Topology>,
    /// Whether the API is served over TLS (the dashboard's cookie is then `Secure`).
    pub(crate) tls: bool,
}

impl AdminState {
    pub(crate) fn new(shared: Arc<Shared>, config: &NodeConfig) -> Arc<AdminState> {
        let state = Arc::new(AdminState {
            shared,
            streams: Arc::new(tokio::sync::Semaphore::new(config.cdc.max_subscribers)),
            id: config.node_id,
            regions: config.regions.clone(),
            topology: Mutex::new(Topology::default()),
            tls: !config.insecure_plaintext,
        });
        // Follow every status change, so the version counts changes even between requests.
        let watcher = Arc::downgrade(&state);
        let mut status = state.shared.manager.watch_status();
        tokio::spawn(async move {
            loop {
                let Some(state) = watcher.upgrade() else { return };
                state.observe(&status.borrow_and_update());
                drop(state);
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
        state
    }

    fn observe(&self, s: &DriverStatus) -> u64 {
        let key = (s.leader, s.term, s.voters.clone(), s.learners.clone());
        let mut topology = self.topology.lock().unwrap_or_else(PoisonError::into_inner);
        if topology.key.as_ref() != Some(&key) {
            topology.key = Some(key);
            topology.version += 1;
        }
        topology.version
    }
}

/// The router over `state`.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/election", post(election))
        .route("/v1/cluster/mode", put(mode))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/cluster/members/{id}/promote", post(promote))
        .route("/v1/cluster/transfer", post(transfer))
        .route("/v1/cluster/topology", get(topology))
        .route("/v1/cluster/cascade", get(crate::cascade::list))
        .route("/v1/cluster/cascade/{id}", put(crate::cascade::set).delete(crate::cascade::clear))
        .route("/v1/geo/staleness", get(staleness))
        .route("/v1/links", get(crate::links::list).post(crate::links::create))
        .route("/v1/links/conflicts", get(crate::links::conflicts))
        .route("/v1/links/conflicts/resolve", post(crate::links::resolve))
        .route("/v1/links/{name}", get(crate::links::get_link).delete(crate::links::drop_link))
        .route("/v1/tiers", get(crate::tiers::list))
        .route("/v1/tiers/{collection}", put(crate::tiers::assign).delete(crate::tiers::clear))
        .route("/v1/collections/{collection}/docs/{id}", put(put_doc).get(get_doc).delete(delete_doc))
        .route("/v1/cdc/events", get(crate::changes::sse))
        .route("/v1/slots", get(crate::slots::list).post(crate::slots::create))
        .route("/v1/slots/{name}", get(crate::slots::get_slot).delete(crate::slots::drop_slot))
        .route("/v1/slots/{name}/changes", get(crate::slots::read))
        .route("/v1/slots/{name}/advance", post(crate::slots::advance))
        .route("/v1/slots/{name}/pause", post(crate::slots::pause))
        .route("/v1/slots/{name}/resume", post(crate::slots::resume))
        .route("/v1/logical/schemas/ids/{id}", get(crate::slots::avro_schema))
        .route("/v1/logical/schemas/protobuf", get(crate::slots::proto_schema))
        .route("/v1/ddl", post(crate::slots::ddl))
        .route("/v1/collections", get(crate::slots::collections))
        .route("/v1/doctor/ranges", get(crate::doctor::ranges))
        .route("/v1/doctor/ranges/{bucket}", get(crate::doctor::bucket))
        .route(
            "/v1/doctor/repair",
            post(crate::doctor::repair).layer(DefaultBodyLimit::max(crate::doctor::MAX_REPAIR_BYTES)),
        )
        .route("/v1/analytics/lag", get(crate::analytics::lag))
        .route("/v1/analytics/insights", get(crate::analytics::insights))
        .route("/v1/analytics/bottlenecks", get(crate::analytics::bottlenecks))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/ui", get(crate::dashboard::index))
        .route("/ui/app.js", get(crate::dashboard::script))
        .route("/ui/app.css", get(crate::dashboard::style))
        .route(
            "/ui/login",
            get(crate::dashboard::login_form)
                .post(crate::dashboard::login)
                .layer(DefaultBodyLimit::max(crate::dashboard::MAX_LOGIN_BYTES)),
        )
        .route("/ui/logout", post(crate::dashboard::logout))
        // Runs after routing (so it knows the route) and before any handler or body read.
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        // Cluster operations take small JSON bodies; documents read their own body up to
        // MAX_DOCUMENT_BYTES (put_doc), since axum's own refusal is not our error body.
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY_BYTES))
        .with_state(state)
}

/// The role each route needs (see [`crate::auth`]): reads and status `read`, document
/// writes and slot confirmations `write`, cluster operations, DDL and slot management
/// `admin`.
#[must_use]
pub fn route_role(method: &str, path: &str) -> Role {
    match (method, path) {
        ("PUT" | "DELETE", "/v1/collections/{collection}/docs/{id}")
        | ("POST", "/v1/slots/{name}/advance" | "/v1/links/conflicts/resolve") => Role::Write,
        // The doctor reads every collection whatever a token's collections.
        ("GET", "/v1/doctor/ranges" | "/v1/doctor/ranges/{bucket}") => Role::Admin,
        ("GET", _) | ("POST", "/ui/login" | "/ui/logout") => Role::Read,
        _ => Role::Admin,
    }
}

/// Who made a request that passed [`guard`].
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<Identity>);

/// The identity the connection's TLS client certificate gives (none without one).
#[derive(Debug, Clone)]
struct ConnIdentity(Arc<Identity>);

/// Authenticates and authorizes a request before its handler runs: a bearer token when
/// the request has an `Authorization` header, else the connection's client certificate.
async fn guard(
    State(state): State<Arc<AdminState>>,
    matched: axum::extract::MatchedPath,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    let auth = &state.shared.auth;
    let needs = route_role(request.method().as_str(), matched.as_str());
    if (matched.as_str() == "/metrics" && auth.metrics_open()) || matched.as_str() == "/ui/login" {
        return next.run(request).await;
    }
    let cookie = crate::dashboard::cookie_token(request.headers());
    let identity = match (request.headers().get(header::AUTHORIZATION), cookie) {
        (Some(value), _) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(token) => match auth.token(token.trim()) {
                Ok(principal) => Identity::Known(principal),
                Err(e) => Identity::Refused(e),
            },
            None => Identity::Refused(AuthError::Unauthenticated(
                "the Authorization header is not \"Bearer <token>\"".into(),
            )),
        },
        // The dashboard's session: a change must also say it comes from the dashboard's
        // own script, which a form or link on another site cannot.
        (None, Some(token)) => match auth.token(token) {
            Ok(_) if needs != Role::Read && !request.headers().contains_key(crate::dashboard::UI_HEADER) => {
                Identity::Refused(AuthError::Unauthenticated(format!(
                    "a change made with the dashboard's session cookie must carry the {} header",
                    crate::dashboard::UI_HEADER
                )))
            }
            Ok(principal) => Identity::Known(principal),
            Err(e) => Identity::Refused(e),
        },
        (None, None) => {
            request.extensions().get::<ConnIdentity>().map_or(Identity::None, |conn| conn.0.as_ref().clone())
        }
    };
    match auth.authorize(&identity, needs) {
        Ok(()) => {
            // Handlers that narrow further (a change stream's collections) read it.
            request.extensions_mut().insert(Caller(Arc::new(identity)));
            next.run(request).await
        }
        Err(_)
            if request.method() == axum::http::Method::GET && crate::dashboard::is_page(matched.as_str()) =>
        {
            // A browser opening the dashboard without a session is shown the sign-in form.
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response()
        }
        Err(e) => {
            let op = match needs {
                Role::Admin => "admin",
                _ => "http",
            };
            let response = e.response();
            state.shared.metrics.count_request(op, response.outcome());
            reply(response)
        }
    }
}

/// The largest body of a cluster operation (mode, members, transfer).
const MAX_CONTROL_BODY_BYTES: usize = 64 << 10;

/// Serves the router over `state` on `listener`, over TLS when `tls` is given, until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AdminState>,
) {
    let router = router(Arc::clone(&state));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let (tls, router, state) = (tls.clone(), router.clone(), Arc::clone(&state));
        tokio::spawn(async move {
            let _slot = slot;
            let serve = |identity: Identity| {
                let router = router.layer(axum::Extension(ConnIdentity(Arc::new(identity))));
                hyper_util::service::TowerToHyperService::new(router)
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            // A slow or endless request head holds one connection for a bounded time and
            // buffer, never the node.
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HTTP_HEAD_BYTES);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(crate::limits::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let service =
                                serve(state.shared.auth.certificate(stream.get_ref().1.peer_certificates()));
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), serve(Identity::None)).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    (status, axum::Json(json!({ "code": code, "message": message }))).into_response()
}

pub(crate) fn bad_request(message: &str) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest.as_str(), message)
}

fn with_token(out: &mut HttpResponse, token: &str) {
    // A token is ASCII by construction; a value that is not is left out, not sent broken.
    if let Ok(value) = HeaderValue::from_str(token) {
        out.headers_mut().insert(SESSION_HEADER, value);
    }
}

/// The HTTP form of a node answer.
pub(crate) fn reply(response: Response) -> HttpResponse {
    match response {
        Response::Written { lsn, session_token } => {
            let mut out = axum::Json(json!({ "lsn": lsn, "session_token": session_token })).into_response();
            with_token(&mut out, &session_token);
            out
        }
        Response::Value { value: Some(doc), applied_lsn, session_token, .. } => {
            let mut out = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], doc).into_response();
            out.headers_mut().insert(APPLIED_HEADER, HeaderValue::from(applied_lsn));
            with_token(&mut out, &session_token);
            out
        }
        Response::Value { value: None, applied_lsn, session_token, .. } => {
            let mut out = error(StatusCode::NOT_FOUND, "not_found", "no such document");
            out.headers_mut().insert(APPLIED_HEADER, HeaderValue::from(applied_lsn));
            with_token(&mut out, &session_token);
            out
        }
        Response::Redirect { reason, leader, leader_addr } => (
            StatusCode::MISDIRECTED_REQUEST,
            axum::Json(json!({
                "code": "redirect",
                "message": reason,
                "leader": leader,
                "leader_client_addr": leader_addr,
            })),
        )
            .into_response(),
        Response::NotLeader { leader, leader_addr } => (
            StatusCode::MISDIRECTED_REQUEST,
            axum::Json(json!({
                "code": "not_leader",
                "message": "this node does not lead; send the request to the leader",
                "leader": leader,
                "leader_client_addr": leader_addr,
            })),
        )
            .into_response(),
        Response::Status { json } => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Response::Done => axum::Json(json!({ "ok": true })).into_response(),
        Response::Error { code, message } => {
            let status = match code {
                ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                ErrorCode::OutcomeUnknown => StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Refused => StatusCode::CONFLICT,
                ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            };
            let mut out = error(status, code.as_str(), &message);
            if code == ErrorCode::Unauthenticated {
                out.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            out
        }
        Response::Authenticated { name, role } => {
            axum::Json(json!({ "name": name, "role": role })).into_response()
        }
    }
}

async fn run(state: &AdminState, request: Request) -> HttpResponse {
    reply(handle(request, &state.shared).await)
}

/// Parses a JSON request body into `T`, or says what was wrong.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes, example: &str) -> Result<T, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("the body is not what this route takes ({e}); example: {example}"))
}

pub(crate) fn node_id(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("node id {text:?}: expected a number from 1"))
}

async fn status(State(state): State<Arc<AdminState>>) -> HttpResponse {
    run(&state, Request::Status).await
}

/// `GET /v1/geo/staleness?window_ms=N`: lag per region and replica, with history.
async fn staleness(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<HashMap<String, String>>,
) -> HttpResponse {
    let window_ms = match query.get("window_ms").map(|w| w.parse::<u64>()) {
        None => 60_000,
        Some(Ok(w)) if (1..=86_400_000).contains(&w) => w,
        Some(_) => return bad_request("window_ms: expected 1 to 86400000 (a day)"),
    };
    let shared = &state.shared;
    axum::Json(shared.geo.report(&shared.manager, shared.hlc.now().physical_ms(), window_ms)).into_response()
}

async fn election(State(state): State<Arc<AdminState>>) -> HttpResponse {
    run(&state, Request::Campaign).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: String,
    #[serde(default = "one")]
    min_sync_replicas: u32,
}

fn one() -> u32 {
    1
}

async fn mode(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    match body::<ModeBody>(&bytes, r#"{"mode":"semi_sync","min_sync_replicas":1}"#) {
        Ok(m) => run(&state, Request::SetMode { mode: m.mode, min_sync_replicas: m.min_sync_replicas }).await,
        Err(e) => bad_request(&e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    id: u64,
    raft_addr: String,
    client_addr: String,
    /// A read replica that streams from this member instead of the leader (cascading).
    #[serde(default)]
    upstream: Option<u64>,
}

async fn add_member(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    let example = r#"{"id":4,"raft_addr":"10.0.0.4:7000","client_addr":"10.0.0.4:8000","upstream":2}"#;
    let m = match body::<MemberBody>(&bytes, example) {
        Ok(m) if m.id == 0 => return bad_request("id = 0: node ids start at 1"),
        Ok(m) if m.upstream == Some(0) => return bad_request("upstream = 0: node ids start at 1"),
        Ok(m) => m,
        Err(e) => return bad_request(&e),
    };
    let (id, upstream) = (NodeId(m.id), m.upstream.map(NodeId));
    if let Some(upstream) = upstream {
        // Refused before the learner is added: a chain too deep is named, nothing changes.
        let status = state.shared.manager.status();
        let current = crate::cascade::topology(&state.shared.store);
        if let Err((code, message)) = crate::cascade::check(&status, &current, id, upstream, true) {
            return error(code, "invalid_topology", &message);
        }
    }
    let added =
        run(&state, Request::AddLearner { id: m.id, raft_addr: m.raft_addr, client_addr: m.client_addr })
            .await;
    match upstream {
        Some(upstream) if added.status().is_success() => {
            match crate::cascade::write(&state.shared, id, Some(upstream), true).await {
                Ok(lsn) => {
                    axum::Json(json!({ "id": id.0, "upstream": upstream.0, "lsn": lsn })).into_response()
                }
                Err(r) => r,
            }
        }
        _ => added,
    }
}

async fn remove_member(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> HttpResponse {
    match node_id(&id) {
        Ok(id) => run(&state, Request::Remove { id }).await,
        Err(e) => bad_request(&e),
    }
}

async fn promote(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> HttpResponse {
    match node_id(&id) {
        Ok(id) => run(&state, Request::Promote { id }).await,
        Err(e) => bad_request(&e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: u64,
}

async fn transfer(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    match body::<TransferBody>(&bytes, r#"{"to":2}"#) {
        Ok(t) => run(&state, Request::Transfer { id: t.to }).await,
        Err(e) => bad_request(&e),
    }
}

async fn put_doc(
    State(state): State<Arc<AdminState>>,
    Path((collection, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> HttpResponse {
    let concern = match write_concern(&query) {
        Ok(c) => c,
        Err(message) => return bad_request(&message),
    };
    match read_document(&headers, body).await {
        Ok(bytes) => {
            written_with(&state, Request::Put { collection, id, value: bytes.to_vec() }, concern).await
        }
        Err(refusal) => refusal,
    }
}

/// Writes the internal document `collection/key` (none: removes it) through the leader
/// and waits until this node has applied it; `what` names it in a timeout. Slot records
/// and tier assignments travel this way.
pub(crate) async fn write_internal(
    shared: &crate::server::Shared,
    collection: &str,
    key: &str,
    value: Option<Bytes>,
    what: &str,
) -> Result<u64, HttpResponse> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
    let write = shared.writes.write(
        &shared.manager,
        &shared.store,
        collection.to_string(),
        Bytes::copy_from_slice(key.as_bytes()),
        value,
    );
    let lsn = match tokio::time::timeout(LIMIT, write).await {
        Ok(Ok(lsn)) => lsn,
        Ok(Err(e)) => return Err(reply(crate::server::driver_error(e))),
        Err(_) => {
            return Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                &format!("the {what} write timed out"),
            ));
        }
    };
    if tokio::time::timeout(LIMIT, shared.manager.wait_applied(lsn)).await.is_err() {
        return Err(error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!("applying the {what} write timed out"),
        ));
    }
    Ok(lsn)
}

/// `?write_concern=one|majority|all`, if given.
fn write_concern(query: &HashMap<String, String>) -> Result<Option<WriteConcern>, String> {
    query
        .get("write_concern")
        .map(|c| c.parse::<WriteConcern>())
        .transpose()
        .map_err(|e| format!("write_concern: {e}"))
}

/// Runs a write, then waits for `concern` (the stricter of it and the mode applies).
async fn written_with(state: &AdminState, request: Request, concern: Option<WriteConcern>) -> HttpResponse {
    let answer = handle(request, &state.shared).await;
    if let (Response::Written { lsn, .. }, Some(concern)) = (&answer, concern) {
        let waited = handle(Request::WaitFor { lsn: *lsn, concern }, &state.shared).await;
        if waited != Response::Done {
            return reply(waited);
        }
    }
    reply(answer)
}

fn too_large(what: &str) -> HttpResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooLarge.as_str(),
        &format!("{what}; the largest document accepted is {MAX_DOCUMENT_BYTES} bytes"),
    )
}

/// Reads a document body of at most [`MAX_DOCUMENT_BYTES`]. A `Content-Length` above it is
/// refused before any of the body is read; a body without one is refused as soon as it
/// passes the limit, so a body of any size costs at most the limit in memory.
async fn read_document(headers: &HeaderMap, mut body: axum::body::Body) -> Result<Bytes, HttpResponse> {
    use http_body_util::BodyExt;
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        match length.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
            Some(n) if n > MAX_DOCUMENT_BYTES as u64 => {
                linger(body);
                return Err(too_large(&format!("the body is {n} bytes")));
            }
            Some(_) => {}
            None => return Err(bad_request("content-length: not a number of bytes")),
        }
    }
    let mut document = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad_request(&format!("the body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if document.len() + data.len() > MAX_DOCUMENT_BYTES {
            linger(body);
            return Err(too_large(&format!("the body passed {MAX_DOCUMENT_BYTES} bytes")));
        }
        document.extend_from_slice(&data);
    }
    Ok(document.freeze())
}

/// How long the rest of a refused body is read and dropped after the refusal is sent.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what is left of a refused body, for at most [`LINGER`], while the
/// refusal goes out. Closing at once would make the kernel reset the connection with the
/// client's bytes unread, and a reset can destroy the refusal before the client reads it
/// (nginx's lingering close does the same). Nothing is kept: memory stays flat however
/// long the body is.
fn linger(body: axum::body::Body) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = body.frame().await {} }).await;
    });
}

async fn delete_doc(
    State(state): State<Arc<AdminState>>,
    Path((collection, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> HttpResponse {
    match write_concern(&query) {
        Ok(concern) => written_with(&state, Request::Delete { collection, id }, concern).await,
        Err(message) => bad_request(&message),
    }
}

async fn get_doc(
    State(state): State<Arc<AdminState>>,
    Path((collection, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> HttpResponse {
    let consistency = match read_consistency(&query, &headers, state.shared.geo.default_level) {
        Ok(c) => c,
        Err(message) => return bad_request(&message),
    };
    run(&state, Request::Get { collection, id, consistency }).await
}

/// A read's level from `?consistency=`, `max_staleness_ms=`, `max_versions=` and the
/// session token header; the node's default level when none is named.
fn read_consistency(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    default: ConsistencyLevel,
) -> Result<Consistency, String> {
    let token = match headers.get(SESSION_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) => Some(t.to_owned()),
        Some(Err(_)) => return Err(format!("{SESSION_HEADER}: not a token (non-ASCII bytes)")),
    };
    let level = match query.get("consistency") {
        None => default,
        Some(name) => name.parse::<ConsistencyLevel>().map_err(|e| format!("consistency: {e}"))?,
    };
    let staleness = query
        .get("max_staleness_ms")
        .map(|v| parse_staleness_ms(v))
        .transpose()
        .map_err(|e| e.to_string())?;
    let versions = query
        .get("max_versions")
        .map(|v| v.parse::<u64>().map_err(|_| format!("max_versions = {v:?}: expected a whole number")))
        .transpose()?;
    if level != ConsistencyLevel::BoundedStaleness && (staleness.is_some() || versions.is_some()) {
        return Err(format!("max_staleness_ms and max_versions apply to consistency=bounded, not {level}"));
    }
    Ok(match level {
        ConsistencyLevel::Strong => Consistency::Strong,
        ConsistencyLevel::BoundedStaleness => {
            Consistency::Bounded { max_staleness_ms: staleness.unwrap_or(0), max_versions: versions }
        }
        ConsistencyLevel::Session => Consistency::Session(token),
        ConsistencyLevel::ConsistentPrefix => Consistency::Prefix,
        ConsistencyLevel::Eventual => Consistency::Eventual,
    })
}

async fn openapi() -> HttpResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> HttpResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.shared.metrics.encode(),
    )
        .into_response()
}

async fn topology(State(state): State<Arc<AdminState>>) -> HttpResponse {
    let manager = &state.shared.manager;
    let s = manager.status();
    let version = state.observe(&s);
    let leading = s.role == "Leader";
    let by_id: HashMap<NodeId, &themis_replication::raft::ReplicaStatus> =
        s.replicas.iter().map(|r| (r.id, r)).collect();
    let mut nodes = Vec::new();
    for id in s.voters.iter().chain(&s.learners) {
        let info = manager.peer(*id).await;
        let learner = s.learners.contains(id);
        let role = if Some(*id) == s.leader {
            "leader"
        } else if learner {
            "learner"
        } else {
            "follower"
        };
        let mut node = json!({
            "id": id.0,
            "role": role,
            "voter": !learner,
            "region": state.regions.get(&id.0),
            "raft_addr": info.as_ref().map(|i| i.raft_addr.to_string()),
            "client_addr": info.and_then(|i| String::from_utf8(i.meta).ok()),
            "upstream": s.upstreams.get(id).map(|u| u.0),
        });
        if let Some(r) = by_id.get(id) {
            node["healthy"] = json!(r.healthy);
            node["lag_lsns"] = json!(r.lag_lsns);
            node["lag_ms"] = json!(r.lag_ms);
            node["match_lsn"] = json!(r.match_lsn);
        } else if Some(*id) == s.leader && leading {
            node["healthy"] = json!(true);
            node["lag_lsns"] = json!(0);
            node["lag_ms"] = json!(0);
            node["match_lsn"] = json!(s.last_lsn);
        }
        nodes.push(node);
    }
    // Links are the replication streams, as the leader measures them: from the leader,
    // or from a cascaded replica's upstream while the upstream serves it.
    let links: Vec<Value> = s
        .replicas
        .iter()
        .filter(|r| Some(r.id) != s.leader)
        .map(|r| {
            let upstream = s.upstreams.get(&r.id).filter(|_| !s.cascade_direct.contains(&r.id));
            json!({
                "from": upstream.unwrap_or(&s.id).0,
                "cascaded": upstream.is_some(),
                "to": r.id.0,
                "state": r.state,
                "healthy": r.healthy,
                "lag_lsns": r.lag_lsns,
                "lag_ms": r.lag_ms,
                "last_contact_ms": r.last_contact_ms,
            })
        })
        .collect();
    axum::Json(json!({
        "version": version,
        "observed_by": state.id,
        "complete": leading,
        "term": s.term,
        "leader": s.leader.map(|l| l.0),
        "mode": s.mode,
        "nodes": nodes,
        "links": links,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let method = method.to_uppercase();
                // The documented role is the one the guard enforces, and both refusals are
                // listed, except on the one route open to anyone (the dashboard's sign-in).
                assert_eq!(op["x-themis-role"], route_role(&method, path).as_str(), "{method} {path}");
                let open = op["security"] == json!([]);
                assert_eq!(open, path == "/ui/login", "{method} {path}");
                assert!(
                    open || (op["responses"]["401"].is_object() && op["responses"]["403"].is_object()),
                    "{method} {path}"
                );
                documented.push((method, path.clone()));
            }
        }
        let mut routes: Vec<(String, String)> =
            ROUTES.iter().map(|(m, p)| ((*m).to_string(), (*p).to_string())).collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        // Every reference resolves.
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for reference in OPENAPI.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().expect("a name");
            assert!(schemas.contains_key(name), "{name} is referenced but not defined");
        }
    }

    #[test]
    fn answers_map_to_stable_codes_and_statuses() {
        let cases = [
            (Response::Error { code: ErrorCode::BadRequest, message: "m".into() }, 400, "bad_request"),
            (Response::Error { code: ErrorCode::Busy, message: "m".into() }, 429, "busy"),
            (Response::Error { code: ErrorCode::Timeout, message: "m".into() }, 504, "timeout"),
            (Response::Error { code: ErrorCode::Unavailable, message: "m".into() }, 503, "unavailable"),
            (Response::Error { code: ErrorCode::Refused, message: "m".into() }, 409, "refused"),
            (
                Response::Error { code: ErrorCode::Unauthenticated, message: "m".into() },
                401,
                "unauthenticated",
            ),
            (Response::Error { code: ErrorCode::Forbidden, message: "m".into() }, 403, "forbidden"),
            (
                Response::Error { code: ErrorCode::OutcomeUnknown, message: "m".into() },
                500,
                "outcome_unknown",
            ),
            (Response::NotLeader { leader: Some(2), leader_addr: None }, 421, "not_leader"),
            (
                Response::Value {
                    value: None,
                    applied_lsn: 3,
                    version: 0,
                    session_token: "s1.1.3.a.0.00".into(),
                },
                404,
                "not_found",
            ),
            (
                Response::Redirect { reason: "stale".into(), leader: Some(2), leader_addr: None },
                421,
                "redirect",
            ),
        ];
        for (response, status, code) in cases {
            let outcome = response.outcome();
            let http = reply(response);
            assert_eq!(http.status().as_u16(), status, "{code}");
            if code != "not_found" {
                assert_eq!(outcome, code);
            }
        }
        let written =
            reply(Response::Written { lsn: 42, session_token: "s1.2.42.local.7.0011223344556677".into() });
        assert_eq!(written.headers()[SESSION_HEADER], "s1.2.42.local.7.0011223344556677");
    }
}
