//! `h1_differential`: the same request bytes given to the fast path's request parser
//! (`proxy::h1::request::parse`) and to pingora's HTTP/1 session reader, the parser of the other
//! engine (and of everything the fast path hands over). Wherever the fast path takes a request
//! itself, pingora must take it too and read it the same way: the same method, target and Host,
//! the same body framing (Content-Length, never chunked). Anything pingora refuses, the fast path
//! must not take; and a head pingora reads whole, the fast path must not wait on. So a request
//! gets the same answer from both engines, and the fast path never forwards what the other
//! engine would read differently.

use std::io::Cursor;

use flynn_router::proxy::h1::request;
use pingora::protocols::http::v1::common::header_value_content_length;
use pingora::protocols::http::v1::server::HttpSession;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

/// What pingora's reader made of a request head.
struct PingoraRead {
    method: String,
    target: Vec<u8>,
    hosts: Vec<Vec<u8>>,
    content_length: Option<usize>,
    content_length_lines: usize,
    transfer_encoding: bool,
    body_empty: bool,
}

/// pingora's reading of `data` as the start of a connection: None when it refuses the head or
/// finds it incomplete.
fn pingora_read(data: &[u8]) -> Option<PingoraRead> {
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let mut session = HttpSession::new(Box::new(Cursor::new(data.to_vec())));
            match session.read_request().await {
                Ok(Some(_)) => {}
                _ => return None,
            }
            let body_empty = session.is_body_empty();
            let req = session.req_header();
            Some(PingoraRead {
                method: req.method.as_str().to_owned(),
                target: req.raw_path().to_vec(),
                hosts: req
                    .headers
                    .get_all(http::header::HOST)
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect(),
                content_length: header_value_content_length(
                    req.headers.get(http::header::CONTENT_LENGTH),
                ),
                content_length_lines: req
                    .headers
                    .get_all(http::header::CONTENT_LENGTH)
                    .iter()
                    .count(),
                transfer_encoding: req.headers.contains_key(http::header::TRANSFER_ENCODING),
                body_empty,
            })
        })
    })
}

pub fn h1_differential(data: &[u8]) {
    let fast = request::parse(data);
    let pingora = pingora_read(data);
    match (&fast, &pingora) {
        (request::Parse::Head(head), Some(read)) => {
            // The request line starts after any empty lines httparse skips.
            let line = data
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(0);
            assert!(data[line..].starts_with(read.method.as_bytes()), "method");
            assert_eq!(read.target, &data[head.path.clone()], "target");
            assert_eq!(read.hosts, [data[head.host.clone()].to_vec()], "Host");
            assert!(
                !read.transfer_encoding,
                "the fast path took a chunked request"
            );
            assert!(
                read.content_length_lines <= 1,
                "two Content-Length lines taken"
            );
            assert_eq!(
                read.content_length.unwrap_or(0) as u64,
                head.content_length,
                "body length"
            );
            assert_eq!(read.body_empty, head.content_length == 0, "body or none");
        }
        (request::Parse::Head(_), None) => {
            panic!("the fast path takes a request pingora refuses or reads as incomplete")
        }
        (request::Parse::Partial, Some(_)) => {
            panic!("the fast path waits for more of a head pingora reads whole")
        }
        (request::Parse::Partial | request::Parse::HandOver, _) => {}
    }
}
