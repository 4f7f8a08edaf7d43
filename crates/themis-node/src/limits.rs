//! Every size bound on a request's way into the log, derived in one place.
//!
//! A document travels as the value of one upsert op, in a one-op batch, as the payload
//! of one Raft entry, which is one WAL record. The Raft entry adds nothing of its own (its
//! term and timestamp live in the record header), so the largest document is the WAL's
//! record limit less the record header and the op batch's framing at the longest names.
//! The limit does not depend on how long a request's names are, so a client can check a
//! document against one number. The client protocol's frame limit and the HTTP body limit
//! follow from it; `docs/client-protocol.md` and `docs/admin-api.md` state them.
//!
//! ```
//! use themis_node::limits::{MAX_DOCUMENT_BYTES, MAX_RECORD_BYTES};
//! assert_eq!(MAX_RECORD_BYTES, 16 << 20);
//! assert_eq!(MAX_DOCUMENT_BYTES, 16_776_624);
//! ```

use std::time::Duration;

use themis_replication::wal::op::single_write_batch_len;
use themis_replication::wal::record::RECORD_HEADER_LEN;

/// The node's WAL record limit (header and payload), which is also the Raft wire's
/// record limit: every other bound below is derived from it.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Longest collection name or document id, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The largest entry payload: one record less its header.
pub const MAX_ENTRY_PAYLOAD_BYTES: usize = MAX_RECORD_BYTES - RECORD_HEADER_LEN;

/// The largest JSON document a put accepts, over either protocol: the entry payload less
/// the op batch framing around a value whose collection and id are as long as allowed.
pub const MAX_DOCUMENT_BYTES: usize =
    MAX_ENTRY_PAYLOAD_BYTES - single_write_batch_len(MAX_NAME_BYTES, MAX_NAME_BYTES, 0);

/// Bytes a client-protocol put frame adds around its document at most: the request id
/// (8), the request's variant tag (1), each name with its postcard length (up to 2 + 255
/// each), and the document's postcard length (up to 4 bytes below 256 MiB).
pub const PUT_FRAME_OVERHEAD_BYTES: usize = 8 + 1 + 2 * (2 + MAX_NAME_BYTES) + 4;

/// The largest client-protocol frame (its length field's value) either side accepts:
/// exactly enough for a put of the largest document with the longest names. A longer
/// frame is answered with `TooLarge` under its request id, and its bytes are skipped
/// without being buffered.
pub const MAX_FRAME_BYTES: usize = MAX_DOCUMENT_BYTES + PUT_FRAME_OVERHEAD_BYTES;

/// Client connections open at once; beyond it, accepting waits for one to close.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;

/// HTTP admin API connections open at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 1024;

/// Requests one client connection may have in flight; its reader waits beyond it
/// (backpressure through TCP).
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 1024;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the rest of a frame may take to arrive once its length has been read (a
/// slow sender holds one connection, never the node).
pub const FRAME_BODY_TIMEOUT: Duration = Duration::from_mins(1);

/// How long an HTTP request's headers may take to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes an HTTP request's line and headers may take.
pub const MAX_HTTP_HEAD_BYTES: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Consistency, Request, Response};

    #[test]
    fn the_largest_document_fills_one_record_exactly_at_the_longest_names() {
        let payload = single_write_batch_len(MAX_NAME_BYTES, MAX_NAME_BYTES, MAX_DOCUMENT_BYTES);
        assert_eq!(RECORD_HEADER_LEN + payload, MAX_RECORD_BYTES);
    }

    #[test]
    fn the_largest_put_and_the_largest_answer_fit_a_frame() {
        let name = "n".repeat(MAX_NAME_BYTES);
        let put = Request::Put { collection: name.clone(), id: name, value: vec![b'1'; MAX_DOCUMENT_BYTES] };
        let frame = 8 + postcard::to_stdvec(&put).unwrap().len();
        assert_eq!(frame, MAX_FRAME_BYTES, "the bound is exact for the largest put");
        let value = Response::Value {
            value: Some(vec![b'1'; MAX_DOCUMENT_BYTES]),
            applied_lsn: u64::MAX,
            version: u64::MAX,
            session_token: "t".repeat(themis_replication::geo::MAX_TOKEN_LEN),
        };
        assert!(8 + postcard::to_stdvec(&value).unwrap().len() <= MAX_FRAME_BYTES);
        let get = Request::Get {
            collection: "n".repeat(MAX_NAME_BYTES),
            id: "n".repeat(MAX_NAME_BYTES),
            consistency: Consistency::Session(Some("t".repeat(themis_replication::geo::MAX_TOKEN_LEN))),
        };
        assert!(8 + postcard::to_stdvec(&get).unwrap().len() <= MAX_FRAME_BYTES);
    }
}
