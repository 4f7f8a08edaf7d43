//! The Rust client: one pipelined connection (many requests in flight, answers matched by
//! id), TLS 1.3 against the cluster CA, and writes that follow a follower's redirect to
//! the leader. [`Credentials`] say how it authenticates (a client certificate, a bearer
//! token, or neither).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use themis_replication::ship::tls::{ADMIN_CLIENT, CertPem};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::limits::MAX_DOCUMENT_BYTES;
use crate::protocol::{Consistency, ErrorCode, Request, Response, check_name, read_frame, write_frame};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or TLS failed.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection broke with the request in flight.
    #[error("the connection to {addr} broke: {reason}")]
    Connection {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{code:?}: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// No leader is known, or redirects did not reach one.
    #[error("no leader reachable (last answer: leader {leader:?} at {addr:?})")]
    NoLeader {
        /// The leader named.
        leader: Option<u64>,
        /// Its address.
        addr: Option<String>,
    },
    /// The replica could not serve the read at its level (too stale, behind the
    /// session) and no leader could take it.
    #[error("read redirected: {reason} (leader {leader:?} at {addr:?})")]
    Redirected {
        /// Why.
        reason: String,
        /// The leader named.
        leader: Option<u64>,
        /// Its address.
        addr: Option<String>,
    },
    /// An answer of the wrong kind.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The document is larger than a node accepts; it was not sent.
    #[error("the document is {size} bytes; the largest a node accepts is {max} bytes")]
    TooLarge {
        /// The document's size.
        size: usize,
        /// The limit ([`MAX_DOCUMENT_BYTES`]).
        max: usize,
    },
    /// A collection name or document id is not one a node accepts; it was not sent.
    #[error("{0}")]
    BadName(String),
}

/// How a client reaches and proves itself to a cluster: the cluster CA (TLS 1.3) or
/// plaintext, and optionally a client certificate and a bearer token (sent first on every
/// connection).
#[derive(Clone, Default)]
pub struct Credentials {
    ca: Option<String>,
    identity: Option<CertPem>,
    token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key or the token.
        f.debug_struct("Credentials")
            .field("tls", &self.ca.is_some())
            .field("certificate", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Credentials {
    /// No TLS and no credentials: only for nodes running with `insecure_plaintext`.
    #[must_use]
    pub fn plaintext() -> Credentials {
        Credentials::default()
    }

    /// TLS 1.3 trusting the cluster CA in `ca_pem`, with no credentials yet.
    #[must_use]
    pub fn tls(ca_pem: impl Into<String>) -> Credentials {
        Credentials { ca: Some(ca_pem.into()), ..Credentials::default() }
    }

    /// Presents a client certificate (chain and key, PEM) from the cluster CA.
    #[must_use]
    pub fn with_certificate(mut self, identity: CertPem) -> Credentials {
        self.identity = Some(identity);
        self
    }

    /// Authenticates every connection with a bearer token (a signed JWT).
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Credentials {
        self.token = Some(token.into());
        self
    }

    /// The admin credential `themis cluster up` and `themis certs` write into a
    /// certificate directory: `ca.pem` and `client-admin.pem` / `client-admin.key`.
    pub fn admin_from_dir(dir: &Path) -> Result<Credentials, String> {
        let read = |name: String| {
            let path = dir.join(&name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let ca = read("ca.pem".into())?;
        let identity =
            CertPem { cert: read(format!("{ADMIN_CLIENT}.pem"))?, key: read(format!("{ADMIN_CLIENT}.key"))? };
        Ok(Credentials::tls(ca).with_certificate(identity))
    }

    /// The TLS connector these credentials open connections with (presenting the client
    /// certificate, if any); `None` for plaintext. The HTTP admin API takes the same one.
    pub fn connector(
        &self,
    ) -> Result<Option<tokio_rustls::TlsConnector>, themis_replication::ship::ShipError> {
        match &self.ca {
            Some(pem) => {
                Ok(Some(themis_replication::ship::tls::client_api_connector_as(pem, self.identity.as_ref())?))
            }
            None => Ok(None),
        }
    }

    /// The bearer token, if any (for an `Authorization: Bearer` header).
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// What opening a connection takes: the TLS connector (none for plaintext) and the token.
struct Access {
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

/// Calls waiting for their answers; `None` once the connection's reader has stopped, so a
/// call made after that fails at once instead of waiting for an answer nobody will read.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>>;

/// A connection to one node.
#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    tx: mpsc::Sender<(u64, Request)>,
    pending: Pending,
    next: AtomicU64,
}

impl Conn {
    async fn open(addr: SocketAddr, access: &Access) -> Result<Conn, ClientError> {
        let fail = |reason: String| ClientError::Connect { addr, reason };
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, rx) = mpsc::channel(4096);
        match &access.tls {
            Some(connector) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let stream = connector.connect(name, tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
                spawn_io(stream, addr, rx, pending.clone());
            }
            None => spawn_io(tcp, addr, rx, pending.clone()),
        }
        let conn = Conn { addr, tx, pending, next: AtomicU64::new(1) };
        if let Some(token) = &access.token {
            match conn.call(Request::Authenticate { token: token.clone() }).await? {
                Response::Authenticated { .. } => {}
                Response::Error { code, message } => return Err(ClientError::Server { code, message }),
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(conn)
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let broke = |reason: &str| ClientError::Connection { addr: self.addr, reason: reason.to_string() };
        match self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(broke("the connection has closed")),
        };
        self.tx.send((id, request)).await.map_err(|_| broke("the writer has stopped"))?;
        rx.await.map_err(|_| broke("closed before the answer"))
    }
}

fn spawn_io<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<(u64, Request)>,
    pending: Pending,
) {
    let (mut reader, writer) = tokio::io::split(stream);
    let writer_pending = pending.clone();
    tokio::spawn(async move {
        let mut writer: BufWriter<WriteHalf<S>> = BufWriter::new(writer);
        let failed = 'write: loop {
            let Some((id, request)) = rx.recv().await else { break 'write None };
            if let Err(e) = write_frame(&mut writer, id, &request).await {
                break 'write Some(e);
            }
            while let Ok((id, request)) = rx.try_recv() {
                if let Err(e) = write_frame(&mut writer, id, &request).await {
                    break 'write Some(e);
                }
            }
            if let Err(e) = writer.flush().await {
                break 'write Some(e.into());
            }
        };
        // A request that could not be written will never be answered: fail every call
        // waiting on this connection rather than leave one waiting forever.
        if let Some(e) = failed {
            tracing::debug!(%addr, error = %e, "writing to the node failed");
            *writer_pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            let _ = writer.shutdown().await;
        }
    });
    tokio::spawn(async move {
        while let Ok(Some((id, response))) = read_frame::<_, Response>(&mut reader).await {
            let waiter = pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
                .and_then(|waiting| waiting.remove(&id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(response);
            } else if id == 0 {
                // A connection-level error (a refusal): fail everything in flight.
                tracing::warn!(%addr, ?response, "the node refused the connection");
                break;
            }
        }
        // Dropping the senders fails every call still waiting, and later calls fail at once.
        // (Clearing the map alone left a call made after it waiting forever: found by the
        // demo, whose writer used a connection to the node it had just killed.)
        *pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    });
}

/// A client of a Themis cluster. Cheap to share (`Arc`); calls may run concurrently on
/// one connection.
pub struct Client {
    access: Access,
    /// Every node address known (the seeds, then leaders learned from redirects).
    addrs: Mutex<Vec<SocketAddr>>,
    conn: tokio::sync::RwLock<Arc<Conn>>,
    /// The newest session token any answer carried (a client is one session).
    session: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("tls", &self.access.tls.is_some()).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the node at `addr` with `credentials` (a token is checked before this
    /// returns: a refused one is an `unauthenticated` error).
    pub async fn connect(addr: SocketAddr, credentials: &Credentials) -> Result<Client, ClientError> {
        Client::connect_any(&[addr], credentials).await
    }

    /// Connects to the first reachable node of `addrs`; calls that lose their node move
    /// to the next reachable one. `credentials` as in [`connect`](Self::connect).
    pub async fn connect_any(addrs: &[SocketAddr], credentials: &Credentials) -> Result<Client, ClientError> {
        let first = *addrs.first().ok_or(ClientError::NoLeader { leader: None, addr: None })?;
        let tls = credentials
            .connector()
            .map_err(|e| ClientError::Connect { addr: first, reason: e.to_string() })?;
        let access = Access { tls, token: credentials.token.clone() };
        let mut last = None;
        for &addr in addrs {
            match Conn::open(addr, &access).await {
                Ok(conn) => {
                    return Ok(Client {
                        access,
                        addrs: Mutex::new(addrs.to_vec()),
                        conn: tokio::sync::RwLock::new(Arc::new(conn)),
                        session: Mutex::new(None),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one address was tried"))
    }

    /// After `failed` broke: connects to the next known node that answers.
    async fn move_on(&self, failed: &Conn) -> bool {
        let addrs = self.addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let start = addrs.iter().position(|a| *a == failed.addr).map_or(0, |p| p + 1);
        for i in 0..addrs.len() {
            let addr = addrs[(start + i) % addrs.len()];
            if let Ok(next) = Conn::open(addr, &self.access).await {
                *self.conn.write().await = Arc::new(next);
                return true;
            }
        }
        false
    }

    /// The node this client talks to now.
    pub async fn addr(&self) -> SocketAddr {
        self.conn.read().await.addr
    }

    /// Sends `request` to the current node as is (no redirect).
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let conn = self.conn.read().await.clone();
        conn.call(request).await
    }

    /// Sends a leader-only request, following redirects (up to 5 hops, waiting out
    /// elections for up to 5 s).
    pub async fn call_leader(&self, request: Request) -> Result<Response, ClientError> {
        let mut last = (None, None);
        for _ in 0..100 {
            let conn = self.conn.read().await.clone();
            let response = match conn.call(request.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    // The node is gone: the request's outcome is unknown unless it was
                    // never sent, so only a request that may be repeated is retried.
                    if !self.move_on(&conn).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if matches!(request, Request::Put { .. } | Request::Delete { .. }) {
                        return Err(e);
                    }
                    continue;
                }
            };
            match response {
                Response::NotLeader { leader, leader_addr } => {
                    last = (leader, leader_addr.clone());
                    match leader_addr.and_then(|a| a.parse::<SocketAddr>().ok()) {
                        Some(addr) if addr != conn.addr => {
                            {
                                let mut addrs =
                                    self.addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                if !addrs.contains(&addr) {
                                    addrs.push(addr);
                                }
                            }
                            if let Ok(next) = Conn::open(addr, &self.access).await {
                                *self.conn.write().await = Arc::new(next);
                                continue;
                            }
                            // The named leader is unreachable (it may have just failed).
                            self.move_on(&conn).await;
                        }
                        Some(_) => {}
                        // This node knows no leader (it may have just restarted and not
                        // heard from one yet): ask the next node. The request was refused,
                        // not run, so a write may go elsewhere.
                        None => {
                            self.move_on(&conn).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return Ok(other),
            }
        }
        Err(ClientError::NoLeader { leader: last.0, addr: last.1 })
    }

    /// Reconnects to `addr` (after the node failed).
    pub async fn reconnect(&self, addr: SocketAddr) -> Result<(), ClientError> {
        let conn = Conn::open(addr, &self.access).await?;
        *self.conn.write().await = Arc::new(conn);
        Ok(())
    }

    /// The session token covering everything this client has written and read (the
    /// newest one its answers carried), to carry the session to another client.
    #[must_use]
    pub fn session_token(&self) -> Option<String> {
        self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Joins the session `token` names: later session reads see at least what it covers.
    pub fn set_session_token(&self, token: &str) {
        self.note_token(token);
    }

    fn note_token(&self, token: &str) {
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tokens are opaque to the client but for their LSN, the second field.
        let lsn = |t: &str| t.split('.').nth(2).and_then(|l| l.parse::<u64>().ok()).unwrap_or(0);
        if session.as_deref().is_none_or(|held| lsn(token) >= lsn(held)) {
            *session = Some(token.to_owned());
        }
    }

    /// Creates or replaces `collection/id` with the JSON `value`; returns the write's LSN
    /// (its session token is kept: [`session_token`](Self::session_token)).
    /// A document above [`MAX_DOCUMENT_BYTES`] or a bad name is refused here, unsent.
    pub async fn put(&self, collection: &str, id: &str, value: &[u8]) -> Result<u64, ClientError> {
        check_name("collection", collection)
            .and_then(|()| check_name("id", id))
            .map_err(ClientError::BadName)?;
        if value.len() > MAX_DOCUMENT_BYTES {
            return Err(ClientError::TooLarge { size: value.len(), max: MAX_DOCUMENT_BYTES });
        }
        let request = Request::Put { collection: collection.into(), id: id.into(), value: value.to_vec() };
        written(self, self.call_leader(request).await?)
    }

    /// [`put`](Self::put) acknowledged once `concern` is also met (the stricter of it, the
    /// cluster's mode and the collection's tier applies): `ALL` waits for every voter, in
    /// every region.
    pub async fn put_with(
        &self,
        collection: &str,
        id: &str,
        value: &[u8],
        concern: themis_replication::geo::WriteConcern,
    ) -> Result<u64, ClientError> {
        let lsn = self.put(collection, id, value).await?;
        self.wait_for(lsn, concern).await?;
        Ok(lsn)
    }

    /// Waits until the write at `lsn` meets `concern` (asked of the leader).
    pub async fn wait_for(
        &self,
        lsn: u64,
        concern: themis_replication::geo::WriteConcern,
    ) -> Result<(), ClientError> {
        if concern == themis_replication::geo::WriteConcern::One {
            return Ok(());
        }
        match self.call_leader(Request::WaitFor { lsn, concern }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `collection/id`; returns the write's LSN.
    pub async fn delete(&self, collection: &str, id: &str) -> Result<u64, ClientError> {
        written(
            self,
            self.call_leader(Request::Delete { collection: collection.into(), id: id.into() }).await?,
        )
    }

    /// Reads `collection/id` with `consistency`: a strong read is served by the leader
    /// (redirects followed, as for writes); the other levels by the current node, or,
    /// when it redirects (too stale, behind the session), by the leader. A session read
    /// without a token uses this client's ([`session_token`](Self::session_token)).
    pub async fn get(
        &self,
        collection: &str,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let consistency = match consistency {
            Consistency::Session(None) => Consistency::Session(self.session_token()),
            other => other,
        };
        let strong = consistency == Consistency::Strong;
        let request = Request::Get { collection: collection.into(), id: id.into(), consistency };
        let mut response = if strong {
            self.call_leader(request.clone()).await?
        } else {
            self.call(request.clone()).await?
        };
        if let Response::Redirect { leader_addr: Some(addr), .. } = &response
            && let Ok(addr) = addr.parse::<SocketAddr>()
        {
            response = Conn::open(addr, &self.access).await?.call(request).await?;
        }
        match response {
            Response::Value { value, session_token, .. } => {
                self.note_token(&session_token);
                Ok(value)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The current node's status document.
    pub async fn status(&self) -> Result<serde_json::Value, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status { json } => {
                serde_json::from_str(&json).map_err(|e| ClientError::Unexpected(e.to_string()))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs an admin request on the leader.
    pub async fn admin(&self, request: Request) -> Result<(), ClientError> {
        match self.call_leader(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn written(client: &Client, response: Response) -> Result<u64, ClientError> {
    match response {
        Response::Written { lsn, session_token } => {
            client.note_token(&session_token);
            Ok(lsn)
        }
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(response: Response) -> ClientError {
    match response {
        Response::Error { code, message } => ClientError::Server { code, message },
        Response::NotLeader { leader, leader_addr } => ClientError::NoLeader { leader, addr: leader_addr },
        Response::Redirect { reason, leader, leader_addr } => {
            ClientError::Redirected { reason, leader, addr: leader_addr }
        }
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_on_a_connection_whose_reader_stopped_fails_instead_of_waiting() {
        // A node that accepts and then goes away, as one killed mid-run does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
        let conn = Conn::open(addr, &Access { tls: None, token: None }).await.unwrap();
        server.await.unwrap();
        // Wait until the reader has seen the end of the stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while conn.pending.lock().unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the reader never stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), conn.call(Request::Status)).await;
        let err = answer.expect("the call must not wait for an answer nobody reads").unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }) && err.to_string().contains("closed"), "{err}");
    }
}
