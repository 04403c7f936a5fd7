//! TLS session tickets sealed with keys shared through the store, so that a session started
//! with any worker thread of any router resumes on every other (nginx and HAProxy need a key
//! file copied to each machine by hand for that).
//!
//! The keys live under `<prefix>/tls/ticket-keys` ([`flynn_store::Keys::tls_ticket_keys`]) as
//! JSON, newest first: `{"keys": [{"name": 32 hex digits, "key": 64 hex digits, "created": unix
//! seconds}, ...]}`. The newest seals new tickets; it and the one before it open them. Whichever
//! router finds no keys creates them, and whichever finds the newest older than the rotation
//! period puts a new one in front (both by compare-and-swap, so routers agree): a ticket opens
//! for at least one period and at most two ([`keeper`]).
//!
//! A ticket is `name (16) | nonce (12) | AES-256-GCM(session state) | tag (16)`, the name also
//! the AEAD's associated data. A ticket under a name this router does not hold (an old key, a
//! router of another cluster, garbage) just does not open: the client gets a full handshake.
//! Keys are never logged; `Debug` shows none of their bytes.

pub mod keeper;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Bytes of a key's name, the first bytes of each of its tickets.
pub const NAME_LEN: usize = 16;
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Keys kept: the current one and the previous one.
pub const KEPT: usize = 2;
/// Longer tickets are not even tried: rustls' session state is a few hundred bytes.
const MAX_TICKET: usize = 4096;
const TAG_LEN: usize = 16;

/// Why stored ticket keys were not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketKeyError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no \"keys\" list")]
    NoKeys,
    #[error("key {0}: \"name\" is not {NAME_LEN} bytes in hex")]
    BadName(usize),
    #[error("key {0}: \"key\" is not {KEY_LEN} bytes in hex")]
    BadKey(usize),
    #[error("key {0}: \"created\" is not a number of seconds")]
    BadCreated(usize),
    #[error("the operating system gave no random bytes")]
    Random,
}

/// One ticket key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub name: [u8; NAME_LEN],
    pub key: [u8; KEY_LEN],
    /// When it was made (unix seconds): it is replaced one period later.
    pub created: u64,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    /// A new random key made at `created`.
    pub fn random(created: u64) -> Result<StoredKey, TicketKeyError> {
        let rng = SystemRandom::new();
        let mut name = [0u8; NAME_LEN];
        let mut key = [0u8; KEY_LEN];
        rng.fill(&mut name).map_err(|_| TicketKeyError::Random)?;
        rng.fill(&mut key).map_err(|_| TicketKeyError::Random)?;
        Ok(StoredKey { name, key, created })
    }
}

/// The stored keys, newest first (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKeys(Vec<StoredKey>);

impl StoredKeys {
    /// Keys with `first` as the only one.
    pub fn new(first: StoredKey) -> StoredKeys {
        StoredKeys(vec![first])
    }

    /// Parses the stored JSON; fields it does not know are ignored.
    pub fn parse(bytes: &[u8]) -> Result<StoredKeys, TicketKeyError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| TicketKeyError::Json(e.to_string()))?;
        let list = value
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .filter(|l| !l.is_empty())
            .ok_or(TicketKeyError::NoKeys)?;
        let mut keys = Vec::with_capacity(list.len().min(KEPT));
        for (i, entry) in list.iter().take(KEPT).enumerate() {
            let hex = |field| entry.get(field).and_then(serde_json::Value::as_str);
            let name = hex("name")
                .and_then(from_hex::<NAME_LEN>)
                .ok_or(TicketKeyError::BadName(i))?;
            let key = hex("key")
                .and_then(from_hex::<KEY_LEN>)
                .ok_or(TicketKeyError::BadKey(i))?;
            let created = entry
                .get("created")
                .and_then(serde_json::Value::as_u64)
                .ok_or(TicketKeyError::BadCreated(i))?;
            keys.push(StoredKey { name, key, created });
        }
        Ok(StoredKeys(keys))
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        let keys: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": to_hex(&k.name),
                    "key": to_hex(&k.key),
                    "created": k.created,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    /// The key sealing new tickets.
    pub fn current(&self) -> &StoredKey {
        // Never empty: built from one key, parsed from a non-empty list.
        &self.0[0]
    }

    pub fn keys(&self) -> &[StoredKey] {
        &self.0
    }

    /// `fresh` in front of the current key; the older ones are dropped.
    pub fn rotated(&self, fresh: StoredKey) -> StoredKeys {
        let mut keys = Vec::with_capacity(KEPT);
        keys.push(fresh);
        keys.extend(self.0.iter().take(KEPT - 1).cloned());
        StoredKeys(keys)
    }

    /// How long from `now` (unix seconds) until the current key is `period` old: zero when it
    /// is (a key "from the future", another router's clock being ahead, counts from `now`).
    pub fn due_in(&self, now: u64, period: Duration) -> Duration {
        let created = self.current().created.min(now);
        let age = Duration::from_secs(now - created);
        period.saturating_sub(age)
    }
}

/// The sealing keys in use, built from [`StoredKeys`].
struct KeyRing {
    keys: Vec<([u8; NAME_LEN], LessSafeKey)>,
}

impl KeyRing {
    fn new(stored: &StoredKeys) -> KeyRing {
        let keys = stored
            .0
            .iter()
            .filter_map(|k| {
                // A 32-byte key always makes an AES-256-GCM key.
                let key = UnboundKey::new(&AES_256_GCM, &k.key).ok()?;
                Some((k.name, LessSafeKey::new(key)))
            })
            .collect();
        KeyRing { keys }
    }
}

/// rustls' [`ProducesTickets`] over the shared keys. Until the first keys arrive it is
/// disabled, and rustls resumes sessions from this process's memory instead.
pub struct SharedTicketer {
    ring: ArcSwapOption<KeyRing>,
    rng: SystemRandom,
    /// The lifetime hint of new tickets, in seconds.
    lifetime: u32,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("enabled", &self.enabled())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// A ticketer without keys whose tickets say they live `period` (the least a ticket can
    /// live when keys rotate every `period`; clients cap it at 7 days).
    pub fn new(period: Duration) -> Arc<SharedTicketer> {
        let lifetime = period.as_secs().clamp(1, 7 * 24 * 3600);
        Arc::new(SharedTicketer {
            ring: ArcSwapOption::empty(),
            rng: SystemRandom::new(),
            lifetime: u32::try_from(lifetime).unwrap_or(u32::MAX),
        })
    }

    /// Seals new tickets with `keys`' current key from now on, and opens those of its keys.
    pub fn set(&self, keys: &StoredKeys) {
        self.ring.store(Some(Arc::new(KeyRing::new(keys))));
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        self.ring.load().is_some()
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ring = self.ring.load();
        let (name, key) = ring.as_ref()?.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN || ticket.len() > MAX_TICKET {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let ring = self.ring.load();
        // Names are public (every ticket carries one in clear): no need for a constant-time
        // comparison; the AEAD tag is what authenticates.
        let (_, key) = ring.as_ref()?.keys.iter().find(|(n, _)| n == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut out = sealed.to_vec();
        let len = key
            .open_in_place(nonce, Aad::from(name), &mut out)
            .ok()?
            .len();
        out.truncate(len);
        Some(out)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}
