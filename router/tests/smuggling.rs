//! Request smuggling inputs on both HTTP engines: CL.TE, TE.CL, duplicate and comma-joined
//! Content-Length, Transfer-Encoding that does not end in chunked, obs-fold, whitespace before
//! a colon and invalid header bytes. Each gets the same answer from both engines, and what
//! reaches the backend, if anything, has one unambiguous framing: a chunked body without a
//! Content-Length, or a single Content-Length value.

mod common;

use common::{echoed, Harness};
use flynn_testkit::backend::{echoed_header, Backend};
use flynn_testkit::client;

common::on_both_engines!(
    cl_te_is_read_as_chunked_and_the_rest_is_never_a_request,
    te_cl_is_read_as_chunked,
    differing_content_lengths_are_refused,
    identical_content_lengths_reach_the_backend_as_one,
    comma_joined_identical_content_lengths_reach_the_backend_as_one,
    a_transfer_encoding_not_ending_in_chunked_is_refused,
    malformed_header_lines_are_refused,
);

/// A router with `engine`, one echo backend routed at `smuggle.test`.
async fn start(engine: &[&str]) -> (Harness, Backend) {
    let h = Harness::start(engine).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "smuggle.test", "/", "web").await;
    h.wait_status("smuggle.test", "/", 200).await;
    (h, b)
}

/// Sends `raw` on a new connection; the backend's echo of the one request it got.
async fn forwarded(h: &Harness, b: &Backend, raw: &[u8]) -> serde_json::Value {
    let before = b.requests();
    let response = client::send(&h.router.http.to_string(), raw)
        .await
        .expect("answered");
    assert_eq!(response.status, 200, "{}", response.text());
    // Whatever followed the body never becomes a request of its own.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(b.requests(), before + 1, "one request reached the backend");
    echoed(&response)
}

/// Sends each of `raws` on a new connection: the router's own 400, nothing reaches the backend.
async fn refused(h: &Harness, b: &Backend, raws: &[&[u8]]) {
    let before = b.requests();
    for raw in raws {
        let response = client::send(&h.router.http.to_string(), raw)
            .await
            .expect("answered");
        let what = String::from_utf8_lossy(raw);
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        assert_eq!(response.text(), "Bad Request\n", "{what}");
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{what}"
        );
    }
    assert_eq!(
        b.requests(),
        before,
        "a refused request reached the backend"
    );
}

/// The framing headers a backend saw: (Content-Length values, Transfer-Encoding values).
fn framing(json: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    (
        echoed_header(json, "content-length"),
        echoed_header(json, "transfer-encoding"),
    )
}

async fn cl_te_is_read_as_chunked_and_the_rest_is_never_a_request(engine: &[&str]) {
    let (h, b) = start(engine).await;
    // A front end that believed the Content-Length would pass `0\r\n\r\nG` as the body; one
    // that reads it chunked ends the body at `0\r\n\r\n` and finds `G...` as a new request.
    let json = forwarded(
        &h,
        &b,
        b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 6\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: smuggle.test\r\n\r\n",
    )
    .await;
    assert_eq!(json["uri"], "/");
    assert_eq!(json["body_len"], 0);
    let (lengths, _) = framing(&json);
    assert!(
        lengths.is_empty(),
        "a Content-Length beside chunked: {lengths:?}"
    );
}

async fn te_cl_is_read_as_chunked(engine: &[&str]) {
    let (h, b) = start(engine).await;
    let json = forwarded(
        &h,
        &b,
        b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(json["body_len"], 8);
    let (lengths, _) = framing(&json);
    assert!(
        lengths.is_empty(),
        "a Content-Length beside chunked: {lengths:?}"
    );
}

async fn differing_content_lengths_are_refused(engine: &[&str]) {
    let (h, b) = start(engine).await;
    refused(
        &h,
        &b,
        &[
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 0x5\r\n\r\nhello",
        ],
    )
    .await;
}

async fn identical_content_lengths_reach_the_backend_as_one(engine: &[&str]) {
    let (h, b) = start(engine).await;
    let json = forwarded(
        &h,
        &b,
        b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(json["body_len"], 5);
    assert_eq!(framing(&json), (vec!["5".to_owned()], vec![]));
}

/// RFC 9110 §8.6: a list of identical values may be taken as that one value; the backend gets
/// one plain `Content-Length: 5` (a backend that refuses lists, as hyper does, would otherwise
/// answer 400, and one that took the first or last value could frame it differently).
async fn comma_joined_identical_content_lengths_reach_the_backend_as_one(engine: &[&str]) {
    let (h, b) = start(engine).await;
    let json = forwarded(
        &h,
        &b,
        b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(json["body_len"], 5);
    assert_eq!(framing(&json), (vec!["5".to_owned()], vec![]));
}

async fn a_transfer_encoding_not_ending_in_chunked_is_refused(engine: &[&str]) {
    let (h, b) = start(engine).await;
    refused(
        &h,
        &b,
        &[
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ],
    )
    .await;
}

async fn malformed_header_lines_are_refused(engine: &[&str]) {
    let (h, b) = start(engine).await;
    refused(
        &h,
        &b,
        &[
            // obs-fold: a line continued on the next (RFC 9112 §5.2: reject or unfold).
            b"GET / HTTP/1.1\r\nHost: smuggle.test\r\nX-Folded: a\r\n b\r\n\r\n",
            // Whitespace between a name and its colon (RFC 9112 §5.1: must be rejected).
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length : 5\r\n\r\nhello",
            // Control bytes in a value or a name.
            b"GET / HTTP/1.1\r\nHost: smuggle.test\r\nX-Bad: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: smuggle.test\r\nX-Bad: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: smuggle.test\r\nX\x01Bad: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: smuggle.test\r\nX-Bad: a\rb\r\n\r\n",
        ],
    )
    .await;
}
