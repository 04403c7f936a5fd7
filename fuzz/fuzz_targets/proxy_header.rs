//! The first bytes of a connection from a trusted load balancer (PROXY protocol v1/v2).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flynn_fuzz::proxy_header(data));
