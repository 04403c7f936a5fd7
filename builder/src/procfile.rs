//! The Procfile: one process type a line, `type: command`.
//!
//! Blank lines and lines starting with `#` are skipped; a type is letters, digits, `-` and `_`
//! (up to 63 characters); the command is the rest of the line, trimmed, and must not be empty.
//! Any other line, a type given twice, or a file that is not UTF-8 is an error naming the line:
//! a typo must not silently drop a process.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    #[error("Procfile line {line}: expected `type: command`, found {text:?}")]
    Syntax { line: usize, text: String },
    #[error("Procfile line {line}: process type {name:?} is invalid (letters, digits, - and _, at most 63)")]
    BadType { line: usize, name: String },
    #[error("Procfile line {line}: the command of {name:?} is empty")]
    EmptyCommand { line: usize, name: String },
    #[error("Procfile line {line}: process type {name:?} is given twice")]
    Duplicate { line: usize, name: String },
    #[error("the Procfile is not UTF-8 text")]
    NotUtf8,
}

/// Parses a Procfile's bytes into process type → command line.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, String>, ProcfileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ProcfileError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut types = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(ProcfileError::Syntax {
                line,
                text: trimmed.to_owned(),
            });
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(ProcfileError::BadType {
                line,
                name: name.to_owned(),
            });
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(ProcfileError::EmptyCommand {
                line,
                name: name.to_owned(),
            });
        }
        if types.insert(name.to_owned(), command.to_owned()).is_some() {
            return Err(ProcfileError::Duplicate {
                line,
                name: name.to_owned(),
            });
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_comments_and_blank_lines() {
        let text = b"# the app\n\nweb: python app.py --port $PORT\r\n  worker:python worker.py  \n#web: old\nclock: sh -c 'a: b'\n";
        let types = parse(text).expect("valid");
        assert_eq!(types.len(), 3);
        assert_eq!(types["web"], "python app.py --port $PORT");
        assert_eq!(types["worker"], "python worker.py");
        assert_eq!(types["clock"], "sh -c 'a: b'");
    }

    #[test]
    fn empty_file_has_no_types() {
        assert_eq!(parse(b"").expect("valid"), BTreeMap::new());
        assert_eq!(parse(b"\n# nothing\n").expect("valid"), BTreeMap::new());
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse(b"web: a\nnot a process\n"),
            Err(ProcfileError::Syntax {
                line: 2,
                text: "not a process".into()
            })
        );
        assert!(matches!(
            parse(b"we b: x"),
            Err(ProcfileError::BadType { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"web:   \n"),
            Err(ProcfileError::EmptyCommand { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"web: a\nweb: b\n"),
            Err(ProcfileError::Duplicate { line: 2, .. })
        ));
        assert_eq!(parse(b"web: \xff"), Err(ProcfileError::NotUtf8));
        let msg = parse(b"web\n").expect_err("invalid").to_string();
        assert_eq!(
            msg,
            "Procfile line 1: expected `type: command`, found \"web\""
        );
    }
}
