//! Embedding Themis replication in a store of your own: a tiny key-value state machine,
//! replicated by three Raft drivers in one process (each with its own WAL on disk, mutual
//! TLS between them on loopback), from cluster start through the loss of the leader.
//!
//! Run: `cargo run -p themis-replication --example kv_cluster`. `cargo test -p
//! themis-replication --test examples` runs it too (CI does). docs/embedding.md walks
//! through it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
// The prelude has what an embedder needs: the driver and its handle, WAL-backed storage,
// the TLS network and certificates, and the state machine and op traits.
use themis_replication::prelude::*;

/// Keys to their values and the LSN that wrote each.
type Entries = BTreeMap<Vec<u8>, (Vec<u8>, Lsn)>;

/// This store's own operation: one per log entry, in a format of its own (a tag byte,
/// then the key's length as a little-endian u32, the key, and for a put the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KvOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl KvOp {
    fn encode(&self) -> Bytes {
        let (tag, key, value) = match self {
            KvOp::Put { key, value } => (b'P', key, &value[..]),
            KvOp::Delete { key } => (b'D', key, &[][..]),
        };
        let key_len = u32::try_from(key.len()).expect("a key under 4 GiB");
        let mut out = Vec::with_capacity(5 + key.len() + value.len());
        out.push(tag);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        Bytes::from(out)
    }
}

/// What the appliers need to know of an op: how an entry decodes, and which key an op
/// touches (ops on one key apply in log order; on different keys, in parallel when
/// `apply_workers` is above 1). This store has no transactions and no barriers.
impl KeyedOp for KvOp {
    fn decode(lsn: Lsn, payload: &Bytes) -> Result<Vec<KvOp>, ApplyError> {
        // A bad entry is an error naming it: the applier stops rather than skip a write.
        let bad =
            |reason: &str| ApplyError::StateMachine { lsn, reason: format!("not a key-value op: {reason}") };
        let (&tag, rest) = payload.split_first().ok_or_else(|| bad("empty"))?;
        let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("no key length"))?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (key, value) = rest.split_at_checked(len).ok_or_else(|| bad("a truncated key"))?;
        let key = payload.slice_ref(key);
        match tag {
            b'P' => Ok(vec![KvOp::Put { key, value: payload.slice_ref(value) }]),
            b'D' if value.is_empty() => Ok(vec![KvOp::Delete { key }]),
            _ => Err(bad("an unknown tag or trailing bytes")),
        }
    }

    fn role(&self) -> OpRole<'_> {
        let (KvOp::Put { key, .. } | KvOp::Delete { key }) = self;
        OpRole::Keyed { namespace: "kv", key }
    }

    fn transaction(&self) -> Option<(NodeId, u64)> {
        None
    }
}

/// The state machine: keys to values, each with the LSN that wrote it. The driver calls
/// `apply` with every committed entry's operations in log order (replays after a restart
/// included, hence the LSN check), and `snapshot` / `restore` when it compacts its log or
/// a far-behind replica catches up.
#[derive(Debug, Default)]
pub(crate) struct Kv {
    map: Mutex<Entries>,
}

impl Kv {
    /// The value of `key` on this replica.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key.as_bytes()).map(|(v, _)| String::from_utf8_lossy(v).into_owned())
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl StateMachine for Kv {
    type Op = KvOp;

    fn apply(&self, lsn: Lsn, ops: &[KvOp]) -> Result<Vec<Change>, ApplyError> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changes = Vec::new();
        for op in ops {
            let (key, value) = match op {
                KvOp::Put { key, value } => (key, Some(value)),
                KvOp::Delete { key } => (key, None),
            };
            if map.get(&key[..]).is_some_and(|(_, at)| *at >= lsn) {
                continue; // a replay of what this replica already holds
            }
            let previous = match value {
                Some(v) => map.insert(key.to_vec(), (v.to_vec(), lsn)),
                None => map.remove(&key[..]),
            };
            changes.push(Change {
                lsn,
                collection: "kv".into(),
                key: key.clone(),
                previous: previous.map(|(v, _)| Bytes::from(v)),
                current: value.cloned(),
            });
        }
        Ok(changes)
    }

    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        // Each entry: key length, key, value length, value, LSN (little-endian u64s).
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (k, (v, lsn)) in map.iter() {
            for part in [&k[..], &v[..]] {
                out.extend_from_slice(&(part.len() as u64).to_le_bytes());
                out.extend_from_slice(part);
            }
            out.extend_from_slice(&lsn.to_le_bytes());
        }
        Ok(Bytes::from(out))
    }

    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError> {
        let mut reader = Reader(&snapshot[..]);
        let mut map = BTreeMap::new();
        while !reader.0.is_empty() {
            let key = reader.part()?;
            let value = reader.part()?;
            map.insert(key, (value, reader.u64()?));
        }
        *self.map.lock().unwrap_or_else(PoisonError::into_inner) = map;
        Ok(())
    }
}

/// Reads a snapshot written by [`Kv::snapshot`]; a short one is an error, never a panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ApplyError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| ApplyError::Snapshot("a truncated key-value snapshot".into()))?;
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, ApplyError> {
        let bytes: [u8; 8] =
            self.take(8)?.try_into().map_err(|_| ApplyError::Snapshot("a bad length".into()))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn part(&mut self) -> Result<Vec<u8>, ApplyError> {
        let len = usize::try_from(self.u64()?).map_err(|_| ApplyError::Snapshot("a bad length".into()))?;
        Ok(self.take(len)?.to_vec())
    }
}

/// `SEMI_SYNC`: a write is acknowledged once the leader and one follower hold it durably.
const SEMI_SYNC: AckPolicy = AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 };

/// A write as the driver logs it: one put in this store's op format.
fn put(key: &str, value: &str) -> Bytes {
    KvOp::Put { key: Bytes::copy_from_slice(key.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }
        .encode()
}

/// A delete as the driver logs it.
fn delete(key: &str) -> Bytes {
    KvOp::Delete { key: Bytes::copy_from_slice(key.as_bytes()) }.encode()
}

/// One replica: its driver handle, its state machine and its data directory.
pub(crate) struct Replica {
    pub(crate) id: NodeId,
    pub(crate) manager: ReplicationManager,
    pub(crate) kv: Arc<Kv>,
    _dir: tempfile::TempDir,
}

/// Starts replica `id` of `ids`, listening at `addr` (its certificate from `ca`).
async fn start(
    ca: &CertPem,
    id: NodeId,
    ids: &[NodeId],
    peers: Vec<PeerInfo>,
    listener_addr: std::net::SocketAddr,
) -> Replica {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The node's certificate carries its id; its Ed25519 key also signs its Raft votes.
    let cert = issue_node_cert(ca, id, &[]).expect("a node certificate");
    let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key).expect("TLS settings");
    let votes =
        Ed25519Votes::from_pkcs8(id, tls.private_key_pkcs8().expect("a PKCS#8 key")).expect("a vote key");
    let transport = Transport::new(
        TransportConfig::new("kv-example", id, Security::Tls(tls)),
        Members::new(ids.iter().copied()),
    )
    .expect("a transport");
    let listener = transport.bind(listener_addr).await.expect("a listening socket");
    // A durable log: every acknowledged write is fsynced on a majority.
    let (storage, _) = WalStorage::open(
        dir.path(),
        WalConfig::default(),
        Some((ConfState::with_voters(ids.to_vec()), SEMI_SYNC)),
    )
    .expect("the log opens");
    let mut config = DriverConfig::new(RaftConfig::new(id, "kv-example"), peers);
    config.tick = Duration::from_millis(20);
    // Two applier threads: puts to different keys apply at once, each key in log order.
    config.apply_workers = 2;
    let kv = Arc::new(Kv::default());
    let hlc = Arc::new(Hlc::new(id));
    let network = ShipNetwork::new(transport, listener, PeerConfig::default()).expect("peer links");
    let (manager, _task) =
        Driver::start(config, storage, network, Arc::clone(&kv), SharedVotes::new(votes), move || hlc.now())
            .expect("the driver starts");
    Replica { id, manager, kv, _dir: dir }
}

/// The replica that leads, once one does.
async fn leader(replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(i) = replicas.iter().position(|r| r.manager.leadership().1) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader within 20 s");
}

/// Waits until every replica in `replicas` holds `key = value`.
async fn everywhere(replicas: &[&Replica], key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas.iter().any(|r| r.kv.get(key).as_deref() != Some(value)) {
        assert!(Instant::now() < deadline, "{key} did not reach every replica");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `k{i} = v{i}` for each `i` in `keys` through `leader`, each committed before
/// the next.
async fn write_keys(leader: &Replica, keys: std::ops::Range<usize>) {
    for i in keys {
        leader.manager.propose(put(&format!("k{i}"), &format!("v{i}"))).await.expect("a committed write");
    }
}

/// Start, write, lose the leader, write again; returns the writes every survivor holds.
pub(crate) async fn run() -> usize {
    let ca = generate_ca("kv-example").expect("a CA");
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    // Pick three free loopback ports first, so each replica knows where its peers listen.
    let addrs: Vec<std::net::SocketAddr> = ids
        .iter()
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
        })
        .collect();
    let peers: Vec<PeerInfo> = ids
        .iter()
        .zip(&addrs)
        .map(|(&id, &raft_addr)| PeerInfo { id, raft_addr, meta: Vec::new() })
        .collect();
    let mut replicas = Vec::new();
    for (&id, &addr) in ids.iter().zip(&addrs) {
        replicas.push(start(&ca, id, &ids, peers.clone(), addr).await);
    }

    // 1. A leader is elected; writes go to it and are applied on every replica.
    let first = leader(&replicas).await;
    println!("replica {} leads", replicas[first].id);
    write_keys(&replicas[first], 0..100).await;
    everywhere(&replicas.iter().collect::<Vec<_>>(), "k99", "v99").await;
    println!("100 writes on every replica");
    // A delete, and a rewrite of one key: each key sees its writes in log order.
    replicas[first].manager.propose(delete("k0")).await.expect("a committed delete");
    replicas[first].manager.propose(put("k1", "v1-again")).await.expect("a committed write");
    everywhere(&replicas.iter().collect::<Vec<_>>(), "k1", "v1-again").await;
    assert!(replicas.iter().all(|r| r.kv.get("k0").is_none()), "k0 is deleted everywhere");

    // 2. The leader goes away. The other two elect a new one within an election timeout
    //    or two, and hold everything the old one acknowledged.
    let gone = replicas.remove(first);
    gone.manager.shutdown().await;
    let lost_at = Instant::now();
    let second = leader(&replicas).await;
    println!("replica {} leads after {:?}", replicas[second].id, lost_at.elapsed());
    write_keys(&replicas[second], 100..150).await;
    let survivors: Vec<&Replica> = replicas.iter().collect();
    everywhere(&survivors, "k149", "v149").await;
    everywhere(&survivors, "k1", "v1-again").await;
    let held = replicas[second].kv.len();
    println!("{held} keys on both survivors");
    for r in &replicas {
        r.manager.shutdown().await;
    }
    held
}

#[tokio::main]
async fn main() {
    let held = run().await;
    assert_eq!(held, 149);
}
