//! Loom models of the live queue and the switch between it and the log. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib -p themis-cdc` (`cargo xtask ci`
//! does). Over every interleaving loom explores they prove: a subscriber racing a writer
//! whose queue overflows receives every committed entry exactly once and in order,
//! switching to the log and back as it must; a subscriber waiting on an empty queue is
//! woken by a publish and by close (a lost wake-up is a loom deadlock). A deliberately
//! broken switch, which samples the catch-up bound twice, fails the first model.

use std::sync::Arc;

use bytes::Bytes;
use loom::thread;
use themis_clock::{NodeId, Timestamp};
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{Entry, EntryKind, Lsn};

use crate::error::CdcError;
use crate::filter::Filter;
use crate::source::LogSource;
use crate::stream::{CdcConfig, CdcStream};
use crate::sync::{Mutex, lock};

/// The log as the model sees it: what the writer appended, read one entry at a time so
/// catch-up takes several steps for loom to interleave with.
#[derive(Default)]
struct ModelLog(Mutex<Vec<Entry>>);

impl LogSource for ModelLog {
    fn first_lsn(&self) -> Lsn {
        1
    }

    fn last_lsn(&self) -> Lsn {
        lock(&self.0).len() as Lsn
    }

    fn read(&self, from: Lsn, _max_bytes: usize) -> Result<Vec<Entry>, CdcError> {
        Ok(lock(&self.0).get((from - 1) as usize).cloned().into_iter().collect())
    }
}

fn entry(lsn: Lsn) -> Entry {
    let op = Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Insert {
            collection: "c".into(),
            key: Bytes::from(lsn.to_string()),
            value: Bytes::new(),
        },
        stamp: None,
    };
    Entry {
        lsn,
        term: 1,
        timestamp: Timestamp::ZERO,
        kind: EntryKind::DATA,
        payload: encode_batch(&[op]).unwrap(),
    }
}

fn config(max_depth: usize) -> CdcConfig {
    CdcConfig { max_depth, max_batch: 1, ..CdcConfig::default() }
}

/// A writer commits three entries into a queue of depth one while a subscriber reads;
/// the subscriber must see LSNs 1, 2, 3 exactly once, in order.
fn overflow_model(broken: bool) {
    loom::model(move || {
        let log = Arc::new(ModelLog::default());
        let cdc = CdcStream::new(config(1), log.clone(), 0, Timestamp::ZERO).unwrap();
        let mut sub = cdc.subscribe(Filter::all(), 0).unwrap();
        sub.resample_floor_bug = broken;
        let writer = {
            let (log, cdc) = (Arc::clone(&log), cdc.clone());
            thread::spawn(move || {
                for lsn in 1..=3 {
                    let e = entry(lsn);
                    lock(&log.0).push(e.clone());
                    cdc.publish(&[e]);
                }
                cdc.close();
            })
        };
        let mut seen = Vec::new();
        loop {
            let filled = loom::future::block_on(std::future::poll_fn(|cx| sub.poll_fill(cx)));
            match filled {
                Ok(()) => seen.extend(sub.buffer.drain(..).map(|e| e.lsn)),
                Err(CdcError::Closed) => break,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(seen, [1, 2, 3], "every entry once, in order");
    });
}

#[test]
fn a_subscriber_racing_an_overflowing_writer_sees_everything_once() {
    overflow_model(false);
}

#[test]
fn the_model_catches_a_switch_that_samples_its_bound_twice() {
    let caught = std::panic::catch_unwind(|| overflow_model(true)).expect_err("the broken variant must fail");
    let message = caught
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| caught.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default();
    assert!(message.contains("every entry once"), "failed for another reason: {message}");
}

/// A subscriber parked on an empty queue is woken by the publish, then by close.
#[test]
fn a_waiting_subscriber_is_woken_by_publish_and_close() {
    loom::model(|| {
        let log = Arc::new(ModelLog::default());
        let cdc = CdcStream::new(config(4), log.clone(), 0, Timestamp::ZERO).unwrap();
        let mut sub = cdc.subscribe(Filter::all(), 0).unwrap();
        let writer = {
            let cdc = cdc.clone();
            thread::spawn(move || {
                let e = entry(1);
                lock(&log.0).push(e.clone());
                cdc.publish(&[e]);
                cdc.close();
            })
        };
        let first = loom::future::block_on(std::future::poll_fn(|cx| sub.poll_fill(cx)));
        assert!(first.is_ok());
        assert_eq!(sub.buffer.pop_front().map(|e| e.lsn), Some(1));
        let end = loom::future::block_on(std::future::poll_fn(|cx| sub.poll_fill(cx)));
        assert_eq!(end, Err(CdcError::Closed));
        writer.join().unwrap();
    });
}
