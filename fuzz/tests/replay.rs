//! Replays the committed corpora through the targets: fuzz/corpus/TARGET/* (what
//! AFL++ kept, minimised) and fuzz/findings/TARGET/* (the crashes and hangs it found,
//! fixed since), so CI keeps every finding fixed, in seconds, without the fuzzer.

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn every_corpus_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in fuzz::TARGETS {
        let dir = root.join("corpus").join(target.name);
        let findings = root.join("findings").join(target.name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .chain(std::fs::read_dir(&findings).into_iter().flatten())
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
        let mut slowest = (Duration::ZERO, None);
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| (target.run)(&data));
            assert!(
                outcome.is_ok(),
                "{} panicked on {}",
                target.name,
                input.display()
            );
            slowest = slowest.max((started.elapsed(), Some(input)));
        }
        // Printed, not asserted: slow inputs are scripts/fuzz's to find (hangs).
        let (took, input) = slowest;
        eprintln!(
            "{}: {} inputs, the slowest {took:?} ({})",
            target.name,
            inputs.len(),
            input.map_or("-".into(), |p| p.display().to_string())
        );
    }
}
