//! Passing a backend's response on to an HTTP/2 stream: the head as an HTTP/2 one, the body in
//! DATA frames, each sent once the stream's flow control has room for it (so a client that reads
//! slowly holds the backend back instead of the router buffering the body), chunked bodies
//! decoded, a body that ends when the backend closes ended with the stream.

use bytes::Buf;
use pingora::protocols::http::v2::server::HttpSession;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::super::h1::response::{Chunks, Framing};
use super::super::h1::{read_more, Client, Conn, FastH1, RelayError, BODY_READ};
use super::head::ResponseHead;
use super::H2Stream;

/// A failed write to the client's stream (reset, or its connection gone).
fn client_gone(e: Box<pingora::Error>) -> RelayError {
    RelayError::Client(std::io::Error::other(e.to_string()))
}

impl FastH1 {
    /// Passes the response on to the HTTP/2 stream `conn` is for: the head `response::parse`
    /// wrote for it, then the body by `framing`. `Ok(true)`: the body ended exactly where the
    /// backend's bytes did, so its connection can be reused. The head stays pending until it is
    /// sent: a chunked body broken before its first byte then gets the router's 502, as on
    /// HTTP/1.
    pub(in crate::proxy) async fn relay_h2(
        &self,
        conn: &mut Conn,
        upstream: &mut Stream,
        framing: Framing,
    ) -> Result<bool, RelayError> {
        let read_timeout = self.router.timeouts.read;
        let Client::H2(stream) = &mut conn.client else {
            return Ok(false);
        };
        let H2Stream { session, head } = &mut **stream;
        let from_backend = &mut conn.from_backend;
        match framing {
            Framing::Empty => send_head(session, head, true)?,
            Framing::Length(mut left) => {
                send_head(session, head, left == 0)?;
                while left > 0 {
                    if from_backend.is_empty() {
                        read_more(upstream, from_backend, read_timeout).await?;
                    }
                    let take = left.min(from_backend.len() as u64);
                    left -= take;
                    let data = from_backend.split_to(take as usize).freeze();
                    session
                        .write_body(data, left == 0)
                        .await
                        .map_err(client_gone)?;
                }
            }
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                loop {
                    let data = matches!(chunks, Chunks::Data(_));
                    match chunks.step(from_backend).map_err(RelayError::Malformed)? {
                        Some(used) if data => {
                            send_head(session, head, false)?;
                            let data = from_backend.split_to(used).freeze();
                            session.write_body(data, false).await.map_err(client_gone)?;
                        }
                        Some(used) => from_backend.advance(used),
                        None if chunks.done() => break,
                        None => read_more(upstream, from_backend, read_timeout).await?,
                    }
                }
                // Trailers, if any, are dropped.
                if head.pending() {
                    send_head(session, head, true)?;
                } else {
                    session.finish().map_err(client_gone)?;
                }
            }
            Framing::UntilClose => {
                send_head(session, head, false)?;
                loop {
                    if !from_backend.is_empty() {
                        let data = from_backend.split().freeze();
                        session.write_body(data, false).await.map_err(client_gone)?;
                    }
                    from_backend.reserve(BODY_READ);
                    match timeout(read_timeout, upstream.read_buf(&mut *from_backend)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(RelayError::Backend(e)),
                        Err(_) => return Err(RelayError::Timeout),
                    }
                }
                session.finish().map_err(client_gone)?;
                return Ok(false);
            }
        }
        Ok(conn.from_backend.is_empty())
    }
}

/// Sends the pending response head (if it is not sent yet), ending the stream with it when `end`.
fn send_head(
    session: &mut HttpSession,
    head: &mut ResponseHead,
    end: bool,
) -> Result<(), RelayError> {
    match head.take() {
        Some(parts) => session
            .write_response_parts(parts, end)
            .map_err(client_gone),
        None => Ok(()),
    }
}
