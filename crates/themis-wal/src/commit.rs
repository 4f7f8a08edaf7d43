//! Group commit: many writers enqueue encoded records; one flusher writes everything queued
//! with one `write` and one `fdatasync`, then wakes every writer the sync covered.
//!
//! The coordinator knows nothing of files: the flusher drives a [`Sink`], which the WAL
//! implements with segment files and the loom tests with a model of durable storage.

use std::task::{Poll, Waker};

use crate::entry::{Lsn, LsnRange, NewEntry};
use crate::error::WalError;
use crate::record::{self, CheckedRecords};
use crate::sync::{Condvar, Mutex, MutexGuard, lock, wait, wait_timeout};

/// The largest group buffer kept for reuse; a larger one (a burst) is freed.
const SPARE_MAX_BYTES: usize = 8 << 20;

/// Where the flusher puts bytes.
pub(crate) trait Sink {
    /// Writes `bytes`, which hold whole records; the first has LSN `first`, and `offsets`
    /// gives each record's start within `bytes`.
    fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError>;
    /// Makes everything written durable.
    fn sync(&mut self) -> Result<(), WalError>;
}

/// What a writer hands the coordinator: entries to encode, or records already encoded
/// and checked, appended as they are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Batch<'a> {
    Entries(&'a [NewEntry]),
    Checked(&'a CheckedRecords),
}

/// Records taken from the queue to be written as one group, by the flusher or by the
/// blocking writer whose append completed the group.
#[derive(Debug)]
pub(crate) struct Group {
    first: Lsn,
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// Appends (calls) it holds.
    batches: u32,
    /// The log was closing when the group was taken: sync it whatever the rule says.
    closing: bool,
    /// Writers that waited for room, to wake once the lock is released.
    room: Vec<Waker>,
}

/// A batch queued: its LSNs, and the group to flush when the writer leads it.
#[derive(Debug)]
pub(crate) struct Enqueued {
    pub(crate) range: LsnRange,
    pub(crate) group: Option<Group>,
}

/// What a writer waits for before it is told "done".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOn {
    /// After the `fdatasync` that covers the records.
    Durable,
    /// After the `write` (the fsync policy syncs later, or never).
    Written,
}

/// Progress of the log, as published to waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Every LSN up to this one has been handed to the operating system.
    pub written: Lsn,
    /// Every LSN up to this one is durable (fdatasync returned).
    pub durable: Lsn,
}

#[derive(Debug)]
pub(crate) struct State {
    /// The LSN the next enqueued record gets.
    next_lsn: Lsn,
    /// Encoded records waiting for the flusher.
    queue: Vec<u8>,
    /// Start of each queued record within `queue`.
    offsets: Vec<u32>,
    /// The previous group's buffers, emptied, for the next group to fill: a fresh `Vec`
    /// per group page-faults its way up to the group's size under the lock every time.
    spare: (Vec<u8>, Vec<u32>),
    /// LSN of the first queued record.
    queue_first: Lsn,
    progress: Progress,
    /// Whether the flusher holds a batch it has not published yet.
    flushing: bool,
    /// Appends (calls, not records) in the queue whose callers wait for the
    /// acknowledgement.
    batches: u32,
    /// Appends the next group waits for: those the last published flush released (each
    /// writer comes back with its next append) plus those that queued while it ran. With
    /// only the first term, a group that once split (5 of 8 writers, then 3) stayed split:
    /// the next group was complete at 5 appends, whoever they were from.
    expect_batches: u32,
    /// Written but not yet synced (interval policy).
    dirty: bool,
    /// Set when a write or sync failed, or the log was closed: no further writes.
    closed: Option<String>,
    /// Async writers waiting for an acknowledgement, in registration order (which is LSN
    /// order but for re-polls): each is woken once, by the flush that reaches its LSN or by
    /// the log closing. A condvar would wake every waiter on every flush.
    ack_waiters: Vec<AckWaiter>,
    /// Async writers waiting for room in a full queue; woken when the flusher takes it.
    room_waiters: Vec<Waker>,
}

#[derive(Debug)]
struct AckWaiter {
    lsn: Lsn,
    ack: AckOn,
    waker: Waker,
}

impl State {
    /// Whether the queue is a whole group: every waiting writer the last flush expects is
    /// back, or the queue is half full (`half` is half of `max_queue_bytes`).
    fn group_complete(&self, half: usize) -> bool {
        self.batches >= self.expect_batches || self.queue.len() >= half
    }

    /// Takes everything queued as one group to flush, under the lock; the caller flushes
    /// it with [`Coordinator::finish_group`] after releasing the lock.
    fn take_group(&mut self) -> Group {
        let batches = std::mem::take(&mut self.batches);
        let first = self.queue_first;
        let (spare_bytes, spare_offsets) = std::mem::take(&mut self.spare);
        let bytes = std::mem::replace(&mut self.queue, spare_bytes);
        let offsets = std::mem::replace(&mut self.offsets, spare_offsets);
        self.flushing = true;
        Group {
            first,
            bytes,
            offsets,
            batches,
            closing: self.closed.is_some(),
            // The queue is empty again: writers waiting for room may go on.
            room: std::mem::take(&mut self.room_waiters),
        }
    }
}

/// What a blocking writer reads, without the lock, while it spins for its
/// acknowledgement: the progress as last stored under the lock, and the recent sync time.
/// Hints only: a writer that sees its LSN reached polls the coordinator, which decides.
#[derive(Debug, Default)]
struct AckHints {
    written: std::sync::atomic::AtomicU64,
    durable: std::sync::atomic::AtomicU64,
    /// Moving average of `fdatasync` durations, in ns (one eighth per sync); 0 before the
    /// first.
    sync_ns: std::sync::atomic::AtomicU64,
}

impl AckHints {
    fn store(&self, progress: Progress) {
        use std::sync::atomic::Ordering::Release;
        self.written.store(progress.written, Release);
        self.durable.store(progress.durable, Release);
    }

    fn record_sync(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let average = self.sync_ns.load(Relaxed);
        let next = if average == 0 { took } else { average - average / 8 + took / 8 };
        self.sync_ns.store(next, Relaxed);
    }
}

impl Progress {
    fn reached(&self, ack: AckOn) -> Lsn {
        match ack {
            AckOn::Durable => self.durable,
            AckOn::Written => self.written,
        }
    }
}

/// The shared state of writers and the flusher.
#[derive(Debug)]
pub(crate) struct Coordinator {
    state: Mutex<State>,
    /// Signalled when the queue gains records or the log closes (the flusher waits on it).
    work: Condvar,
    /// Signalled when a flush is published (`quiesce` waits on it; writers wait on wakers).
    done: Condvar,
    max_queue_bytes: usize,
    max_record_bytes: usize,
    /// How long the flusher may wait for the writers of its previous batch to come back
    /// (PostgreSQL's `commit_delay`, with `commit_siblings` learned from the last flush).
    commit_delay: std::time::Duration,
    /// Hints for writers that spin before they park (see [`AckHints`]).
    hints: AckHints,
    /// Whether a blocking writer that completes a group flushes it itself (group commit
    /// with a leader, as RocksDB's write groups): it is awake already, where waking the
    /// flusher is a thread hand-off on every group. Only with a sync after every write.
    writers_lead: bool,
}

impl Coordinator {
    pub(crate) fn new(
        next_lsn: Lsn,
        max_queue_bytes: usize,
        max_record_bytes: usize,
        commit_delay: std::time::Duration,
        writers_lead: bool,
    ) -> Coordinator {
        let last = next_lsn - 1;
        Coordinator {
            state: Mutex::new(State {
                next_lsn,
                queue: Vec::new(),
                offsets: Vec::new(),
                spare: (Vec::new(), Vec::new()),
                queue_first: next_lsn,
                progress: Progress { written: last, durable: last },
                flushing: false,
                batches: 0,
                expect_batches: 0,
                dirty: false,
                closed: None,
                ack_waiters: Vec::new(),
                room_waiters: Vec::new(),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            max_queue_bytes,
            max_record_bytes,
            commit_delay,
            hints: AckHints::default(),
            writers_lead,
        }
    }

    /// Checks sizes before anything is queued, so a rejected batch leaves no trace.
    fn encoded_size(&self, batch: Batch<'_>) -> Result<usize, WalError> {
        let too_large = |size| WalError::RecordTooLarge { size, max: self.max_record_bytes };
        match batch {
            Batch::Entries(entries) => {
                let mut total = 0usize;
                for entry in entries {
                    let size = record::encoded_len(entry.payload.len());
                    if size > self.max_record_bytes {
                        return Err(too_large(size));
                    }
                    total += size;
                }
                Ok(total)
            }
            Batch::Checked(records) => {
                let total = records.bytes().len();
                let offsets = records.offsets();
                for (i, &start) in offsets.iter().enumerate() {
                    let size = record::end_of(offsets, i, total) - start as usize;
                    if size > self.max_record_bytes {
                        return Err(too_large(size));
                    }
                }
                Ok(total)
            }
        }
    }

    fn try_enqueue_locked(
        &self,
        state: &mut State,
        batch: Batch<'_>,
        expect_first: Option<Lsn>,
        waits: bool,
        lead: bool,
    ) -> Result<Option<Enqueued>, WalError> {
        if matches!(batch, Batch::Entries([])) {
            return Err(WalError::Config("an append needs at least one entry".into()));
        }
        // Encoded records carry their LSNs: they go exactly where they say.
        let expect_first = match batch {
            Batch::Entries(_) => expect_first,
            Batch::Checked(records) => Some(records.range().first),
        };
        let size = self.encoded_size(batch)?;
        if let Some(reason) = &state.closed {
            return Err(WalError::Closed(reason.clone()));
        }
        if let Some(expected) = expect_first
            && expected != state.next_lsn
        {
            return Err(WalError::LsnMismatch { expected, next: state.next_lsn });
        }
        if size > self.max_queue_bytes {
            return Err(WalError::BatchTooLarge { size, max: self.max_queue_bytes });
        }
        if state.queue.len() + size > self.max_queue_bytes {
            return Ok(None);
        }
        let was_empty = state.queue.is_empty();
        if was_empty {
            state.queue_first = state.next_lsn;
        }
        let half = self.max_queue_bytes / 2;
        let crossed_half = state.queue.len() < half && state.queue.len() + size >= half;
        let first = state.next_lsn;
        match batch {
            Batch::Entries(entries) => {
                for entry in entries {
                    state.offsets.push(state.queue.len() as u32);
                    record::encode(&mut state.queue, state.next_lsn, entry);
                    state.next_lsn += 1;
                }
            }
            Batch::Checked(records) => {
                // The queue holds at most `max_queue_bytes` (a u32-sized bound), so the
                // offsets fit.
                let base = state.queue.len() as u32;
                state.offsets.extend(records.offsets().iter().map(|&o| base + o));
                state.queue.extend_from_slice(records.bytes());
                state.next_lsn += records.len() as u64;
            }
        }
        // A caller that waits for the acknowledgement comes back with its next append once
        // it has it; one that only submits (a pipelining receiver) is not waited for.
        if waits {
            state.batches += 1;
        }
        let range = LsnRange { first, last: state.next_lsn - 1 };
        if lead
            && self.writers_lead
            && state.group_complete(half)
            && !state.flushing
            && state.closed.is_none()
        {
            // This writer completes the group and no flush is running: it flushes.
            return Ok(Some(Enqueued { range, group: Some(state.take_group()) }));
        }
        // Wake the flusher only when one of its waits can end: it waits for a non-empty
        // queue, then (under commit_delay) for the writers it expects to be back or the
        // queue to be half full. Waking it for every append made 64 writers cost 64
        // flusher wake-ups per sync.
        if was_empty || (waits && state.batches == state.expect_batches) || crossed_half {
            self.work.notify_one();
        }
        Ok(Some(Enqueued { range, group: None }))
    }

    /// Enqueues `entries`, all or nothing (`Ready` with their LSNs; with `expect_first`,
    /// an error unless the batch would start there), or registers `waker` for room when
    /// the queue is full (`Pending`). Blocking callers drive this with `sync::block_on`. With `ack`,
    /// the same lock also registers `waker` for the acknowledgement of the last entry under
    /// it, so an async append costs one lock to queue and one to learn it is done.
    ///
    /// With `lead`, a writer whose batch completes the group the flusher waits for, while
    /// no flush runs, gets the group back in [`Enqueued::group`] and must flush it with
    /// [`finish_group`](Self::finish_group); it is not registered for the acknowledgement,
    /// which that flush decides. Only a caller that may block on I/O leads.
    pub(crate) fn poll_enqueue(
        &self,
        batch: Batch<'_>,
        expect_first: Option<Lsn>,
        ack: Option<AckOn>,
        lead: bool,
        waker: &Waker,
    ) -> Poll<Result<Enqueued, WalError>> {
        let mut state = lock(&self.state);
        match self.try_enqueue_locked(&mut state, batch, expect_first, ack.is_some(), lead) {
            Ok(Some(enqueued)) => {
                if let Some(ack) = ack
                    && enqueued.group.is_none()
                {
                    state.ack_waiters.push(AckWaiter { lsn: enqueued.range.last, ack, waker: waker.clone() });
                }
                Poll::Ready(Ok(enqueued))
            }
            Ok(None) => {
                state.room_waiters.push(waker.clone());
                Poll::Pending
            }
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// `Ready` once `lsn` is acknowledged under `ack` or the log fails; otherwise registers
    /// `waker` for the flush that gets there.
    pub(crate) fn poll_ack(&self, lsn: Lsn, ack: AckOn, waker: &Waker) -> Poll<Result<Progress, WalError>> {
        let mut state = lock(&self.state);
        if state.progress.reached(ack) >= lsn {
            return Poll::Ready(Ok(state.progress));
        }
        if let Some(reason) = &state.closed {
            return Poll::Ready(Err(WalError::Closed(reason.clone())));
        }
        state.ack_waiters.push(AckWaiter { lsn, ack, waker: waker.clone() });
        Poll::Pending
    }

    /// Whether `lsn` looks acknowledged under `ack`, read without the lock: a spinning
    /// writer's test for when to poll again.
    pub(crate) fn looks_acked(&self, lsn: Lsn, ack: AckOn) -> bool {
        let hint = match ack {
            AckOn::Durable => &self.hints.durable,
            AckOn::Written => &self.hints.written,
        };
        hint.load(std::sync::atomic::Ordering::Acquire) >= lsn
    }

    /// How long a blocking writer should spin for its acknowledgement before it parks:
    /// `max`, unless recent syncs took longer on average (then spinning would only burn
    /// the CPU, and it parks at once).
    pub(crate) fn spin_budget(&self, max: std::time::Duration) -> std::time::Duration {
        let average = self.hints.sync_ns.load(std::sync::atomic::Ordering::Relaxed);
        if u128::from(average) > max.as_nanos() { std::time::Duration::ZERO } else { max }
    }

    /// The current progress.
    pub(crate) fn progress(&self) -> Progress {
        lock(&self.state).progress
    }

    /// Why the log refuses writes, if it does.
    pub(crate) fn closed(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }

    /// The LSN the next append gets.
    pub(crate) fn next_lsn(&self) -> Lsn {
        lock(&self.state).next_lsn
    }

    /// Stops the log: queued records are still flushed, new appends fail with `reason`.
    pub(crate) fn close(&self, reason: &str) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason.to_string());
        }
        // Every waiter learns of it on its next poll: `Closed`, unless its LSN is already
        // acknowledged. Queued records are still flushed (the caller cannot tell whether
        // they were), and writers waiting for room fail.
        let room = std::mem::take(&mut state.room_waiters);
        let acks = std::mem::take(&mut state.ack_waiters);
        self.work.notify_all();
        drop(state);
        room.into_iter().for_each(Waker::wake);
        for waiter in acks {
            waiter.waker.wake();
        }
    }

    /// Waits until nothing is queued or in flight and returns the locked state, so that
    /// the caller (truncation) changes the log with every writer held off.
    pub(crate) fn quiesce(&self) -> Quiesced<'_> {
        let mut state = lock(&self.state);
        while !state.queue.is_empty() || state.flushing {
            state = wait(&self.done, state);
        }
        Quiesced { state, coordinator: self }
    }

    /// One step of the flusher: waits for work (or, under an interval rule, for the next
    /// sync to fall due), writes it, syncs when the rule says so, and publishes. Returns
    /// `false` once the log is closed and drained.
    pub(crate) fn flush_once(&self, sink: &mut impl Sink, rule: &mut SyncRule) -> bool {
        let mut state = lock(&self.state);
        loop {
            // Nothing to do while the queue is empty, or while a writer flushes a group.
            while state.queue.is_empty() || state.flushing {
                if state.closed.is_some() && !state.dirty && !state.flushing {
                    return false;
                }
                match rule {
                    SyncRule::Every { interval, last } if state.dirty && !state.flushing => {
                        let due = *last + *interval;
                        let now = std::time::Instant::now();
                        if now >= due || state.closed.is_some() {
                            break;
                        }
                        state = wait_timeout(&self.work, state, due - now);
                    }
                    _ => state = wait(&self.work, state),
                }
            }
            // Group commit works only if the batch is a group: right after a sync, the
            // writers it released are still on their way back. Give them up to
            // `commit_delay` to rejoin. A blocking writer that completes the group flushes
            // it itself; then this wait starts over for the next group.
            if self.commit_delay.is_zero() || state.queue.is_empty() || !matches!(rule, SyncRule::Always) {
                break;
            }
            let group = state.queue_first;
            let deadline = std::time::Instant::now() + self.commit_delay;
            let mut taken = false;
            while !state.group_complete(self.max_queue_bytes / 2) && state.closed.is_none() {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                state = wait_timeout(&self.work, state, deadline - now);
                if state.flushing || state.queue.is_empty() || state.queue_first != group {
                    taken = true;
                    break;
                }
            }
            if !taken {
                break;
            }
        }
        let group = state.take_group();
        drop(state);
        self.finish_group(group, sink, rule);
        true
    }

    /// Writes a group taken with [`State::take_group`], syncs when the rule
    /// says so, publishes the progress and wakes the writers it acknowledges.
    pub(crate) fn finish_group(&self, group: Group, sink: &mut impl Sink, rule: &mut SyncRule) {
        let Group { first, mut bytes, mut offsets, batches, closing, room } = group;
        room.into_iter().for_each(Waker::wake);
        let last = first + offsets.len() as u64 - 1;
        let mut result = Ok(());
        let mut written = None;
        if !offsets.is_empty() {
            result = sink.write(first, &bytes, &offsets);
            if result.is_ok() {
                written = Some(last);
            }
        }
        let mut synced = false;
        let never = matches!(rule, SyncRule::Never);
        if result.is_ok() && (rule.sync_due() || (closing && !never)) {
            let started = std::time::Instant::now();
            result = sink.sync();
            synced = result.is_ok();
            self.hints.record_sync(started.elapsed());
        }

        let mut state = lock(&self.state);
        state.flushing = false;
        state.expect_batches = batches + state.batches;
        if bytes.capacity() <= SPARE_MAX_BYTES {
            bytes.clear();
            offsets.clear();
            state.spare = (bytes, offsets);
        }
        if let Some(last) = written {
            state.progress.written = last;
            state.dirty = !never;
        }
        if synced {
            state.progress.durable = state.progress.written;
            state.dirty = false;
        }
        self.hints.store(state.progress);
        if let Err(err) = result {
            // After a failed write or fsync the page cache may hold bytes that will never
            // reach the disk; acknowledging anything later would be a lie, so stop.
            state.closed.get_or_insert_with(|| format!("flush failed: {err}"));
            // Nothing will be synced any more; a dirty flag would keep the flusher waiting
            // for a sync that never comes (found by the loom model).
            state.dirty = false;
        }
        self.done.notify_all();
        // The flusher waits while a writer flushes: what was queued meanwhile, or a close,
        // is its work now.
        if !state.queue.is_empty() || state.closed.is_some() {
            self.work.notify_one();
        }
        let woken: Vec<Waker> = if state.closed.is_some() {
            state.ack_waiters.drain(..).map(|w| w.waker).collect()
        } else {
            let progress = state.progress;
            state.ack_waiters.extract_if(.., |w| progress.reached(w.ack) >= w.lsn).map(|w| w.waker).collect()
        };
        drop(state);
        woken.into_iter().for_each(Waker::wake);
    }
}

/// When the flusher syncs: the fsync policy as the coordinator sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SyncRule {
    /// After every write (group commit).
    Always,
    /// Never (tests only).
    Never,
    /// When `interval` has passed since the `last` sync.
    Every {
        /// The interval.
        interval: std::time::Duration,
        /// When the last sync happened.
        last: std::time::Instant,
    },
}

impl SyncRule {
    fn sync_due(&mut self) -> bool {
        match self {
            SyncRule::Always => true,
            SyncRule::Never => false,
            SyncRule::Every { interval, last } => {
                let now = std::time::Instant::now();
                let due = now.duration_since(*last) >= *interval;
                if due {
                    *last = now;
                }
                due
            }
        }
    }
}

/// The coordinator's state, locked with nothing queued or in flight.
pub(crate) struct Quiesced<'a> {
    state: MutexGuard<'a, State>,
    coordinator: &'a Coordinator,
}

impl Quiesced<'_> {
    /// The next LSN.
    pub(crate) fn next_lsn(&self) -> Lsn {
        self.state.next_lsn
    }

    /// Whether the log refuses writes.
    pub(crate) fn closed(&self) -> Option<&str> {
        self.state.closed.as_deref()
    }

    /// After a suffix truncation: the log now ends at `last`, which is durable.
    pub(crate) fn reset_to(&mut self, last: Lsn) {
        let state = &mut *self.state;
        state.next_lsn = last + 1;
        state.queue_first = last + 1;
        state.progress.written = last;
        state.progress.durable = last;
        self.coordinator.hints.store(state.progress);
        state.dirty = false;
    }
}

impl Drop for Quiesced<'_> {
    fn drop(&mut self) {
        self.coordinator.done.notify_all();
    }
}

impl std::fmt::Debug for Quiesced<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiesced").field("next_lsn", &self.state.next_lsn).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::task::Waker;

    use themis_clock::Timestamp;

    use super::*;

    /// Keeps what each write got: where its bytes lived, and the LSNs they held.
    #[derive(Default)]
    struct Recording {
        writes: Vec<(*const u8, Vec<Lsn>)>,
    }

    impl Sink for Recording {
        fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError> {
            let lsns: Vec<Lsn> = offsets.iter().map(|&o| record::lsn_of(&bytes[o as usize..])).collect();
            assert_eq!(lsns.first(), Some(&first));
            self.writes.push((bytes.as_ptr(), lsns));
            Ok(())
        }

        fn sync(&mut self) -> Result<(), WalError> {
            Ok(())
        }
    }

    fn queue(coordinator: &Coordinator, size: usize, count: usize) {
        let entries: Vec<NewEntry> =
            (0..count).map(|_| NewEntry::data(Timestamp::ZERO, vec![1u8; size])).collect();
        let queued = coordinator.poll_enqueue(Batch::Entries(&entries), None, None, false, Waker::noop());
        assert!(matches!(queued, Poll::Ready(Ok(_))), "{queued:?}");
    }

    #[test]
    fn group_buffers_are_reused_and_a_burst_buffer_is_freed() {
        let coordinator = Coordinator::new(1, 32 << 20, 16 << 20, std::time::Duration::ZERO, false);
        let mut sink = Recording::default();
        let mut rule = SyncRule::Always;
        // Two buffers take turns: the third group fills the first group's buffer.
        for count in [8, 6, 4] {
            queue(&coordinator, 1000, count);
            assert!(coordinator.flush_once(&mut sink, &mut rule));
            let state = lock(&coordinator.state);
            assert!(state.spare.0.capacity() >= count * 1000, "the written group's buffer is kept");
            assert!(state.spare.0.is_empty() && state.spare.1.is_empty());
        }
        let lsns: Vec<Lsn> = sink.writes.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(lsns, (1..=18).collect::<Vec<_>>(), "every record written once, in order");
        assert_eq!(sink.writes[2].0, sink.writes[0].0, "the third group reused the first's buffer");
        assert_ne!(sink.writes[1].0, sink.writes[0].0, "the flusher writes one buffer while the other fills");

        // A group larger than SPARE_MAX_BYTES is not kept for reuse.
        queue(&coordinator, SPARE_MAX_BYTES, 1);
        assert!(coordinator.flush_once(&mut sink, &mut rule));
        assert!(lock(&coordinator.state).spare.0.capacity() <= SPARE_MAX_BYTES);
        assert_eq!(coordinator.progress().durable, 19);
    }

    /// Queues one single-record append whose caller waits for the acknowledgement, as a
    /// blocking writer does; returns the group when this append leads it.
    fn append_leading(coordinator: &Coordinator) -> Option<Group> {
        let entries = [NewEntry::data(Timestamp::ZERO, vec![1u8; 16])];
        match coordinator.poll_enqueue(
            Batch::Entries(&entries),
            None,
            Some(AckOn::Durable),
            true,
            Waker::noop(),
        ) {
            Poll::Ready(Ok(enqueued)) => enqueued.group,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_split_group_waits_for_every_writer_next_time() {
        // Eight writers: five made a group, and three queued while it was written. The next
        // group is complete when all eight are back, not when five appends are queued.
        let coordinator = Coordinator::new(1, 1 << 20, 1 << 16, std::time::Duration::from_millis(1), true);
        let mut sink = Recording::default();
        lock(&coordinator.state).expect_batches = 8;
        for _ in 0..5 {
            assert!(append_leading(&coordinator).is_none(), "no group yet");
        }
        let group = lock(&coordinator.state).take_group();
        assert_eq!(group.batches, 5);
        for _ in 0..3 {
            assert!(append_leading(&coordinator).is_none(), "a flush runs: nobody leads");
        }
        coordinator.finish_group(group, &mut sink, &mut SyncRule::Always);
        assert_eq!(lock(&coordinator.state).expect_batches, 8);
        // The five come back; only the last of them completes the group of eight.
        for _ in 0..4 {
            assert!(append_leading(&coordinator).is_none(), "the group is not complete");
        }
        let group = append_leading(&coordinator).expect("the eighth append leads");
        assert_eq!((group.batches, group.offsets.len()), (8, 8));
        coordinator.finish_group(group, &mut sink, &mut SyncRule::Always);
        assert_eq!(coordinator.progress().durable, 13);
    }

    #[test]
    fn submits_are_not_waited_for() {
        // A pipelining receiver submits without waiting for each acknowledgement: the
        // flusher does not hold its group for more submits to come.
        let coordinator = Coordinator::new(1, 1 << 20, 1 << 16, std::time::Duration::from_millis(100), false);
        let mut sink = Recording::default();
        queue(&coordinator, 100, 3);
        assert_eq!(lock(&coordinator.state).batches, 0, "a submit is not a waiting append");
        let started = std::time::Instant::now();
        assert!(coordinator.flush_once(&mut sink, &mut SyncRule::Always));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "{:?}", started.elapsed());
        assert_eq!(coordinator.progress().durable, 3);
    }

    #[test]
    fn writers_spin_only_while_syncs_are_fast() {
        let coordinator = Coordinator::new(1, 1 << 20, 1 << 16, std::time::Duration::ZERO, true);
        let max = std::time::Duration::from_micros(200);
        assert_eq!(coordinator.spin_budget(max), max, "no sync measured yet");
        coordinator.hints.record_sync(std::time::Duration::from_micros(90));
        assert_eq!(coordinator.spin_budget(max), max);
        // A slow disk: the average passes the budget within a few syncs, and writers park.
        for _ in 0..8 {
            coordinator.hints.record_sync(std::time::Duration::from_millis(5));
        }
        assert_eq!(coordinator.spin_budget(max), std::time::Duration::ZERO);
        assert_eq!(coordinator.spin_budget(std::time::Duration::ZERO), std::time::Duration::ZERO);

        // The hint follows what flushes publish.
        assert!(!coordinator.looks_acked(1, AckOn::Durable));
        let group = append_leading(&coordinator).expect("a lone writer leads");
        assert!(!coordinator.looks_acked(1, AckOn::Written), "taken, not yet flushed");
        coordinator.finish_group(group, &mut Recording::default(), &mut SyncRule::Always);
        assert!(coordinator.looks_acked(1, AckOn::Durable) && coordinator.looks_acked(1, AckOn::Written));
        assert!(!coordinator.looks_acked(2, AckOn::Durable));
    }
}
