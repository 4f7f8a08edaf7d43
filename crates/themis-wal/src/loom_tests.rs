//! Loom models of the group-commit coordinator. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib -p themis-wal` (`cargo xtask ci`
//! does). They prove, over every interleaving loom explores: no writer is acknowledged
//! before its bytes are durable; every writer is acknowledged (a lost wake-up is a loom
//! deadlock); LSNs are assigned and written in order; a failed sync acknowledges nobody.

use bytes::Bytes;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use themis_clock::Timestamp;

use std::task::Poll;

use crate::commit::{AckOn, Batch, Coordinator, Enqueued, Progress, Sink, SyncRule};
use crate::entry::{Lsn, LsnRange, NewEntry};
use crate::error::WalError;
use crate::record;

/// Durable storage as the model sees it: what was written, and what a sync made durable.
#[derive(Default)]
struct Disk {
    written: AtomicU64,
    durable: AtomicU64,
}

struct ModelSink {
    disk: Arc<Disk>,
    fail_sync: bool,
}

impl Sink for ModelSink {
    fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError> {
        // Records arrive in LSN order, each right after the last one written.
        assert_eq!(
            first,
            self.disk.written.load(Ordering::SeqCst) + 1,
            "a gap or a repeat in the written LSNs"
        );
        for (i, &offset) in offsets.iter().enumerate() {
            assert_eq!(record::lsn_of(&bytes[offset as usize..]), first + i as u64);
        }
        self.disk.written.store(first + offsets.len() as u64 - 1, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        if self.fail_sync {
            return Err(WalError::Closed("injected fsync failure".into()));
        }
        self.disk.durable.store(self.disk.written.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }
}

/// The model disk behind a lock, shared by the flusher and by writers that lead a group.
#[derive(Clone)]
struct SharedSink(Arc<loom::sync::Mutex<ModelSink>>);

impl Sink for SharedSink {
    fn write(&mut self, first: Lsn, bytes: &[u8], offsets: &[u32]) -> Result<(), WalError> {
        self.0.lock().unwrap().write(first, bytes, offsets)
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.0.lock().unwrap().sync()
    }
}

fn entry(size: usize) -> NewEntry {
    NewEntry::data(Timestamp::ZERO, Bytes::from(vec![7u8; size]))
}

/// Queues one entry and waits for it to be durable, as `Wal::append_async` does under
/// loom's `block_on`; with a `sink`, as `Wal::append` does, which flushes the group
/// itself when its entry completes it.
fn append(coordinator: &Coordinator, sink: Option<&SharedSink>) -> Result<(LsnRange, Progress), WalError> {
    let entries = [entry(8)];
    let mut queued: Option<LsnRange> = None;
    let lead = sink.is_some();
    loom::future::block_on(std::future::poll_fn(|cx| match queued {
        None => match coordinator.poll_enqueue(
            Batch::Entries(&entries),
            None,
            Some(AckOn::Durable),
            lead,
            cx.waker(),
        ) {
            Poll::Ready(Ok(Enqueued { range, group: Some(group) })) => {
                let mut sink = sink.expect("only a writer that may lead gets a group").clone();
                coordinator.finish_group(group, &mut sink, &mut SyncRule::Always);
                queued = Some(range);
                coordinator.poll_ack(range.last, AckOn::Durable, cx.waker()).map_ok(|p| (range, p))
            }
            Poll::Ready(Ok(Enqueued { range, group: None })) => {
                queued = Some(range);
                Poll::Pending
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        },
        Some(range) => coordinator.poll_ack(range.last, AckOn::Durable, cx.waker()).map_ok(|p| (range, p)),
    }))
}

/// How the writers of a model append.
#[derive(Clone, Copy, PartialEq)]
enum Writers {
    /// As async tasks: the flusher writes every group.
    Wait,
    /// As blocking threads: a writer that completes a group flushes it, racing the flusher.
    Lead,
}

/// Runs `writers` writers (each appending `per_writer` single-entry batches) against one
/// flusher, and checks each acknowledgement against the model disk. `preemptions` bounds
/// loom's search (`block_on` adds enough steps that 3 take minutes where 2 take seconds).
fn run(
    writers: usize,
    per_writer: usize,
    max_queue: usize,
    fail_sync: bool,
    preemptions: usize,
    how: Writers,
) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(move || {
        // No commit delay: loom does not model time, and the delay only postpones a flush.
        let lead = how == Writers::Lead;
        let coordinator = Arc::new(Coordinator::new(1, max_queue, 1 << 16, std::time::Duration::ZERO, lead));
        let disk = Arc::new(Disk::default());
        let sink = SharedSink(Arc::new(loom::sync::Mutex::new(ModelSink { disk: disk.clone(), fail_sync })));
        let flusher = {
            let coordinator = coordinator.clone();
            let mut sink = sink.clone();
            thread::spawn(move || while coordinator.flush_once(&mut sink, &mut SyncRule::Always) {})
        };
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let coordinator = coordinator.clone();
                let disk = disk.clone();
                let sink = sink.clone();
                thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..per_writer {
                        match append(&coordinator, lead.then_some(&sink)) {
                            Ok((range, progress)) => {
                                assert!(range.first > last, "LSNs of one writer go backwards");
                                last = range.last;
                                assert!(!fail_sync, "acknowledged although every sync failed");
                                assert!(progress.durable >= range.last);
                                assert!(
                                    disk.durable.load(Ordering::SeqCst) >= range.last,
                                    "acknowledged LSN {} before it was durable",
                                    range.last
                                );
                            }
                            Err(err) => assert!(fail_sync, "unexpected failure: {err}"),
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        coordinator.close("test over");
        flusher.join().unwrap();
        if !fail_sync {
            let total = (writers * per_writer) as u64;
            assert_eq!(disk.durable.load(Ordering::SeqCst), total);
            assert_eq!(coordinator.next_lsn(), total + 1);
        }
    });
}

#[test]
fn two_writers_are_acknowledged_only_when_durable() {
    run(2, 1, 1 << 16, false, 3, Writers::Wait);
}

#[test]
fn one_writer_two_batches_in_order() {
    run(1, 2, 1 << 16, false, 3, Writers::Wait);
}

#[test]
fn a_full_queue_makes_writers_wait_but_wakes_them() {
    // Room for one record only: the second writer must wait for the flusher to take it.
    run(2, 1, record::encoded_len(8), false, 2, Writers::Wait);
}

#[test]
fn a_failed_sync_acknowledges_nobody() {
    run(2, 1, 1 << 16, true, 2, Writers::Wait);
}

#[test]
fn writers_that_lead_groups_race_the_flusher_and_are_acknowledged_only_when_durable() {
    run(2, 1, 1 << 16, false, 2, Writers::Lead);
}

#[test]
fn a_leading_writer_appends_twice_in_order() {
    run(1, 2, 1 << 16, false, 2, Writers::Lead);
}

#[test]
fn a_failed_sync_in_a_leading_writer_acknowledges_nobody() {
    run(2, 1, 1 << 16, true, 2, Writers::Lead);
}
