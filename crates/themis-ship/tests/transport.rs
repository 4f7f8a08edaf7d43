//! Loopback TLS between nodes: the handshake and every way it must fail clearly.

mod common;

use bytes::Bytes;
use common::{Pki, any_port, transport};
use themis_clock::NodeId;
use themis_ship::frame::{FrameKind, encode_plain};
use themis_ship::transport::{Purpose, Security, Transport};
use themis_ship::{RefuseCode, ShipError};

/// Runs one accept + handshake on `server` and one dial from `client`; returns both results.
async fn meet(
    server: &Transport,
    client: &Transport,
    expect: u64,
) -> (
    Result<(themis_ship::transport::Connection, Bytes), ShipError>,
    Result<themis_ship::transport::Connection, ShipError>,
) {
    let listener = server.bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let incoming = listener.accept().await?.handshake().await?;
        assert_eq!(incoming.hello.purpose, Purpose::Ship);
        assert_eq!(&incoming.hello.extra[..], b"from-lsn");
        incoming.welcome(b"resume-at").await
    });
    let dial = client.connect(addr, NodeId(expect), Purpose::Ship, Bytes::from_static(b"from-lsn")).await;
    (dial, accept.await.unwrap())
}

#[tokio::test]
async fn nodes_of_one_cluster_connect_over_tls_and_exchange_frames() {
    let pki = Pki::new();
    let (a, b) = (pki.transport(1, &[1, 2]), pki.transport(2, &[1, 2]));
    let (dial, accept) = meet(&b, &a, 2).await;
    let (mut client, welcome) = dial.unwrap();
    let mut server = accept.unwrap();
    assert_eq!(&welcome[..], b"resume-at");
    assert_eq!((client.peer_node, server.peer_node), (NodeId(2), NodeId(1)));
    client.writer.send(&encode_plain(FrameKind::Heartbeat, b"ping")).await.unwrap();
    let frame = server.reader.recv().await.unwrap();
    assert_eq!((frame.kind, &frame.payload[..]), (FrameKind::Heartbeat, &b"ping"[..]));
    drop(client);
    assert!(matches!(server.reader.recv().await, Err(ShipError::Closed { .. })));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_rejected_on_both_sides() {
    let (pki, other) = (Pki::new(), Pki::new());
    let server = pki.transport(2, &[1, 2]);
    let stranger = other.transport(1, &[1, 2]);
    let (dial, accept) = meet(&server, &stranger, 2).await;
    let dial = dial.expect_err("the dialer must fail");
    let accept = accept.expect_err("the acceptor must fail");
    assert!(
        matches!(&dial, ShipError::Tls { reason, .. } if reason.contains("invalid peer certificate")),
        "{dial}"
    );
    assert!(dial.is_permanent());
    assert!(matches!(&accept, ShipError::Tls { .. } | ShipError::Closed { .. }), "{accept}");
}

#[tokio::test]
async fn a_member_of_the_ca_that_is_not_in_the_membership_is_refused() {
    let pki = Pki::new();
    let server = pki.transport(2, &[1, 2]);
    let outsider = pki.transport(9, &[1, 2, 9]);
    let (dial, accept) = meet(&server, &outsider, 2).await;
    let dial = dial.expect_err("refused");
    assert!(
        matches!(&dial, ShipError::Refused { code: RefuseCode::UnknownNode, reason, .. } if reason.contains("node 9")),
        "{dial}"
    );
    assert!(dial.is_permanent());
    assert!(matches!(accept, Err(ShipError::UnknownNode { reason, .. }) if reason.contains("node 9")));
}

#[tokio::test]
async fn dialing_the_wrong_node_fails_the_tls_name_check() {
    let pki = Pki::new();
    let (a, b) = (pki.transport(1, &[1, 2, 3]), pki.transport(2, &[1, 2, 3]));
    // Node 1 believes node 3 listens where node 2 does.
    let (dial, _) = meet(&b, &a, 3).await;
    let dial = dial.expect_err("wrong node");
    assert!(
        matches!(&dial, ShipError::Tls { reason, .. } if reason.contains("node-3.themis") || reason.contains("NotValidForName")),
        "{dial}"
    );
}

#[tokio::test]
async fn plaintext_and_tls_peers_fail_clearly_in_both_directions() {
    let pki = Pki::new();
    let tls_node = pki.transport(2, &[1, 2]);
    let plain_node = transport(1, Security::InsecurePlaintext, &[1, 2]);
    // Plaintext dialer, TLS acceptor.
    let (dial, accept) = meet(&tls_node, &plain_node, 2).await;
    assert!(matches!(dial, Err(ShipError::TlsPeer { .. })), "{:?}", dial.err());
    assert!(matches!(accept, Err(ShipError::PlaintextPeer { .. })), "{:?}", accept.err());
    // TLS dialer, plaintext acceptor.
    let plain_server = transport(2, Security::InsecurePlaintext, &[1, 2]);
    let tls_client = pki.transport(1, &[1, 2]);
    let (dial, accept) = meet(&plain_server, &tls_client, 2).await;
    let dial = dial.expect_err("must fail");
    assert!(
        matches!(dial, ShipError::PlaintextPeer { .. } | ShipError::Closed { .. } | ShipError::Tls { .. }),
        "{dial}"
    );
    assert!(matches!(accept, Err(ShipError::TlsPeer { .. })), "{:?}", accept.err());
}

#[tokio::test]
async fn plaintext_nodes_connect_when_both_allow_it() {
    let a = transport(1, Security::InsecurePlaintext, &[1, 2]);
    let b = transport(2, Security::InsecurePlaintext, &[1, 2]);
    let (dial, accept) = meet(&b, &a, 2).await;
    assert_eq!(dial.unwrap().0.peer_node, NodeId(2));
    assert_eq!(accept.unwrap().peer_node, NodeId(1));
}

#[tokio::test]
async fn another_cluster_is_refused() {
    let pki = Pki::new();
    let server = pki.transport(2, &[1, 2]);
    let mut config =
        themis_ship::transport::TransportConfig::new("elsewhere", NodeId(1), Security::Tls(pki.tls(1)));
    config.handshake_timeout = std::time::Duration::from_secs(2);
    let client = Transport::new(config, themis_ship::transport::Members::new([NodeId(2)])).unwrap();
    let (dial, accept) = meet(&server, &client, 2).await;
    assert!(matches!(dial, Err(ShipError::Refused { code: RefuseCode::Cluster, .. })), "{:?}", dial.err());
    assert!(matches!(accept, Err(ShipError::Refused { code: RefuseCode::Cluster, .. })));
}
