//! The same request bytes through both engines' request parsers: they agree on what the fast
//! path takes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flynn_fuzz::h1_differential(data));
