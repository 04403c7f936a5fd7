//! A `.dockerignore` from a git push, and paths tested against it.
#![no_main]

// Not in `src/lib.rs`: the router's corpus replay includes that file and must not need
// flynn-builder.
#[path = "../src/dockerignore.rs"]
mod dockerignore;

libfuzzer_sys::fuzz_target!(|data: &[u8]| dockerignore::dockerignore(data));
