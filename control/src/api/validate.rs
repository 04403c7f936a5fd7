//! The syntax rules of names, domains and paths. Pure functions, no I/O.

use super::error::ApiError;

/// Lower-cases a route domain and checks it: DNS labels (letters, digits, `-`, 1–63 each,
/// 253 in all), an optional leading `*.` wildcard, or the catch-all `*`. One trailing dot is
/// dropped.
pub fn domain(raw: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid("domain", format!("invalid domain {raw:?}: {why}"));
    let domain = raw.trim().to_ascii_lowercase();
    let domain = domain.strip_suffix('.').unwrap_or(&domain);
    if domain.is_empty() {
        return Err(bad("it is empty"));
    }
    if domain == "*" {
        return Ok(domain.to_owned());
    }
    if domain.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    if domain.contains(':') {
        return Err(bad("a domain has no port"));
    }
    let rest = domain.strip_prefix("*.").unwrap_or(domain);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if label == "*" || label.contains('*') {
            return Err(bad(
                "a wildcard is only allowed as the whole first label (*.example.com)",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label cannot start or end with '-'"));
        }
    }
    Ok(domain.to_owned())
}

/// Normalises a route path: absent or empty is `/`; it must start with `/` and is stored with
/// a trailing slash (`/api` becomes `/api/`). No query, fragment, whitespace, control
/// characters, empty or dot segments.
pub fn path(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or("/");
    if raw.is_empty() || raw == "/" {
        return Ok("/".to_owned());
    }
    let bad = |why: &str| ApiError::invalid("path", format!("invalid path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("it must start with '/'"));
    }
    if raw.len() > 1024 {
        return Err(bad("longer than 1024 characters"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace and control characters are not allowed"));
    }
    if raw.contains(['?', '#']) {
        return Err(bad("a path has no query or fragment"));
    }
    let trimmed = raw.trim_end_matches('/');
    for segment in trimmed.split('/').skip(1) {
        if segment.is_empty() {
            return Err(bad("empty segment ('//')"));
        }
        if segment == "." || segment == ".." {
            return Err(bad("'.' and '..' segments are not allowed"));
        }
    }
    Ok(format!("{trimmed}/"))
}

/// App names: lower-case letters, digits and single dashes, 1–63 characters (a DNS label, as
/// the name becomes `<app>.<domain>`).
pub fn app_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!(
                "invalid app name {name:?}: use 1-63 lower-case letters, digits and single dashes, \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Service names: letters, digits, `-`, `_`, `.`, 1–100 characters (it is a key segment).
pub fn service(name: &str) -> Result<(), ApiError> {
    ident("service", name, 100)
}

/// Ids chosen by clients (instance ids): letters, digits, `-`, `_`, `.`, 1–100 characters.
pub fn ident(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("invalid {field} {value:?}: use 1-{max} letters, digits, '-', '_' and '.'"),
        ))
    }
}

/// Process type names in releases and formations.
pub fn process_type(name: &str) -> Result<(), ApiError> {
    ident("processes", name, 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain("Example.COM").ok().as_deref(), Some("example.com"));
        assert_eq!(domain("example.com.").ok().as_deref(), Some("example.com"));
        assert_eq!(domain("*.Foo.bar").ok().as_deref(), Some("*.foo.bar"));
        assert_eq!(domain("*").ok().as_deref(), Some("*"));
        assert_eq!(domain("localhost").ok().as_deref(), Some("localhost"));
        assert_eq!(domain("a-1.b").ok().as_deref(), Some("a-1.b"));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a-.com",
            "a.*.com",
            "*a.com",
            "**.com",
            "a_b.com",
            "exa mple.com",
            "example.com:80",
            "exämple.com",
            "a.com/",
            &"a".repeat(64),
            &format!("{}.com", ["a"; 130].join(".")),
        ] {
            assert!(domain(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn paths() {
        let p = |s: Option<&str>| path(s).ok();
        assert_eq!(p(None).as_deref(), Some("/"));
        assert_eq!(p(Some("")).as_deref(), Some("/"));
        assert_eq!(p(Some("/")).as_deref(), Some("/"));
        assert_eq!(p(Some("/api")).as_deref(), Some("/api/"));
        assert_eq!(p(Some("/api/")).as_deref(), Some("/api/"));
        assert_eq!(p(Some("/api/v1")).as_deref(), Some("/api/v1/"));
        assert_eq!(p(Some("/a%20b")).as_deref(), Some("/a%20b/"));
        for bad in [
            "api", "/a b", "/a?x=1", "/a#f", "/a//b", "/a/../b", "/./", "/a\n",
        ] {
            assert!(path(Some(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names() {
        assert!(app_name("my-app-2").is_ok());
        for bad in ["", "My", "-a", "a-", "a--b", "a_b", "a.b", &"a".repeat(64)] {
            assert!(app_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(service("my-app_web.v2").is_ok());
        for bad in ["", "a/b", "..", "a b"] {
            assert!(service(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
