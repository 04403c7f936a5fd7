//! `.dockerignore`: which paths of a Dockerfile build's tree stay out of its context, with
//! Docker's rules (moby's `patternmatcher` and its `ignorefile` reader, as `docker build`
//! applies them; not gitignore's rules).
//!
//! The file: one pattern a line; a line starting with `#` (in its first column) is a comment;
//! each line is trimmed, and a blank one skipped. `!` makes an exception. The pattern is then
//! cleaned as Go's `filepath.Clean` cleans it (`a//b/./c/` → `a/b/c`, `a/../b` → `b`) and a
//! leading `/` dropped, so `/foo`, `./foo` and `foo/` all mean `foo`: every pattern is
//! relative to the context's root.
//!
//! A pattern is Go's `filepath.Match` syntax (`*` and `?` never match `/`, `[a-z]`, `[^a-z]`,
//! `\` escapes the next character) plus `**`, which matches any number of directories (none
//! too): `**/*.go` is every `.go` file, the top included; a trailing `**` matches everything
//! under (`dir/**`, not `dir` itself). A pattern excludes a path when it matches the path or
//! one of its parent directories, so `node_modules` leaves out all under it. The last line
//! that matches a path decides: a later `!` line takes it back, a later plain line leaves it
//! out again. A pattern Go's `filepath.Match` refuses (an unclosed `[`, an empty class, a
//! trailing `\`) or a bare `!` is an error naming its line, as Docker fails the build.
//!
//! Docker's own quirks are kept: a pattern that starts with `**` and has no other wildcard is
//! a suffix test (`**foo` also matches `barfoo`), one that ends with `**` and has none before
//! is a prefix test (`foo**` matches `foobar/x`).

use std::fmt;

/// A `.dockerignore` line Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: {pattern:?}: {reason}")]
pub struct DockerignoreError {
    /// 1-based, counting comments and blank lines.
    pub line: usize,
    /// The line as written (trimmed).
    pub pattern: String,
    pub reason: &'static str,
}

/// The parsed patterns of a `.dockerignore`, in order.
#[derive(Clone, Default)]
pub struct Dockerignore {
    patterns: Vec<Pattern>,
}

#[derive(Clone)]
struct Pattern {
    exception: bool,
    /// Cleaned, without its `!`.
    text: String,
    test: Test,
}

impl fmt::Debug for Dockerignore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.patterns.iter().map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            }))
            .finish()
    }
}

/// How a pattern tests a path (moby's match types).
#[derive(Clone, Debug)]
enum Test {
    Exact(String),
    /// `foo/**`: the path starts with `foo/`.
    Prefix(String),
    /// `**/foo`: the path ends with `/foo` or is `foo`; `**foo`: ends with `foo`.
    Suffix(String),
    Glob(Vec<Token>),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Char(char),
    /// `?`: one character but `/`.
    One,
    /// `*`: any characters but `/`.
    Star,
    /// `**/` (or `**` inside): nothing, or anything ending in `/`.
    Dirs,
    /// A trailing `**`: anything.
    Rest,
    /// `[...]`: as Docker's regular expression has it, a class may match `/` too.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Dockerignore {
    /// Parses a `.dockerignore`'s text.
    pub fn parse(text: &str) -> Result<Dockerignore, DockerignoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (n, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason| DockerignoreError {
                line: n + 1,
                pattern: line.to_owned(),
                reason,
            };
            let (exception, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if rest.is_empty() {
                return Err(err("an exception (!) needs a pattern"));
            }
            let mut text = clean(rest);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            validate(&text).map_err(err)?;
            let test = compile(&text);
            patterns.push(Pattern {
                exception,
                text,
                test,
            });
        }
        Ok(Dockerignore { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether `path` (relative to the context's root, `/`-separated, clean) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let mut excluded = false;
        for p in &self.patterns {
            // Only a line that could change the answer is tested (moby does the same).
            if p.exception != excluded {
                continue;
            }
            if p.matches_or_parent(path) {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether something under the excluded directory `dir` may be taken back by an exception,
    /// so that the directory must be walked (BuildKit's rule: any exception with a wildcard,
    /// or a literal one under `dir`).
    pub fn may_take_back_under(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let literal = without_trailing_glob(&p.text);
            literal.contains(['*', '[', ']', '?', '^', '\\'])
                || format!("{}/", p.text).starts_with(&prefix)
        })
    }
}

impl Pattern {
    fn matches_or_parent(&self, path: &str) -> bool {
        if self.test.matches(path) {
            return true;
        }
        path.match_indices('/')
            .any(|(i, _)| self.test.matches(&path[..i]))
    }
}

fn without_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

impl Test {
    fn matches(&self, path: &str) -> bool {
        match self {
            Test::Exact(p) => path == p,
            Test::Prefix(p) => path.starts_with(p.as_str()),
            Test::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Test::Glob(tokens) => glob_matches(tokens, path),
        }
    }
}

/// Go's `path.Clean` (the context is `/`-separated).
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

const UNCLOSED: &str = "syntax error in pattern (a [ without its ])";
const BAD_CLASS: &str =
    "syntax error in pattern (an empty [] or a - without a character on one side in [...])";

/// What Go's `filepath.Match` refuses: the same walk over the pattern as its `matchChunk`.
fn validate(pattern: &str) -> Result<(), &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    // One class item: a character or an escaped one, which must not end the pattern.
    let item = |i: &mut usize| -> Result<(), &'static str> {
        match chars.get(*i) {
            None => return Err(UNCLOSED),
            Some('-' | ']') => return Err(BAD_CLASS),
            Some('\\') => {
                *i += 1;
                if chars.get(*i).is_none() {
                    return Err(UNCLOSED);
                }
            }
            Some(_) => {}
        }
        *i += 1;
        if *i >= chars.len() {
            return Err(UNCLOSED);
        }
        Ok(())
    };
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err("syntax error in pattern (a \\ at its end escapes nothing)");
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                let mut n = 0;
                loop {
                    if chars.get(i) == Some(&']') && n > 0 {
                        i += 1;
                        break;
                    }
                    item(&mut i)?;
                    if chars.get(i) == Some(&'-') {
                        i += 1;
                        item(&mut i)?;
                    }
                    n += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// moby's `Pattern.compile`, into tokens instead of a regular expression.
fn compile(pattern: &str) -> Test {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        kind = Kind::Glob;
                    }
                } else {
                    tokens.push(Token::Dirs);
                    kind = Kind::Glob;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Glob;
            }
            '?' => {
                tokens.push(Token::One);
                kind = Kind::Glob;
            }
            '\\' => {
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    tokens.push(Token::Char(next));
                    kind = Kind::Glob;
                } else {
                    tokens.push(Token::Char('\\'));
                }
            }
            '[' => {
                let (class, next) = parse_class(&chars, i);
                tokens.push(class);
                i = next;
                kind = Kind::Glob;
            }
            other => tokens.push(Token::Char(other)),
        }
        first = false;
    }
    match kind {
        Kind::Exact => Test::Exact(pattern.to_owned()),
        Kind::Prefix => Test::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Test::Suffix(pattern[2..].to_owned()),
        Kind::Glob => Test::Glob(tokens),
    }
}

/// A validated class starting after its `[`: the token and the index after its `]`.
fn parse_class(chars: &[char], mut i: usize) -> (Token, usize) {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let one = |i: &mut usize| -> char {
        if chars.get(*i) == Some(&'\\') {
            *i += 1;
        }
        let c = chars.get(*i).copied().unwrap_or('\\');
        *i += 1;
        c
    };
    while i < chars.len() {
        if chars[i] == ']' && !ranges.is_empty() {
            i += 1;
            break;
        }
        let lo = one(&mut i);
        let hi = if chars.get(i) == Some(&'-') {
            i += 1;
            one(&mut i)
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
    (Token::Class { negated, ranges }, i)
}

/// Runs the tokens as an automaton over `path`: the set of positions reached so far. Each
/// token `t` has two states: `2t` (about to match it) and `2t + 1` (inside a `**/`).
fn glob_matches(tokens: &[Token], path: &str) -> bool {
    let end = 2 * tokens.len();
    let mut now = vec![false; end + 1];
    let mut next = vec![false; end + 1];
    let close = |set: &mut Vec<bool>| {
        for t in 0..tokens.len() {
            if !set[2 * t] {
                continue;
            }
            match tokens[t] {
                Token::Star | Token::Rest => set[2 * t + 2] = true,
                Token::Dirs => {
                    set[2 * t + 1] = true;
                    set[2 * t + 2] = true;
                }
                _ => {}
            }
        }
    };
    now[0] = true;
    close(&mut now);
    for c in path.chars() {
        next.iter_mut().for_each(|s| *s = false);
        for t in 0..tokens.len() {
            if now[2 * t] {
                let advance = match &tokens[t] {
                    Token::Char(x) => *x == c,
                    Token::One => c != '/',
                    Token::Class { negated, ranges } => {
                        ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
                    }
                    Token::Star => {
                        if c != '/' {
                            next[2 * t] = true;
                        }
                        false
                    }
                    Token::Rest => {
                        next[2 * t] = true;
                        false
                    }
                    Token::Dirs => false,
                };
                if advance {
                    next[2 * t + 2] = true;
                }
            }
            if now[2 * t + 1] {
                // Inside `(.*/)?`: any character stays inside; a `/` may also end it.
                next[2 * t + 1] = true;
                if c == '/' {
                    next[2 * t + 2] = true;
                }
            }
        }
        close(&mut next);
        std::mem::swap(&mut now, &mut next);
        if !now.iter().any(|s| *s) {
            return false;
        }
    }
    now[end]
}

#[cfg(test)]
mod tests;
