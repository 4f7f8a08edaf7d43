//! Time bounds on connections that stall, against a real node: a TLS handshake that never
//! starts on the client and admin ports, and an HTTP request head that never ends, are
//! dropped after their 10 s bound (`limits::HANDSHAKE_TIMEOUT`, `HEADER_READ_TIMEOUT`), not
//! held forever. All three wait at once, so the test takes one bound. Under `--full`
//! (`THEMIS_TEST_BUDGET=full`) a client-protocol frame whose body never arrives is waited
//! out too (`FRAME_BODY_TIMEOUT`, a minute).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Cluster;
use themis_node::limits::{FRAME_BODY_TIMEOUT, HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long until the node closes `stream` (reads until EOF or error, 90 s at most).
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut stream: S, since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the node held the stalled connection for 90 s");
    since.elapsed()
}

async fn silent(addr: SocketAddr) -> Duration {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    closed_after(tcp, Instant::now()).await
}

async fn endless_head(cluster: &Cluster, addr: SocketAddr) -> Duration {
    let mut tls = common::tls(&cluster.admin, addr).await.unwrap();
    // A request line and one header, and never the blank line that ends the head.
    tls.write_all(b"GET /v1/cluster/status HTTP/1.1\r\nhost: node\r\n").await.unwrap();
    tls.flush().await.unwrap();
    closed_after(tls, Instant::now()).await
}

/// A client-protocol frame that announces 100 bytes and sends 4 of them.
async fn endless_frame(cluster: &Cluster, addr: SocketAddr) -> Duration {
    let mut tls = common::tls(&cluster.admin, addr).await.unwrap();
    let mut frame = 100u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[1, 2, 3, 4]);
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
    closed_after(tls, Instant::now()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_whose_body_never_arrives_is_dropped_after_its_bound() {
    if std::env::var("THEMIS_TEST_BUDGET").as_deref() != Ok("full") {
        eprintln!("waits {FRAME_BODY_TIMEOUT:?}: runs under `cargo xtask ci --full` only");
        return;
    }
    let cluster = Cluster::start(1, 0);
    let _ = cluster.leader().await;
    let took = endless_frame(&cluster, cluster.nodes[0].client).await;
    assert!(
        took + Duration::from_secs(1) >= FRAME_BODY_TIMEOUT
            && took <= FRAME_BODY_TIMEOUT + Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_request_heads_are_dropped_after_their_bound() {
    let cluster = Cluster::start(1, 0);
    let _ = cluster.leader().await;
    let node = &cluster.nodes[0];
    let (client, admin, head) =
        tokio::join!(silent(node.client), silent(node.admin), endless_head(&cluster, node.admin));
    let slack = Duration::from_secs(3);
    for (what, took, bound) in [
        ("client port, no TLS handshake", client, HANDSHAKE_TIMEOUT),
        ("admin port, no TLS handshake", admin, HANDSHAKE_TIMEOUT),
        ("admin API, a request head that never ends", head, HEADER_READ_TIMEOUT),
    ] {
        eprintln!("{what}: dropped after {took:?} (bound {bound:?})");
        assert!(took + Duration::from_millis(500) >= bound && took <= bound + slack, "{what}: {took:?}");
    }
    // The node serves on.
    let c = cluster.client(0).await;
    c.put("t", "after", b"{}").await.unwrap();
}
