//! The fuzz targets' smoke (the coverage-guided runs are `fuzz/run.sh`):
//! each target replays its seed corpus (`fuzz/corpus/<target>/`), every
//! crash found so far (`fuzz/regressions/<target>/`), and deterministic
//! mutations of the seeds for about two seconds. Debug builds panic on
//! integer overflow, so this catches unchecked arithmetic too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiroku::fuzzing::{mutations, run_for, TARGETS};

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(&p).expect("corpus file"))
        .collect()
}

#[test]
fn every_target_survives_its_corpus_its_regressions_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let seeds = files(&root.join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        let regressions = files(&root.join("regressions").join(name));
        for input in seeds.iter().chain(&regressions) {
            target(input);
        }
        let mut inputs = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            inputs.extend(mutations(
                seed,
                20_000 / seeds.len().max(1),
                0x5eed + i as u64,
            ));
        }
        let ran = run_for(*target, &inputs, Duration::from_secs(2));
        report.push(format!(
            "{name}: {} seeds, {} regressions, {ran} mutations",
            seeds.len(),
            regressions.len()
        ));
    }
    println!("{}", report.join("\n"));
}
