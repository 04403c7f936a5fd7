//! The test image's server: std only, built static by the tests (`rustc -C
//! target-feature=+crt-static`) and put alone in a FROM-scratch image. It listens on $PORT and
//! answers every request with its job id as JSON, `{"backend": "<FLYNN_JOB_ID>", ...}`; with
//! CRASH_AFTER_MS set it exits with status 3 that long after starting. It prints a line for
//! each request (`request GET /path`), for `flynn log`.
//!
//! As a one-off command (`flynn run /webapp MODE ...`): `echo ARGS...` prints its arguments on
//! stdout and `echo done` on stderr, then exits with $EXIT_CODE (default 0); `cat` copies stdin
//! to stdout; `env NAME` prints the variable's value.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => {
            println!("{}", args[1..].join(" "));
            eprintln!("echo done");
            let code = std::env::var("EXIT_CODE").ok().and_then(|c| c.parse().ok());
            std::process::exit(code.unwrap_or(0));
        }
        Some("cat") => {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::stdout());
            return;
        }
        Some("env") => {
            println!("{}", std::env::var(&args[1]).unwrap_or_default());
            return;
        }
        _ => {}
    }
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
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let line = head.lines().next().unwrap_or_default();
            let mut parts = line.split(' ');
            println!(
                "request {} {}",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            );
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
