//! The live queue: the last `max_depth` committed data entries, which writers append to
//! without waiting on any reader, and from which subscribers read at their own pace.
//!
//! Invariants (checked by the loom models in `loom_tests.rs`):
//! - every data entry with `floor < lsn <= resolved` is in `entries`, in LSN order, so a
//!   subscriber whose position is at or past `floor` finds everything it has not seen in
//!   the queue;
//! - a subscriber behind `floor` reads `(position, floor]` from the log, with the bound
//!   sampled once under the lock, and then stands at `floor`: nothing is skipped or
//!   repeated at the switch, whatever writers do meanwhile;
//! - publishing never waits for a subscriber: it holds the lock for a push, at most one
//!   pop and taking the wakers, and wakes them after releasing it.

use std::collections::VecDeque;
use std::task::{Context, Waker};

use themis_clock::Timestamp;
use themis_wal::{Entry, EntryKind, Lsn};

use crate::sync::{Mutex, lock};

/// What a subscriber at some position should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Entries after its position, in order (at most the batch asked for).
    Entries(Vec<Entry>),
    /// It is behind the queue: read the log's `(position, upto]`, then stand at `upto`.
    CatchUp {
        /// The bound, sampled under the lock.
        upto: Lsn,
    },
    /// No data entry lies in `(position, lsn]`: stand at `lsn`.
    Resolved {
        /// Everything up to here is published.
        lsn: Lsn,
        /// The commit timestamp of the entry at `lsn`.
        hlc: Timestamp,
    },
    /// Nothing new; its waker is registered.
    Pending,
    /// The queue was closed and it has everything.
    Closed,
}

/// What [`Queue::depth`] and friends report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Depths {
    pub(crate) depth: usize,
    pub(crate) floor: Lsn,
    pub(crate) resolved: Lsn,
    pub(crate) resolved_hlc: Timestamp,
}

#[derive(Debug)]
struct State {
    entries: VecDeque<Entry>,
    floor: Lsn,
    resolved: Lsn,
    resolved_hlc: Timestamp,
    closed: bool,
    wakers: Vec<Waker>,
}

/// The bounded live queue.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    max_depth: usize,
}

impl Queue {
    /// A queue holding at most `max_depth` entries, starting after `lsn` (the log holds
    /// everything up to it, so subscribers from earlier positions read the log).
    pub(crate) fn new(max_depth: usize, lsn: Lsn, hlc: Timestamp) -> Queue {
        assert!(max_depth > 0, "max_depth is validated by the config");
        Queue {
            state: Mutex::new(State {
                entries: VecDeque::with_capacity(max_depth.min(1 << 16)),
                floor: lsn,
                resolved: lsn,
                resolved_hlc: hlc,
                closed: false,
                wakers: Vec::new(),
            }),
            max_depth,
        }
    }

    /// Appends committed entries (any kind; only data entries are kept), in LSN order.
    /// Entries at or below the published LSN are ignored (a replay after restart). A gap
    /// (an entry past the next LSN) moves the floor over it, so subscribers read the
    /// missing entries from the log instead of skipping them. Returns how many data
    /// entries were evicted to stay within `max_depth`.
    pub(crate) fn publish(&self, entries: &[Entry]) -> usize {
        let mut evicted = 0;
        let wakers = {
            let mut state = lock(&self.state);
            if state.closed {
                return 0;
            }
            for entry in entries {
                if entry.lsn <= state.resolved {
                    continue;
                }
                if entry.lsn != state.resolved + 1 {
                    state.entries.clear();
                    state.floor = entry.lsn - 1;
                }
                if entry.kind == EntryKind::DATA {
                    state.entries.push_back(entry.clone());
                    if state.entries.len() > self.max_depth
                        && let Some(old) = state.entries.pop_front()
                    {
                        state.floor = old.lsn;
                        evicted += 1;
                    }
                }
                state.resolved = entry.lsn;
                state.resolved_hlc = entry.timestamp;
            }
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
        evicted
    }

    /// The log was replaced from `lsn` on (a snapshot was installed): nothing up to `lsn`
    /// can be read from the queue any more, and entries after it are published anew.
    pub(crate) fn restart_at(&self, lsn: Lsn, hlc: Timestamp) {
        let wakers = {
            let mut state = lock(&self.state);
            state.entries.clear();
            state.floor = lsn;
            state.resolved = lsn;
            state.resolved_hlc = hlc;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Closes the queue: subscribers get what is queued, then [`Next::Closed`].
    pub(crate) fn close(&self) {
        let wakers = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// What a subscriber that has seen everything up to `position` does next; with `cx`,
    /// [`Next::Pending`] registers its waker.
    pub(crate) fn next(&self, position: Lsn, max_batch: usize, cx: Option<&Context<'_>>) -> Next {
        let mut state = lock(&self.state);
        if position < state.floor {
            return Next::CatchUp { upto: state.floor };
        }
        let start = state.entries.partition_point(|e| e.lsn <= position);
        if start < state.entries.len() {
            let end = state.entries.len().min(start + max_batch.max(1));
            return Next::Entries(state.entries.range(start..end).cloned().collect());
        }
        if state.resolved > position {
            return Next::Resolved { lsn: state.resolved, hlc: state.resolved_hlc };
        }
        if state.closed {
            return Next::Closed;
        }
        if let Some(cx) = cx
            && !state.wakers.iter().any(|w| w.will_wake(cx.waker()))
        {
            state.wakers.push(cx.waker().clone());
        }
        Next::Pending
    }

    /// The queue's depth and bounds.
    pub(crate) fn depths(&self) -> Depths {
        let state = lock(&self.state);
        Depths {
            depth: state.entries.len(),
            floor: state.floor,
            resolved: state.resolved,
            resolved_hlc: state.resolved_hlc,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(lsn: Lsn, kind: EntryKind) -> Entry {
        Entry { lsn, term: 1, timestamp: Timestamp::ZERO, kind, payload: Bytes::new() }
    }

    fn lsns(next: Next) -> Vec<Lsn> {
        match next {
            Next::Entries(v) => v.iter().map(|e| e.lsn).collect(),
            other => panic!("expected entries, got {other:?}"),
        }
    }

    #[test]
    fn a_full_queue_evicts_the_oldest_and_raises_the_floor() {
        let q = Queue::new(2, 0, Timestamp::ZERO);
        assert_eq!(
            q.publish(&[entry(1, EntryKind::DATA), entry(2, EntryKind::NO_OP), entry(3, EntryKind::DATA)]),
            0
        );
        assert_eq!(lsns(q.next(0, 10, None)), [1, 3]);
        assert_eq!(q.publish(&[entry(4, EntryKind::DATA)]), 1);
        assert!(matches!(q.next(0, 10, None), Next::CatchUp { upto: 1 }));
        assert_eq!(lsns(q.next(1, 10, None)), [3, 4]);
        assert_eq!(lsns(q.next(3, 1, None)), [4]);
        assert!(matches!(q.next(4, 10, None), Next::Pending));
        // Replays are ignored; a gap sends subscribers to the log for the missing LSNs.
        q.publish(&[entry(4, EntryKind::DATA), entry(9, EntryKind::DATA)]);
        assert!(matches!(q.next(4, 10, None), Next::CatchUp { upto: 8 }));
        assert_eq!(lsns(q.next(8, 10, None)), [9]);
        q.publish(&[entry(10, EntryKind::CONFIG)]);
        assert!(matches!(q.next(9, 10, None), Next::Resolved { lsn: 10, .. }));
        q.close();
        assert!(matches!(q.next(10, 10, None), Next::Closed));
        assert_eq!(q.depths().depth, 1);
    }

    #[test]
    fn a_restart_empties_the_queue_at_the_snapshot() {
        let q = Queue::new(8, 0, Timestamp::ZERO);
        q.publish(&[entry(1, EntryKind::DATA)]);
        q.restart_at(100, Timestamp::ZERO);
        assert!(matches!(q.next(0, 10, None), Next::CatchUp { upto: 100 }));
        assert!(matches!(q.next(100, 10, None), Next::Pending));
        q.publish(&[entry(101, EntryKind::DATA)]);
        assert_eq!(lsns(q.next(100, 10, None)), [101]);
    }
}
