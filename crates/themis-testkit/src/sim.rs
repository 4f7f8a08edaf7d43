//! A deterministic simulator of whole Raft clusters.
//!
//! One seeded RNG drives everything: message delays (so reordering), drops, duplicates,
//! partitions (symmetric, asymmetric, an isolated leader, a bridge), crashes and restarts,
//! per-node clock drift, client writes and reads, membership and mode changes. Simulated
//! time is in microseconds; each node ticks at its own drifted rate.
//!
//! A crash keeps only what the node persisted: a crash "mid-Ready" sends the Ready's
//! immediate messages, persists a prefix of its entries and nothing else, as a real driver
//! would when killed between its send and its fsync.
//!
//! After every event the invariants of Raft §5 are checked, plus lease safety and the
//! durability promised by each acknowledgement mode; at the end the faults heal and the
//! cluster must elect a leader and commit within a bound, and the client history must be
//! linearizable. A failure names the seed, the step, the invariant, and the command that
//! replays it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use themis_clock::{NodeId, Timestamp};
use themis_raft::wire::{self, WireLimits};
use themis_raft::{
    AckPolicy, ConfState, Config, MemStorage, MemberChange, Message, RawNode, ReadOnlyOption,
    ReplicationMode, Role, Snapshot, SnapshotMeta, Storage,
};
use themis_wal::{Entry, EntryKind, Lsn};

use crate::linearizability::{self, Op, OpKind};

/// Simulated microseconds per nominal tick.
const TICK_US: u64 = 10_000;
/// Events between two log-matching checks (they compare every pair of logs) and at the end.
const LOG_MATCHING_EVERY: u64 = 1000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed; the same seed replays the same run.
    pub seed: u64,
    /// Voters at the start (3, 5 or 7).
    pub nodes: usize,
    /// Extra nodes that start outside the cluster and may join as learners, then voters.
    pub spares: usize,
    /// Nominal ticks of faulty running before the faults heal.
    pub ticks: u64,
    /// Nominal ticks after healing within which a leader must be elected and a proposal
    /// committed.
    pub liveness_ticks: u64,
    /// Fault rates.
    pub faults: Faults,
    /// Lease reads (on) or `ReadIndex` only (off).
    pub lease_reads: bool,
    /// Propose membership and mode changes during the run.
    pub reconfigure: bool,
}

/// Fault rates.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Chance a message is dropped.
    pub drop: f64,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
    /// Message delay range in microseconds (random within it, so messages reorder).
    pub delay_us: (u64, u64),
    /// Mean nominal ticks between fault events (partitions, crashes, heals).
    pub fault_every_ticks: u64,
    /// Clock drift of each node's tick rate, at most this many parts per million.
    pub drift_ppm: u32,
    /// Process pauses (as `SIGSTOP` or a stalled VM): a paused node neither ticks nor
    /// receives (messages wait in its socket) for one to four election timeouts.
    pub pauses: bool,
    /// On resuming, a paused node counts the ticks it missed for its lease, as the driver
    /// does before a read (`RawNode::advance_time`). Off only to show that the simulator
    /// catches a driver that forgets the pause.
    pub count_paused_time: bool,
}

impl SimConfig {
    /// The default fault mix for `nodes` voters.
    #[must_use]
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            spares: 1,
            ticks: 600,
            liveness_ticks: 200,
            faults: Faults {
                drop: 0.02,
                duplicate: 0.01,
                delay_us: (200, 8_000),
                fault_every_ticks: 40,
                drift_ppm: 10_000,
                pauses: true,
                count_paused_time: true,
            },
            lease_reads: seed.is_multiple_of(2),
            reconfigure: true,
        }
    }
}

/// An invariant the simulation found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// Voters at the start.
    pub nodes: usize,
    /// The event count at which it was found.
    pub step: u64,
    /// The simulated time, in microseconds.
    pub time_us: u64,
    /// The invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant `{}` violated at step {} (t = {} us), seed {}: {}\n  replay: cargo xtask sim --seed {} --nodes {}",
            self.invariant, self.step, self.time_us, self.seed, self.detail, self.seed, self.nodes
        )
    }
}

impl std::error::Error for Violation {}

/// What a run did, for reports and for tests to check the faults really happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Events processed.
    pub steps: u64,
    /// Leaders elected (distinct terms with a leader).
    pub elections: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Client writes that completed (committed, applied and acknowledged).
    pub writes_completed: u64,
    /// Reads that completed.
    pub reads_completed: u64,
    /// Reads served from the lease.
    pub lease_reads: u64,
    /// Writes acknowledged under SYNC or `SEMI_SYNC`.
    pub durable_acks: u64,
    /// Configuration changes committed.
    pub config_changes: u64,
    /// Snapshots sent to followers and installed.
    pub snapshots_installed: u64,
    /// The highest committed LSN.
    pub committed_lsn: Lsn,
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    Deliver(Message),
    Client,
    Fault,
    Restart(NodeId),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A client operation waiting for its result.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Write { op: usize, term: u64, digest: u64, acked: bool, applied: bool },
    Read { op: usize, key: u64 },
}

struct SimNode {
    id: NodeId,
    storage: MemStorage,
    raw: Option<RawNode<MemStorage>>,
    tick_us: u64,
    kv: BTreeMap<u64, u64>,
    applied: Lsn,
    /// Writes proposed here, by LSN.
    writes: BTreeMap<Lsn, Pending>,
    /// Reads proposed here, by context (the op index).
    reads: HashMap<u64, Pending>,
    /// Confirmed reads waiting for their LSN to be applied: (lsn, pending).
    confirmed: Vec<(Lsn, Pending)>,
    /// The term and last LSN this node appended while leading, to check append-only.
    leader_mark: Option<(u64, Lsn)>,
    role: Role,
    term: u64,
    /// Paused until this simulated time (0: running), and the ticks it has missed.
    paused_until: u64,
    missed_ticks: u64,
}

impl SimNode {
    /// Ends a pause that is over: the lease counts the ticks missed (if the driver would).
    fn resume(&mut self, now: u64, count_paused_time: bool) {
        if self.paused_until == 0 || now < self.paused_until {
            return;
        }
        self.paused_until = 0;
        let missed = std::mem::take(&mut self.missed_ticks);
        if count_paused_time && let Some(raw) = self.raw.as_mut() {
            raw.advance_time(missed);
        }
    }
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("cfg", &self.cfg)
            .field("now", &self.now)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// A deterministic cluster simulation.
pub struct Simulation {
    cfg: SimConfig,
    rng: fastrand::Rng,
    now: u64,
    seq: u64,
    steps: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Every node, member or spare; each knows every other's vote key.
    ids: Vec<NodeId>,
    blocked: HashSet<(NodeId, NodeId)>,
    healed: bool,
    history: Vec<Op>,
    /// Committed entries seen applied anywhere: LSN -> (term, digest).
    committed: BTreeMap<Lsn, (u64, u64)>,
    /// The term of the node that first applied each committed entry: at least the term
    /// it was committed in.
    committed_by: BTreeMap<Lsn, u64>,
    /// Leader of each term.
    leaders: BTreeMap<u64, NodeId>,
    /// SYNC/SEMI_SYNC-acknowledged writes: LSN -> (term, digest).
    durable_acks: BTreeMap<Lsn, (u64, u64)>,
    next_value: u64,
    report: SimReport,
    /// The first message that did not survive encoding and decoding.
    wire_failure: Option<String>,
}

fn digest(entry: &Entry) -> u64 {
    digest_of(entry.kind, &entry.payload)
}

fn digest_of(kind: EntryKind, payload: &[u8]) -> u64 {
    // FNV-1a over the kind and payload: enough to tell entries apart in a simulation.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in std::iter::once(kind.code()).chain(payload.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn encode_write(op: usize, key: u64, value: u64) -> Bytes {
    let mut out = Vec::with_capacity(24);
    for word in [op as u64, key, value] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    Bytes::from(out)
}

fn decode_write(payload: &[u8]) -> Option<(usize, u64, u64)> {
    if payload.len() != 24 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some((word(0) as usize, word(1), word(2)))
}

fn encode_kv(kv: &BTreeMap<u64, u64>) -> Bytes {
    let mut out = Vec::with_capacity(kv.len() * 16);
    for (k, v) in kv {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

fn decode_kv(data: &[u8]) -> BTreeMap<u64, u64> {
    data.chunks_exact(16)
        .map(|c| {
            let k = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let v = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            (k, v)
        })
        .collect()
}

type Check = Result<(), Violation>;

/// A log as (term, digest) by LSN.
type Fingerprints = BTreeMap<Lsn, (u64, u64)>;

/// Where the simulation is, for a violation raised while a node is borrowed.
#[derive(Clone, Copy)]
struct At {
    seed: u64,
    nodes: usize,
    step: u64,
    time_us: u64,
}

impl At {
    fn violation(self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            nodes: self.nodes,
            step: self.step,
            time_us: self.time_us,
            invariant,
            detail,
        }
    }
}

impl Simulation {
    /// Builds the cluster described by `cfg`.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Simulation {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let total = cfg.nodes + cfg.spares;
        let ids: Vec<NodeId> = (1..=total as u64).map(NodeId).collect();
        let voters = ConfState::with_voters(ids[..cfg.nodes].iter().copied());
        let mut nodes = BTreeMap::new();
        let drift = i64::from(cfg.faults.drift_ppm);
        for id in &ids {
            let ppm = if drift == 0 { 0 } else { rng.i64(-drift..=drift) };
            let tick_us = TICK_US.saturating_add_signed(TICK_US.cast_signed() * ppm / 1_000_000);
            let policy = AckPolicy { mode: ReplicationMode::SemiSync, min_sync_replicas: 1 };
            let storage = MemStorage::bootstrap(voters.clone(), policy);
            nodes.insert(
                *id,
                SimNode {
                    id: *id,
                    storage,
                    raw: None,
                    tick_us,
                    kv: BTreeMap::new(),
                    applied: 0,
                    writes: BTreeMap::new(),
                    reads: HashMap::new(),
                    confirmed: Vec::new(),
                    leader_mark: None,
                    role: Role::Follower,
                    term: 0,
                    paused_until: 0,
                    missed_ticks: 0,
                },
            );
        }
        let mut sim = Simulation {
            cfg,
            rng,
            now: 0,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            nodes,
            ids: ids.clone(),
            blocked: HashSet::new(),
            healed: false,
            history: Vec::new(),
            committed: BTreeMap::new(),
            committed_by: BTreeMap::new(),
            leaders: BTreeMap::new(),
            durable_acks: BTreeMap::new(),
            next_value: 1,
            report: SimReport::default(),
            wire_failure: None,
        };
        for id in ids {
            sim.start_node(id);
        }
        sim.schedule(TICK_US, Event::Client);
        let first_fault = sim.fault_delay();
        sim.schedule(first_fault, Event::Fault);
        sim
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + after, seq: self.seq, event }));
    }

    fn fault_delay(&mut self) -> u64 {
        let mean = self.cfg.faults.fault_every_ticks.max(1) * TICK_US;
        self.rng.u64(mean / 2..=mean * 3 / 2)
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.at().violation(invariant, detail)
    }

    fn at(&self) -> At {
        At { seed: self.cfg.seed, nodes: self.cfg.nodes, step: self.steps, time_us: self.now }
    }

    fn start_node(&mut self, id: NodeId) {
        let signer = crate::network::signer(id, &self.ids);
        let node = self.nodes.get_mut(&id).expect("known node");
        // A restarted process is not paused.
        node.paused_until = 0;
        node.missed_ticks = 0;
        let mut config = Config::new(id, "sim");
        config.seed = self.cfg.seed.wrapping_mul(31).wrapping_add(id.0).wrapping_add(self.report.crashes);
        config.max_clock_drift_ppm = self.cfg.faults.drift_ppm;
        config.max_msg_bytes = 4096;
        config.max_inflight_msgs = 8;
        config.max_inflight_bytes = 64 * 1024;
        if self.cfg.lease_reads {
            config.read_only = ReadOnlyOption::LeaseBased;
        }
        // The state machine is volatile: rebuild it from the snapshot; the log replays.
        let snapshot = node.storage.rl().snapshot().clone();
        node.kv = decode_kv(&snapshot.data);
        node.applied = snapshot.meta.lsn;
        config.applied = snapshot.meta.lsn;
        node.writes.clear();
        node.reads.clear();
        node.confirmed.clear();
        node.leader_mark = None;
        node.role = Role::Follower;
        let clock_node = id;
        let raw = RawNode::new(config, node.storage.clone(), Box::new(signer), move || {
            Timestamp::from_parts(1, 0, clock_node).unwrap_or(Timestamp::ZERO)
        })
        .expect("a valid simulated node");
        node.raw = Some(raw);
        let tick = node.tick_us;
        let phase = self.rng.u64(0..tick);
        self.schedule(phase, Event::Tick(id));
    }

    /// Runs to the end; the report, or the first violation.
    pub fn run(mut self) -> Result<SimReport, Violation> {
        let heal_at = self.cfg.ticks * TICK_US;
        let end = heal_at + self.cfg.liveness_ticks * TICK_US;
        let mut liveness_probe: Option<(NodeId, Lsn, u64)> = None;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > end {
                break;
            }
            self.now = next.at;
            self.steps += 1;
            if !self.healed && self.now >= heal_at {
                self.heal();
            }
            self.handle(next.event)?;
            if let Some(detail) = self.wire_failure.take() {
                return Err(self.violation("wire round trip", detail));
            }
            self.check_election_safety()?;
            if self.steps.is_multiple_of(LOG_MATCHING_EVERY) {
                self.check_log_matching()?;
            }
            if self.healed && liveness_probe.is_none() {
                liveness_probe = self.try_liveness_probe();
            }
            if let Some((leader, lsn, _)) = liveness_probe
                && self.nodes[&leader].applied >= lsn
                && self.converged()
            {
                return self.finish();
            }
        }
        let detail = match liveness_probe {
            None => {
                format!("no leader accepted a proposal within {} ticks of healing", self.cfg.liveness_ticks)
            }
            Some((leader, lsn, _)) => format!(
                "the proposal at LSN {lsn} on leader {leader} did not commit and replicate within {} ticks of healing (applied: {:?}; leader sees {:?})",
                self.cfg.liveness_ticks,
                self.nodes.values().map(|n| (n.id, n.applied)).collect::<Vec<_>>(),
                self.nodes[&leader].raw.as_ref().map(RawNode::status),
            ),
        };
        Err(self.violation("liveness", detail))
    }

    /// Log matching (Raft §5.3): if two logs hold an entry with the same LSN and term, they
    /// are identical up to it. Checked on what each node persisted.
    fn check_log_matching(&self) -> Check {
        let logs: Vec<(NodeId, Fingerprints)> = self
            .nodes
            .values()
            .map(|n| (n.id, n.storage.rl().entries().iter().map(|e| (e.lsn, (e.term, digest(e)))).collect()))
            .collect();
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[i + 1..] {
                // The highest LSN both hold with the same term.
                let Some(agree) = log_a
                    .iter()
                    .rev()
                    .find(|(lsn, (term, _))| log_b.get(lsn).is_some_and(|(t, _)| t == term))
                else {
                    continue;
                };
                let agree = *agree.0;
                for (lsn, entry) in log_a.range(..=agree) {
                    if let Some(other) = log_b.get(lsn)
                        && other != entry
                    {
                        let detail = format!(
                            "nodes {a} and {b} agree on LSN {agree} but differ at LSN {lsn}: {entry:?} vs {other:?}"
                        );
                        return Err(self.violation("log matching", detail));
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SimReport, Violation> {
        self.check_log_matching()?;
        // Every SYNC/SEMI_SYNC acknowledgement must be in the final committed log.
        for (lsn, (term, hash)) in &self.durable_acks {
            match self.committed.get(lsn) {
                Some(found) if found == &(*term, *hash) => {}
                other => {
                    return Err(self.violation(
                        "acknowledged writes are durable",
                        format!("write acknowledged at LSN {lsn} term {term} is not what committed there: {other:?}"),
                    ));
                }
            }
        }
        if let Err(err) = linearizability::check(&self.history) {
            return Err(self.violation("linearizability", err.to_string()));
        }
        self.report.steps = self.steps;
        self.report.committed_lsn = self.committed.keys().next_back().copied().unwrap_or(0);
        Ok(self.report)
    }

    fn heal(&mut self) {
        self.healed = true;
        self.blocked.clear();
        let crashed: Vec<NodeId> = self.nodes.values().filter(|n| n.raw.is_none()).map(|n| n.id).collect();
        for id in crashed {
            self.start_node(id);
        }
    }

    fn members(&self) -> BTreeSet<NodeId> {
        let leader = self.nodes.values().find(|n| n.raw.is_some() && n.role == Role::Leader);
        match leader.and_then(|n| n.raw.as_ref()) {
            Some(raw) => raw.status().conf_state.members(),
            None => self.nodes.keys().copied().collect(),
        }
    }

    fn converged(&self) -> bool {
        let Some(leader) = self.nodes.values().find(|n| n.role == Role::Leader && n.raw.is_some()) else {
            return false;
        };
        let members = self.members();
        let target = leader.applied;
        members.iter().all(|id| self.nodes[id].applied >= target)
    }

    fn try_liveness_probe(&mut self) -> Option<(NodeId, Lsn, u64)> {
        let id = self.leader()?;
        let raw = self.nodes.get_mut(&id)?.raw.as_mut()?;
        let lsn = raw.propose(Bytes::from_static(b"liveness")).ok()?;
        let now = self.now;
        self.drain(id).ok()?;
        Some((id, lsn, now))
    }

    fn handle(&mut self, event: Event) -> Check {
        match event {
            Event::Tick(id) => {
                let now = self.now;
                let count = self.cfg.faults.count_paused_time;
                let node = self.nodes.get_mut(&id).expect("known node");
                if now < node.paused_until {
                    node.missed_ticks += 1;
                    let tick = node.tick_us;
                    self.schedule(tick, Event::Tick(id));
                    return Ok(());
                }
                node.resume(now, count);
                let Some(raw) = node.raw.as_mut() else { return Ok(()) };
                let tick = node.tick_us;
                raw.tick().map_err(|e| self.violation("no errors", format!("node {id} tick: {e}")))?;
                self.schedule(tick, Event::Tick(id));
                self.drain(id)
            }
            Event::Deliver(message) => {
                let to = message.to;
                let now = self.now;
                let count = self.cfg.faults.count_paused_time;
                let node = self.nodes.get_mut(&to).expect("known node");
                if now < node.paused_until {
                    // Held in the socket until the process runs again.
                    let wait = node.paused_until - now;
                    self.schedule(wait, Event::Deliver(message));
                    return Ok(());
                }
                node.resume(now, count);
                let Some(raw) = node.raw.as_mut() else { return Ok(()) };
                let name = message.body.name();
                raw.step(message)
                    .map_err(|e| self.violation("no errors", format!("node {to} step {name}: {e}")))?;
                self.drain(to)
            }
            Event::Client => {
                self.client_op()?;
                let gap = self.rng.u64(TICK_US / 4..=TICK_US * 2);
                self.schedule(gap, Event::Client);
                Ok(())
            }
            Event::Fault => {
                if !self.healed {
                    self.fault();
                    let next = self.fault_delay();
                    self.schedule(next, Event::Fault);
                }
                Ok(())
            }
            Event::Restart(id) => {
                if self.nodes[&id].raw.is_none() {
                    self.start_node(id);
                }
                Ok(())
            }
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            // Every message crosses the wire format, as it would between processes: what
            // arrives is what decoding the encoded bytes gives.
            let bytes = Bytes::from(wire::encode(&message));
            let message = match wire::decode(&bytes, &WireLimits::default()) {
                Ok(decoded) if decoded == message => decoded,
                other => {
                    self.wire_failure.get_or_insert_with(|| format!("{message:?} came back as {other:?}"));
                    continue;
                }
            };
            if self.blocked.contains(&(message.from, message.to)) {
                continue;
            }
            if !self.healed && self.rng.f64() < self.cfg.faults.drop {
                continue;
            }
            let (lo, hi) = self.cfg.faults.delay_us;
            if !self.healed && self.rng.f64() < self.cfg.faults.duplicate {
                let delay = self.rng.u64(lo..=hi);
                self.schedule(delay, Event::Deliver(message.clone()));
            }
            let delay = self.rng.u64(lo..=hi);
            self.schedule(delay, Event::Deliver(message));
        }
    }

    /// Processes every `Ready` of `id`, checking invariants as it goes.
    fn drain(&mut self, id: NodeId) -> Check {
        let at = self.at();
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let Some(raw) = node.raw.as_mut() else { return Ok(()) };
            if !raw.has_ready() {
                return Ok(());
            }
            let ready =
                raw.ready().map_err(|e| at.violation("no errors", format!("node {id} ready: {e}")))?;
            let status_before = raw.status();
            if let Some(soft) = ready.soft_state {
                node.role = soft.role;
            }
            node.term = status_before.hard_state.term;

            // Leader append-only (Raft §5.3): a leader never overwrites its own entries.
            if node.role == Role::Leader {
                if let Some(first) = ready.entries.first()
                    && let Some((term, last)) = node.leader_mark
                    && term == node.term
                    && first.lsn <= last
                {
                    let detail =
                        format!("leader {id} of term {term} rewrote LSN {} (had up to {last})", first.lsn);
                    return Err(self.violation("leader append-only", detail));
                }
                if let Some(last) = ready.entries.last() {
                    node.leader_mark = Some((node.term, last.lsn));
                }
            }

            // Persist.
            {
                let mut store = node.storage.wl();
                if let Some(snapshot) = &ready.snapshot {
                    store.apply_snapshot(snapshot.clone());
                }
                store
                    .append(&ready.entries)
                    .map_err(|e| at.violation("no errors", format!("node {id} append: {e}")))?;
                if let Some(hard) = ready.hard_state {
                    store.set_hard_state(hard);
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                node.kv = decode_kv(&snapshot.data);
                node.applied = snapshot.meta.lsn;
                self.report.snapshots_installed += 1;
            }

            if ready.soft_state.is_some_and(|s| s.role == Role::Leader) {
                self.check_leader_completeness(id)?;
            }
            let node_term = self.nodes[&id].term;
            self.send(ready.messages);
            self.send(ready.persisted_messages);

            // Apply.
            for entry in &ready.committed_entries {
                self.apply(id, entry)?;
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            for read in ready.read_states {
                let op_id = u64::from_le_bytes(read.ctx[..8].try_into().expect("8-byte ctx"));
                if let Some(pending) = node.reads.remove(&op_id) {
                    node.confirmed.push((read.lsn, pending));
                }
                if read.lease {
                    // Lease safety: while a lease is valid no newer leader may exist, so
                    // no lease read may come from a term older than the newest leader's.
                    self.report.lease_reads += 1;
                    let newest = self.leaders.keys().next_back().copied().unwrap_or(0);
                    if node_term < newest {
                        let detail = format!(
                            "node {id} served a lease read in term {node_term} after node {} was elected in term {newest}",
                            self.leaders[&newest]
                        );
                        return Err(self.violation("lease safety", detail));
                    }
                }
            }
            if let Some(ack) = ready.acknowledged {
                let policy = status_before.policy;
                self.acknowledge(id, ack.term, ack.lsn, policy);
            }
            if ready.conf_state.is_some() {
                self.report.config_changes += 1;
            }
            self.complete_reads(id);
            let node = self.nodes.get_mut(&id).expect("known node");
            let raw = node.raw.as_mut().expect("alive");
            raw.advance().map_err(|e| at.violation("no errors", format!("node {id} advance: {e}")))?;
        }
    }

    fn apply(&mut self, id: NodeId, entry: &Entry) -> Check {
        // State machine safety (Raft §5.4.3): no two nodes apply different entries at one LSN.
        let hash = digest(entry);
        match self.committed.get(&entry.lsn) {
            Some(&(term, seen)) if (term, seen) != (entry.term, hash) => {
                let detail = format!(
                    "node {id} applied (term {}, digest {hash:x}) at LSN {} where another applied (term {term}, digest {seen:x})",
                    entry.term, entry.lsn
                );
                return Err(self.violation("state machine safety", detail));
            }
            Some(_) => {}
            None => {
                self.committed.insert(entry.lsn, (entry.term, hash));
                self.committed_by.insert(entry.lsn, self.nodes[&id].term);
            }
        }
        if let Some(&(term, seen)) = self.durable_acks.get(&entry.lsn)
            && (term, seen) != (entry.term, hash)
        {
            let detail = format!(
                "LSN {} was acknowledged as term {term} but term {} committed",
                entry.lsn, entry.term
            );
            return Err(self.violation("acknowledged writes are durable", detail));
        }
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.applied = entry.lsn;
        if entry.kind == EntryKind::DATA
            && let Some((op, key, value)) = decode_write(&entry.payload)
        {
            node.kv.insert(key, value);
            if let Some(Pending::Write { op: mine, term, acked, applied, .. }) =
                node.writes.get_mut(&entry.lsn)
            {
                if *mine == op && *term == entry.term {
                    *applied = true;
                    if *acked {
                        self.history[op].ret = Some(now);
                        node.writes.remove(&entry.lsn);
                        self.report.writes_completed += 1;
                    }
                } else {
                    node.writes.remove(&entry.lsn);
                }
            }
        }
        Ok(())
    }

    fn acknowledge(&mut self, id: NodeId, term: u64, lsn: Lsn, policy: AckPolicy) {
        let now = self.now;
        let durable_mode = policy.mode != ReplicationMode::Async;
        let node = self.nodes.get_mut(&id).expect("known node");
        let due: Vec<Lsn> = node.writes.range(..=lsn).map(|(l, _)| *l).collect();
        let mut newly_durable = Vec::new();
        for at in due {
            let Some(Pending::Write { op, term: t, digest, acked, applied }) = node.writes.get_mut(&at)
            else {
                continue;
            };
            if *t != term || *acked {
                continue;
            }
            *acked = true;
            if durable_mode {
                newly_durable.push((at, *digest));
            }
            if *applied {
                self.history[*op].ret = Some(now);
                node.writes.remove(&at);
                self.report.writes_completed += 1;
            }
        }
        for (at, digest) in newly_durable {
            self.durable_acks.insert(at, (term, digest));
            self.report.durable_acks += 1;
        }
    }

    fn complete_reads(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("known node");
        let applied = node.applied;
        let mut done = Vec::new();
        node.confirmed.retain(|(lsn, pending)| {
            if *lsn <= applied {
                if let Pending::Read { op, key } = pending {
                    done.push((*op, node.kv.get(key).copied()));
                }
                false
            } else {
                true
            }
        });
        for (op, value) in done {
            self.history[op].kind = OpKind::Read(value);
            self.history[op].ret = Some(now);
            self.report.reads_completed += 1;
        }
    }

    fn check_leader_completeness(&self, id: NodeId) -> Check {
        // Leader completeness (Raft §5.4): an entry committed in a term holds in the log of
        // every leader of a later term. A candidate can win its term late (a process pause
        // held the votes it was granted) after a later term has committed entries; those it
        // need not hold. The term recorded for an entry is that of the node that first
        // applied it, at least the term it was committed in, so this check never asks for
        // more than Raft promises.
        let node = &self.nodes[&id];
        let first = node.storage.first_lsn().unwrap_or(1);
        for (lsn, (term, _)) in self.committed.range(first..) {
            if self.committed_by.get(lsn).is_some_and(|by| *by >= node.term) {
                continue;
            }
            match node.storage.term(*lsn) {
                Ok(t) if t == *term => {}
                other => {
                    let detail = format!(
                        "leader {id} of term {} lacks committed LSN {lsn} (term {term}); its log has {other:?}",
                        node.term
                    );
                    return Err(self.violation("leader completeness", detail));
                }
            }
        }
        Ok(())
    }

    /// Election safety (Raft §5.2): at most one leader per term.
    fn check_election_safety(&mut self) -> Check {
        for node in self.nodes.values() {
            if node.raw.is_none() || node.role != Role::Leader {
                continue;
            }
            match self.leaders.get(&node.term) {
                Some(other) if *other != node.id => {
                    let detail = format!("nodes {other} and {} both led term {}", node.id, node.term);
                    return Err(self.violation("election safety", detail));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(node.term, node.id);
                    self.report.elections += 1;
                }
            }
        }
        Ok(())
    }

    /// The newest leader a client could reach (running, not paused).
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.raw.is_some() && n.role == Role::Leader && n.paused_until == 0)
            .max_by_key(|n| n.term)
            .map(|n| n.id)
    }

    fn client_op(&mut self) -> Check {
        let key = self.rng.u64(0..4);
        let now = self.now;
        let count = self.cfg.faults.count_paused_time;
        // A paused process takes no requests; one whose pause is over resumes first.
        let alive: Vec<NodeId> = self
            .nodes
            .values_mut()
            .filter(|n| n.raw.is_some() && now >= n.paused_until)
            .map(|n| {
                n.resume(now, count);
                n.id
            })
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        let write = self.rng.f64() < 0.6;
        let target = match self.leader() {
            Some(leader) if (write || self.rng.bool()) && alive.contains(&leader) => leader,
            _ => alive[self.rng.usize(0..alive.len())],
        };
        let op = self.history.len();
        let now = self.now;
        if write {
            let value = self.next_value;
            self.next_value += 1;
            let node = self.nodes.get_mut(&target).expect("alive");
            let raw = node.raw.as_mut().expect("alive");
            let term = raw.status().hard_state.term;
            let payload = encode_write(op, key, value);
            let digest = digest_of(EntryKind::DATA, &payload);
            if let Ok(lsn) = raw.propose(payload) {
                self.history.push(Op { key, kind: OpKind::Write(value), invoke: now, ret: None });
                node.writes.insert(lsn, Pending::Write { op, term, digest, acked: false, applied: false });
            }
        } else {
            let node = self.nodes.get_mut(&target).expect("alive");
            let raw = node.raw.as_mut().expect("alive");
            if raw.read_index(Bytes::copy_from_slice(&(op as u64).to_le_bytes())).is_ok() {
                self.history.push(Op { key, kind: OpKind::Read(None), invoke: now, ret: None });
                node.reads.insert(op as u64, Pending::Read { op, key });
            }
        }
        if self.cfg.reconfigure && self.rng.f64() < 0.02 {
            self.reconfigure();
        }
        if self.rng.f64() < 0.01 {
            let victim = alive[self.rng.usize(0..alive.len())];
            self.compact(victim);
        }
        self.drain(target)
    }

    fn reconfigure(&mut self) {
        let Some(leader) = self.leader() else { return };
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let choice = self.rng.u8(0..5);
        let pick = self.rng.u64(..);
        let raw = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()).expect("leader is alive");
        let conf = raw.status().conf_state;
        if conf.is_joint() {
            return;
        }
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|id| !conf.members().contains(id)).collect();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let voters: Vec<NodeId> = conf.voters.iter().copied().filter(|id| *id != leader).collect();
        let result = match choice {
            0 if !outsiders.is_empty() => raw.change_membership(vec![MemberChange::AddLearner(outsiders[0])]),
            1 if !learners.is_empty() => raw.change_membership(vec![MemberChange::AddVoter(learners[0])]),
            2 if conf.voters.len() > self.cfg.nodes && !voters.is_empty() => {
                raw.change_membership(vec![MemberChange::AddLearner(voters[pick as usize % voters.len()])])
            }
            3 if !learners.is_empty() => raw.change_membership(vec![MemberChange::Remove(learners[0])]),
            _ => {
                let mode = [ReplicationMode::Sync, ReplicationMode::SemiSync, ReplicationMode::Async]
                    [pick as usize % 3];
                let followers = conf.voters.len().saturating_sub(1) as u32;
                let min_sync_replicas = if mode == ReplicationMode::Async {
                    0
                } else {
                    1 + (pick >> 8) as u32 % followers.max(1)
                };
                raw.set_policy(AckPolicy { mode, min_sync_replicas })
            }
        };
        let _ = result;
    }

    fn fault(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let n = ids.len();
        if self.cfg.faults.pauses && self.rng.f64() < 0.25 {
            // Pause a process (the leader half the time) for one to four election timeouts.
            let victim =
                if self.rng.bool() { self.leader() } else { None }.unwrap_or(ids[self.rng.usize(0..n)]);
            let length = self.rng.u64(TICK_US * 10..TICK_US * 40);
            let node = self.nodes.get_mut(&victim).expect("known node");
            if node.raw.is_some() && node.paused_until <= self.now {
                node.paused_until = self.now + length;
                self.report.pauses += 1;
            }
            return;
        }
        match self.rng.u8(0..8) {
            0 | 1 => {
                // Heal everything and restart the crashed.
                self.blocked.clear();
                let crashed: Vec<NodeId> =
                    self.nodes.values().filter(|n| n.raw.is_none()).map(|n| n.id).collect();
                for id in crashed {
                    let delay = self.rng.u64(0..TICK_US * 20);
                    self.schedule(delay, Event::Restart(id));
                }
            }
            2 => {
                // Symmetric split into two groups.
                self.blocked.clear();
                let cut = self.rng.usize(1..n);
                let mut shuffled = ids.clone();
                self.rng.shuffle(&mut shuffled);
                let (a, b) = shuffled.split_at(cut);
                for x in a {
                    for y in b {
                        self.blocked.insert((*x, *y));
                        self.blocked.insert((*y, *x));
                    }
                }
                self.report.partitions += 1;
            }
            3 => {
                // Isolate the leader.
                if let Some(leader) = self.leader() {
                    self.blocked.clear();
                    for other in &ids {
                        if *other != leader {
                            self.blocked.insert((leader, *other));
                            self.blocked.insert((*other, leader));
                        }
                    }
                    self.report.partitions += 1;
                }
            }
            4 => {
                // Asymmetric: one node can send but not receive, or the reverse.
                let victim = ids[self.rng.usize(0..n)];
                let outbound = self.rng.bool();
                for other in &ids {
                    if *other != victim {
                        if outbound {
                            self.blocked.insert((victim, *other));
                        } else {
                            self.blocked.insert((*other, victim));
                        }
                    }
                }
                self.report.partitions += 1;
            }
            5 => {
                // Bridge: two halves that only one node connects.
                self.blocked.clear();
                let mut shuffled = ids.clone();
                self.rng.shuffle(&mut shuffled);
                // shuffled[0] is the bridge: it stays connected to both halves.
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                for x in a {
                    for y in b {
                        self.blocked.insert((*x, *y));
                        self.blocked.insert((*y, *x));
                    }
                }
                self.report.partitions += 1;
            }
            _ => {
                // Crash a node (sometimes mid-Ready), keeping a majority of the starting
                // voters alive so the run makes progress.
                let down = self.nodes.values().filter(|n| n.raw.is_none()).count();
                if down < (self.cfg.nodes - 1) / 2 {
                    let victim = if self.rng.bool() { self.leader() } else { None }
                        .unwrap_or(ids[self.rng.usize(0..n)]);
                    self.crash(victim);
                    let delay = self.rng.u64(TICK_US * 5..TICK_US * 60);
                    self.schedule(delay, Event::Restart(victim));
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let mid_ready = self.rng.bool();
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(mut raw) = node.raw.take() else { return };
        self.report.crashes += 1;
        if mid_ready && raw.has_ready() {
            // Killed between sending and fsyncing: the immediate messages are out, a
            // prefix of the entries reached the disk, the hard state did not.
            if let Ok(ready) = raw.ready() {
                let keep = self.rng.usize(0..=ready.entries.len());
                let _ = node.storage.wl().append(&ready.entries[..keep]);
                self.send(ready.messages);
            }
        }
    }

    /// Compacts `id`'s log at its applied LSN (when it has applied everything it knows to be
    /// committed), so followers far behind need a snapshot.
    fn compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raw) = node.raw.as_ref() else { return };
        let status = raw.status();
        if node.applied != status.hard_state.commit || node.applied == 0 {
            return;
        }
        let Ok(term) = node.storage.term(node.applied) else { return };
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                lsn: node.applied,
                term,
                conf_state: status.conf_state,
                policy: status.policy,
            },
            data: encode_kv(&node.kv),
        };
        let _ = node.storage.wl().compact(snapshot);
    }
}

/// Runs seed `seed` with `nodes` voters and the default faults.
pub fn run_seed(seed: u64, nodes: usize) -> Result<SimReport, Violation> {
    Simulation::new(SimConfig::new(seed, nodes)).run()
}
