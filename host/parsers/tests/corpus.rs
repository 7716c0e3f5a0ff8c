//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its target's body on
//! the stable toolchain, so CI runs each seed and each input a fuzzing run kept, and a crash
//! once found stays fixed.

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_input_passes_its_target() {
    for &(target, body) in corral_parsers::fuzz::TARGETS {
        let dir = corpus(target);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for {target} at {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the corpus of {target} is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", input.display());
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let targets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for &(target, _) in corral_parsers::fuzz::TARGETS {
        let file = targets.join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("corral_parsers::fuzz::{target}(")),
            "{} does not call its body",
            file.display()
        );
    }
}
