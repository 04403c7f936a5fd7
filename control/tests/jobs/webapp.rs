//! The test image's server: std only, built static by the tests (`rustc -C
//! target-feature=+crt-static`) and put alone in a FROM-scratch image. It listens on $PORT and
//! answers every request with its job id as JSON, `{"backend": "<FLYNN_JOB_ID>", ...}`; with
//! CRASH_AFTER_MS set it exits with status 3 that long after starting.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let job = std::env::var("FLYNN_JOB_ID").unwrap_or_default();
    let app = std::env::var("FLYNN_APP_NAME").unwrap_or_default();
    let release = std::env::var("FLYNN_RELEASE_ID").unwrap_or_default();
    if let Some(ms) = std::env::var("CRASH_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(3);
        });
    }
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind $PORT");
    let body = format!(
        "{{\"backend\":\"{job}\",\"app\":\"{app}\",\"release\":\"{release}\",\"port\":\"{port}\"}}\n"
    );
    for stream in listener.incoming().flatten() {
        let body = body.clone();
        std::thread::spawn(move || serve(stream, &body));
    }
}

/// Answers each request head on the connection (keep-alive), until the client closes.
fn serve(mut stream: TcpStream, body: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.drain(..end + 4);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
