//! Heads across the two versions: an HTTP/2 request written as the HTTP/1.1 head the fast path
//! reads (and sends upstream), and a backend's response head as the HTTP/2 one its client gets.

use bytes::BytesMut;
use http::header::{COOKIE, HOST};
use http::{HeaderName, HeaderValue, StatusCode, Version};
use pingora::http::RequestHeader;

use super::super::h1::response::HeadOut;
use super::super::h1::{request, MAX_HEAD};
use super::super::headers;

/// Writes the HTTP/1.1 head of an HTTP/2 request into `buf` and parses it the way the HTTP/1.1
/// fast path parses its own ([`request::parse`]): the request line with `:path` as sent; `Host`
/// from `:authority`, else the Host header (pingora's proxy does the same, and has already
/// refused a Host that differs from `:authority`); the other headers as they came; the cookie
/// fields joined into one with `; ` (RFC 9113 §8.2.3). None: the stream is pingora's (CONNECT,
/// extended CONNECT included, no authority at all, or a head `request::parse` leaves to pingora).
pub(super) fn write_h1(req: &RequestHeader, buf: &mut BytesMut) -> Option<request::Head> {
    if req.method == http::Method::CONNECT {
        return None;
    }
    let host = match req.uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => req.headers.get(HOST)?.as_bytes(),
    };
    buf.extend_from_slice(req.method.as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(req.raw_path());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    put(buf, b"host", host);
    let mut cookies = false;
    for (name, value) in req.headers.iter() {
        if name == HOST {
            continue;
        }
        if name == COOKIE {
            cookies = true;
            continue;
        }
        put(buf, name.as_str().as_bytes(), value.as_bytes());
    }
    if cookies {
        buf.extend_from_slice(b"cookie: ");
        headers::join_cookies(&req.headers, buf);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    match request::parse(buf) {
        request::Parse::Head(head) if head.len == buf.len() && head.len <= MAX_HEAD => Some(head),
        _ => None,
    }
}

fn put(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// Response headers HTTP/2 has no place for (RFC 9113 §8.2.2). Of these, what `response::parse`
/// writes can still hold the `Connection` header it adds, and a `Transfer-Encoding` (the
/// backend's, passed on for HTTP/1 clients, or the one it adds to a body that ends when the
/// backend closes); the rest it has already dropped as hop-by-hop.
const NOT_IN_H2: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"te",
];

/// A backend's response head as the HTTP/2 one its client gets, written by `response::parse`
/// (the backend's head checked and rewritten, with the router's Date) straight into an HTTP/2
/// header map, less the headers HTTP/2 has no place for: what
/// `HttpSession::write_response_parts` sends. Not first written as HTTP/1.1 text and parsed
/// again (benches/README.md: about 1.5k instructions per stream less).
#[derive(Default)]
pub(in crate::proxy) struct ResponseHead {
    /// The head written and not sent yet.
    parts: Option<http::response::Parts>,
    /// A header (or the status) that HTTP/2 cannot carry was written: `end` refuses the head.
    uncarried: bool,
}

impl ResponseHead {
    /// The head to send, once (None when none is pending).
    pub(in crate::proxy) fn take(&mut self) -> Option<http::response::Parts> {
        self.parts.take()
    }

    /// Whether a head is written and not sent.
    pub(in crate::proxy) fn pending(&self) -> bool {
        self.parts.is_some()
    }

    pub(in crate::proxy) fn clear(&mut self) {
        self.parts = None;
    }
}

impl HeadOut for ResponseHead {
    fn start(&mut self, status: u16, _reason: &str) {
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.version = Version::HTTP_2;
        self.uncarried = false;
        match StatusCode::from_u16(status) {
            Ok(status) => head.status = status,
            Err(_) => self.uncarried = true,
        }
        self.parts = Some(head);
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        let Some(head) = self.parts.as_mut() else {
            return;
        };
        if NOT_IN_H2.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                head.headers.append(name, value);
            }
            _ => self.uncarried = true,
        }
    }

    fn end(&mut self) -> Result<(), &'static str> {
        match self.uncarried {
            false => Ok(()),
            true => Err("a response header HTTP/2 cannot carry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::h1::response;
    use super::*;

    fn h2_request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (parts, ()) = req.body(()).expect("a request").into_parts();
        RequestHeader::from(parts)
    }

    fn h1(req: &RequestHeader) -> Option<(request::Head, String)> {
        let mut buf = BytesMut::new();
        let head = write_h1(req, &mut buf)?;
        Some((head, String::from_utf8(buf.to_vec()).expect("text")))
    }

    #[test]
    fn requests_are_written_as_http_1_1() {
        let req = h2_request(
            "GET",
            "https://shop.test:8443/a//b?q=%20",
            &[
                ("accept", "*/*"),
                ("cookie", "a=1"),
                ("x-many", "1"),
                ("cookie", "b=2"),
                ("x-many", "2"),
            ],
        );
        let (head, text) = h1(&req).expect("taken");
        assert_eq!(
            text,
            "GET /a//b?q=%20 HTTP/1.1\r\nhost: shop.test:8443\r\naccept: */*\r\n\
             x-many: 1\r\nx-many: 2\r\ncookie: a=1; b=2\r\n\r\n"
        );
        assert_eq!(&text.as_bytes()[head.host.clone()], b"shop.test:8443");
        assert_eq!(&text.as_bytes()[head.path.clone()], b"/a//b?q=%20");
        assert_eq!(
            (head.content_length, head.close, head.is_head),
            (0, false, false)
        );

        // No :authority: the Host header.
        let req = h2_request("HEAD", "/x", &[("host", "h.test")]);
        let (head, text) = h1(&req).expect("taken");
        assert!(
            text.starts_with("HEAD /x HTTP/1.1\r\nhost: h.test\r\n\r\n"),
            "{text}"
        );
        assert!(head.is_head);

        let req = h2_request("POST", "https://a.test/", &[("content-length", "5")]);
        assert_eq!(h1(&req).expect("taken").0.content_length, 5);
    }

    #[test]
    fn unusual_requests_stay_pingoras() {
        for req in [
            h2_request("CONNECT", "a.test:443", &[]),
            h2_request("GET", "/", &[]),
            h2_request("POST", "https://a.test/", &[("content-length", "65537")]),
            h2_request("POST", "https://a.test/", &[("expect", "100-continue")]),
        ] {
            assert!(h1(&req).is_none(), "{req:?}");
        }
    }

    /// What `response::parse` writes into a `ResponseHead` for `backend`'s head.
    fn h2_head(backend: &[u8]) -> ResponseHead {
        let mut out = ResponseHead::default();
        let parsed = response::parse(backend, false, true, b"now", &mut out);
        assert!(
            matches!(parsed, response::Parse::Final(_)),
            "{parsed:?}: {:?}",
            String::from_utf8_lossy(backend)
        );
        out
    }

    #[test]
    fn response_heads_lose_what_http_2_has_no_place_for() {
        let mut out = h2_head(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-App: 1\r\nSet-Cookie: a=1\r\n\
            Set-Cookie: b=2\r\nDate: then\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n",
        );
        assert!(out.pending());
        let head = out.take().expect("a head");
        assert!(!out.pending() && out.take().is_none(), "taken once");
        assert_eq!((head.status.as_u16(), head.version), (201, Version::HTTP_2));
        let names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-app", "set-cookie", "date"]);
        // The router's Date, not the backend's.
        assert_eq!(head.headers["date"], "now");
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);

        // A body until the backend closes: no Transfer-Encoding in HTTP/2 either.
        let head = h2_head(b"HTTP/1.0 200 OK\r\nX-App: 1\r\n\r\n")
            .take()
            .expect("a head");
        let names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-app", "date"]);

        let head = h2_head(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .take()
            .expect("a head");
        assert_eq!((head.status.as_u16(), head.headers.len()), (404, 1));
    }

    #[test]
    fn a_header_http_2_cannot_carry_refuses_the_head() {
        let mut out = ResponseHead::default();
        out.start(200, "OK");
        out.header(b"x-app", b"a\x01b");
        assert!(
            out.end().is_err(),
            "response::parse then answers Parse::Bad: a 502"
        );

        // Written anew: carried again.
        out.start(200, "OK");
        out.header(b"X-App", b"1");
        assert!(out.end().is_ok());
        assert_eq!(out.take().expect("a head").headers["x-app"], "1");
    }
}
