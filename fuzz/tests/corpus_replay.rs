//! Replays every committed corpus input through its target's check, on stable, so CI
//! catches a regression on any input the fuzzer once found interesting.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&corpus).expect("fuzz/corpus exists") {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(&(_, check)) = themis_fuzz::TARGETS.iter().find(|(target, _)| *target == name) else {
            panic!("corpus directory {name} matches no fuzz target in src/lib.rs");
        };
        let mut inputs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "corpus/{name} is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            println!("replaying {}", input.display());
            check(&data);
            replayed += 1;
        }
    }
    for (target, _) in themis_fuzz::TARGETS {
        assert!(corpus.join(target).is_dir(), "fuzz target {target} has no corpus directory");
    }
    println!("replayed {replayed} inputs");
}
