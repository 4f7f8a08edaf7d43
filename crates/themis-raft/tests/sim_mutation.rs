//! The simulator catches a broken core: with a deliberately injected bug, some seed must
//! fail with the invariant that bug breaks. Without this, a simulator that checks nothing
//! would pass as well as a correct one.

use themis_raft::mutation::{self, Mutation};
use themis_testkit::sim::{SimConfig, Simulation, Violation};

/// Runs seeds with `mutation` on until one fails; the violation found.
fn first_violation(mutation: Mutation, nodes: usize, seeds: u64) -> Option<Violation> {
    mutation::set(Some(mutation));
    let found = (0..seeds).find_map(|seed| {
        let mut config = SimConfig::new(seed, nodes);
        config.lease_reads = true;
        // Elections are where a double-counted vote matters: more of them.
        config.faults.fault_every_ticks = 15;
        Simulation::new(config).run().err()
    });
    mutation::set(None);
    found
}

#[test]
fn a_double_counted_vote_is_caught() {
    let violation = first_violation(Mutation::DoubleCountVote, 5, 300)
        .expect("the simulator missed a double-counted vote");
    eprintln!("{violation}");
    assert!(
        [
            "election safety",
            "state machine safety",
            "leader completeness",
            "lease safety",
            "acknowledged writes are durable",
            "linearizability"
        ]
        .contains(&violation.invariant),
        "{violation}"
    );
    assert!(violation.to_string().contains("cargo xtask sim --seed"), "the report says how to replay");
}

#[test]
fn a_lease_longer_than_the_election_timeout_breaks_lease_safety() {
    let violation = first_violation(Mutation::LeaseOutlivesElection, 3, 300)
        .expect("the simulator missed a lease that outlives the voters' promise");
    eprintln!("{violation}");
    assert!(["lease safety", "linearizability"].contains(&violation.invariant), "{violation}");
}

#[test]
fn a_leader_that_forgets_the_time_it_was_paused_breaks_lease_safety() {
    // The core is right; the driver around it is not: a paused leader resumes with the
    // tick count it had, so its lease looks as fresh as before the pause.
    let found = (0..300).find_map(|seed| {
        let mut config = SimConfig::new(seed, 3);
        config.lease_reads = true;
        config.faults.count_paused_time = false;
        config.faults.fault_every_ticks = 15;
        Simulation::new(config).run().err()
    });
    let violation = found.expect("the simulator missed a paused leader serving from its old lease");
    eprintln!("{violation}");
    assert!(["lease safety", "linearizability"].contains(&violation.invariant), "{violation}");
    // Counted, as the driver does before a read, the same seed keeps every invariant.
    let mut config = SimConfig::new(violation.seed, 3);
    config.lease_reads = true;
    config.faults.fault_every_ticks = 15;
    Simulation::new(config).run().expect("the same seed with the paused time counted");
}
