//! Two nodes exchanging messages on hybrid logical clocks, one with a wall clock that runs
//! behind and one peer that runs too far ahead. Run: `cargo run -p themis-replication --example hlc_demo`.

use std::time::Duration;

use themis_replication::clock::ManualClock;
use themis_replication::prelude::*;

pub(crate) fn main() -> Result<(), ClockError> {
    let wall_a = ManualClock::new(1_700_000_000_000);
    let wall_b = ManualClock::new(1_700_000_000_000 - 250); // b's clock is 250 ms behind
    let a = Hlc::with_clock(NodeId(1), wall_a.clone());
    let b = Hlc::with_clock(NodeId(2), wall_b.clone()).with_max_offset(Duration::from_millis(500))?;

    let sent = a.now();
    println!("node 1 sends at      {sent}");
    let received = b.update(sent)?;
    println!("node 2 receives at   {received}  (after the send, although its wall clock is behind)");
    let rogue = Timestamp::from_parts(1_700_000_010_000, 0, NodeId(3))?;
    match b.update(rogue) {
        Err(err) => println!("node 2 refuses a peer 10 s ahead: {err}"),
        Ok(ts) => println!("unexpectedly accepted at {ts}"),
    }
    wall_b.set_ms(1_600_000_000_000);
    println!("node 2's wall clock steps back 100,000 s; its next event is still later: {}", b.now());

    let (mut va, mut vb) = (VectorClock::new(), VectorClock::new());
    va.increment(NodeId(1))?;
    vb.increment(NodeId(2))?;
    println!(
        "vector clocks {:?} and {:?}: {:?}",
        va.iter().collect::<Vec<_>>(),
        vb.iter().collect::<Vec<_>>(),
        va.compare(&vb)
    );
    va.merge(&vb)?;
    println!("after merging: {:?}", va.compare(&vb));
    Ok(())
}
