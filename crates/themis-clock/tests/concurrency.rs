//! One `Hlc` shared by many threads.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use themis_clock::{Hlc, ManualClock, NodeId, PhysicalClock, SystemClock};

fn hammer<C: PhysicalClock + 'static>(hlc: &Arc<Hlc<C>>, threads: usize, per_thread: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let hlc = Arc::clone(hlc);
            thread::spawn(move || (0..per_thread).map(|_| hlc.now()).collect::<Vec<_>>())
        })
        .collect();
    let mut all = HashSet::with_capacity(threads * per_thread);
    for handle in handles {
        let stamps = handle.join().expect("clock thread panicked");
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "a thread saw its timestamps go backwards");
        for ts in stamps {
            assert!(all.insert(ts), "timestamp {ts} issued twice");
        }
    }
    assert_eq!(all.len(), threads * per_thread);
    let max = all.iter().max().copied().unwrap();
    assert_eq!(hlc.last(), max, "last() is the largest issued timestamp");
}

#[test]
fn threads_get_unique_increasing_timestamps_on_the_system_clock() {
    hammer(&Arc::new(Hlc::with_clock(NodeId(1), SystemClock)), 8, 50_000);
}

#[test]
fn threads_get_unique_increasing_timestamps_on_a_frozen_clock() {
    // A clock that never moves forces every timestamp through the logical counter and
    // its carry into the physical part.
    hammer(&Arc::new(Hlc::with_clock(NodeId(1), ManualClock::new(1_000))), 8, 50_000);
}
