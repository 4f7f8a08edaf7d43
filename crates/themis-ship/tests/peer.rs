//! Per-peer message links over TLS: order, backpressure, reconnection, permanent failures.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Pki, any_port};
use themis_clock::NodeId;
use themis_ship::frame::FrameKind;
use themis_ship::peer::{PeerConfig, PeerSender, SendError, serve_messages};
use themis_ship::transport::Listener;
use tokio::sync::mpsc;

fn fast() -> PeerConfig {
    PeerConfig {
        heartbeat_interval: Duration::from_millis(20),
        peer_timeout: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..PeerConfig::default()
    }
}

/// Serves `connections` message links on `listener`, one after another, handing messages
/// to the returned receiver.
fn serve(listener: Listener, connections: usize, config: PeerConfig) -> mpsc::Receiver<(NodeId, Bytes)> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        for _ in 0..connections {
            let Ok(pending) = listener.accept().await else { return };
            let Ok(incoming) = pending.handshake().await else { continue };
            let _ = serve_messages(incoming, tx.clone(), &config).await;
        }
    });
    rx
}

async fn recv(rx: &mut mpsc::Receiver<(NodeId, Bytes)>) -> (NodeId, Bytes) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message within 5 s")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_from_the_authenticated_sender() {
    let pki = Pki::new();
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener, 1, fast());
    let (sender, _task) = PeerSender::spawn(pki.transport(1, &[1, 2]), NodeId(2), addr, fast(), 7).unwrap();
    for i in 0..500u32 {
        // Large enough that some frames are compressed.
        sender.try_send(Bytes::from(vec![(i % 251) as u8; 100 + (i as usize % 3000)])).unwrap();
    }
    for i in 0..500u32 {
        let (from, payload) = recv(&mut rx).await;
        assert_eq!(from, NodeId(1));
        assert_eq!(payload.len(), 100 + (i as usize % 3000));
        assert!(payload.iter().all(|b| *b == (i % 251) as u8));
    }
    // The count moves after the flush, which may trail the receiver by a moment.
    let mut status = sender.watch();
    let counted = tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.sent_msgs == 500)).await;
    assert!(counted.is_ok(), "{:?}", sender.status());
    let status = sender.status();
    assert!(status.connected);
    let payload: u64 = (0..500u64).map(|i| 100 + i % 3000).sum();
    assert_eq!(status.payload_bytes, payload);
    // Runs of one byte compress well: fewer bytes crossed the link than were sent.
    assert!(status.wire_bytes < payload, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_instead_of_growing() {
    let pki = Pki::new();
    // Nobody listens there: the link keeps reconnecting, the queue keeps its bound.
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = PeerConfig { max_queue_msgs: 8, max_queue_bytes: 1000, ..fast() };
    let (sender, _task) = PeerSender::spawn(pki.transport(1, &[1, 2]), NodeId(2), addr, config, 7).unwrap();
    for _ in 0..4 {
        sender.try_send(Bytes::from(vec![0; 200])).unwrap();
    }
    let err = sender.try_send(Bytes::from(vec![0; 300])).unwrap_err();
    assert!(matches!(err, SendError::Full { peer: NodeId(2), bytes: 800, .. }), "{err}");
    for _ in 0..4 {
        sender.try_send(Bytes::from_static(b"x")).unwrap();
    }
    let err = sender.try_send(Bytes::from_static(b"x")).unwrap_err();
    assert!(matches!(err, SendError::Full { msgs: 8, .. }), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sender.status().connected);
    assert!(sender.status().last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_reconnects_after_the_peer_drops_it() {
    let pki = Pki::new();
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let config = fast();
    tokio::spawn(async move {
        // The first connection is dropped after one message; the second is served.
        let incoming = listener.accept().await.unwrap().handshake().await.unwrap();
        let mut conn = incoming.welcome(&[]).await.unwrap();
        // Heartbeats may come first (the sender's interval ticks at once); skip them.
        let frame = loop {
            let frame = conn.reader.recv().await.unwrap();
            if frame.kind == FrameKind::Message {
                break frame;
            }
        };
        tx.send((conn.peer_node, frame.payload)).await.unwrap();
        drop(conn);
        let incoming = listener.accept().await.unwrap().handshake().await.unwrap();
        let _ = serve_messages(incoming, tx, &config).await;
    });
    let (sender, _task) = PeerSender::spawn(pki.transport(1, &[1, 2]), NodeId(2), addr, fast(), 7).unwrap();
    sender.try_send(Bytes::from_static(b"first")).unwrap();
    assert_eq!(recv(&mut rx).await.1, Bytes::from_static(b"first"));
    // Messages sent while the link is down wait in the queue for the next connection.
    let mut got = Vec::new();
    for i in 0..50u8 {
        sender.try_send(Bytes::from(vec![i])).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while got.last() != Some(&49) {
        got.push(recv(&mut rx).await.1[0]);
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(sender.status().connects >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_fails_permanently() {
    let pki = Pki::new();
    // Node 2 does not count node 9 as a member.
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _rx = serve(listener, 3, fast());
    let (sender, task) = PeerSender::spawn(pki.transport(9, &[1, 2, 9]), NodeId(2), addr, fast(), 7).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends").expect("joins");
    let err = result.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let err = sender.try_send(Bytes::from_static(b"x")).unwrap_err();
    assert!(matches!(err, SendError::Closed { peer: NodeId(2) }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sender_ends_the_task_even_while_backing_off() {
    let pki = Pki::new();
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config =
        PeerConfig { backoff_initial: Duration::from_secs(2), backoff_max: Duration::from_secs(2), ..fast() };
    let (sender, task) = PeerSender::spawn(pki.transport(1, &[1, 2]), NodeId(2), addr, config, 7).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(sender);
    let result =
        tokio::time::timeout(Duration::from_millis(500), task).await.expect("ends promptly").unwrap();
    assert!(result.is_ok());
}

#[test]
fn bad_settings_are_named() {
    let err = PeerConfig { heartbeat_interval: Duration::from_secs(2), ..PeerConfig::default() }
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat_interval = 2s"), "{err}");
    let err = PeerConfig { max_queue_msgs: 0, ..PeerConfig::default() }.validate().unwrap_err();
    assert!(err.to_string().contains("max_queue_msgs = 0"), "{err}");
    let err =
        PeerConfig { hello_extra: vec![0u8; 4097].into(), ..PeerConfig::default() }.validate().unwrap_err();
    assert!(err.to_string().contains("hello_extra is 4097 bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_listener_refuses_other_link_purposes() {
    let pki = Pki::new();
    let listener = pki.transport(2, &[1, 2]).bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap().handshake().await.unwrap();
        let (tx, _rx) = mpsc::channel(1);
        serve_messages(incoming, tx, &fast()).await
    });
    let dialer = pki.transport(1, &[1, 2]);
    let refused = dialer.connect(addr, NodeId(2), themis_ship::transport::Purpose::Ship, Bytes::new()).await;
    let err = refused.expect_err("refused");
    assert!(matches!(err, themis_ship::ShipError::Refused { .. }), "{err}");
    let served = acceptor.await.unwrap().unwrap_err();
    assert!(served.to_string().contains("node 1 opened a Ship link on a message listener"), "{served}");
}
