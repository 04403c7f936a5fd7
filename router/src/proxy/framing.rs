//! How a backend's HTTP/1 response body is delimited, decided by one rule on both engines
//! (RFC 9112 §6.3, RFC 9110 §8.6):
//!
//! - `Transfer-Encoding` whose final coding is `chunked` (`chunked`, `gzip, chunked`, also over
//!   several lines): chunked, whatever `Content-Length` says (it is dropped). `chunked` anywhere
//!   but last, or a final coding other than `chunked`: refused (502). RFC 9112 lets a response
//!   with a non-chunked final coding run until the connection closes; the router refuses it, as
//!   nginx does, rather than pass on a body whose end it cannot check.
//! - `Content-Length` values, over several lines and comma lists, that are all the same number:
//!   that length (the client gets one `Content-Length` with it). Values that differ or do not
//!   parse: refused (502).
//! - Neither: no length (the body runs until the backend closes, unless the status or the
//!   request method says there is none).
//!
//! The fast path (`h1::response`) applies it while it rewrites the head; pingora's path in its
//! `response_filter`, on the header map pingora parsed.

/// What a backend response's framing headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Chunked transfer coding (other codings before it are passed on untouched).
    Chunked,
    /// A length every `Content-Length` value agrees on, and whether it was sent as anything
    /// but one plain value (the head is then rewritten with the one value).
    Length { length: u64, rewrite: bool },
    /// No framing header.
    Unframed,
}

/// Why a backend response's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadFraming {
    #[error("a Transfer-Encoding whose final coding is not chunked")]
    NotChunkedLast,
    #[error("Content-Length values that differ or do not parse")]
    ContentLength,
}

/// The body length by the `Transfer-Encoding` and `Content-Length` values of a response (or
/// of a request pingora accepted, to send its Content-Length on as one value).
pub fn body_length<'v>(
    transfer_encoding: impl IntoIterator<Item = &'v [u8]>,
    content_length: impl IntoIterator<Item = &'v [u8]>,
) -> Result<BodyLength, BadFraming> {
    let mut codings = 0;
    let mut chunked_last = false;
    for value in transfer_encoding {
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            if chunked_last {
                // Something after `chunked`: applied twice, or not last.
                return Err(BadFraming::NotChunkedLast);
            }
            chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            codings += 1;
        }
    }
    if codings > 0 {
        return if chunked_last {
            Ok(BodyLength::Chunked)
        } else {
            Err(BadFraming::NotChunkedLast)
        };
    }
    let mut length = None;
    let mut parts = 0;
    for value in content_length {
        for part in value.split(|&b| b == b',') {
            let n = parse_length(part).ok_or(BadFraming::ContentLength)?;
            match length {
                Some(seen) if seen != n => return Err(BadFraming::ContentLength),
                _ => length = Some(n),
            }
            parts += 1;
        }
    }
    Ok(match length {
        Some(length) => BodyLength::Length {
            length,
            rewrite: parts > 1,
        },
        None => BodyLength::Unframed,
    })
}

/// A Content-Length value: 1 to 18 digits (around optional whitespace), nothing else.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(te: &[&str], cl: &[&str]) -> Result<BodyLength, BadFraming> {
        body_length(
            te.iter().map(|v| v.as_bytes()),
            cl.iter().map(|v| v.as_bytes()),
        )
    }

    #[test]
    fn chunked_last_frames_the_body() {
        for te in [
            &["chunked"][..],
            &["Chunked"],
            &["gzip, chunked"],
            &["gzip", "chunked"],
            &["gzip,  ,chunked "],
        ] {
            assert_eq!(body(te, &["9"]), Ok(BodyLength::Chunked), "{te:?}");
        }
        for te in [
            &["gzip"][..],
            &["chunked, gzip"],
            &["chunked", "gzip"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["xchunked"],
        ] {
            assert_eq!(body(te, &[]), Err(BadFraming::NotChunkedLast), "{te:?}");
        }
    }

    #[test]
    fn identical_lengths_are_one_length() {
        let length = |length, rewrite| Ok(BodyLength::Length { length, rewrite });
        assert_eq!(body(&[], &["5"]), length(5, false));
        assert_eq!(body(&[], &[" 5 "]), length(5, false));
        assert_eq!(body(&[], &["5, 5"]), length(5, true));
        assert_eq!(body(&[], &["5", "5"]), length(5, true));
        assert_eq!(body(&[], &[]), Ok(BodyLength::Unframed));
        for cl in [
            &["5, 6"][..],
            &["5", "6"],
            &["5,"],
            &["+5"],
            &["-1"],
            &["0x5"],
            &["1234567890123456789"],
        ] {
            assert_eq!(body(&[], cl), Err(BadFraming::ContentLength), "{cl:?}");
        }
    }
}
