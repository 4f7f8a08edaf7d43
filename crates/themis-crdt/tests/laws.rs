//! The CRDT laws, for every type, by property test:
//! - `merge` is commutative, associative and idempotent;
//! - replicas that receive the same operations in any order, with duplicates, converge,
//!   and agree with the state-based merge of every replica.
//!
//! proptest prints the minimal failing history and records its seed in
//! `proptest-regressions/`, so a failure replays with `cargo test`.

use std::fmt::Debug;

use proptest::prelude::*;
use themis_clock::{NodeId, Timestamp};
use themis_crdt::{Crdt, GCounter, LwwRegister, MvRegister, OrMap, OrSet, PnCounter, ReadContext};

const REPLICAS: usize = 3;

/// One step of a history: replica `replica` makes local change `choice`, or first merges
/// the state of replica `sync_from`.
#[derive(Debug, Clone)]
struct Step {
    replica: usize,
    choice: u8,
    sync_from: Option<usize>,
}

fn history() -> impl Strategy<Value = (Vec<Step>, Vec<u64>)> {
    let step = (0..REPLICAS, any::<u8>(), prop::option::weighted(0.3, 0..REPLICAS))
        .prop_map(|(replica, choice, sync_from)| Step { replica, choice, sync_from });
    (prop::collection::vec(step, 0..40), prop::collection::vec(any::<u64>(), 80))
}

/// Per-replica scratch a type's actions may need (e.g. a stale read to remove with).
#[derive(Default, Clone)]
struct Scratch {
    stale_read: Option<ReadContext>,
    writes: u16,
}

/// Runs the history, then checks both laws. `act` makes one local change and returns the
/// ops it produced.
fn check<C: Crdt + Debug>(
    (steps, order): &(Vec<Step>, Vec<u64>),
    act: impl Fn(&mut C, NodeId, u8, &mut Scratch) -> Vec<C::Op>,
) -> Result<(), TestCaseError>
where
    C::Op: Debug,
{
    let mut replicas = vec![C::default(); REPLICAS];
    let mut scratch = vec![Scratch::default(); REPLICAS];
    let mut ops = Vec::new();
    for step in steps {
        if let Some(from) = step.sync_from {
            let source = replicas[from].clone();
            replicas[step.replica].merge(&source).unwrap();
        }
        let node = NodeId(step.replica as u64 + 1);
        ops.extend(act(&mut replicas[step.replica], node, step.choice, &mut scratch[step.replica]));
    }

    // Merge laws on the three final states.
    let merged = |x: &C, y: &C| {
        let mut out = x.clone();
        out.merge(y).unwrap();
        out
    };
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    prop_assert_eq!(merged(a, b), merged(b, a), "merge is not commutative");
    prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)), "merge is not associative");
    prop_assert_eq!(merged(a, a), a.clone(), "merge is not idempotent");
    let everything = merged(&merged(a, b), c);

    // Operation delivery: one replica in generation order, one scrambled with duplicates.
    let mut in_order = C::default();
    for op in &ops {
        in_order.apply(op.clone()).unwrap();
    }
    let mut scrambled_ops: Vec<(u64, &C::Op)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let key = order[i % order.len()].rotate_left(i as u32 % 64);
        scrambled_ops.push((key, op));
        if key % 3 == 0 {
            scrambled_ops.push((key.wrapping_mul(0x9e37_79b9_7f4a_7c15), op));
        }
    }
    scrambled_ops.sort_by_key(|&(key, _)| key);
    let mut scrambled = C::default();
    for (_, op) in scrambled_ops {
        scrambled.apply(op.clone()).unwrap();
    }
    prop_assert_eq!(&in_order, &scrambled, "operations in another order, with duplicates, diverged");
    prop_assert_eq!(&in_order, &everything, "operations and state merge disagree");
    Ok(())
}

/// A timestamp unique per (replica, write): random physical time makes writes concurrent.
fn stamp(node: NodeId, choice: u8, scratch: &mut Scratch) -> Timestamp {
    scratch.writes += 1;
    Timestamp::from_parts(u64::from(choice % 8), scratch.writes, node).unwrap()
}

proptest! {
    #[test]
    fn g_counter(h in history()) {
        check::<GCounter>(&h, |c, node, choice, _| vec![c.increment(node, u64::from(choice % 4)).unwrap()])?;
    }

    #[test]
    fn pn_counter(h in history()) {
        check::<PnCounter>(&h, |c, node, choice, _| {
            let by = u64::from(choice % 4);
            vec![if choice % 2 == 0 { c.increment(node, by) } else { c.decrement(node, by) }.unwrap()]
        })?;
    }

    #[test]
    fn lww_register(h in history()) {
        check::<LwwRegister<u8>>(&h, |r, node, choice, s| vec![r.set(choice, stamp(node, choice, s)).unwrap()])?;
    }

    #[test]
    fn mv_register(h in history()) {
        check::<MvRegister<u8>>(&h, |r, node, choice, _| vec![r.write(node, choice % 4).unwrap()])?;
    }

    #[test]
    fn or_set(h in history()) {
        check::<OrSet<u8>>(&h, |set, node, choice, s| {
            let element = choice % 5;
            match choice / 5 % 4 {
                0 | 1 => vec![set.add(node, element).unwrap()],
                2 => {
                    let read = set.read();
                    s.stale_read = Some(read.clone());
                    set.remove(&element, &read).unwrap().into_iter().collect()
                }
                _ => match s.stale_read.clone() {
                    Some(stale) => set.remove(&element, &stale).unwrap().into_iter().collect(),
                    None => Vec::new(),
                },
            }
        })?;
    }

    #[test]
    fn or_map_of_pn_counters(h in history()) {
        check::<OrMap<u8, PnCounter>>(&h, |map, node, choice, s| {
            let key = choice % 3;
            match choice / 3 % 4 {
                0 => vec![map.update(node, key, |c| c.increment(node, 1)).unwrap()],
                1 => vec![map.update(node, key, |c| c.decrement(node, 2)).unwrap()],
                2 => {
                    let read = map.read();
                    s.stale_read = Some(read.clone());
                    map.remove(&key, &read).unwrap().into_iter().collect()
                }
                _ => match s.stale_read.clone() {
                    Some(stale) => map.remove(&key, &stale).unwrap().into_iter().collect(),
                    None => Vec::new(),
                },
            }
        })?;
    }

    #[test]
    fn or_map_of_or_sets(h in history()) {
        check::<OrMap<u8, OrSet<u8>>>(&h, |map, node, choice, _| {
            vec![map.update(node, choice % 2, |set| set.add(node, choice % 4)).unwrap()]
        })?;
    }

    /// Encoded states decode to equal states, in the wire format (postcard).
    #[test]
    fn encodings_round_trip(h in history()) {
        check::<OrSet<u8>>(&h, |set, node, choice, _| {
            let op = set.add(node, choice % 5).unwrap();
            let bytes = postcard::to_stdvec(&*set).unwrap();
            assert_eq!(&postcard::from_bytes::<OrSet<u8>>(&bytes).unwrap(), set);
            vec![op]
        })?;
    }

    /// Arbitrary bytes never panic the decoders.
    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        let _ = postcard::from_bytes::<OrSet<u8>>(&bytes);
        let _ = postcard::from_bytes::<MvRegister<u8>>(&bytes);
        let _ = postcard::from_bytes::<OrMap<u8, PnCounter>>(&bytes);
        let _ = postcard::from_bytes::<LwwRegister<u8>>(&bytes);
        let _ = postcard::from_bytes::<GCounter>(&bytes);
    }
}
