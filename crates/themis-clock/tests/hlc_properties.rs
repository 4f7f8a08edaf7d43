//! Laws of the hybrid logical clock under arbitrary physical-clock behaviour.
//!
//! proptest prints the failing case and persists its seed in `proptest-regressions/`,
//! so a failure replays with a plain `cargo test`.

use std::time::Duration;

use proptest::prelude::*;
use themis_clock::{ClockError, Hlc, ManualClock, NodeId, PhysicalClock, Timestamp};

/// What the wall clock does before the next reading: anything a real one can do.
#[derive(Debug, Clone)]
enum Wall {
    Stay,
    Forward(u64),
    Back(u64),
    Jump(u64),
}

fn wall() -> impl Strategy<Value = Wall> {
    prop_oneof![
        Just(Wall::Stay),
        (0u64..2_000).prop_map(Wall::Forward),
        (0u64..1_000_000).prop_map(Wall::Back),
        // Anywhere in the representable range, including 0 and the 48-bit limit.
        (0u64..=u64::MAX >> 16).prop_map(Wall::Jump),
    ]
}

fn apply(clock: &ManualClock, step: &Wall) {
    match *step {
        Wall::Stay => {}
        Wall::Forward(ms) => clock.advance_ms(ms),
        Wall::Back(ms) => clock.set_ms(clock.now_ms().saturating_sub(ms)),
        Wall::Jump(ms) => clock.set_ms(ms),
    }
}

/// One step of a small cluster: a node stamps a local or send event, or receives a message
/// that was sent earlier.
#[derive(Debug, Clone)]
enum Event {
    Local { node: usize, wall: Wall },
    Send { node: usize, wall: Wall },
    Receive { node: usize, message: usize, wall: Wall },
}

fn event(nodes: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..nodes, wall()).prop_map(|(node, wall)| Event::Local { node, wall }),
        (0..nodes, wall()).prop_map(|(node, wall)| Event::Send { node, wall }),
        (0..nodes, any::<usize>(), wall()).prop_map(|(node, message, wall)| Event::Receive {
            node,
            message,
            wall
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `now()` is strictly increasing whatever the wall clock does, and never behind it.
    #[test]
    fn now_is_strictly_monotonic(start in 0u64..=u64::MAX >> 16, steps in prop::collection::vec(wall(), 1..200)) {
        let wall_clock = ManualClock::new(start);
        let hlc = Hlc::with_clock(NodeId(1), wall_clock.clone());
        let mut last = hlc.now();
        for step in &steps {
            apply(&wall_clock, step);
            let next = hlc.now();
            prop_assert!(next > last, "{next} after {last} with wall step {step:?}");
            prop_assert!(next.physical_ms() >= wall_clock.now_ms().min(themis_clock::MAX_PHYSICAL_MS));
            prop_assert_eq!(hlc.last(), next);
            last = next;
        }
    }

    /// Happens-before implies timestamp order: every node's events increase, and every
    /// receive is after its send. A refused (skewed) message changes nothing.
    #[test]
    fn send_and_receive_preserve_happens_before(
        events in prop::collection::vec(event(3), 1..300),
        starts in prop::collection::vec(0u64..10_000, 3),
    ) {
        let walls: Vec<ManualClock> = starts.iter().map(|&ms| ManualClock::new(ms)).collect();
        let clocks: Vec<Hlc<ManualClock>> = walls
            .iter()
            .enumerate()
            .map(|(i, w)| Hlc::with_clock(NodeId(i as u64), w.clone()).with_max_offset(Duration::from_millis(800)).unwrap())
            .collect();
        let mut latest: Vec<Option<Timestamp>> = vec![None; clocks.len()];
        let mut sent: Vec<Timestamp> = Vec::new();
        for event in &events {
            let (node, stamp) = match event {
                Event::Local { node, wall } | Event::Send { node, wall } => {
                    apply(&walls[*node], wall);
                    let ts = clocks[*node].now();
                    if matches!(event, Event::Send { .. }) {
                        sent.push(ts);
                    }
                    (*node, Some(ts))
                }
                Event::Receive { node, message, wall } => {
                    apply(&walls[*node], wall);
                    if sent.is_empty() {
                        continue;
                    }
                    let message = sent[message % sent.len()];
                    let before = clocks[*node].last();
                    match clocks[*node].update(message) {
                        Ok(ts) => {
                            prop_assert!(ts > message, "receive {ts} not after send {message}");
                            (*node, Some(ts))
                        }
                        Err(ClockError::Skew { ahead_ms, max_offset_ms, .. }) => {
                            prop_assert!(ahead_ms > max_offset_ms);
                            prop_assert_eq!(clocks[*node].last(), before);
                            (*node, None)
                        }
                        Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
                    }
                }
            };
            if let Some(ts) = stamp {
                if let Some(previous) = latest[node] {
                    prop_assert!(ts > previous, "node {node}: {ts} not after {previous}");
                }
                prop_assert_eq!(ts.node(), NodeId(node as u64));
                latest[node] = Some(ts);
            }
        }
    }

    /// The text and byte encodings round-trip every timestamp.
    #[test]
    fn encodings_round_trip(time: u64, node: u64) {
        let ts = Timestamp::from_raw(time, NodeId(node));
        prop_assert_eq!(ts.to_string().parse::<Timestamp>().unwrap(), ts);
        prop_assert_eq!(Timestamp::from_bytes(&ts.to_bytes()).unwrap(), ts);
    }

    /// Arbitrary strings and bytes never panic the decoders.
    #[test]
    fn decoders_never_panic(text in ".{0,40}", bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = text.parse::<Timestamp>();
        let _ = text.parse::<NodeId>();
        let decoded = Timestamp::from_bytes(&bytes);
        prop_assert_eq!(decoded.is_ok(), bytes.len() == Timestamp::ENCODED_LEN);
    }
}
