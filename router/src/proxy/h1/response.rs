//! A backend's response: its head rewritten for the client, and where its body ends.

use httparse::Status;

use super::request::put_header;
use crate::proxy::framing::{self, BodyLength};
use crate::proxy::headers;

/// More headers than this from a backend is a 502.
const MAX_HEADERS: usize = 128;
/// More names in a `Connection` header than this is a 502.
const MAX_NOMINATED: usize = 16;

/// Whether a backend's response header stays away from the client: hop-by-hop ones (the same
/// list as on pingora's path) and `Date`, which the router sets itself (as pingora does).
fn dropped(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"date")
        || headers::HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    /// Passed on as it came, chunk by chunk.
    Chunked,
    /// Until the backend closes; sent to the client chunked.
    UntilClose,
}

/// A backend response head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend may be sent another request on this connection afterwards.
    pub reusable: bool,
}

/// The outcome of looking at the start of the backend's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Partial,
    /// An interim (1xx) response: its head, rewritten, is in `out`; the final one follows.
    Interim(usize),
    /// The final response: its head, rewritten, is in `out`.
    Final(Head),
    /// Not a response the router passes on: 502.
    Bad(&'static str),
}

/// Where [`parse`] writes the head the client gets: the HTTP/1.1 text (`Vec<u8>`), or an
/// HTTP/2 head (`proxy::h2::head::ResponseHead`), from the same decisions.
pub trait HeadOut {
    /// Starts a new head (what was there before is dropped).
    fn start(&mut self, status: u16, reason: &str);
    fn header(&mut self, name: &[u8], value: &[u8]);
    /// The head is whole. `Err`: it cannot be sent as written (why), and `parse` answers
    /// [`Parse::Bad`], as for a head the backend got wrong.
    fn end(&mut self) -> Result<(), &'static str>;
}

impl HeadOut for Vec<u8> {
    fn start(&mut self, status: u16, reason: &str) {
        self.clear();
        self.extend_from_slice(b"HTTP/1.1 ");
        self.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        self.push(b' ');
        self.extend_from_slice(reason.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        put_header(self, name, value);
    }

    fn end(&mut self) -> Result<(), &'static str> {
        self.extend_from_slice(b"\r\n");
        Ok(())
    }
}

/// Parses the response head at the start of `buf` and writes the head the client gets into `out`
/// (started anew): the status line as HTTP/1.1, the backend's headers minus hop-by-hop ones and
/// those its `Connection` header names, then `Date`, `Connection` and, for a body that ends when
/// the backend closes, `Transfer-Encoding: chunked`.
pub fn parse(
    buf: &[u8],
    head_request: bool,
    keep_client: bool,
    date: &[u8],
    out: &mut impl HeadOut,
) -> Parse {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::Bad("too many response headers"),
        Err(_) => return Parse::Bad("malformed response head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Parse::Bad("malformed response head");
    };
    if !(100..=599).contains(&status) {
        // httparse takes any three digits (`020`); HTTP's status codes are 100 to 599.
        return Parse::Bad("status code out of range");
    }
    if status == 101 {
        return Parse::Bad("101 to a request that asked for no upgrade");
    }

    let mut nominated: [&[u8]; MAX_NOMINATED] = [b""; MAX_NOMINATED];
    let mut nominations = 0;
    let mut backend_close = version == 0;
    for header in resp.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    backend_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    backend_close &= version != 0;
                } else if !token.is_empty() {
                    let Some(slot) = nominated.get_mut(nominations) else {
                        return Parse::Bad("too many names in Connection");
                    };
                    *slot = token;
                    nominations += 1;
                }
            }
        }
    }
    // The framing rule both engines follow (proxy::framing).
    let named = |name: &'static str| {
        resp.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let body = match framing::body_length(named("transfer-encoding"), named("content-length")) {
        Ok(body) => body,
        Err(framing::BadFraming::NotChunkedLast) => {
            return Parse::Bad("a Transfer-Encoding whose final coding is not chunked")
        }
        Err(framing::BadFraming::ContentLength) => {
            return Parse::Bad("conflicting or invalid Content-Length")
        }
    };
    // Sent as one plain value, the Content-Length line passes as it came; beside chunked it is
    // dropped, and several identical values are rewritten as one.
    let drop_length = matches!(
        body,
        BodyLength::Chunked | BodyLength::Length { rewrite: true, .. }
    );
    // HTTP/1.0 keeps the connection only when asked to with `Connection: keep-alive`.
    if version == 0 && !backend_close {
        backend_close = !resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection")
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
        });
    }

    let interim = (100..200).contains(&status);
    let framing = if interim || head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match body {
            BodyLength::Chunked => Framing::Chunked,
            BodyLength::Length { length, .. } => Framing::Length(length),
            BodyLength::Unframed => Framing::UntilClose,
        }
    };

    out.start(status, resp.reason.unwrap_or(""));
    for header in resp.headers.iter() {
        let name = header.name.as_bytes();
        let dropped = dropped(name)
            || nominated[..nominations]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            || (drop_length && name.eq_ignore_ascii_case(b"content-length"));
        if !dropped {
            out.header(name, header.value);
        }
    }
    if let BodyLength::Length {
        length,
        rewrite: true,
    } = body
    {
        out.header(
            b"Content-Length",
            itoa::Buffer::new().format(length).as_bytes(),
        );
    }
    if interim {
        return match out.end() {
            Ok(()) => Parse::Interim(len),
            Err(why) => Parse::Bad(why),
        };
    }
    out.header(b"Date", date);
    // A body that ends when the backend closes goes out chunked: the client's connection stays.
    out.header(
        b"Connection",
        if keep_client { b"keep-alive" } else { b"close" },
    );
    if framing == Framing::UntilClose {
        out.header(b"Transfer-Encoding", b"chunked");
    }
    if let Err(why) = out.end() {
        return Parse::Bad(why);
    }
    Parse::Final(Head {
        len,
        status,
        framing,
        reusable: !backend_close && framing != Framing::UntilClose,
    })
}

/// Adds a header to a head `parse` wrote into `out` (before its final empty line).
pub fn add_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
        put_header(out, name, value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Follows a chunked body through the bytes passed on, to find where it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// A chunk-size or trailer line longer than this is a broken body.
const MAX_LINE: usize = 4096;

impl Chunks {
    /// How many bytes at the start of `buf` belong to the body (all of them, unless it ends
    /// within `buf` or a line is cut off at its end); `Err` for a malformed body.
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        while let Some(used) = self.step(&buf[at..])? {
            at += used;
        }
        Ok(at)
    }

    /// One step through the body at the start of `rest`: how many bytes it took, None when it
    /// needs more bytes (or the body is done). When the state before the step was
    /// [`Chunks::Data`], those bytes are chunk data (what an HTTP/2 client gets of the body).
    pub fn step(&mut self, rest: &[u8]) -> Result<Option<usize>, &'static str> {
        match *self {
            Chunks::Done => Ok(None),
            Chunks::Size => match httparse::parse_chunk_size(rest) {
                Ok(Status::Complete((used, size))) => {
                    *self = if size == 0 {
                        Chunks::Trailers
                    } else {
                        Chunks::Data(size)
                    };
                    Ok(Some(used))
                }
                Ok(Status::Partial) if rest.len() < MAX_LINE => Ok(None),
                _ => Err("malformed chunk size"),
            },
            Chunks::Data(left) => {
                if rest.is_empty() {
                    return Ok(None);
                }
                let take = left.min(rest.len() as u64);
                *self = match left - take {
                    0 => Chunks::DataEnd,
                    left => Chunks::Data(left),
                };
                Ok(Some(take as usize))
            }
            Chunks::DataEnd => match rest {
                [b'\r', b'\n', ..] => {
                    *self = Chunks::Size;
                    Ok(Some(2))
                }
                [] | [b'\r'] => Ok(None),
                _ => Err("no CRLF after chunk data"),
            },
            Chunks::Trailers => match rest.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    *self = Chunks::Done;
                    Ok(Some(2))
                }
                Some(line) => Ok(Some(line + 2)),
                None if rest.len() < MAX_LINE => Ok(None),
                None => Err("trailer line too long"),
            },
        }
    }

    pub fn done(&self) -> bool {
        *self == Chunks::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8] = b"Sun, 29 Nov 2026 18:00:00 GMT";

    fn final_head(raw: &[u8], head_request: bool, keep: bool) -> (Head, String) {
        let mut out = Vec::new();
        match parse(raw, head_request, keep, DATE, &mut out) {
            Parse::Final(head) => (head, String::from_utf8(out).expect("text")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heads_are_rewritten_for_the_client() {
        let raw =
            b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\nConnection: keep-alive, X-Internal\r\n\
            X-Internal: secret\r\nKeep-Alive: timeout=5\r\nDate: old\r\nX-App: 1\r\n\r\nok\n";
        let (head, text) = final_head(raw, false, true);
        assert_eq!(head.len, raw.len() - 3);
        assert_eq!(
            (head.status, head.framing, head.reusable),
            (200, Framing::Length(3), true)
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 Fine\r\nContent-Length: 3\r\nX-App: 1\r\n\
             Date: Sun, 29 Nov 2026 18:00:00 GMT\r\nConnection: keep-alive\r\n\r\n"
        );
        let (_, text) = final_head(raw, false, false);
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &[u8], head_request| final_head(raw, head_request, true).0.framing;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n",
                false
            ),
            Framing::Length(7)
        );
        let (head, text) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert!(
            text.contains("\r\nTransfer-Encoding: gzip, chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{text}");
        let (head, text) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(text.matches("Content-Length: 5\r\n").count(), 1, "{text}");
        assert!(!text.contains("5, 5"), "{text}");
        let (head, text) = final_head(b"HTTP/1.0 200 OK\r\n\r\n", false, true);
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            text.ends_with("Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn backend_connections_are_kept_only_when_they_may_be() {
        let reusable = |raw: &[u8]| final_head(raw, false, true).0.reusable;
        assert!(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn bad_heads_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 020 OK\r\n\r\n",
            b"HTTP/1.1 600 Nope\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(parse(raw, false, true, DATE, &mut out), Parse::Bad(_)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn interim_responses_are_passed_on() {
        let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        let mut out = Vec::new();
        assert_eq!(
            parse(raw, false, true, DATE, &mut out),
            Parse::Interim(raw.len() - 17)
        );
        assert_eq!(out, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
    }

    #[test]
    fn chunked_bodies_end_where_they_end_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..body.len() {
            let mut chunks = Chunks::default();
            let (a, b) = body.split_at(split);
            let first = chunks.advance(a).expect("valid");
            let mut rest = a[first..].to_vec();
            rest.extend_from_slice(b);
            rest.extend_from_slice(b"NEXT");
            let second = chunks.advance(&rest).expect("valid");
            assert!(chunks.done(), "split at {split}");
            assert_eq!(first + second, body.len(), "split at {split}");
        }
    }

    #[test]
    fn chunk_data_is_told_apart_from_framing_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..body.len() {
            let mut chunks = Chunks::default();
            let mut data = Vec::new();
            let mut buf = body[..split].to_vec();
            let mut fed = split;
            loop {
                let was_data = matches!(chunks, Chunks::Data(_));
                match chunks.step(&buf).expect("valid") {
                    Some(n) => {
                        if was_data {
                            data.extend_from_slice(&buf[..n]);
                        }
                        buf.drain(..n);
                    }
                    None if chunks.done() => break,
                    None => {
                        assert!(fed < body.len(), "split at {split}");
                        buf.extend_from_slice(&body[fed..]);
                        fed = body.len();
                    }
                }
            }
            assert_eq!(data, b"hello0123456789abcdef", "split at {split}");
            assert!(buf.is_empty(), "split at {split}");
        }
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        assert!(Chunks::default().advance(b"zz\r\n").is_err());
        assert!(Chunks::default().advance(b"1\r\nab").is_err());
        assert!(Chunks::default().advance(&[b'1'; MAX_LINE + 1]).is_err());
    }
}
