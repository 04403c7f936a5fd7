use std::time::Duration;

use rustls::server::ProducesTickets;

use super::*;

fn key(created: u64) -> StoredKey {
    StoredKey::random(created).expect("random key")
}

#[test]
fn stored_keys_round_trip_through_json_newest_first() {
    let keys = StoredKeys::new(key(100)).rotated(key(200));
    let parsed = StoredKeys::parse(&keys.to_json()).expect("parses");
    assert_eq!(parsed, keys);
    assert_eq!(parsed.current().created, 200);
    assert_eq!(parsed.keys().len(), 2);
}

#[test]
fn rotation_keeps_the_current_and_the_previous_key() {
    let (k1, k2, k3) = (key(1), key(2), key(3));
    let keys = StoredKeys::new(k1).rotated(k2.clone()).rotated(k3.clone());
    assert_eq!(keys.keys(), &[k3, k2]);
}

#[test]
fn unknown_fields_are_ignored_and_bad_values_refused() {
    let k = key(7);
    let good = serde_json::json!({
        "keys": [{"name": to_hex(&k.name), "key": to_hex(&k.key), "created": 7, "alg": "x"}],
        "version": 2,
    });
    assert_eq!(
        StoredKeys::parse(good.to_string().as_bytes()),
        Ok(StoredKeys::new(k.clone()))
    );
    let with = |entry: serde_json::Value| {
        StoredKeys::parse(
            serde_json::json!({ "keys": [entry] })
                .to_string()
                .as_bytes(),
        )
    };
    let name = to_hex(&k.name);
    let secret = to_hex(&k.key);
    assert!(matches!(
        StoredKeys::parse(b"nope"),
        Err(TicketKeyError::Json(_))
    ));
    assert_eq!(
        StoredKeys::parse(b"{\"keys\":[]}"),
        Err(TicketKeyError::NoKeys)
    );
    assert_eq!(
        with(serde_json::json!({"name": "abcd", "key": secret, "created": 1})),
        Err(TicketKeyError::BadName(0))
    );
    assert_eq!(
        with(serde_json::json!({"name": name, "key": "+".repeat(64), "created": 1})),
        Err(TicketKeyError::BadKey(0))
    );
    assert_eq!(
        with(serde_json::json!({"name": name, "key": secret, "created": -1})),
        Err(TicketKeyError::BadCreated(0))
    );
}

#[test]
fn rotation_is_due_a_period_after_the_current_key_was_made() {
    let keys = StoredKeys::new(key(1000));
    let period = Duration::from_secs(60);
    assert_eq!(keys.due_in(1000, period), period);
    assert_eq!(keys.due_in(1045, period), Duration::from_secs(15));
    assert_eq!(keys.due_in(1060, period), Duration::ZERO);
    assert_eq!(keys.due_in(5000, period), Duration::ZERO);
    // Made "later" by a router whose clock is ahead: a whole period from now.
    assert_eq!(keys.due_in(990, period), period);
}

#[test]
fn tickets_open_under_the_current_and_previous_key_only() {
    let ticketer = SharedTicketer::new(Duration::from_secs(3600));
    assert!(
        !ticketer.enabled(),
        "no keys yet: rustls keeps sessions itself"
    );
    assert_eq!(ticketer.encrypt(b"state"), None);

    let keys1 = StoredKeys::new(key(1));
    ticketer.set(&keys1);
    assert!(ticketer.enabled());
    assert_eq!(ticketer.lifetime(), 3600);
    let t1 = ticketer.encrypt(b"session one").expect("sealed");
    assert_eq!(&t1[..NAME_LEN], &keys1.current().name, "named by its key");
    assert_eq!(
        t1.len(),
        NAME_LEN + NONCE_LEN + b"session one".len() + TAG_LEN
    );
    assert_eq!(ticketer.decrypt(&t1).as_deref(), Some(&b"session one"[..]));

    let keys2 = keys1.rotated(key(2));
    ticketer.set(&keys2);
    let t2 = ticketer.encrypt(b"session two").expect("sealed");
    assert_eq!(&t2[..NAME_LEN], &keys2.current().name);
    assert_eq!(
        ticketer.decrypt(&t1).as_deref(),
        Some(&b"session one"[..]),
        "previous key"
    );
    assert_eq!(ticketer.decrypt(&t2).as_deref(), Some(&b"session two"[..]));

    ticketer.set(&keys2.rotated(key(3)));
    assert_eq!(ticketer.decrypt(&t1), None, "two rotations ago");
    assert!(ticketer.decrypt(&t2).is_some());
}

#[test]
fn garbage_and_tampered_tickets_do_not_open() {
    let ticketer = SharedTicketer::new(Duration::from_secs(60));
    ticketer.set(&StoredKeys::new(key(1)));
    let ticket = ticketer.encrypt(b"state").expect("sealed");
    for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, ticket.len() - 1] {
        let mut bad = ticket.clone();
        bad[i] ^= 1;
        assert_eq!(ticketer.decrypt(&bad), None, "byte {i} flipped");
    }
    assert_eq!(ticketer.decrypt(&ticket[..ticket.len() - 1]), None);
    assert_eq!(ticketer.decrypt(b""), None);
    assert_eq!(ticketer.decrypt(&[0u8; 40]), None);
    assert_eq!(ticketer.decrypt(&vec![7u8; 100_000]), None);
    // Another cluster's key under the same name does not open it either.
    let other = SharedTicketer::new(Duration::from_secs(60));
    let mut stolen_name = key(1);
    stolen_name.name.copy_from_slice(&ticket[..NAME_LEN]);
    other.set(&StoredKeys::new(stolen_name));
    assert_eq!(other.decrypt(&ticket), None);
}

#[test]
fn debug_output_shows_no_key_material() {
    let k = key(1);
    let shown = format!("{:?} {:?}", k, StoredKeys::new(k.clone()));
    assert!(!shown.contains(&to_hex(&k.key)));
    assert!(!shown.contains(&format!("{:?}", k.key)));
    assert!(!shown.contains(&to_hex(&k.name)));
    let ticketer = SharedTicketer::new(Duration::from_secs(1));
    ticketer.set(&StoredKeys::new(k));
    assert_eq!(
        format!("{ticketer:?}"),
        "SharedTicketer { enabled: true, lifetime: 1, .. }"
    );
}
