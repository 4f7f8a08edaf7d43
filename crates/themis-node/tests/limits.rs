//! Size bounds end to end, against a 3-node cluster of real processes: documents at the
//! limit, one byte below and one above, over the client protocol and the HTTP API; 64 MiB
//! and 1 GiB bodies refused while they stream; names above their bound. After all of it
//! the same leader still leads and serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use themis_node::limits::{MAX_DOCUMENT_BYTES, MAX_FRAME_BYTES, MAX_NAME_BYTES};
use themis_node::protocol::{read_frame, write_frame};
use themis_node::{ClientError, ErrorCode, Request, Response};
use tokio::io::AsyncWriteExt;

mod common;

use common::{Cluster, http, http_with, json};

/// A JSON string document of exactly `len` bytes.
fn document(len: usize) -> Vec<u8> {
    let mut doc = vec![b'a'; len];
    doc[0] = b'"';
    doc[len - 1] = b'"';
    doc
}

/// A request body of `total` bytes produced as it is sent, counting what was taken.
fn streamed(
    total: u64,
    taken: Arc<AtomicU64>,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>> + Send + 'static,
> {
    const CHUNK: u64 = 1 << 20;
    let chunk = Bytes::from(vec![b'1'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let (chunk, taken) = (chunk.clone(), taken.clone());
        async move {
            if sent >= total {
                return None;
            }
            let n = CHUNK.min(total - sent);
            taken.fetch_add(n, Ordering::Relaxed);
            Some((Ok(hyper::body::Frame::data(chunk.slice(..n as usize))), sent + n))
        }
    });
    http_body_util::StreamBody::new(stream)
}

async fn raw_tls(cluster: &Cluster, i: usize) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    common::tls(&cluster.admin, cluster.nodes[i].client).await.unwrap()
}

fn expect_too_large(response: &Response) -> &str {
    match response {
        Response::Error { code: ErrorCode::TooLarge, message } => message,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one cluster, every bound in turn")]
async fn every_size_bound_is_refused_with_a_typed_error_and_the_leader_keeps_serving() {
    // A 16 MiB write holds the leader's loop while it is persisted; in the unoptimized
    // build the tests run, that can pass the usual 500 ms election timeout (in a release
    // build it takes 170 to 520 ms end to end), so this cluster waits longer before an
    // election: the test is about limits, not about failover under load.
    let cluster = Cluster::start_with(3, 0, |text| {
        text.replace(
            "heartbeat_ms = 100\nelection_timeout_ms = 500",
            "heartbeat_ms = 300\nelection_timeout_ms = 3000",
        )
    });
    let l = cluster.leader().await;
    let leader_id = cluster.nodes[l].id;
    let (admin, ca) = (cluster.nodes[l].admin, cluster.admin.clone());
    let client = cluster.client(l).await;

    // Client protocol: one byte below the limit and at it are written; above is refused
    // before it is sent.
    let below = client.put("big", "below", &document(MAX_DOCUMENT_BYTES - 1)).await.unwrap();
    let at = client.put("big", "at", &document(MAX_DOCUMENT_BYTES)).await.unwrap();
    assert!(at > below);
    match client.put("big", "above", &document(MAX_DOCUMENT_BYTES + 1)).await {
        Err(ClientError::TooLarge { size, max }) => {
            assert_eq!((size, max), (MAX_DOCUMENT_BYTES + 1, MAX_DOCUMENT_BYTES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // The node checks too, for clients that do not: a frame within the frame limit whose
    // document is above the document limit, and frames far above the frame limit, which
    // are answered under their id as soon as the header is read and never buffered.
    let mut raw = raw_tls(&cluster, l).await;
    let put =
        Request::Put { collection: "big".into(), id: "raw".into(), value: document(MAX_DOCUMENT_BYTES + 1) };
    write_frame(&mut raw, 41, &put).await.unwrap();
    raw.flush().await.unwrap();
    let (id, response) = read_frame::<_, Response>(&mut raw).await.unwrap().unwrap();
    assert_eq!(id, 41);
    assert!(expect_too_large(&response).contains(&MAX_DOCUMENT_BYTES.to_string()), "{response:?}");
    for (id, len) in [(42u64, 64u32 << 20), (43, 1 << 30)] {
        raw.write_all(&len.to_le_bytes()).await.unwrap();
        raw.write_all(&id.to_le_bytes()).await.unwrap();
        raw.flush().await.unwrap();
        // Not one byte of the body has been sent: the answer cannot have waited for it.
        let (got, response) =
            tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Response>(&mut raw))
                .await
                .expect("answered before the body")
                .unwrap()
                .unwrap();
        assert_eq!(got, id);
        assert!(expect_too_large(&response).contains(&MAX_FRAME_BYTES.to_string()), "{response:?}");
        if len == 64 << 20 {
            // Send the body: the node skips it and the connection goes on serving.
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..(len as usize - 8) / chunk.len() {
                raw.write_all(&chunk).await.unwrap();
            }
            raw.write_all(&chunk[..(len as usize - 8) % chunk.len()]).await.unwrap();
            write_frame(&mut raw, 44, &Request::Status).await.unwrap();
            raw.flush().await.unwrap();
            let (got, response) = read_frame::<_, Response>(&mut raw).await.unwrap().unwrap();
            assert!(got == 44 && matches!(response, Response::Status { .. }), "{got} {response:?}");
        }
    }
    drop(raw);
    // Names above their bound are refused by the client and by the node.
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    assert!(matches!(client.put(&long, "x", b"1").await, Err(ClientError::BadName(_))));
    let mut raw = raw_tls(&cluster, l).await;
    write_frame(
        &mut raw,
        45,
        &Request::Put { collection: "c".into(), id: long.clone(), value: b"1".to_vec() },
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    let (_, response) = read_frame::<_, Response>(&mut raw).await.unwrap().unwrap();
    assert!(matches!(response, Response::Error { code: ErrorCode::BadRequest, .. }), "{response:?}");

    // HTTP: the same three sizes.
    let path = |id: &str| format!("/v1/collections/big/docs/{id}");
    for (len, expect) in
        [(MAX_DOCUMENT_BYTES - 1, 200), (MAX_DOCUMENT_BYTES, 200), (MAX_DOCUMENT_BYTES + 1, 413)]
    {
        let body = http_body_util::Full::new(Bytes::from(document(len)));
        let (status, _, text) = http_with(admin, &ca, "PUT", &path(&format!("http-{len}")), &[], body).await;
        assert_eq!(status, expect, "{len} bytes: {text}");
        if expect == 413 {
            let error = json(&text);
            assert_eq!(error["code"], "too_large", "{text}");
            assert!(error["message"].as_str().unwrap().contains(&MAX_DOCUMENT_BYTES.to_string()), "{text}");
        }
    }
    // 64 MiB and 1 GiB with their length declared: refused before the body is read, so
    // the client has produced at most a little of it when the answer comes.
    for total in [64u64 << 20, 1 << 30] {
        let taken = Arc::new(AtomicU64::new(0));
        let length = total.to_string();
        let (status, _, text) = tokio::time::timeout(
            Duration::from_secs(30),
            http_with(
                admin,
                &ca,
                "PUT",
                &path("huge"),
                &[("content-length", &length)],
                streamed(total, taken.clone()),
            ),
        )
        .await
        .expect("answered while the body streams");
        assert_eq!((status, json(&text)["code"].as_str()), (413, Some("too_large")), "{total}: {text}");
        let sent = taken.load(Ordering::Relaxed);
        assert!(sent < total / 2, "{sent} of {total} bytes were produced before the refusal");
    }
    // 64 MiB without a declared length (chunked): refused once it passes the limit.
    let taken = Arc::new(AtomicU64::new(0));
    let (status, _, text) = tokio::time::timeout(
        Duration::from_secs(30),
        http_with(admin, &ca, "PUT", &path("chunked"), &[], streamed(64 << 20, taken.clone())),
    )
    .await
    .expect("answered while the body streams");
    assert_eq!((status, json(&text)["code"].as_str()), (413, Some("too_large")), "{text}");
    assert!(taken.load(Ordering::Relaxed) < 64 << 20, "the whole body was taken");
    let (status, _, text) =
        http(admin, &ca, "PUT", &format!("/v1/collections/big/docs/{long}"), &[], "1").await;
    assert_eq!(status, 400, "{text}");
    let oversized_head = "x".repeat(128 << 10);
    let (status, _, _) =
        http(admin, &ca, "GET", "/v1/cluster/status", &[("x-padding", &oversized_head)], "").await;
    assert_eq!(status, 431, "a request head above the bound");

    // The leader never stopped: it still leads, writes, and the largest document reads
    // back whole from a follower.
    client.put("big", "after", b"{}").await.unwrap();
    assert_eq!(cluster.leader().await, l);
    let status = client.status().await.unwrap();
    assert_eq!(
        (status["status"]["role"].as_str(), status["status"]["id"].as_u64()),
        (Some("Leader"), Some(leader_id))
    );
    let follower = cluster.client((l + 1) % 3).await;
    let doc = common::read_local(&follower, "big", "at", client.session_token(), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.len(), MAX_DOCUMENT_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_storage_fails_exits_with_one_error_line_and_the_others_elect_a_new_one() {
    let mut cluster = Cluster::start_with(3, 0, |text| {
        text.replace(
            "heartbeat_ms = 100\nelection_timeout_ms = 500",
            "heartbeat_ms = 300\nelection_timeout_ms = 3000",
        )
    });
    let l = cluster.leader().await;
    let client = cluster.client(l).await;
    client.put("c", "before", b"1").await.unwrap();
    // The WAL's directory disappears under the leader (an operator's mistake, a failed
    // mount): the next segment it needs cannot be made, and the driver stops on the
    // storage error.
    let data = cluster.nodes[l].config.with_file_name(format!("data-{}", cluster.nodes[l].id));
    std::fs::remove_dir_all(data.join("raft")).unwrap();
    let doc = document(MAX_DOCUMENT_BYTES);
    for i in 0..16 {
        let _ = client.put("c", &format!("big-{i}"), &doc).await;
        if cluster.nodes[l].child.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
    }
    let child = cluster.nodes[l].child.as_mut().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(std::time::Instant::now() < deadline, "the leader did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.nodes[l].child = None;
    assert_eq!(code.code(), Some(i32::from(themis_node::server::DRIVER_STOPPED_EXIT)), "{code:?}");
    let log = std::fs::read_to_string(common::log_path(&cluster.nodes[l].config)).unwrap();
    let stops: Vec<&str> = log.lines().filter(|l| l.contains("replication driver")).collect();
    assert_eq!(stops.len(), 1, "one line says why: {log}");
    assert!(stops[0].contains("ERROR") && stops[0].contains("exiting with code 3"), "{}", stops[0]);
    // The other two elect a leader and accept writes.
    let next = cluster.leader().await;
    assert_ne!(next, l);
    cluster.client(next).await.put("c", "after", b"2").await.unwrap();
}
