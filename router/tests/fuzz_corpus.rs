//! The fuzz targets' committed corpus, replayed in the normal test run (stable Rust, no
//! cargo-fuzz): every file under `fuzz/corpus/<target>/` goes through the same function the
//! fuzz target calls (`fuzz/src/lib.rs`).

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::PathBuf;

/// Runs `check` on every input of a target's corpus, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    for file in files {
        let input = std::fs::read(&file).expect("a corpus file");
        // Printed only when the test fails: the input that broke it.
        println!("{}", file.display());
        check(&input);
    }
}

#[test]
fn route_json_corpus() {
    replay("route_json", targets::route_json);
}

#[test]
fn host_match_corpus() {
    replay("host_match", targets::host_match);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", targets::proxy_header);
}

#[test]
fn h1_messages_corpus() {
    replay("h1_messages", targets::h1_messages);
}

#[test]
fn h1_differential_corpus() {
    replay("h1_differential", targets::h1_differential);
}
