//! Host header normalisation: strip the port, one trailing dot, and lower-case into a stack
//! buffer, so that matching never allocates.

/// The longest host name DNS allows, plus slack for a trailing dot.
pub const MAX_HOST: usize = 256;

/// A lower-cased host name held on the stack.
pub struct HostBuf {
    buf: [u8; MAX_HOST],
    len: usize,
}

impl HostBuf {
    /// Normalises a Host header value: `Example.COM:8080` → `example.com`, `[::1]:80` → `[::1]`.
    /// None when it is too long or not UTF-8 text.
    pub fn new(raw: &[u8]) -> Option<HostBuf> {
        let host = strip_port(raw);
        let host = host.strip_suffix(b".").unwrap_or(host);
        if host.len() > MAX_HOST {
            return None;
        }
        let mut buf = [0u8; MAX_HOST];
        for (dst, src) in buf.iter_mut().zip(host) {
            *dst = src.to_ascii_lowercase();
        }
        let out = HostBuf {
            buf,
            len: host.len(),
        };
        std::str::from_utf8(&out.buf[..out.len]).ok()?;
        Some(out)
    }

    pub fn as_str(&self) -> &str {
        // Checked to be UTF-8 in `new`; lower-casing ASCII keeps it so.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // IPv6 literal: keep through the closing bracket.
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// The suffixes a wildcard route may be keyed by, most specific first:
/// `a.b.example.com` → `b.example.com`, `example.com`, `com`.
pub fn parent_domains(host: &str) -> impl Iterator<Item = &str> {
    host.match_indices('.').map(move |(i, _)| &host[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        HostBuf::new(raw.as_bytes())
            .map(|h| h.as_str().to_owned())
            .unwrap_or_else(|| "<none>".into())
    }

    #[test]
    fn normalises_hosts() {
        assert_eq!(norm("Example.COM"), "example.com");
        assert_eq!(norm("example.com:8080"), "example.com");
        assert_eq!(norm("example.com."), "example.com");
        assert_eq!(norm("[::1]:8080"), "[::1]");
        assert_eq!(norm("[::1]"), "[::1]");
        assert_eq!(norm(""), "");
        assert_eq!(norm(&"a".repeat(300)), "<none>");
    }

    #[test]
    fn lists_parent_domains_most_specific_first() {
        let parents: Vec<_> = parent_domains("a.b.example.com").collect();
        assert_eq!(parents, ["b.example.com", "example.com", "com"]);
        assert_eq!(parent_domains("localhost").count(), 0);
    }
}
