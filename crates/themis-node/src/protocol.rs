//! The client protocol: length-prefixed postcard frames over TLS 1.3, pipelined by
//! request id (a client may send many requests before reading; answers come back in
//! completion order, each carrying its request's id).
//!
//! ```text
//! frame := length u32 LE (bytes after it, 9 .. MAX_FRAME) | request id u64 LE | body (postcard)
//! ```
//!
//! A frame longer than [`MAX_FRAME`] is not read into memory: its request id is read, its
//! body skipped as it arrives, and it is answered with [`ErrorCode::TooLarge`] under that
//! id, so the connection goes on serving.
//!
//! The body is a [`Request`] from the client and a [`Response`] from the node. See
//! `docs/client-protocol.md`.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame (length field's value) accepted; see [`crate::limits`].
pub const MAX_FRAME: u32 = crate::limits::MAX_FRAME_BYTES as u32;
/// Longest collection name or document id, in bytes.
pub const MAX_NAME: usize = crate::limits::MAX_NAME_BYTES;

/// How fresh a read must be: the five levels of `docs/consistency.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: sees every write acknowledged before the read began (the leader
    /// under its lease, else `ReadIndex`; a follower asks the leader).
    Strong,
    /// Sees every write committed more than `max_staleness_ms` ago (0: the node's
    /// configured bound), and, when given, is at most `max_versions` LSNs behind the
    /// commit. A replica too far behind waits briefly, then redirects.
    Bounded {
        /// The time bound in ms; 0 for the node's `[geo] max_staleness_ms`.
        max_staleness_ms: u64,
        /// The version bound (K), if any.
        max_versions: Option<u64>,
    },
    /// Sees what the session token says the session has seen (its own writes, and never
    /// older than its last read). `None` starts a session. The client fills in the token
    /// it holds ([`crate::Client::session_token`]).
    Session(Option<String>),
    /// A prefix of the log: never a write without the writes before it.
    Prefix,
    /// Whatever this node has applied.
    Eventual,
}

impl Consistency {
    /// The level's name (`strong`, `bounded`, `session`, `prefix`, `eventual`).
    #[must_use]
    pub fn level_name(&self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Bounded { .. } => "bounded",
            Consistency::Session(_) => "session",
            Consistency::Prefix => "prefix",
            Consistency::Eventual => "eventual",
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Creates or replaces a JSON document.
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The document, JSON text. (As one byte string: postcard writes a `Vec<u8>` the
        /// same way either way, but element by element it encodes and decodes a byte a call.)
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Reads a document.
    Get {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// How fresh.
        consistency: Consistency,
    },
    /// Deletes a document.
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// The node's replication status, as JSON.
    Status,
    /// Waits until the write at `lsn` meets `concern` (leader): `Done`, or a timeout.
    /// [`crate::Client::put_with`] sends it after a write.
    WaitFor {
        /// The write's LSN.
        lsn: u64,
        /// How many replicas must hold it.
        concern: themis_replication::geo::WriteConcern,
    },
    /// Changes the acknowledgement mode for the cluster (leader).
    SetMode {
        /// `sync`, `semi_sync` or `async`.
        mode: String,
        /// Followers that must hold a write.
        min_sync_replicas: u32,
    },
    /// Adds a learner (leader).
    AddLearner {
        /// Its node id.
        id: u64,
        /// Its Raft address.
        raft_addr: String,
        /// Its client address.
        client_addr: String,
    },
    /// Promotes a learner to voter (leader).
    Promote {
        /// The node.
        id: u64,
    },
    /// Removes a member (leader).
    Remove {
        /// The node.
        id: u64,
    },
    /// Hands leadership to a node (leader).
    Transfer {
        /// The node.
        id: u64,
    },
    /// Starts an election on this node.
    Campaign,
    /// Authenticates the connection with a signed JWT (see [`crate::auth`]): later requests
    /// on it act as the token's principal until it expires. Answered `Authenticated`, or
    /// `unauthenticated` (and the connection holds no principal until a good token).
    Authenticate {
        /// The token (compact JWS).
        token: String,
    },
}

/// What went wrong, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed (names, JSON, mode); the message says what.
    BadRequest,
    /// The write may or may not have happened (leadership changed); read to find out.
    OutcomeUnknown,
    /// Too many writes in flight; retry.
    Busy,
    /// The request timed out waiting for the cluster.
    Timeout,
    /// The node cannot serve (stopped, no leader); retry elsewhere.
    Unavailable,
    /// A cluster operation was refused (membership, transfer).
    Refused,
    /// The request or document is larger than the node accepts; the message names the
    /// limit. Nothing was written.
    TooLarge,
    /// No credentials, or credentials that do not verify (HTTP 401).
    Unauthenticated,
    /// The caller's role does not allow the request (HTTP 403).
    Forbidden,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The write is acknowledged under the cluster's mode.
    Written {
        /// The write's LSN.
        lsn: u64,
        /// The session token that covers the write.
        session_token: String,
    },
    /// A read's result.
    Value {
        /// The document, if it exists.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// The LSN the node had applied when it read.
        applied_lsn: u64,
        /// The LSN of the document's last write (0 when it does not exist).
        version: u64,
        /// The session token that covers what the read saw.
        session_token: String,
    },
    /// This replica cannot serve the read at its level now (too stale, or behind the
    /// session); read from the leader, or another replica.
    Redirect {
        /// Why.
        reason: String,
        /// The leader, if known.
        leader: Option<u64>,
        /// The leader's client address, if known.
        leader_addr: Option<String>,
    },
    /// Writes (and admin requests) go to the leader.
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
        /// The leader's client address, if known.
        leader_addr: Option<String>,
    },
    /// JSON text.
    Status {
        /// The status document.
        json: String,
    },
    /// Done (admin requests without a result).
    Done,
    /// An error.
    Error {
        /// Its code.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The connection now acts as this principal (an answer to `Authenticate`).
    Authenticated {
        /// The token's subject.
        name: String,
        /// Its role: `read`, `write` or `admin`.
        role: String,
    },
}

impl Response {
    /// `ok`, or the error as a stable snake-case code (`not_leader`, `busy`, ...).
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        match self {
            Response::Error { code, .. } => code.as_str(),
            Response::NotLeader { .. } => "not_leader",
            Response::Redirect { .. } => "redirect",
            _ => "ok",
        }
    }
}

impl ErrorCode {
    /// The code as a stable snake-case string (metrics labels, HTTP error bodies).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Refused => "refused",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame broke the format.
    #[error("bad frame: {0}")]
    Frame(String),
    /// A frame is longer than [`MAX_FRAME`]. Its id has been read; `skip` bytes of its
    /// body follow on the stream, and the caller skips them ([`skip_body`]) to go on.
    #[error("request {id}: a {len}-byte frame is above the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// The request id.
        id: u64,
        /// The frame's length field.
        len: u32,
        /// Body bytes still to skip.
        skip: u64,
    },
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    id: u64,
    body: &T,
) -> Result<(), ProtocolError> {
    let body = postcard::to_stdvec(body).map_err(|e| ProtocolError::Frame(format!("encode: {e}")))?;
    let len = u32::try_from(body.len() + 8).ok().filter(|l| *l <= MAX_FRAME).ok_or_else(|| {
        ProtocolError::Frame(format!("a {}-byte body is above the {MAX_FRAME}-byte frame limit", body.len()))
    })?;
    let mut buf = Vec::with_capacity(12 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<Option<(u64, T)>, ProtocolError> {
    read_frame_within(r, None).await
}

/// [`read_frame`], with the rest of the frame due within `body` once its length has
/// arrived (a connection may idle between frames, not inside one): a sender that stalls
/// mid-frame gets `Io` of kind `TimedOut`.
pub async fn read_frame_within<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    body: Option<std::time::Duration>,
) -> Result<Option<(u64, T)>, ProtocolError> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let Some(limit) = body else { return read_rest(r, head).await };
    tokio::time::timeout(limit, read_rest(r, head)).await.unwrap_or_else(|_| {
        Err(ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the rest of a frame did not arrive within {limit:?}"),
        )))
    })
}

async fn read_rest<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    head: [u8; 4],
) -> Result<Option<(u64, T)>, ProtocolError> {
    let len = u32::from_le_bytes(head);
    if len < 8 {
        return Err(ProtocolError::Frame(format!("length {len} is outside 8..={MAX_FRAME}")));
    }
    if len > MAX_FRAME {
        let mut id = [0u8; 8];
        r.read_exact(&mut id).await?;
        return Err(ProtocolError::TooLarge { id: u64::from_le_bytes(id), len, skip: u64::from(len) - 8 });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    let id = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let body =
        postcard::from_bytes(&buf[8..]).map_err(|e| ProtocolError::Frame(format!("request {id}: {e}")))?;
    Ok(Some((id, body)))
}

/// Reads and drops `skip` bytes (the body of a frame refused as too large), a buffer at a
/// time, so a frame of any length costs no memory.
pub async fn skip_body<R: AsyncRead + Unpin>(r: &mut R, skip: u64) -> Result<(), ProtocolError> {
    let copied = tokio::io::copy(&mut r.take(skip), &mut tokio::io::sink()).await?;
    if copied < skip {
        return Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Checks a collection name or document id.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{what} {name:?}: must be 1 to {MAX_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} {name:?}: control characters are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Option<(u64, Request)>, ProtocolError> {
        read_frame::<_, Request>(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_frames_are_errors() {
        let mut buf = Vec::new();
        let request = Request::Get {
            collection: "c".into(),
            id: "k".into(),
            consistency: Consistency::Session(Some("s1.1.9.local.0.00".into())),
        };
        write_frame(&mut buf, 7, &request).await.unwrap();
        assert_eq!(read(&buf).await.unwrap(), Some((7, request)));
        assert!(read(&[]).await.unwrap().is_none(), "a clean end of stream");
        // A cut frame, lengths out of range, and a body that is not a request.
        assert!(matches!(read(&buf[..buf.len() - 1]).await, Err(ProtocolError::Io(_))));
        for len in [0u32, 7] {
            let err = read(&len.to_le_bytes()).await.unwrap_err();
            assert!(err.to_string().contains(&format!("length {len}")), "{err}");
        }
        // Above the limit: the id is read, the body is left to skip, then the stream goes on.
        let mut long = (MAX_FRAME + 1).to_le_bytes().to_vec();
        long.extend_from_slice(&11u64.to_le_bytes());
        long.extend(std::iter::repeat_n(0u8, MAX_FRAME as usize - 7));
        long.extend_from_slice(&buf);
        let mut stream = &long[..];
        match read_frame::<_, Request>(&mut stream).await {
            Err(ProtocolError::TooLarge { id: 11, len, skip }) => {
                assert_eq!((len, skip), (MAX_FRAME + 1, u64::from(MAX_FRAME) - 7));
                skip_body(&mut stream, skip).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_frame::<_, Request>(&mut stream).await.unwrap().map(|(id, _)| id), Some(7));
        let mut cut = (MAX_FRAME + 1).to_le_bytes().to_vec();
        cut.extend_from_slice(&12u64.to_le_bytes());
        cut.extend_from_slice(&[0u8; 10]);
        let mut stream = &cut[..];
        let Err(ProtocolError::TooLarge { skip, .. }) = read_frame::<_, Request>(&mut stream).await else {
            panic!("too large")
        };
        assert!(matches!(skip_body(&mut stream, skip).await, Err(ProtocolError::Io(_))), "a cut body");
        let mut junk = 9u32.to_le_bytes().to_vec();
        junk.extend_from_slice(&5u64.to_le_bytes());
        junk.push(0xff);
        let err = read(&junk).await.unwrap_err();
        assert!(err.to_string().contains("request 5"), "{err}");
        // Too large to send.
        let huge =
            Request::Put { collection: "c".into(), id: "k".into(), value: vec![b'1'; MAX_FRAME as usize] };
        let err = write_frame(&mut Vec::new(), 1, &huge).await.unwrap_err();
        assert!(err.to_string().contains("frame limit"), "{err}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("id", "doc-1").is_ok());
        assert!(check_name("id", "").unwrap_err().contains("1 to 255 bytes"));
        assert!(check_name("collection", &"x".repeat(256)).unwrap_err().contains("1 to 255 bytes"));
        assert!(check_name("id", "a\nb").unwrap_err().contains("control characters"));
    }
}
