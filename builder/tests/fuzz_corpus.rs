//! The `dockerignore` fuzz target's committed corpus (`fuzz/corpus/dockerignore/`), replayed in
//! the normal test run (stable Rust, no cargo-fuzz) through the same function the target calls.

#[path = "../../fuzz/src/dockerignore.rs"]
mod target;

use std::path::PathBuf;

#[test]
fn dockerignore_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dockerignore");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} has {} inputs",
        dir.display(),
        files.len()
    );
    for file in files {
        let input = std::fs::read(&file).expect("a corpus file");
        // Printed only when the test fails: the input that broke it.
        println!("{}", file.display());
        target::dockerignore(&input);
    }
}
