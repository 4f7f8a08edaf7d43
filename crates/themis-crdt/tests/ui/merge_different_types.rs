// A G-Counter cannot merge a PN-Counter's state.
use themis_crdt::{Crdt, GCounter, PnCounter};

fn main() {
    let mut counter = GCounter::new();
    counter.merge(&PnCounter::new()).unwrap();
}
