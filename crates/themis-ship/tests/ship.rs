//! WAL streaming between real logs over loopback TLS (and plaintext behind a faulty
//! proxy): catch-up, tailing, resume after a restart, corruption in transit, whole
//! segments, and a follower behind retention.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Pki, any_port, transport};
use themis_clock::{NodeId, Timestamp};
use themis_ship::ShipError;
use themis_ship::ship::{ShipConfig, ShipStatus, WalReceiver, WalShipper};
use themis_ship::transport::{Security, Transport};
use themis_wal::{FsyncPolicy, Lsn, NewEntry, Wal, WalConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn wal_config() -> WalConfig {
    WalConfig {
        segment_bytes: 256 << 10,
        max_record_bytes: 64 << 10,
        fsync: FsyncPolicy::Always,
        ..WalConfig::default()
    }
}

/// A JSON-ish document for `lsn`, so compression has something to do.
fn doc(lsn: Lsn) -> NewEntry {
    let body = format!(
        "{{\"id\":{lsn},\"user\":\"user-{}\",\"email\":\"user{}@example.com\",\"score\":{}}}",
        lsn % 97,
        lsn % 97,
        lsn * 7 % 1000
    );
    NewEntry::data(Timestamp::from_parts(lsn, 0, NodeId(1)).unwrap(), Bytes::from(body))
}

fn append(wal: &Wal, from: Lsn, to: Lsn) {
    let batch: Vec<NewEntry> = (from..=to).map(doc).collect();
    for chunk in batch.chunks(200) {
        wal.append(chunk).unwrap();
    }
}

fn ship_config() -> ShipConfig {
    ShipConfig {
        max_batch_bytes: 16 << 10,
        max_in_flight_bytes: 64 << 10,
        heartbeat_interval: Duration::from_millis(50),
        peer_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ShipConfig::default()
    }
}

/// Accepts ship connections into `wal` until aborted.
fn serve(listener: themis_ship::transport::Listener, wal: Wal) -> JoinHandle<()> {
    let receiver = WalReceiver::new(wal, ship_config()).unwrap();
    tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok(pending) = listener.accept().await {
            let receiver = receiver.clone();
            streams.push(tokio::spawn(async move {
                let incoming = pending.handshake().await?;
                receiver.serve(incoming).await
            }));
        }
        for s in streams {
            s.abort();
        }
    })
}

async fn wait_acked(status: &mut watch::Receiver<ShipStatus>, lsn: Lsn) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if status.borrow().acked_lsn >= lsn {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            tokio::time::timeout(left, status.changed()).await.is_ok(),
            "acked {:?}, waiting for {lsn}",
            status.borrow()
        );
    }
}

/// The follower holds exactly the leader's records, byte for byte.
fn assert_same(leader: &Wal, follower: &Wal) {
    assert_eq!((follower.first_lsn(), follower.last_lsn()), (1, leader.last_lsn()));
    for lsn in 1..=leader.last_lsn() {
        let (ours, theirs) = (leader.read_raw(lsn, 0).unwrap(), follower.read_raw(lsn, 0).unwrap());
        assert_eq!(ours, theirs, "record {lsn}");
    }
}

struct Shipping {
    status: watch::Receiver<ShipStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ShipError>>,
}

impl Shipping {
    /// Stops the shipper cleanly and the follower's server, then compares the logs.
    async fn finish(self, server: JoinHandle<()>, leader: &Wal, follower: &Wal) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        server.abort();
        assert_same(leader, follower);
    }
}

fn start_shipping(shipper: &WalShipper, follower: NodeId, addr: SocketAddr) -> Shipping {
    let (status_tx, status) = watch::channel(ShipStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let shipper = shipper.clone();
    let task = tokio::spawn(async move { shipper.run(follower, addr, &status_tx, stop_rx, 7).await });
    Shipping { status, stop, task }
}

fn open(dir: &Path) -> Wal {
    Wal::open(dir, wal_config()).unwrap().0
}

/// A leader log holding entries `1..=entries`, an empty follower log served on
/// `follower_transport`, and a shipper from one to the other.
struct Pair {
    /// The leader's and the follower's directories: bind them, or they are deleted.
    dirs: (tempfile::TempDir, tempfile::TempDir),
    leader: Wal,
    follower: Wal,
    addr: SocketAddr,
    server: JoinHandle<()>,
    shipper: WalShipper,
}

async fn pair(leader_transport: Transport, follower_transport: &Transport, entries: Lsn) -> Pair {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(leader_dir.path());
    append(&leader, 1, entries);
    let follower = open(follower_dir.path());
    let listener = follower_transport.bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(listener, follower.clone());
    let shipper = WalShipper::new(leader.clone(), leader_transport, ship_config()).unwrap();
    Pair { dirs: (leader_dir, follower_dir), leader, follower, addr, server, shipper }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_and_tails_over_tls() {
    let pki = Pki::new();
    let Pair { leader, follower, addr, server, shipper, dirs: _dirs } =
        pair(pki.transport(1, &[1, 2]), &pki.transport(2, &[1, 2]), 3000).await;
    let mut shipping = start_shipping(&shipper, NodeId(2), addr);
    wait_acked(&mut shipping.status, 3000).await;
    // Tailing: new entries flow as they become durable.
    let writer = {
        let leader = leader.clone();
        tokio::task::spawn_blocking(move || append(&leader, 3001, 4000))
    };
    writer.await.unwrap();
    wait_acked(&mut shipping.status, 4000).await;
    let status = shipping.status.borrow().clone();
    assert_eq!(status.connections, 1, "{status:?}");
    let (codec, _) = shipper.cache().stats();
    assert!(codec.ratio() < 0.6, "JSON documents compress: ratio {}", codec.ratio());
    shipping.finish(server, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_resumes_without_gap_or_duplicate() {
    let pki = Pki::new();
    let follower_transport = pki.transport(2, &[1, 2]);
    let Pair { leader, follower, addr, server, shipper, dirs: (_leader_dir, follower_dir) } =
        pair(pki.transport(1, &[1, 2]), &follower_transport, 2000).await;
    let mut shipping = start_shipping(&shipper, NodeId(2), addr);
    wait_acked(&mut shipping.status, 500).await;
    // The follower goes away mid-stream: its process (server, log) ends.
    server.abort();
    let _ = server.await;
    follower.close().unwrap();
    drop(follower);
    let more = {
        let leader = leader.clone();
        tokio::task::spawn_blocking(move || append(&leader, 2001, 3000))
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // It restarts from its files on the same port and the stream resumes where it held.
    let follower = open(follower_dir.path());
    let held = follower.last_lsn();
    assert!(held >= 500, "held {held}");
    let listener = follower_transport.bind(addr).await.unwrap();
    let server = serve(listener, follower.clone());
    more.await.unwrap();
    wait_acked(&mut shipping.status, 3000).await;
    assert!(shipping.status.borrow().connections >= 2);
    shipping.finish(server, &leader, &follower).await;
}

/// Forwards connections to `upstream`, flipping one bit of the shipper's bytes once
/// `corrupt_after` bytes have passed (once in the proxy's life).
async fn faulty_proxy(upstream: SocketAddr, corrupt_after: u64) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let flag = Arc::clone(&flipped);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else { continue };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (flag, seen) = (Arc::clone(&flag), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let total = seen.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                    if total > corrupt_after && !flag.swap(true, Ordering::SeqCst) {
                        buf[n / 2] ^= 0x10;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (addr, flipped)
}

async fn survives_a_flipped_bit(leader_transport: Transport, follower_transport: Transport) {
    let Pair { leader, follower, addr: upstream, server, shipper, dirs: _dirs } =
        pair(leader_transport, &follower_transport, 3000).await;
    let (proxy, flipped) = faulty_proxy(upstream, 40_000).await;
    let mut shipping = start_shipping(&shipper, NodeId(2), proxy);
    wait_acked(&mut shipping.status, 3000).await;
    assert!(flipped.load(Ordering::SeqCst), "the proxy corrupted the stream");
    let status = shipping.status.borrow().clone();
    assert!(status.connections >= 2, "the corrupt connection was dropped and replaced: {status:?}");
    shipping.finish(server, &leader, &follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_in_transit_is_caught_by_the_frame_crc_and_the_stream_resumes() {
    survives_a_flipped_bit(
        transport(1, Security::InsecurePlaintext, &[1, 2]),
        transport(2, Security::InsecurePlaintext, &[1, 2]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_inside_tls_is_caught_and_the_stream_resumes() {
    let pki = Pki::new();
    survives_a_flipped_bit(pki.transport(1, &[1, 2]), pki.transport(2, &[1, 2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_segment_ships_whole() {
    let pki = Pki::new();
    let Pair { leader, follower, addr, server, shipper, dirs: _dirs } =
        pair(pki.transport(1, &[1, 2]), &pki.transport(2, &[1, 2]), 6000).await;
    let segments = leader.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    let first = shipper.ship_segment(&segments[0].0, NodeId(2), addr).await.unwrap();
    assert_eq!(first.first, 1);
    assert_eq!(follower.durable_lsn(), first.last);
    // Shipping a segment that does not follow what the follower holds is refused.
    let err = shipper.ship_segment(&segments[2].0, NodeId(2), addr).await.unwrap_err();
    assert!(matches!(err, ShipError::Gap { .. }), "{err}");
    let second = shipper.ship_segment(&segments[1].0, NodeId(2), addr).await.unwrap();
    assert_eq!(second.first, first.last + 1);
    for lsn in 1..=second.last {
        assert_eq!(leader.read_raw(lsn, 0).unwrap(), follower.read_raw(lsn, 0).unwrap());
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_retention_is_a_permanent_error() {
    let pki = Pki::new();
    let Pair { leader, follower, addr, server, shipper, dirs: _dirs } =
        pair(pki.transport(1, &[1, 2]), &pki.transport(2, &[1, 2]), 6000).await;
    let dropped_below = leader.truncate_prefix(3000).unwrap();
    assert!(dropped_below > 1);
    let shipping = start_shipping(&shipper, NodeId(2), addr);
    let err = shipping.task.await.unwrap().unwrap_err();
    assert!(matches!(err, ShipError::BehindRetention { needed: 1, .. }), "{err}");
    assert!(err.is_permanent());
    assert_eq!(follower.last_lsn(), 0);
    server.abort();
}
