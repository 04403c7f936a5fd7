//! A client's request head: which ones the fast path takes, and the head it sends upstream.
//!
//! The fast path takes a strict subset of HTTP/1.1 and leaves everything else, untouched, to
//! pingora: a request is only taken when nothing about its framing or its headers needs more
//! than what is checked here.

use std::ops::Range;

use httparse::Status;

use crate::access_log;
use crate::proxy::framing::parse_length;
use crate::proxy::headers::{self, Origin};
use crate::proxy::sticky;

/// More headers than this and the request goes to pingora (which allows more).
const MAX_HEADERS: usize = 64;
/// A larger body goes to pingora, which streams both directions at once: this loop sends the
/// whole body before it reads the response, and a backend that answers (and stops reading)
/// early must not find both sides blocked on full socket buffers.
pub const MAX_BODY: u64 = 64 * 1024;

/// What is known about a whole request head at the start of the client's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Length of the head in bytes (the body, if any, follows).
    pub len: usize,
    pub content_length: u64,
    /// The client asked for the connection to be closed after this request.
    pub close: bool,
    /// A `HEAD` request: the response has no body whatever its headers say.
    pub is_head: bool,
    /// An idempotent method (RFC 9110 §9.2.2): safe to send again when a pooled backend
    /// connection turns out closed, as pingora's path does.
    pub idempotent: bool,
    /// Where the method, the Host value and the request target are in the buffer.
    pub method: Range<usize>,
    pub host: Range<usize>,
    pub path: Range<usize>,
}

impl Head {
    /// What the access log keeps of this request, whose head is at the start of `buf`.
    pub fn logged(&self, buf: &[u8]) -> access_log::Request {
        let part = |range: &Range<usize>| &buf[range.clone()];
        access_log::Request::from_bytes(part(&self.method), part(&self.host), part(&self.path))
    }
}

/// The outcome of looking at the start of the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole head yet.
    Partial,
    Head(Head),
    /// Valid or not, the fast path does not take it: pingora does.
    HandOver,
}

/// Parses the request head at the start of `buf` and decides whether the fast path takes it.
///
/// Taken: HTTP/1.1, origin-form target of plain URI characters, exactly one plain Host, at most
/// one Content-Length (digits only, at most [`MAX_BODY`]), no Transfer-Encoding, Upgrade, Expect or HTTP2-Settings,
/// and a Connection header naming nothing but `keep-alive` or `close`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::HandOver;
    };
    if method == "CONNECT" || !path.starts_with('/') || !path.bytes().all(is_uri_byte) {
        return Parse::HandOver;
    }
    let mut host = None;
    let mut content_length = None;
    let mut close = false;
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() || !is_plain_host(value) {
                return Parse::HandOver;
            }
            host = Some(offset(buf, value));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length, parse_length(value)) {
                (None, Some(n)) if n <= MAX_BODY => content_length = Some(n),
                _ => return Parse::HandOver,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Parse::HandOver;
                }
            }
        } else if HANDED_OVER.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return Parse::HandOver;
        }
    }
    let Some(host) = host else {
        return Parse::HandOver;
    };
    Parse::Head(Head {
        len,
        content_length: content_length.unwrap_or(0),
        close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        method: offset(buf, method.as_bytes()),
        host,
        path: offset(buf, path.as_bytes()),
    })
}

/// Request headers that make a request pingora's.
const HANDED_OVER: [&[u8]; 4] = [
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"http2-settings",
];

/// Hop-by-hop request headers dropped on the way upstream (as pingora's policy does).
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
];

/// What the router changes in a request on its way upstream, besides the forwarding headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite {
    /// `Connection: close`: the route wants no keep-alive to its backends.
    pub close_backend: bool,
    /// A sticky route: the `_backend` cookie is taken out of what the backend gets.
    pub sticky: bool,
}

/// Writes the head sent upstream for the request `head` at the start of `buf` into `out`: the
/// request line and headers as the client sent them, minus hop-by-hop ones, with the forwarding
/// headers appended (see [`headers`]) and the changes `rewrite` asks for. Returns the value of
/// the `_backend` cookie it took out (sticky routes).
pub fn write_upstream<'b>(
    buf: &'b [u8],
    head: &Head,
    origin: &Origin,
    rewrite: Rewrite,
    out: &mut Vec<u8>,
) -> Option<&'b [u8]> {
    let mut header_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut header_slots);
    // `parse` accepted this head: it parses again the same way.
    let _ = req.parse(&buf[..head.len]);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(&buf[head.path.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let named = |header: &'static headers::Added| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(header.key.as_str()))
            .map(|h| h.value)
    };
    let cookies = || {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
    };
    // Sticky routes: the `_backend` cookie goes, the other cookies are joined into one line.
    let sticky_cookie = rewrite
        .sticky
        .then(|| sticky::cookie_pairs(cookies()).find_map(sticky::sticky_value))
        .flatten();
    let keep_request_id = named(&headers::X_REQUEST_ID)
        .next()
        .is_some_and(headers::valid_request_id);
    let replaced = [
        &headers::X_FORWARDED_FOR,
        &headers::X_FORWARDED_PROTO,
        &headers::X_FORWARDED_PORT,
        &headers::X_REQUEST_START,
    ];
    for header in req.headers.iter() {
        let name = header.name;
        let dropped = replaced.iter().any(|h| name.eq_ignore_ascii_case(h.sent))
            || (!keep_request_id && name.eq_ignore_ascii_case(headers::X_REQUEST_ID.sent))
            || (sticky_cookie.is_some() && name.eq_ignore_ascii_case("cookie"))
            || HOP_BY_HOP
                .iter()
                .any(|h| name.as_bytes().eq_ignore_ascii_case(h));
        if !dropped {
            put_header(out, name.as_bytes(), header.value);
        }
    }
    if sticky_cookie.is_some() {
        let start = out.len();
        out.extend_from_slice(b"Cookie: ");
        if sticky::append_others(cookies(), out) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.truncate(start);
        }
    }
    if rewrite.close_backend {
        out.extend_from_slice(b"Connection: close\r\n");
    }

    // Appended to what came in: one line, the earlier values first.
    let mut appended = |header: &'static headers::Added, ours: &[u8]| {
        out.extend_from_slice(header.sent.as_bytes());
        out.extend_from_slice(b": ");
        for earlier in named(header) {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ours);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(ip) = origin.client_ip {
        let mut text = [0u8; 64];
        appended(&headers::X_FORWARDED_FOR, headers::format_ip(ip, &mut text));
    }
    appended(&headers::X_FORWARDED_PROTO, origin.proto.as_bytes());
    if let Some(port) = origin.port {
        let mut digits = itoa::Buffer::new();
        appended(&headers::X_FORWARDED_PORT, digits.format(port).as_bytes());
    }
    let mut digits = itoa::Buffer::new();
    let now = digits.format(headers::now_ms());
    put_header(
        out,
        headers::X_REQUEST_START.sent.as_bytes(),
        now.as_bytes(),
    );
    if !keep_request_id {
        let mut text = uuid::Uuid::encode_buffer();
        let id = headers::new_request_id(&mut text);
        put_header(out, headers::X_REQUEST_ID.sent.as_bytes(), id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    sticky_cookie
}

/// `name: value\r\n`.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where `part`, a sub-slice of `buf`, lies in it.
fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Characters of an origin-form target the fast path passes byte for byte (RFC 3986's
/// unreserved, sub-delims, `%`, `:`, `@`, `/` and `?`); pingora copes with the rest.
fn is_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

/// A host name or address, with an optional port: nothing pingora would question.
fn is_plain_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Head {
        match parse(raw) {
            Parse::Head(head) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn plain_requests_are_taken() {
        let raw = b"GET /a//b?x=%20 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\nrest";
        let h = head(raw);
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(&raw[h.host.clone()], b"Example.com:8080");
        assert_eq!(&raw[h.path.clone()], b"/a//b?x=%20");
        assert_eq!((h.content_length, h.close, h.is_head), (0, false, false));

        let h = head(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert!(h.close && h.is_head && h.idempotent);
        let h = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n");
        assert_eq!(h.content_length, MAX_BODY);
        assert!(!h.idempotent);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parse::Partial);
        assert_eq!(parse(b"GE"), Parse::Partial);
    }

    #[test]
    fn anything_unusual_is_handed_to_pingora() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET /{x} HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(
                parse(raw),
                Parse::HandOver,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn the_upstream_head_keeps_the_request_and_adds_forwarding() {
        let raw = b"GET /p?q HTTP/1.1\r\nhost: a.test\r\nX-Forwarded-For: 10.0.0.1\r\n\
            Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
            X-Request-Start: 1\r\nX-Request-Id: short\r\nAccept: */*\r\n\r\n";
        let h = head(raw);
        let origin = Origin {
            client_ip: Some("127.0.0.9".parse().expect("ip")),
            proto: "http",
            port: Some(8080),
        };
        let mut out = Vec::new();
        let rewrite = Rewrite {
            close_backend: true,
            sticky: false,
        };
        write_upstream(raw, &h, &origin, rewrite, &mut out);
        let text = String::from_utf8(out).expect("text");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "GET /p?q HTTP/1.1");
        assert_eq!(lines[1], "host: a.test");
        assert_eq!(lines[2], "Accept: */*");
        assert_eq!(lines[3], "Connection: close");
        assert_eq!(lines[4], "X-Forwarded-For: 10.0.0.1, 127.0.0.9");
        assert_eq!(lines[5], "X-Forwarded-Proto: http");
        assert_eq!(lines[6], "X-Forwarded-Port: 8080");
        assert!(lines[7].starts_with("X-Request-Start: 1") && lines[7].len() > 20);
        assert!(lines[8].starts_with("X-Request-Id: ") && lines[8].len() == 14 + 36);
        assert_eq!(&lines[9..], ["", ""]);
    }

    #[test]
    fn a_valid_request_id_is_kept() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abcdefghij0123456789\r\n\r\n";
        let origin = Origin {
            client_ip: None,
            proto: "https",
            port: None,
        };
        let mut out = Vec::new();
        write_upstream(raw, &head(raw), &origin, Rewrite::default(), &mut out);
        let text = String::from_utf8(out).expect("text");
        assert_eq!(text.matches("X-Request-Id").count(), 1, "{text}");
        assert!(text.contains("X-Request-Id: abcdefghij0123456789\r\n"));
        assert!(!text.contains("Connection"));
    }

    #[test]
    fn the_sticky_cookie_is_found_and_taken_out() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; _backend=sealed\r\n\
            Cookie: b=2\r\n\r\n";
        let h = head(raw);
        let origin = Origin {
            client_ip: None,
            proto: "http",
            port: None,
        };
        let rewrite = Rewrite {
            close_backend: false,
            sticky: true,
        };
        let mut out = Vec::new();
        let found = write_upstream(raw, &h, &origin, rewrite, &mut out);
        assert_eq!(found, Some(&b"sealed"[..]));
        let text = String::from_utf8(out).expect("text");
        assert_eq!(text.matches("Cookie").count(), 1, "{text}");
        assert!(text.contains("\r\nCookie: a=1; b=2\r\n"), "{text}");

        // Only the sticky cookie: no Cookie header at all.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: _backend=x\r\n\r\n";
        let mut out = Vec::new();
        write_upstream(raw, &head(raw), &origin, rewrite, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("Cookie"));
        // Without it (a name that only starts the same does not count), the Cookie lines pass
        // untouched.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1;_backen=2\r\n\r\n";
        let mut out = Vec::new();
        assert_eq!(
            write_upstream(raw, &head(raw), &origin, rewrite, &mut out),
            None
        );
        assert!(String::from_utf8_lossy(&out).contains("\r\nCookie: a=1;_backen=2\r\n"));
    }
}
