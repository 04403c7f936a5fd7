//! The router's own answers, built once.

use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;

/// A status with its plain-text body, headers prebuilt.
pub struct Canned {
    pub header: ResponseHeader,
    pub body: Bytes,
}

fn canned(status: u16, body: &'static str) -> Canned {
    let mut header = ResponseHeader::build(status, Some(3)).expect("valid status");
    header
        .insert_header("content-type", "text/plain; charset=utf-8")
        .expect("valid header");
    header
        .insert_header("content-length", body.len().to_string())
        .expect("valid header");
    header
        .insert_header("cache-control", "no-store")
        .expect("valid header");
    Canned {
        header,
        body: Bytes::from_static(body.as_bytes()),
    }
}

pub static NOT_FOUND: Lazy<Canned> = Lazy::new(|| canned(404, "Not Found\n"));
pub static SERVICE_UNAVAILABLE: Lazy<Canned> = Lazy::new(|| canned(503, "Service Unavailable\n"));

/// The body the router sends with an error status of its own.
pub fn body_for(status: u16) -> &'static str {
    match status {
        400 => "Bad Request\n",
        404 => "Not Found\n",
        502 => "Bad Gateway\n",
        503 => "Service Unavailable\n",
        504 => "Gateway Timeout\n",
        _ => "Internal Server Error\n",
    }
}
