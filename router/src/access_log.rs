//! The access log (`--access-log`): one JSON object per answered request, on every engine.
//!
//! ```json
//! {"time":"2026-12-01T16:20:00.123Z","client":"203.0.113.7","method":"GET","host":"example.com","uri":"/a?b=1","scheme":"https","proto":"HTTP/1.1","status":200,"upstream":"10.0.0.5:8080","duration_ms":0.412}
//! ```
//!
//! A request only formats its line and hands it to a queue; a thread of its own takes what is
//! queued every [`WRITE_EVERY`] and writes it at once, so that no request waits on the disk or
//! on a slow reader of stdout, and none pays for a system call or a wake-up. A line that finds the queue full is dropped and counted
//! (`flynn_router_access_log_dropped_total`), as HAProxy drops log lines rather than block.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

use crate::proxy::headers::Origin;

/// Lines waiting for the writer, at most: a burst of this many requests is logged whole while
/// the disk stalls.
const QUEUE: usize = 64 * 1024;

/// How often the writer takes the queued lines. Measured (benches/load.sh): woken for each
/// line instead, with a write per line, logging took 11 µs of CPU per request.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// Where the lines go, and the queue to the thread that writes them.
#[derive(Debug)]
pub struct AccessLog {
    /// None once dropped (the writer then ends).
    lines: Option<SyncSender<String>>,
    writer: Option<JoinHandle<()>>,
    dropped: IntCounter,
}

/// What is logged of one request. Empty fields are what the router could not read (a request
/// head refused before it was parsed).
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub host: String,
    pub uri: String,
}

impl Request {
    /// From the raw bytes of a request head's parts (not UTF-8: replaced characters).
    pub fn from_bytes(method: &[u8], host: &[u8], uri: &[u8]) -> Request {
        Request {
            method: String::from_utf8_lossy(method).into_owned(),
            host: String::from_utf8_lossy(host).into_owned(),
            uri: String::from_utf8_lossy(uri).into_owned(),
        }
    }
}

/// How a request came (its client and scheme: the forwarding headers' [`Origin`]) and where
/// it went.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub origin: Origin,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`.
    pub proto: &'static str,
    /// The instance the request was last sent to; None when it went to none (the router
    /// answered itself, or no instance could be reached).
    pub upstream: Option<SocketAddr>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: Option<IpAddr>,
    method: &'a str,
    host: &'a str,
    uri: &'a str,
    scheme: &'a str,
    proto: &'a str,
    status: u16,
    upstream: Option<SocketAddr>,
    duration_ms: f64,
}

impl AccessLog {
    /// Opens `dest`: `-` for standard output, else a file, created if missing (mode 0640) and
    /// appended to (so that logrotate's `copytruncate` works). Starts the writer thread.
    pub fn open(dest: &str) -> io::Result<AccessLog> {
        let dropped = IntCounter::new(
            "flynn_router_access_log_dropped_total",
            "Access log lines dropped because the log's writer fell behind (--access-log)",
        )
        .map_err(io::Error::other)?;
        let out: Box<dyn Write + Send> = if dest == "-" {
            Box::new(io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(dest)?,
            )
        };
        let (lines, queue) = mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&queue, out))?;
        Ok(AccessLog {
            lines: Some(lines),
            writer: Some(writer),
            dropped,
        })
    }

    /// The count of dropped lines, for the router's metrics.
    pub fn dropped(&self) -> IntCounter {
        self.dropped.clone()
    }

    /// Logs one request, answered with `status` (0: nothing was sent: the client went away,
    /// or the response was cut) after `duration`. Never waits: a full queue drops the line and
    /// counts it.
    pub fn record(&self, request: &Request, answered: &Answered, status: u16, duration: Duration) {
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client: answered.origin.client_ip,
            method: &request.method,
            host: &request.host,
            uri: &request.uri,
            scheme: answered.origin.proto,
            proto: answered.proto,
            status,
            upstream: answered.upstream,
            duration_ms: (duration.as_secs_f64() * 1e6).round() / 1e3,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        // Full, or the writer is gone (its output failed: said once, when it stopped).
        if self
            .lines
            .as_ref()
            .is_some_and(|l| l.try_send(text).is_err())
        {
            self.dropped.inc();
        }
    }
}

impl Drop for AccessLog {
    /// Waits for the writer to write what is queued.
    fn drop(&mut self) {
        self.lines = None;
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

/// The writer thread: every [`WRITE_EVERY`], what is queued, in order, then flushed. Ends when
/// the router drops its [`AccessLog`] (after writing the rest), or when the output fails
/// (logged once).
fn write_lines(queue: &Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let written = (|| -> io::Result<()> {
        loop {
            let open = loop {
                match queue.try_recv() {
                    Ok(line) => out.write_all(line.as_bytes())?,
                    Err(TryRecvError::Empty) => break true,
                    Err(TryRecvError::Disconnected) => break false,
                }
            };
            out.flush()?;
            if !open {
                return Ok(());
            }
            // Woken early only by the router dropping its log (`AccessLog::drop`).
            std::thread::park_timeout(WRITE_EVERY);
        }
    })();
    if let Err(e) = written {
        tracing::error!(error = %e, "the access log cannot be written: no more lines are logged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_one_json_line_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().expect("utf-8")).expect("open");
        let dropped = log.dropped();
        let request = Request::from_bytes(b"GET", b"a.test", b"/x?q=\"1\"\xff");
        let answered = Answered {
            origin: Origin {
                client_ip: Some("192.0.2.1".parse().expect("ip")),
                proto: "http",
                port: Some(80),
            },
            proto: "HTTP/1.1",
            upstream: Some("10.0.0.5:8080".parse().expect("address")),
        };
        for status in [200, 404, 0] {
            log.record(&request, &answered, status, Duration::from_micros(1500));
        }
        drop(log); // waits for the writer
        let text = std::fs::read_to_string(&path).expect("the log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines[0]["method"], "GET");
        assert_eq!(lines[0]["host"], "a.test");
        assert_eq!(lines[0]["uri"], "/x?q=\"1\"\u{fffd}");
        assert_eq!(lines[0]["client"], "192.0.2.1");
        assert_eq!(lines[0]["proto"], "HTTP/1.1");
        assert_eq!(lines[0]["scheme"], "http");
        assert_eq!(lines[0]["upstream"], "10.0.0.5:8080");
        assert_eq!(lines[0]["duration_ms"], 1.5);
        let statuses: Vec<_> = lines.iter().map(|l| l["status"].clone()).collect();
        assert_eq!(statuses, [200, 404, 0]);
        assert!(lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(dropped.get(), 0);
    }
}
