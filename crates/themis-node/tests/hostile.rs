//! Hostile input on every port a node listens on (client protocol, admin API, Raft peer
//! links): random bytes, truncated and bogus TLS, malformed frames inside TLS, slow
//! senders, endless streams. Afterwards every node still runs and the cluster serves.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Cluster;
use themis_node::Consistency;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` then reads until the node closes or 2 s pass; a reset is fine.
async fn throw(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else { return };
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
}

/// A TLS record header that promises a 16 KiB handshake, and a few bytes of it.
fn truncated_client_hello() -> Vec<u8> {
    let mut out = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03];
    out.extend_from_slice(&[0xaa; 20]);
    out
}

/// Opens `n` connections that each send a byte every 100 ms for `secs`.
async fn slow_senders(addr: SocketAddr, n: usize, secs: u64) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut tcp) = TcpStream::connect(addr).await else { return };
                for _ in 0..secs * 10 {
                    if tcp.write_all(&[0x16]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Streams `mib` MiB of bytes as fast as the node takes them (or until it closes).
async fn endless(addr: SocketAddr, mib: usize, byte: u8) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else { return };
    let block = vec![byte; 1 << 20];
    for _ in 0..mib {
        match tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&block)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Garbage inside a TLS session the node accepted (the admin client certificate).
async fn inside_tls(cluster: &Cluster, addr: SocketAddr, bytes: &[u8]) {
    let Ok(Ok(mut tls)) =
        tokio::time::timeout(Duration::from_secs(5), common::tls(&cluster.admin, addr)).await
    else {
        return;
    };
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_survives_hostile_input_and_the_cluster_still_serves() {
    let mut cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let mut rng = fastrand::Rng::with_seed(0x7e57);
    let random: Vec<u8> = (0..64 << 10).map(|_| rng.u8(..)).collect();
    // A client-protocol frame that claims 4 GiB, a peer frame with a bad magic, a
    // request line that is not HTTP, and a frame of random bytes of plausible length.
    let huge_frame = [0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0];
    let bad_peer_frame = b"THMXgarbage-frame-with-a-wrong-magic".to_vec();
    let not_http = b"GARBAGE / NOT-HTTP\r\n\x00\x01\x02\r\n\r\n".to_vec();
    let mut random_frame = 200u32.to_le_bytes().to_vec();
    random_frame.extend((0..200).map(|_| rng.u8(..)));

    for node in 0..3 {
        let (client, admin, raft) =
            (cluster.nodes[node].client, cluster.nodes[node].admin, cluster.nodes[node].raft);
        for addr in [client, admin, raft] {
            throw(addr, &random).await;
            throw(addr, &truncated_client_hello()).await;
            throw(addr, &huge_frame).await;
            throw(addr, b"").await;
            inside_tls(&cluster, addr, &random).await;
            inside_tls(&cluster, addr, &huge_frame).await;
            inside_tls(&cluster, addr, &random_frame).await;
        }
        inside_tls(&cluster, raft, &bad_peer_frame).await;
        inside_tls(&cluster, admin, &not_http).await;
        // Slow senders and an endless stream on every port at once.
        tokio::join!(
            slow_senders(client, 20, 2),
            slow_senders(admin, 20, 2),
            slow_senders(raft, 20, 2),
            endless(client, 16, 0x16),
            endless(admin, 16, b'A'),
            endless(raft, 16, 0x00),
        );
    }

    // Every process still runs, and the cluster writes and reads everywhere.
    for node in &mut cluster.nodes {
        let exited = node.child.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "node {} exited: {exited:?}", node.id);
    }
    let writer = cluster.client(cluster.leader().await).await;
    writer.put("hostile", "after", b"{\"ok\":true}").await.unwrap();
    for i in 0..3 {
        let c = cluster.client(i).await;
        assert_eq!(
            common::read_local(&c, "hostile", "after", writer.session_token(), Duration::from_secs(30))
                .await
                .unwrap()
                .as_deref(),
            Some(&b"{\"ok\":true}"[..]),
            "node {i}"
        );
        let got = c.get("hostile", "after", Consistency::Strong).await.unwrap();
        assert!(got.is_some(), "node {i}: strong read");
    }
    let (status, _, _) =
        common::http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/v1/cluster/status", &[], "").await;
    assert_eq!(status, 200);
}
