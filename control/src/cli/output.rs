//! How listings print: aligned columns (Flynn's tabwriter look) or, with `-o json`, JSON.

use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use serde::Serialize;

/// `-o` on listings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Prints a line on stdout; a closed stdout (`flynn route | head -1`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// Writes `text` to stdout, ignoring a closed pipe.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Prints `rows` under `headers` as a table, or `value` as pretty JSON.
pub fn list<T: Serialize>(
    format: Format,
    value: &T,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => json(value),
        Format::Text => {
            print(&table(headers, &rows));
            Ok(())
        }
    }
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Columns padded to their widest cell plus two spaces; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// "5 minutes ago", from an RFC 3339 time (the input itself if it does not parse).
pub fn ago(rfc3339: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_owned();
    };
    let elapsed = SystemTime::now()
        .duration_since(then)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (n, unit) = match elapsed {
        0..60 => (elapsed, "second"),
        60..3600 => (elapsed / 60, "minute"),
        3600..86_400 => (elapsed / 3600, "hour"),
        _ => (elapsed / 86_400, "day"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec![
                "http:a.example.com".to_owned(),
                "a-web".to_owned(),
                "x".to_owned(),
            ],
            vec!["tcp:3000".to_owned(), "db".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            table(&["ROUTE", "SERVICE", "ID"], &rows),
            "ROUTE               SERVICE  ID\n\
             http:a.example.com  a-web    x\n\
             tcp:3000            db\n"
        );
    }

    #[test]
    fn relative_times() {
        let now = humantime::format_rfc3339(SystemTime::now()).to_string();
        assert!(ago(&now).ends_with("seconds ago"));
        let old = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(7200));
        assert_eq!(ago(&old.to_string()), "2 hours ago");
        assert_eq!(ago("garbage"), "garbage");
    }
}
