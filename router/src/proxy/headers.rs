//! What the router adds to and removes from requests and responses on their way through.
//!
//! Requests: `X-Forwarded-For`, `-Proto` and `-Port` are appended to what came in;
//! `X-Request-Start` is set (Unix ms); `X-Request-Id` is kept when it looks like one, else a fresh
//! UUID. Hop-by-hop request headers are stripped by pingora's upstream request policy.
//! Responses: hop-by-hop headers (and those the `Connection` header names) are stripped, except
//! on a `101 Switching Protocols`.

use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

// Names as sent upstream; lookups by them ignore case. Static strings: pingora keeps each
// header name's case, and a `&'static str` is the one name it takes without a copy.
const X_FORWARDED_FOR: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
const X_FORWARDED_PORT: &str = "X-Forwarded-Port";
const X_REQUEST_START: &str = "X-Request-Start";
const X_REQUEST_ID: &str = "X-Request-Id";

/// Hop-by-hop response headers (RFC 9110 §7.6.1) that never cross the router.
/// `Transfer-Encoding` is left to pingora, which re-frames the body itself.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Where a request came from and where it arrived.
pub struct Origin {
    pub client_ip: Option<IpAddr>,
    pub proto: &'static str,
    pub port: Option<u16>,
}

/// Adds the forwarding headers to a request about to go upstream (values built on the stack:
/// this runs on every request).
pub fn add_forwarding(req: &mut RequestHeader, origin: &Origin) -> Result<()> {
    if let Some(ip) = origin.client_ip {
        // An IPv6 address is at most 45 characters: it always fits.
        let mut buf = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{ip}");
        let len = cursor.position() as usize;
        append(req, X_FORWARDED_FOR, &buf[..len])?;
    }
    append(req, X_FORWARDED_PROTO, origin.proto.as_bytes())?;
    if let Some(port) = origin.port {
        append(
            req,
            X_FORWARDED_PORT,
            itoa::Buffer::new().format(port).as_bytes(),
        )?;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    req.insert_header(X_REQUEST_START, itoa::Buffer::new().format(now_ms))?;
    let keep = req
        .headers
        .get(X_REQUEST_ID)
        .is_some_and(|v| valid_request_id(v.as_bytes()));
    if !keep {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        req.insert_header(X_REQUEST_ID, &*id)?;
    }
    Ok(())
}

/// A client's request id is kept when it is 20–200 characters of `[A-Za-z0-9+/=-]`.
pub fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-'))
}

/// Appends `value` to the comma-separated list in header `name` (joining repeated lines).
fn append(req: &mut RequestHeader, name: &'static str, value: &[u8]) -> Result<()> {
    if !req.headers.contains_key(name) {
        return req.insert_header(name, value);
    }
    let mut joined = Vec::with_capacity(64);
    for existing in req.headers.get_all(name) {
        joined.extend_from_slice(existing.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value);
    req.insert_header(name, joined)
}

/// Strips hop-by-hop headers from a backend's response, unless it switches protocols.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    // Most responses carry none of them: look before removing (each removal touches two maps).
    if resp.status.as_u16() == 101 || !resp.headers.keys().any(is_hop_by_hop) {
        return;
    }
    let nominated: Vec<HeaderName> = resp
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        resp.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        resp.remove_header(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rules() {
        assert!(valid_request_id(b"abcdefghijklmnopqrst"));
        assert!(valid_request_id(b"0123456789+/=-ABCDEFabcdef"));
        assert!(!valid_request_id(b"short"));
        assert!(!valid_request_id(&[b'a'; 201]));
        assert!(valid_request_id(&[b'a'; 200]));
        assert!(!valid_request_id(b"abcdefghijklmnopqrst!"));
        assert!(!valid_request_id(b"abcdefghij klmnopqrst"));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "10.0.0.1").unwrap();
        req.append_header("x-forwarded-for", "10.0.0.2").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        let origin = Origin {
            client_ip: Some("127.0.0.1".parse().unwrap()),
            proto: "http",
            port: Some(8080),
        };
        add_forwarding(&mut req, &origin).unwrap();
        let get = |n: &str| req.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(get("x-forwarded-for"), "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(get("x-forwarded-proto"), "https, http");
        assert_eq!(get("x-forwarded-port"), "8080");
        assert!(get("x-request-start").parse::<u64>().unwrap() > 1_600_000_000_000);
        assert_eq!(get("x-request-id").len(), 36);
    }

    #[test]
    fn response_hop_by_hop_is_stripped_except_on_101() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut resp);
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("x-kept").is_some());

        let mut up = ResponseHeader::build(101, None).unwrap();
        up.insert_header("connection", "upgrade").unwrap();
        up.insert_header("upgrade", "websocket").unwrap();
        strip_response_hop_by_hop(&mut up);
        assert!(up.headers.get("upgrade").is_some());
    }
}
