//! The router's own answers, built once.

use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;

use super::h1::response::HeadOut;

/// A status with its plain-text body, headers prebuilt.
pub struct Canned {
    pub header: ResponseHeader,
    pub body: Bytes,
}

/// The headers of every answer of the router's own, besides its length.
const CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const CACHE_CONTROL: &str = "no-store";

fn build(status: u16, body: &'static str) -> Canned {
    let mut header = ResponseHeader::build(status, Some(3)).expect("valid status");
    header
        .insert_header("content-type", CONTENT_TYPE)
        .expect("valid header");
    header
        .insert_header("content-length", body.len().to_string())
        .expect("valid header");
    header
        .insert_header("cache-control", CACHE_CONTROL)
        .expect("valid header");
    Canned {
        header,
        body: Bytes::from_static(body.as_bytes()),
    }
}

/// Every status the router answers with itself, and its body.
const STATUSES: [(u16, &str); 9] = [
    (400, "Bad Request\n"),
    (404, "Not Found\n"),
    (405, "Method Not Allowed\n"),
    (408, "Request Timeout\n"),
    (431, "Request Header Fields Too Large\n"),
    (500, "Internal Server Error\n"),
    (502, "Bad Gateway\n"),
    (503, "Service Unavailable\n"),
    (504, "Gateway Timeout\n"),
];

static CANNED: Lazy<Vec<Canned>> = Lazy::new(|| {
    STATUSES
        .iter()
        .map(|&(status, body)| build(status, body))
        .collect()
});

/// The router's own answer with `status` (500's for a status it never answers with itself),
/// the same on every engine.
pub fn canned(status: u16) -> &'static Canned {
    let index = STATUSES.iter().position(|&(s, _)| s == status);
    &CANNED[index.unwrap_or(INTERNAL_ERROR)]
}

/// Where 500 is in [`STATUSES`].
const INTERNAL_ERROR: usize = 5;

/// The body the router sends with an error status of its own.
pub fn body_for(status: u16) -> &'static str {
    let index = STATUSES.iter().position(|&(s, _)| s == status);
    STATUSES[index.unwrap_or(INTERNAL_ERROR)].1
}

/// The answer with `status` and its body as HTTP/1.1 bytes, into `out` (cleared first), for the
/// fast path: the headers of [`Canned`], the date, and `Connection` as `keep_alive` says.
pub fn write_http1(out: &mut Vec<u8>, status: u16, keep_alive: bool, date: &[u8]) {
    let body = body_for(status);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut length = itoa::Buffer::new();
    out.start(status, reason);
    for (name, value) in [
        ("content-type", CONTENT_TYPE.as_bytes()),
        ("content-length", length.format(body.len()).as_bytes()),
        ("cache-control", CACHE_CONTROL.as_bytes()),
        ("Date", date),
        (
            "Connection",
            if keep_alive {
                &b"keep-alive"[..]
            } else {
                b"close"
            },
        ),
    ] {
        out.header(name.as_bytes(), value);
    }
    // Text is always whole.
    let _ = out.end();
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_own_answer() {
        for (status, body) in STATUSES {
            let canned = canned(status);
            assert_eq!(canned.header.status.as_u16(), status);
            assert_eq!(canned.body, body.as_bytes());
            assert_eq!(body_for(status), body);
        }
        assert_eq!(canned(418).header.status.as_u16(), 500);
        assert_eq!(STATUSES[INTERNAL_ERROR].0, 500);
    }
}
