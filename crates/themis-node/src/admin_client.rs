//! A client of the HTTP admin API that follows a cluster: a request goes to the node
//! that answered last; one that is unreachable, unavailable or not the leader (421) sends
//! it on to the next, until the retry budget is spent. `themis slot` and `themis
//! subscribe` use it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::client::Credentials;
use crate::feed::exchange;

/// The largest response body read (a slot read of many large documents).
const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No node answered within the retry budget; the last failure.
    #[error("no node answered {what}: {last}")]
    Unreachable {
        /// The request (method and path).
        what: String,
        /// The last failure.
        last: String,
    },
}

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAnswer {
    /// The node that answered.
    pub addr: SocketAddr,
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl AdminAnswer {
    /// The body as JSON (`null` when it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the status is 2xx.
    #[must_use]
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error body's message, or the body.
    #[must_use]
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(&self.body).into_owned(), str::to_string)
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addrs: Vec<SocketAddr>,
    credentials: Credentials,
    next: usize,
    retry_for: Duration,
}

impl AdminClient {
    /// A client of the admin APIs at `addrs`.
    #[must_use]
    pub fn new(addrs: Vec<SocketAddr>, credentials: Credentials) -> AdminClient {
        AdminClient { addrs, credentials, next: 0, retry_for: Duration::from_secs(30) }
    }

    /// How long a request keeps trying nodes (default 30 s).
    #[must_use]
    pub fn retry_for(mut self, limit: Duration) -> AdminClient {
        self.retry_for = limit;
        self
    }

    /// Sends `method path` with a JSON `body` (if any) and returns the first answer that
    /// is not "unreachable", 421 or 503.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<AdminAnswer, AdminError> {
        let what = format!("{method} {path}");
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let payload = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut last = String::from("no node address given");
        let mut tried = 0;
        while !self.addrs.is_empty() && (tried < self.addrs.len() || tokio::time::Instant::now() < deadline) {
            let addr = self.addrs[self.next % self.addrs.len()];
            tried += 1;
            let mut request = hyper::Request::builder().method(method).uri(path);
            if body.is_some() {
                request = request.header("content-type", "application/json");
            }
            match exchange(addr, &self.credentials, request, payload.clone()).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                        .collect()
                        .await
                        .map(http_body_util::Collected::to_bytes);
                    match body {
                        Ok(body) if status != 421 && status != 503 => {
                            return Ok(AdminAnswer { addr, status, body });
                        }
                        Ok(body) => {
                            last = format!("{addr} answered {status}: {}", String::from_utf8_lossy(&body));
                        }
                        Err(e) => last = format!("{addr}: reading the answer: {e}"),
                    }
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
            self.next += 1;
            if tried >= self.addrs.len() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(AdminError::Unreachable { what, last })
    }
}
