//! The examples, run as tests so CI runs them (each is also `cargo run --example <name>`).

#[path = "../examples/kv_cluster.rs"]
#[allow(dead_code, reason = "its main is for `cargo run --example`")]
mod kv_cluster;

#[path = "../examples/hlc_demo.rs"]
#[allow(dead_code, reason = "called below")]
mod hlc_demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_value_example_replicates_and_survives_its_leader() {
    // 150 keys written, one deleted.
    assert_eq!(kv_cluster::run().await, 149, "every write, before and after the failover, on both survivors");
}

#[test]
fn the_clock_example_runs() {
    hlc_demo::main().unwrap();
}
