//! Passing a backend's response body on to the client, by the framing its head said, and what
//! can go wrong on the way: a [`RelayError`] that knows which side failed, counted by side
//! (`flynn_router_h1_relay_errors_total{side}`).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::response::{Chunks, Framing};
use super::{Conn, FastH1, BODY_READ};

/// Why a response body could not be passed on whole.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Writing to the client failed: it went away or stopped reading.
    #[error("writing to the client: {0}")]
    Client(#[source] std::io::Error),
    /// The backend closed its connection or failed before the body's end.
    #[error("reading from the backend: {0}")]
    Backend(#[source] std::io::Error),
    /// The backend was silent for longer than the upstream timeout.
    #[error("the backend was silent for longer than the upstream timeout")]
    Timeout,
    /// The backend's chunked body is broken.
    #[error("malformed chunked body from the backend: {0}")]
    Malformed(&'static str),
}

/// Which side a [`RelayError`] is on: the label of its metric, and (as `usize`) the index of
/// its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Timeout,
    Malformed,
}

impl Side {
    pub const ALL: [Side; 4] = [Side::Client, Side::Backend, Side::Timeout, Side::Malformed];

    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Timeout => "timeout",
            Side::Malformed => "malformed",
        }
    }
}

impl RelayError {
    pub fn side(&self) -> Side {
        match self {
            RelayError::Client(_) => Side::Client,
            RelayError::Backend(_) => Side::Backend,
            RelayError::Timeout => Side::Timeout,
            RelayError::Malformed(_) => Side::Malformed,
        }
    }
}

impl FastH1 {
    /// Passes the response body on after the head in `conn.out`. `Ok(true)`: the body ended
    /// exactly where the backend's bytes did, so its connection can be reused.
    pub(super) async fn relay(
        &self,
        conn: &mut Conn,
        upstream: &mut Stream,
        framing: Framing,
    ) -> Result<bool, RelayError> {
        let read_timeout = self.router.timeouts.read;
        match framing {
            Framing::Empty => {
                conn.send_out().await.map_err(RelayError::Client)?;
            }
            Framing::Length(mut left) => loop {
                let take = conn.from_backend.len().min(left as usize);
                conn.out.extend_from_slice(&conn.from_backend[..take]);
                conn.from_backend.advance(take);
                left -= take as u64;
                conn.send_out().await.map_err(RelayError::Client)?;
                conn.out.clear();
                if left == 0 {
                    break;
                }
                read_more(upstream, &mut conn.from_backend, read_timeout).await?;
            },
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                loop {
                    let n = chunks
                        .advance(&conn.from_backend)
                        .map_err(RelayError::Malformed)?;
                    conn.out.extend_from_slice(&conn.from_backend[..n]);
                    conn.from_backend.advance(n);
                    if chunks.done() || !conn.out.is_empty() {
                        conn.send_out().await.map_err(RelayError::Client)?;
                        conn.out.clear();
                    }
                    if chunks.done() {
                        break;
                    }
                    read_more(upstream, &mut conn.from_backend, read_timeout).await?;
                }
            }
            Framing::UntilClose => {
                loop {
                    if !conn.from_backend.is_empty() {
                        chunk(&mut conn.out, &conn.from_backend);
                        conn.from_backend.clear();
                    }
                    conn.send_out().await.map_err(RelayError::Client)?;
                    conn.out.clear();
                    conn.from_backend.reserve(BODY_READ);
                    match timeout(read_timeout, upstream.read_buf(&mut conn.from_backend)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(RelayError::Backend(e)),
                        Err(_) => return Err(RelayError::Timeout),
                    }
                }
                conn.out.extend_from_slice(b"0\r\n\r\n");
                conn.send_out().await.map_err(RelayError::Client)?;
                return Ok(false);
            }
        }
        Ok(conn.from_backend.is_empty())
    }
}

/// Reads more of a response body; the end of the connection or a timeout is an error here.
pub(in crate::proxy) async fn read_more(
    upstream: &mut Stream,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), RelayError> {
    buf.reserve(BODY_READ);
    match timeout(wait, upstream.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(RelayError::Backend(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Ok(Err(e)) => Err(RelayError::Backend(e)),
        Err(_) => Err(RelayError::Timeout),
    }
}

/// Appends `data` as one chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_knows_its_side() {
        let io = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let sides: Vec<_> = [
            RelayError::Client(io()),
            RelayError::Backend(io()),
            RelayError::Timeout,
            RelayError::Malformed("no CRLF after chunk data"),
        ]
        .iter()
        .map(RelayError::side)
        .collect();
        assert_eq!(sides, Side::ALL);
        // `Side::ALL` lists the sides in their order as indices (the metric's counters).
        assert!(Side::ALL.iter().enumerate().all(|(i, &s)| s as usize == i));
        let labels: Vec<_> = Side::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(labels, ["client", "backend", "timeout", "malformed"]);
    }

    #[test]
    fn until_close_bodies_are_chunked_for_the_client() {
        let mut out = Vec::new();
        chunk(&mut out, b"hello world, and more");
        assert_eq!(out, b"15\r\nhello world, and more\r\n");
    }
}
