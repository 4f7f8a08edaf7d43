// An OR-Set remove must carry what a read saw; a context cannot be made up.
use themis_clock::NodeId;
use themis_crdt::{CausalContext, OrSet, ReadContext};

fn main() {
    let mut set = OrSet::new();
    set.add(NodeId(1), 7).unwrap();
    let forged = ReadContext { seen: CausalContext::new() };
    set.remove(&7, &forged).unwrap();
}
