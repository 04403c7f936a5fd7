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

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

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

/// One answered request.
#[derive(Debug)]
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub request: &'a Request,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`.
    pub proto: &'static str,
    /// The status sent; 0 when nothing was (the client went away, or the response was cut).
    pub status: u16,
    /// The instance the request was last sent to; None when it went to none (the router
    /// answered itself, or no instance could be reached).
    pub upstream: Option<SocketAddr>,
    pub duration: Duration,
}

#[derive(Serialize)]
struct Line<'a> {
    time: Cow<'a, str>,
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

    /// Logs one request (never waits: a full queue drops the line and counts it).
    pub fn record(&self, entry: &Entry) {
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into(),
            client: entry.client,
            method: &entry.request.method,
            host: &entry.request.host,
            uri: &entry.request.uri,
            scheme: entry.scheme,
            proto: entry.proto,
            status: entry.status,
            upstream: entry.upstream,
            duration_ms: (entry.duration.as_secs_f64() * 1e6).round() / 1e3,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let Some(lines) = &self.lines else {
            return;
        };
        match lines.try_send(text) {
            Ok(()) => {}
            // Full, or the writer is gone (its output failed: said once, when it stopped).
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
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
        for status in [200, 404, 0] {
            log.record(&Entry {
                client: Some("192.0.2.1".parse().expect("ip")),
                request: &request,
                scheme: "http",
                proto: "HTTP/1.1",
                status,
                upstream: Some("10.0.0.5:8080".parse().expect("address")),
                duration: Duration::from_micros(1500),
            });
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
