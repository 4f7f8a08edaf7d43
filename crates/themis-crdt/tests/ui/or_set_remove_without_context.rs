// Removing without any read context is not an OR-Set operation.
use themis_clock::NodeId;
use themis_crdt::OrSet;

fn main() {
    let mut set = OrSet::new();
    set.add(NodeId(1), 7).unwrap();
    set.remove(&7).unwrap();
}
