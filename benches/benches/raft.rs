//! The Raft core without I/O: an in-process 3-node cluster (memory storage, messages handed
//! over directly), proposals until the leader commits them, with appends batched per
//! `Ready` (ours) against one append per proposal (the baseline). Also reports how many
//! message rounds one commit takes.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use themis_benches::{Comparison, Target};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::raft::wire::{self, Packet, WireLimits};
use themis_replication::raft::{
    AckPolicy, Body, ConfState, Config, Ed25519Votes, MemStorage, Message, RawNode, ReplicationMode, Role,
    Snapshot, SnapshotMeta, Storage,
};
use themis_replication::wal::record::{self, CheckedRecords};
use themis_replication::wal::{EntryKind, NewEntry};

const PROPOSALS: u64 = 64;
const VALUE_BYTES: usize = 256;

struct Cluster {
    nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    leader: NodeId,
    /// Proposals since the last compaction.
    proposed: u64,
}

impl Cluster {
    fn new(batch_appends: bool) -> Cluster {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let public: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| Ed25519Votes::from_seed(*id, &[id.0 as u8; 32]).expect("seed").public_key())
            .collect();
        let mut nodes = BTreeMap::new();
        for id in ids {
            let mut signer = Ed25519Votes::from_seed(id, &[id.0 as u8; 32]).expect("seed");
            for (peer, key) in ids.iter().zip(&public) {
                signer.add_peer(*peer, key).expect("key");
            }
            let policy = AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 };
            let storage = MemStorage::bootstrap(ConfState::with_voters(ids), policy);
            let mut config = Config::new(id, "bench");
            config.batch_appends = batch_appends;
            let node = RawNode::new(config, storage, Box::new(signer), || Timestamp::ZERO).expect("node");
            nodes.insert(id, node);
        }
        let mut cluster = Cluster { nodes, leader: NodeId(0), proposed: 0 };
        for _ in 0..100 {
            for node in cluster.nodes.values_mut() {
                node.tick().expect("tick");
            }
            cluster.pump();
            if let Some((id, _)) =
                cluster.nodes.iter().find(|(_, n)| n.status().soft_state.role == Role::Leader)
            {
                cluster.leader = *id;
                return cluster;
            }
        }
        panic!("no leader elected");
    }

    /// Hands out every Ready and delivers every message until the cluster is quiet;
    /// returns the message rounds it took.
    fn pump(&mut self) -> u32 {
        let mut rounds = 0;
        loop {
            let mut inbox = Vec::new();
            for node in self.nodes.values_mut() {
                while node.has_ready() {
                    let ready = node.ready().expect("ready");
                    {
                        let mut log = node.storage().wl();
                        if let Some(hard_state) = ready.hard_state {
                            log.set_hard_state(hard_state);
                        }
                        log.append(&ready.entries).expect("append");
                    }
                    inbox.extend(ready.messages);
                    inbox.extend(ready.persisted_messages);
                    node.advance().expect("advance");
                }
            }
            if inbox.is_empty() {
                return rounds;
            }
            rounds += 1;
            for message in inbox {
                self.nodes.get_mut(&message.to).expect("member").step(message).expect("step");
            }
        }
    }

    /// Proposes `count` values on the leader and runs until they commit.
    fn propose_and_commit(&mut self, count: u64, value: &Bytes) -> u32 {
        let leader = self.nodes.get_mut(&self.leader).expect("leader");
        let mut last = 0;
        for _ in 0..count {
            last = leader.propose(value.clone()).expect("propose");
        }
        let rounds = self.pump();
        self.proposed += count;
        if self.proposed >= 50_000 {
            self.proposed = 0;
            self.compact();
        }
        assert!(self.nodes[&self.leader].status().hard_state.commit >= last, "not committed");
        rounds
    }

    /// Drops applied entries now and then so memory stays flat over millions of proposals.
    fn compact(&mut self) {
        for node in self.nodes.values() {
            let status = node.status();
            let storage = node.storage();
            let first = storage.first_lsn().expect("first");
            if status.applied_lsn < first + 1_000 {
                continue;
            }
            let term = storage.term(status.applied_lsn).expect("term");
            let meta = SnapshotMeta {
                lsn: status.applied_lsn,
                term,
                conf_state: status.conf_state.clone(),
                policy: status.policy,
            };
            storage.wl().compact(Snapshot { meta, data: Bytes::new() }).expect("compact");
        }
    }
}

/// A batch of WAL records as they lie in a segment: 64 entries of 256 bytes from LSN 1.
fn wal_batch() -> Bytes {
    let mut buf = Vec::new();
    for lsn in 1..=PROPOSALS {
        let entry = NewEntry {
            term: 3,
            timestamp: Timestamp::ZERO,
            kind: EntryKind::DATA,
            payload: Bytes::from(vec![7u8; VALUE_BYTES]),
        };
        record::encode(&mut buf, lsn, &entry);
    }
    Bytes::from(buf)
}

fn bench_path_bytes(c: &mut Criterion) {
    let records = wal_batch();
    let limits = WireLimits::default();
    let max_record = 1 << 20;
    let mut group = c.benchmark_group("raft_path_bytes");
    group.throughput(Throughput::Bytes(records.len() as u64));
    group.bench_function("reencoded", |b| {
        b.iter(|| {
            // Leader: the entries out of its WAL, into an Append.
            let mut entries = Vec::with_capacity(PROPOSALS as usize);
            let mut offset = 0;
            while offset < records.len() {
                let (entry, size) = record::decode(&records, offset, max_record).expect("a record");
                entries.push(entry);
                offset += size;
            }
            let message = Message {
                from: NodeId(1),
                to: NodeId(2),
                term: 3,
                body: Body::Append { prev_lsn: 0, prev_term: 0, entries, commit: 0 },
            };
            let wire = Bytes::from(wire::encode(&message));
            // Follower: the Append decoded, its entries encoded as WAL records again.
            let Ok(Packet::Message(Message { body: Body::Append { entries, .. }, .. })) =
                wire::decode_packet(&wire, &limits)
            else {
                panic!("an append")
            };
            let mut out = Vec::with_capacity(records.len());
            for e in &entries {
                let entry = NewEntry {
                    term: e.term,
                    timestamp: e.timestamp,
                    kind: e.kind,
                    payload: e.payload.clone(),
                };
                record::encode(&mut out, e.lsn, &entry);
            }
            black_box(out)
        });
    });
    group.bench_function("unchanged", |b| {
        b.iter(|| {
            // Follower: each record's CRC checked once, the bytes copied to be written.
            let checked = CheckedRecords::check(records.clone(), 1, max_record).expect("whole records");
            let mut out = Vec::with_capacity(records.len());
            out.extend_from_slice(checked.bytes());
            black_box(out)
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_path_bytes(c);
    let value = Bytes::from(vec![7u8; VALUE_BYTES]);
    let mut group = c.benchmark_group("raft_commit");
    group.throughput(Throughput::Elements(PROPOSALS));
    for (name, batched) in [("batched", true), ("unbatched", false)] {
        let mut cluster = Cluster::new(batched);
        group.bench_function(name, |b| {
            b.iter(|| black_box(cluster.propose_and_commit(PROPOSALS, &value)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("raft_latency");
    for (name, batched) in [("batched", true), ("unbatched", false)] {
        let mut cluster = Cluster::new(batched);
        group.bench_function(name, |b| {
            b.iter(|| black_box(cluster.propose_and_commit(1, &value)));
        });
    }
    group.finish();

    let mut cluster = Cluster::new(true);
    let rounds = cluster.propose_and_commit(1, &value);
    println!(
        "\none proposal commits after {rounds} message rounds (append, answer, commit broadcast, its answer) and 0 ticks"
    );
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    themis_benches::report(
        started,
        &[
            Comparison {
                what: "3-node commit of 64 proposals, batched",
                ours: "raft_commit/batched",
                baseline: "raft_commit/unbatched",
                targets: &[Target::NotSlowerThan(1.0)],
            },
            Comparison {
                what: "3-node commit of 1 proposal",
                ours: "raft_latency/batched",
                baseline: "raft_latency/unbatched",
                targets: &[],
            },
            Comparison {
                what: "64 x 256 B leader WAL -> follower WAL: re-encoded on the Raft path vs shipped unchanged",
                ours: "raft_path_bytes/reencoded",
                baseline: "raft_path_bytes/unchanged",
                targets: &[],
            },
        ],
    );
}
