//! What the router adds to and removes from requests and responses on their way through.
//!
//! Requests: `X-Forwarded-For`, `-Proto` and `-Port` are appended to what came in;
//! `X-Request-Start` is set (Unix ms); `X-Request-Id` is kept when it looks like one, else a fresh
//! UUID. Hop-by-hop request headers are stripped by pingora's upstream request policy.
//! An HTTP/2 request's cookie fields reach an HTTP/1 backend as one field ([`join_cookies`]).
//! Responses: hop-by-hop headers (and those the `Connection` header names) are stripped, except
//! on a `101 Switching Protocols`.

use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use http::header::{HeaderName, CONNECTION, COOKIE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// A header the router adds: its name as sent upstream and, lower-case, as looked up.
pub struct Added {
    /// pingora keeps each header name's case, and a `&'static str` is the one name it takes
    /// without a copy.
    pub sent: &'static str,
    /// A `HeaderName` is looked up without parsing a string.
    pub key: HeaderName,
}

const fn added(sent: &'static str, key: &'static str) -> Added {
    Added {
        sent,
        key: HeaderName::from_static(key),
    }
}

pub static X_FORWARDED_FOR: Added = added("X-Forwarded-For", "x-forwarded-for");
pub static X_FORWARDED_PROTO: Added = added("X-Forwarded-Proto", "x-forwarded-proto");
pub static X_FORWARDED_PORT: Added = added("X-Forwarded-Port", "x-forwarded-port");
pub static X_REQUEST_ID: Added = added("X-Request-Id", "x-request-id");
pub static X_REQUEST_START: Added = added("X-Request-Start", "x-request-start");

/// Hop-by-hop response headers (RFC 9110 §7.6.1) that never cross the router.
/// `Transfer-Encoding` is left to pingora, which re-frames the body itself.
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Where a request came from and where it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub client_ip: Option<IpAddr>,
    pub proto: &'static str,
    pub port: Option<u16>,
}

/// Adds the forwarding headers to a request about to go upstream (values built on the stack:
/// this runs on every request).
pub fn add_forwarding(req: &mut RequestHeader, origin: &Origin) -> Result<()> {
    if let Some(ip) = origin.client_ip {
        let mut buf = [0u8; 64];
        append(req, &X_FORWARDED_FOR, format_ip(ip, &mut buf))?;
    }
    append(req, &X_FORWARDED_PROTO, origin.proto.as_bytes())?;
    if let Some(port) = origin.port {
        let mut digits = itoa::Buffer::new();
        append(req, &X_FORWARDED_PORT, digits.format(port).as_bytes())?;
    }
    req.insert_header(X_REQUEST_START.sent, itoa::Buffer::new().format(now_ms()))?;
    let keep = req
        .headers
        .get(&X_REQUEST_ID.key)
        .is_some_and(|v| valid_request_id(v.as_bytes()));
    if !keep {
        let mut buf = uuid::Uuid::encode_buffer();
        req.insert_header(X_REQUEST_ID.sent, new_request_id(&mut buf))?;
    }
    Ok(())
}

/// A fresh `X-Request-Id` (a random UUID, hyphenated, lower case), written into `buf`.
pub fn new_request_id(buf: &mut [u8; 45]) -> &str {
    uuid::Uuid::new_v4().hyphenated().encode_lower(buf)
}

/// The time now in Unix milliseconds, as `X-Request-Start` carries it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ip` as text in `buf`. IPv4 by hand: `Display` goes through the formatting machinery, ten
/// times the work, on every request.
pub fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut itoa = itoa::Buffer::new();
                let digits = itoa.format(octet).as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            &buf[..len]
        }
        IpAddr::V6(v6) => {
            // An IPv6 address is at most 45 characters: it always fits.
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    }
}

/// A client's request id is kept when it is 20–200 characters of `[A-Za-z0-9+/=-]`.
pub fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-'))
}

/// Appends `value` to the comma-separated list in `header` (joining repeated lines).
fn append(req: &mut RequestHeader, header: &Added, value: &[u8]) -> Result<()> {
    if !req.headers.contains_key(&header.key) {
        return req.insert_header(header.sent, value);
    }
    let mut joined = Vec::with_capacity(64);
    for existing in req.headers.get_all(&header.key) {
        joined.extend_from_slice(existing.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value);
    req.insert_header(header.sent, joined)
}

/// Strips hop-by-hop headers from a backend's response, unless it switches protocols.
///
/// Runs on every response, and most carry `Connection: keep-alive` and nothing else to strip: the
/// headers present are looked at once and only those to go are removed (each removal touches two
/// maps), with no allocation.
/// Writes the cookie fields of `headers` as the one field value an HTTP/1 backend gets, joined
/// with `; ` (RFC 9113 §8.2.3: HTTP/2 may split a cookie into several fields).
pub fn join_cookies(headers: &http::HeaderMap, out: &mut impl BufMut) {
    for (i, value) in headers.get_all(COOKIE).iter().enumerate() {
        if i > 0 {
            out.put_slice(b"; ");
        }
        out.put_slice(value.as_bytes());
    }
}

pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status.as_u16() == 101 || !resp.headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The names `Connection` nominates go first, while `Connection` is still there to say so.
    while let Some(name) = resp
        .headers
        .keys()
        .find(|name| *name != CONNECTION && connection_nominates(&resp.headers, name))
        .cloned()
    {
        resp.remove_header(&name);
    }
    while let Some(name) = resp
        .headers
        .keys()
        .find(|name| is_hop_by_hop(name))
        .cloned()
    {
        resp.remove_header(&name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a `Connection` header lists `name` among its comma-separated tokens.
fn connection_nominates(headers: &http::HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|token| {
            token
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
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
    fn added_headers_are_looked_up_by_their_own_name() {
        for header in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_PORT,
            &X_REQUEST_ID,
            &X_REQUEST_START,
        ] {
            assert_eq!(header.key.as_str(), header.sent.to_ascii_lowercase());
        }
    }

    #[test]
    fn client_addresses_as_text() {
        let mut buf = [0u8; 64];
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.1.20.3",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(format_ip(parsed, &mut buf), ip.as_bytes());
        }
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
        resp.append_header("Connection", "Close ,  X-Other")
            .unwrap();
        resp.insert_header("x-other", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut resp);
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("x-other").is_none());
        assert!(resp.headers.get("x-kept").is_some());

        let mut up = ResponseHeader::build(101, None).unwrap();
        up.insert_header("connection", "upgrade").unwrap();
        up.insert_header("upgrade", "websocket").unwrap();
        strip_response_hop_by_hop(&mut up);
        assert!(up.headers.get("upgrade").is_some());
    }
}
