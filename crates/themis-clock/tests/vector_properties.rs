//! Laws of vector clocks: `compare` is a partial order and `merge` is a join
//! (commutative, associative, idempotent, an upper bound).

use proptest::prelude::*;
use themis_clock::{CausalOrder, NodeId, VectorClock};

/// Builds clocks from one shared history, so that ordered pairs (not only concurrent ones)
/// are common: each clock is a random prefix-closed mix of increments and merges.
fn clocks(count: usize) -> impl Strategy<Value = Vec<VectorClock>> {
    let op = (0usize..count, 0u64..5, prop::option::of(0usize..count));
    prop::collection::vec(op, 0..40).prop_map(move |ops| {
        let mut clocks = vec![VectorClock::new(); count];
        for (target, node, merge_from) in ops {
            if let Some(source) = merge_from {
                let source = clocks[source].clone();
                clocks[target].merge(&source).unwrap();
            }
            clocks[target].increment(NodeId(node)).unwrap();
        }
        clocks
    })
}

fn merged(a: &VectorClock, b: &VectorClock) -> VectorClock {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

fn reverse(order: CausalOrder) -> CausalOrder {
    match order {
        CausalOrder::Before => CausalOrder::After,
        CausalOrder::After => CausalOrder::Before,
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn compare_is_a_partial_order(cs in clocks(3)) {
        let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
        // Reflexive.
        prop_assert_eq!(a.compare(a), CausalOrder::Equal);
        // Antisymmetric, and the two directions agree.
        prop_assert_eq!(b.compare(a), reverse(a.compare(b)));
        prop_assert_eq!(a.compare(b) == CausalOrder::Equal, a == b);
        // Transitive.
        if a <= b && b <= c {
            prop_assert!(a <= c, "{a:?} <= {b:?} <= {c:?}");
        }
        // Agrees with the pointwise definition.
        let nodes = (0..5).map(NodeId);
        let pointwise_le = nodes.clone().all(|n| a.get(n) <= b.get(n));
        let pointwise_ge = nodes.clone().all(|n| a.get(n) >= b.get(n));
        let expected = match (pointwise_le, pointwise_ge) {
            (true, true) => CausalOrder::Equal,
            (true, false) => CausalOrder::Before,
            (false, true) => CausalOrder::After,
            (false, false) => CausalOrder::Concurrent,
        };
        prop_assert_eq!(a.compare(b), expected);
    }

    #[test]
    fn merge_is_a_join(cs in clocks(3)) {
        let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
        prop_assert_eq!(merged(a, b), merged(b, a));
        prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        prop_assert_eq!(merged(a, a), a.clone());
        let ab = merged(a, b);
        prop_assert!(a <= &ab && b <= &ab);
        for n in (0..5).map(NodeId) {
            prop_assert_eq!(ab.get(n), a.get(n).max(b.get(n)));
        }
    }

    #[test]
    fn increment_moves_strictly_after(cs in clocks(1), node in 0u64..8) {
        let before = cs[0].clone();
        let mut after = before.clone();
        after.increment(NodeId(node)).unwrap();
        prop_assert_eq!(before.compare(&after), CausalOrder::Before);
    }

    #[test]
    fn serde_round_trips(cs in clocks(1)) {
        let bytes = postcard::to_stdvec(&cs[0]).unwrap();
        prop_assert_eq!(postcard::from_bytes::<VectorClock>(&bytes).unwrap(), cs[0].clone());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(clock) = postcard::from_bytes::<VectorClock>(&bytes) {
            // Whatever decodes satisfies the invariants: sorted, non-zero, within bound.
            let entries: Vec<_> = clock.iter().collect();
            prop_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(entries.iter().all(|&(_, c)| c > 0));
            prop_assert!(clock.len() <= clock.max_entries());
        }
    }
}
