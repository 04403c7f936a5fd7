//! What a client sends the HTTP/1.1 fast path, and what a backend answers it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flynn_fuzz::h1_messages(data));
