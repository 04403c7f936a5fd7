//! Route table edits and Host/path lookups as arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flynn_fuzz::host_match(data));
