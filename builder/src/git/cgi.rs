//! The head of a CGI response (RFC 3875 §6): header lines up to a blank line, where a
//! `Status: 404 Not Found` header sets the HTTP status (200 without one). [`parse_head`] is
//! pure and total: it never reads past the head and never panics on input.

/// The most bytes a head may take.
pub const MAX_HEAD: usize = 64 * 1024;

/// A parsed CGI response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgiHead {
    pub status: u16,
    /// Every header but `Status`, in order, names as given.
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    #[error("the CGI response head is over {MAX_HEAD} bytes")]
    TooLong,
    #[error("bad CGI header line {0:?}")]
    BadLine(String),
    #[error("bad CGI status {0:?}")]
    BadStatus(String),
}

/// The head at the start of `buf` and how many bytes it took, or `Ok(None)` when `buf` does
/// not hold a whole head yet. Lines end in `\n` or `\r\n`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(CgiHead, usize)>, CgiError> {
    let mut status = 200;
    let mut headers = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = buf[at..].iter().position(|b| *b == b'\n') else {
            return if buf.len() > MAX_HEAD {
                Err(CgiError::TooLong)
            } else {
                Ok(None)
            };
        };
        let raw = &buf[at..at + end];
        at += end + 1;
        if at > MAX_HEAD {
            return Err(CgiError::TooLong);
        }
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            return Ok(Some((CgiHead { status, headers }, at)));
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| CgiError::BadLine(String::from_utf8_lossy(line).into_owned()))?;
        let Some((name, value)) = text.split_once(':') else {
            return Err(CgiError::BadLine(text.to_owned()));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(CgiError::BadLine(text.to_owned()));
        }
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| CgiError::BadStatus(value.to_owned()))?;
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_with_and_without_status() {
        let raw = b"Expires: Fri, 01 Jan 1980 00:00:00 GMT\r\nContent-Type: application/x-git-receive-pack-advertisement\r\n\r\n001f# service";
        let (head, used) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers[1].0, "Content-Type");
        assert_eq!(&raw[used..], b"001f# service");

        let raw = b"Status: 403 Forbidden\nContent-Type: text/plain\n\nno";
        let (head, used) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status, 403);
        assert_eq!(
            head.headers,
            vec![("Content-Type".into(), "text/plain".into())]
        );
        assert_eq!(&raw[used..], b"no");
    }

    #[test]
    fn incomplete_and_bad_heads() {
        assert_eq!(parse_head(b"Content-Type: text/plain\r\n"), Ok(None));
        assert_eq!(parse_head(b""), Ok(None));
        assert!(matches!(
            parse_head(b"nonsense\n\n"),
            Err(CgiError::BadLine(_))
        ));
        assert!(matches!(
            parse_head(b"Status: abc\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse_head(b"Status: 999\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse_head(b"Bad Name: x\n\n"),
            Err(CgiError::BadLine(_))
        ));
        let long = vec![b'x'; MAX_HEAD + 1];
        assert_eq!(parse_head(&long), Err(CgiError::TooLong));
    }
}
