//! Sticky sessions: the `_backend` cookie pins a client to an instance. Its value is the
//! instance id sealed with ChaCha20-Poly1305 (a random nonce per cookie), so clients can neither
//! read nor forge it. The cookie is set only when the instance changes, and never reaches a
//! backend.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pingora::http::RequestHeader;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub const COOKIE: &str = "_backend";

/// The key sealing sticky cookies; swappable so a key from the store can replace the
/// start-up one without a restart.
pub struct StickyKey {
    key: ArcSwap<LessSafeKey>,
    rng: SystemRandom,
}

/// A key must be 32 bytes.
#[derive(Debug, thiserror::Error)]
#[error("a cookie key is 32 bytes, given as 64 hex digits or unpadded URL-safe base64")]
pub struct BadKey;

impl StickyKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<StickyKey, BadKey> {
        Ok(StickyKey {
            key: ArcSwap::from_pointee(less_safe(bytes)?),
            rng: SystemRandom::new(),
        })
    }

    /// A random key: cookies then only work with this process.
    pub fn random() -> StickyKey {
        let bytes = random_key();
        StickyKey {
            key: ArcSwap::from_pointee(less_safe(&bytes).expect("32 bytes")),
            rng: SystemRandom::new(),
        }
    }

    pub fn replace(&self, bytes: &[u8]) -> Result<(), BadKey> {
        self.key.store(Arc::new(less_safe(bytes)?));
        Ok(())
    }

    /// The cookie value for an instance id.
    pub fn seal(&self, instance: &str) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = instance.as_bytes().to_vec();
        self.key
            .load()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The instance id in a cookie value, if it was sealed with this key.
    pub fn open(&self, value: &str) -> Option<String> {
        let mut raw = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).ok()?;
        let opened = self
            .key
            .load()
            .open_in_place(nonce, Aad::empty(), &mut raw[NONCE_LEN..])
            .ok()?;
        String::from_utf8(opened.to_vec()).ok()
    }
}

/// 32 random bytes for a new key.
pub fn random_key() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // The system RNG only fails when the OS has none, where nothing else would work either.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random number generator");
    bytes
}

/// Parses a key as 64 hex digits or URL-safe base64 of 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], BadKey> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| BadKey))
            .collect::<Result<Vec<u8>, BadKey>>()?
    } else {
        URL_SAFE_NO_PAD.decode(text).map_err(|_| BadKey)?
    };
    bytes.try_into().map_err(|_| BadKey)
}

fn less_safe(bytes: &[u8]) -> Result<LessSafeKey, BadKey> {
    if bytes.len() != 32 {
        return Err(BadKey);
    }
    let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| BadKey)?;
    Ok(LessSafeKey::new(key))
}

/// The cookies in `Cookie` header values: their `name=value` pairs, trimmed, empty ones skipped.
pub fn cookie_pairs<'v>(values: impl Iterator<Item = &'v [u8]>) -> impl Iterator<Item = &'v [u8]> {
    values
        .flat_map(|value| value.split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// A cookie pair's value when it is the `_backend` cookie.
pub fn sticky_value(pair: &[u8]) -> Option<&[u8]> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    (&pair[..eq] == COOKIE.as_bytes()).then(|| &pair[eq + 1..])
}

fn cookie_headers(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
}

/// The value of the `_backend` cookie in a request, if any.
pub fn cookie_value(req: &RequestHeader) -> Option<&str> {
    cookie_pairs(cookie_headers(req))
        .find_map(sticky_value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Removes the `_backend` cookie from a request going to a backend, keeping the others (joined
/// into one `Cookie` line).
pub fn strip_cookie(req: &mut RequestHeader) -> pingora::Result<()> {
    if !cookie_pairs(cookie_headers(req)).any(|pair| sticky_value(pair).is_some()) {
        return Ok(());
    }
    let mut kept = Vec::new();
    let any = append_others(cookie_headers(req), &mut kept);
    req.remove_header(&http::header::COOKIE);
    if any {
        req.insert_header(http::header::COOKIE, kept)?;
    }
    Ok(())
}

/// Appends the cookies of `Cookie` header values other than `_backend` to `out`, joined by
/// `; `: the `Cookie` value a backend gets. Whether there were any.
pub fn append_others<'v>(values: impl Iterator<Item = &'v [u8]>, out: &mut Vec<u8>) -> bool {
    let mut any = false;
    for pair in cookie_pairs(values).filter(|pair| sticky_value(pair).is_none()) {
        if any {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
        any = true;
    }
    any
}

/// The `Set-Cookie` value pinning a client to the sealed instance.
pub fn set_cookie(sealed: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={sealed}; Path=/; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_ids_open_only_with_the_same_key() {
        let key = StickyKey::random();
        let sealed = key.seal("web-1").expect("seal");
        assert_eq!(key.open(&sealed).as_deref(), Some("web-1"));
        assert_ne!(
            key.seal("web-1"),
            Some(sealed.clone()),
            "a fresh nonce each time"
        );
        assert_eq!(StickyKey::random().open(&sealed), None);
        let mut tampered = sealed.into_bytes();
        tampered[20] ^= 1;
        assert_eq!(key.open(&String::from_utf8_lossy(&tampered)), None);
        assert_eq!(key.open("web-1"), None);
        assert_eq!(key.open(""), None);
    }

    #[test]
    fn the_cookie_is_found_and_stripped_among_others() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("cookie", "a=1; _backend=xyz")
            .expect("header");
        req.append_header("cookie", "b=2").expect("header");
        assert_eq!(cookie_value(&req), Some("xyz"));
        strip_cookie(&mut req).expect("strip");
        assert_eq!(cookie_value(&req), None);
        assert_eq!(
            req.headers.get("cookie").and_then(|v| v.to_str().ok()),
            Some("a=1; b=2")
        );
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex = "00".repeat(32);
        assert_eq!(parse_key(&hex).ok(), Some([0u8; 32]));
        let b64 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(parse_key(&b64).ok(), Some([7u8; 32]));
        assert!(parse_key("short").is_err());
    }
}
