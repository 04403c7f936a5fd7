//! Store values (routes, certificates, instances) as arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flynn_fuzz::route_json(data));
