//! `dockerignore`: bytes as a `.dockerignore` (it comes from the user's git push), then after a
//! NUL byte, NUL-separated paths to test against it. Kept out of `lib.rs` so that the router's
//! corpus replay, which includes `lib.rs`, does not need `flynn-builder`: the fuzz target and
//! `builder/tests/fuzz_corpus.rs` include this file by `#[path]`.
//!
//! Parsing never panics, and an error names a line of the file as written there. Testing a path
//! never panics. And what the build context's walk relies on when it skips an excluded directory
//! without reading it: when a clean path `p` is excluded and `may_take_back_under(p)` is false,
//! everything under `p` is excluded too.

use flynn_builder::dockerignore::Dockerignore;

pub fn dockerignore(data: &[u8]) {
    let (text, paths) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let ignore = match Dockerignore::parse(&text) {
        Ok(ignore) => ignore,
        Err(err) => {
            let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let lines: Vec<&str> = body.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(&err.line),
                "line {} of {}",
                err.line,
                lines.len()
            );
            let raw = lines[err.line - 1];
            // A comment's `#` is in the first column; ` #x` is a pattern.
            assert!(!raw.starts_with('#'), "a comment line");
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            assert_eq!(err.pattern, line, "the error's line as written");
            assert!(!err.pattern.is_empty());
            return;
        }
    };
    assert!(!ignore.excludes(""));
    assert!(!ignore.excludes("."));
    let paths: Vec<String> = if paths.is_empty() {
        Vec::new()
    } else {
        paths
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    };
    // Under each clean path: a fixed name, and every other clean path given.
    let clean: Vec<&str> = paths
        .iter()
        .map(String::as_str)
        .filter(|p| is_clean(p))
        .collect();
    for path in &paths {
        let excluded = ignore.excludes(path);
        let may_take_back = ignore.may_take_back_under(path);
        if !is_clean(path) || !excluded || may_take_back {
            continue;
        }
        for under in ["x", ".dockerignore", "Dockerfile"]
            .into_iter()
            .chain(clean.iter().copied())
        {
            let child = format!("{path}/{under}");
            assert!(
                ignore.excludes(&child),
                "{path:?} is excluded and nothing under it may be taken back, but {child:?} is not excluded by {ignore:?}"
            );
        }
    }
}

/// Relative, `/`-separated, no empty, `.` or `..` segment: as the context walk names paths.
fn is_clean(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}
