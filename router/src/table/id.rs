//! Route ids held compactly: the controller's ids are `http-` and a lower-case hyphenated uuid
//! (41 bytes as text), kept here as the uuid's 16 bytes; any other id is kept as text. Either
//! way a [`RouteId`] reads, compares, orders and prints as the id text it came from.

use std::cmp::Ordering;
use std::fmt;

/// Where the hyphens of a hyphenated uuid are.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];
const PREFIX: &str = "http-";
/// `http-` and a hyphenated uuid.
const UUID_ID_LEN: usize = PREFIX.len() + 36;

/// A route's id (the last part of its store key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// `http-<uuid>`, the uuid lower-case and hyphenated.
    HttpUuid([u8; 16]),
    Text(Box<str>),
}

/// The id as text, on the stack for the compact form.
pub struct IdText {
    buf: [u8; UUID_ID_LEN],
}

impl IdText {
    pub fn as_str(&self) -> &str {
        // Built from ASCII only.
        std::str::from_utf8(&self.buf).unwrap_or("")
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Where each byte's two hex digits start in a hyphenated uuid.
const DIGIT_PAIRS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The 16 bytes of `http-<uuid>` (lower-case, hyphenated), None for any other text.
fn parse_uuid_id(id: &str) -> Option<[u8; 16]> {
    let uuid: &[u8; 36] = id.strip_prefix(PREFIX)?.as_bytes().try_into().ok()?;
    if HYPHENS.iter().any(|&i| uuid[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, &at) in out.iter_mut().zip(&DIGIT_PAIRS) {
        *byte = (hex(uuid[at])? << 4) | hex(uuid[at + 1])?;
    }
    Some(out)
}

impl RouteId {
    pub fn new(id: &str) -> RouteId {
        match parse_uuid_id(id) {
            Some(bytes) => RouteId(Repr::HttpUuid(bytes)),
            None => RouteId(Repr::Text(id.into())),
        }
    }

    /// The uuid's 16 bytes of an `http-<uuid>` id held compactly; None for an id held as text.
    pub fn uuid_bytes(&self) -> Option<&[u8; 16]> {
        match &self.0 {
            Repr::HttpUuid(bytes) => Some(bytes),
            Repr::Text(_) => None,
        }
    }

    /// The id `http-<uuid>` of these uuid bytes ([`RouteId::uuid_bytes`]).
    pub fn from_uuid_bytes(bytes: [u8; 16]) -> RouteId {
        RouteId(Repr::HttpUuid(bytes))
    }

    /// Calls `f` with the id as text, without allocating.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Text(text) => f(text),
            Repr::HttpUuid(bytes) => f(render(bytes).as_str()),
        }
    }
}

fn render(bytes: &[u8; 16]) -> IdText {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'-'; UUID_ID_LEN];
    buf[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
    let mut at = PREFIX.len();
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        buf[at] = DIGITS[usize::from(b >> 4)];
        buf[at + 1] = DIGITS[usize::from(b & 0xf)];
        at += 2;
    }
    IdText { buf }
}

impl Ord for RouteId {
    /// The order of the id texts.
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Same length, same hyphens: the bytes order as the hex digits do.
            (Repr::HttpUuid(a), Repr::HttpUuid(b)) => a.cmp(b),
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for RouteId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<str> for RouteId {
    fn eq(&self, other: &str) -> bool {
        match &self.0 {
            Repr::Text(text) => **text == *other,
            Repr::HttpUuid(bytes) => parse_uuid_id(other).as_ref() == Some(bytes),
        }
    }
}

impl PartialEq<&str> for RouteId {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<String> for RouteId {
    fn eq(&self, other: &String) -> bool {
        *self == **other
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl fmt::Debug for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| fmt::Debug::fmt(s, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_as_the_text_it_came_from() {
        let uuid = "http-0c5f3d2a-9b1e-4f7a-8c3d-2e1f0a9b8c7d";
        for id in [
            uuid,
            "tcp-0c5f3d2a-9b1e-4f7a-8c3d-2e1f0a9b8c7d",
            // Upper case, no hyphens, a wrong length or a stray character: kept as text.
            "http-0C5F3D2A-9B1E-4F7A-8C3D-2E1F0A9B8C7D",
            "http-0c5f3d2a9b1e4f7a8c3d2e1f0a9b8c7d",
            "http-0c5f3d2a-9b1e-4f7a-8c3d-2e1f0a9b8c7",
            "http-0c5f3d2a-9b1e-4f7a-8c3d-2e1f0a9b8c7g",
            "http-0c5f3d2a-9b1e-4f7a+8c3d-2e1f0a9b8c7d",
            "r1",
            "",
        ] {
            let parsed = RouteId::new(id);
            assert_eq!(parsed.to_string(), id);
            parsed.with_str(|text| assert_eq!(text, id));
            assert_eq!(parsed, id);
            assert!(parsed != format!("{id}x"));
        }
        assert!(matches!(RouteId::new(uuid).0, Repr::HttpUuid(_)));
        assert_eq!(std::mem::size_of::<RouteId>(), 24);
    }

    #[test]
    fn orders_as_the_text() {
        let ids = [
            "http-00000000-0000-0000-0000-000000000000",
            "http-0000000f-0000-0000-0000-000000000000",
            "http-00000010-0000-0000-0000-000000000000",
            "http-0000001",
            "http-ffffffff-ffff-ffff-ffff-ffffffffffff",
            "http-g",
            "a",
            "tcp-1",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(RouteId::new(a).cmp(&RouteId::new(b)), a.cmp(b), "{a} {b}");
            }
        }
    }
}
