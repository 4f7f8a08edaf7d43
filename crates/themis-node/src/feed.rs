//! A client of a node's change stream (`GET /v1/cdc/events`, Server-Sent Events): what
//! `themis cdc tail` and the tests read events with. [`ChangeFeed`] follows a cluster: when
//! its node goes away it reconnects to the next one with `Last-Event-ID`, so it resumes
//! after the last whole entry it received (every node serves the same committed log).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::client::Credentials;

/// The longest SSE line accepted: a document at the node's limit, escaped, plus the
/// envelope. A longer one is an error, not an unbounded buffer.
const MAX_LINE_BYTES: usize = 4 * crate::limits::MAX_DOCUMENT_BYTES + 64 * 1024;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// `change`, `heartbeat` or `error`.
    pub kind: String,
    /// Its `id:` (an LSN), when it ends an entry.
    pub id: Option<u64>,
    /// Its data (the JSON envelope).
    pub data: String,
}

/// Why the feed failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// Connecting, TLS or HTTP failed.
    #[error("{addr}: {reason}")]
    Connect {
        /// The node's admin address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node refused the subscription (bad filter, 401, 403, 410 ...); retrying
    /// elsewhere would not help.
    #[error("{addr} answered {status}: {body}")]
    Refused {
        /// The node's admin address.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The error body.
        body: String,
    },
    /// The stream broke the SSE format or its bounds.
    #[error("{addr}: {reason}")]
    Protocol {
        /// The node's admin address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// No node could be reached within the retry budget.
    #[error("no node served the change stream: {0}")]
    Unreachable(String),
}

type Body = hyper::body::Incoming;

/// One open stream from one node.
struct Open {
    addr: SocketAddr,
    body: Body,
    buffer: BytesMut,
    pending: FeedEvent,
}

/// A change stream that follows a cluster across node failures.
#[derive(Debug)]
pub struct ChangeFeed {
    addrs: Vec<SocketAddr>,
    credentials: Credentials,
    query: String,
    /// The resume point: the last `id:` received.
    last_id: Option<u64>,
    next_addr: usize,
    open: Option<OpenDebug>,
    /// How long to keep trying nodes before giving up.
    retry_for: Duration,
}

/// [`Open`] with a Debug that leaves the body out.
struct OpenDebug(Open);

impl std::fmt::Debug for OpenDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open").field("addr", &self.0.addr).finish_non_exhaustive()
    }
}

fn encode_query(collections: &str, ops: &str) -> String {
    let mut out = String::new();
    for (key, value) in [("collections", collections), ("ops", ops)] {
        if value.is_empty() {
            continue;
        }
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(key);
        out.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

impl ChangeFeed {
    /// A feed of changes to `collections` (comma-separated names or patterns; empty: all)
    /// with `ops` (comma-separated; empty: all) after `from_lsn` (none: from now), read from
    /// the admin APIs at `addrs` in turn.
    #[must_use]
    pub fn new(
        addrs: Vec<SocketAddr>,
        credentials: Credentials,
        collections: &str,
        ops: &str,
        from_lsn: Option<u64>,
    ) -> ChangeFeed {
        ChangeFeed {
            addrs,
            credentials,
            query: encode_query(collections, ops),
            last_id: from_lsn,
            next_addr: 0,
            open: None,
            retry_for: Duration::from_secs(30),
        }
    }

    /// How long [`ChangeFeed::next`] keeps trying nodes after a failure (default 30 s).
    #[must_use]
    pub fn retry_for(mut self, limit: Duration) -> ChangeFeed {
        self.retry_for = limit;
        self
    }

    /// The LSN the feed would resume after.
    #[must_use]
    pub fn position(&self) -> Option<u64> {
        self.last_id
    }

    /// The node the feed reads now.
    #[must_use]
    pub fn node(&self) -> Option<SocketAddr> {
        self.open.as_ref().map(|o| o.0.addr)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Open, FeedError> {
        let fail = |reason: String| FeedError::Connect { addr, reason };
        let mut path = format!("/v1/cdc/events{}", self.query);
        if let Some(lsn) = self.last_id {
            path.push_str(if self.query.is_empty() { "?" } else { "&" });
            let _ = write!(path, "from_lsn={lsn}");
        }
        let mut request =
            hyper::Request::builder().method("GET").uri(path).header("accept", "text/event-stream");
        if let Some(lsn) = self.last_id {
            request = request.header("last-event-id", lsn.to_string());
        }
        let response = exchange(addr, &self.credentials, request, Bytes::new()).await.map_err(fail)?;
        let status = response.status().as_u16();
        let body = response.into_body();
        if status != 200 {
            let bytes = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
            return Err(FeedError::Refused {
                addr,
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(Open { addr, body, buffer: BytesMut::new(), pending: empty_event() })
    }

    /// The next event. A broken connection moves to the next node (resuming after the last
    /// `id:`); a refusal (a bad filter, credentials, a position the log no longer holds) is
    /// returned as is.
    pub async fn next(&mut self) -> Result<FeedEvent, FeedError> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut last_error = String::from("no node address given");
        loop {
            if self.open.is_none() {
                if self.addrs.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Err(FeedError::Unreachable(last_error));
                }
                let addr = self.addrs[self.next_addr % self.addrs.len()];
                self.next_addr += 1;
                match self.connect(addr).await {
                    Ok(open) => self.open = Some(OpenDebug(open)),
                    Err(e @ FeedError::Refused { status, .. }) if status != 503 => return Err(e),
                    Err(e) => {
                        last_error = e.to_string();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
            let open = &mut self.open.as_mut().expect("checked above").0;
            match read_event(open).await {
                Ok(Some(event)) => {
                    if let Some(id) = event.id {
                        self.last_id = Some(id);
                    }
                    if event.kind == "error" {
                        // The node ended the stream (it is stopping); go on elsewhere.
                        last_error.clone_from(&event.data);
                        self.open = None;
                        continue;
                    }
                    return Ok(event);
                }
                Ok(None) => {
                    last_error = format!("{} ended the stream", open.addr);
                    self.open = None;
                }
                Err(FeedError::Protocol { addr, reason }) => {
                    return Err(FeedError::Protocol { addr, reason });
                }
                Err(e) => {
                    last_error = e.to_string();
                    self.open = None;
                }
            }
        }
    }
}

/// Sends one request to the admin API at `addr` on a new connection (TLS with the
/// credentials' client certificate unless they are plaintext; their bearer token, if any),
/// and returns the response with its body unread. The error says what failed.
pub(crate) async fn exchange(
    addr: SocketAddr,
    credentials: &Credentials,
    request: hyper::http::request::Builder,
    body: Bytes,
) -> Result<hyper::Response<Body>, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut request = request.header("host", addr.to_string());
    if let Some(token) = credentials.token() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(http_body_util::Full::new(body)).map_err(|e| e.to_string())?;
    match credentials.connector().map_err(|e| e.to_string())? {
        Some(connector) => {
            let tls = connector
                .connect(rustls_pki_types::ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(hyper_util::rt::TokioIo::new(tls), request).await
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), request).await,
    }
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<http_body_util::Full<Bytes>>,
) -> Result<hyper::Response<Body>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

fn empty_event() -> FeedEvent {
    FeedEvent { kind: "message".into(), id: None, data: String::new() }
}

/// Reads lines until a blank one completes an event; `None` at the end of the stream.
async fn read_event(open: &mut Open) -> Result<Option<FeedEvent>, FeedError> {
    loop {
        while let Some(at) = open.buffer.iter().position(|b| *b == b'\n') {
            let line = open.buffer.split_to(at + 1);
            let line = std::str::from_utf8(&line[..at]).map_err(|_| FeedError::Protocol {
                addr: open.addr,
                reason: "an SSE line is not UTF-8".into(),
            })?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if open.pending.data.is_empty() && open.pending.id.is_none() {
                    continue;
                }
                return Ok(Some(std::mem::replace(&mut open.pending, empty_event())));
            }
            let (field, value) =
                line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "event" => open.pending.kind = value.to_string(),
                "id" => {
                    open.pending.id = Some(value.parse().map_err(|_| FeedError::Protocol {
                        addr: open.addr,
                        reason: format!("id {value:?} is not an LSN"),
                    })?);
                }
                "data" => {
                    if !open.pending.data.is_empty() {
                        open.pending.data.push('\n');
                    }
                    open.pending.data.push_str(value);
                }
                _ => {}
            }
        }
        if open.buffer.len() > MAX_LINE_BYTES {
            return Err(FeedError::Protocol {
                addr: open.addr,
                reason: format!("an SSE line is longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        match open.body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(FeedError::Connect { addr: open.addr, reason: e.to_string() }),
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        open.buffer.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode_query("tenant_{a,b}.*", "insert,update"),
            "?collections=tenant_%7Ba%2Cb%7D.%2A&ops=insert%2Cupdate"
        );
        assert_eq!(encode_query("", ""), "");
    }
}
