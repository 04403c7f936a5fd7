//! The store contract, checked the same way against every backend: a real etcd, the embedded
//! store in memory and the embedded store on a file. Each case is an `async fn(&Backend)`;
//! `for_each_backend!` at the bottom makes one test per case and backend.

// The cases are test bodies called from the tests that `for_each_backend!` generates, where
// clippy's allow-unwrap-in-tests cannot see them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{expect_put, kv, next_event, next_item, Backend, DEADLINE};
use flynn_store::{Cas, EmbeddedStore, KeyValue, Store, StoreError, WatchEvent};
use flynn_testkit::eventually;
use tokio::time::Instant;

/// A lease id no backend has handed out in a fresh store.
const UNKNOWN_LEASE: i64 = 0x7777_0000_1234;

async fn get_put_delete(b: &Backend) {
    let s = &b.store;
    assert_eq!(s.get("/a").await.unwrap(), None);

    let r1 = s.put("/a", b"one".to_vec(), None).await.unwrap();
    assert!(r1 > 0);
    assert_eq!(s.get("/a").await.unwrap(), Some(kv("/a", b"one", r1, r1)));

    // Values are bytes, keys are any UTF-8.
    let binary = vec![0, 255, 10, 0];
    let r2 = s.put("/a", binary.clone(), None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(s.get("/a").await.unwrap(), Some(kv("/a", &binary, r1, r2)));
    let r3 = s.put("/ä/ключ", b"".to_vec(), None).await.unwrap();
    assert_eq!(
        s.get("/ä/ключ").await.unwrap(),
        Some(kv("/ä/ключ", b"", r3, r3))
    );

    // get is exact, not a prefix match.
    assert_eq!(s.get("/").await.unwrap(), None);
    assert_eq!(s.get("/a/").await.unwrap(), None);

    assert!(s.delete("/a").await.unwrap());
    assert_eq!(s.get("/a").await.unwrap(), None);
    assert!(!s.delete("/a").await.unwrap());
    assert!(s.get("/ä/ключ").await.unwrap().is_some());
}

async fn range_by_prefix_sorted(b: &Backend) {
    let s = &b.store;
    let mut revisions = std::collections::HashMap::new();
    for key in ["/r/b", "/q", "/r/c/d", "/rx", "/r/a", "/r", "/s/r/x"] {
        let rev = s.put(key, key.as_bytes().to_vec(), None).await.unwrap();
        revisions.insert(key, rev);
    }
    let last = revisions["/s/r/x"];

    let listing = s.range("/r/").await.unwrap();
    assert_eq!(listing.revision, last, "read at the latest revision");
    let expected: Vec<KeyValue> = ["/r/a", "/r/b", "/r/c/d"]
        .iter()
        .map(|k| kv(k, k.as_bytes(), revisions[k], revisions[k]))
        .collect();
    assert_eq!(listing.kvs, expected);

    let keys = |listing: flynn_store::Listing| -> Vec<String> {
        listing.kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(
        keys(s.range("/r").await.unwrap()),
        ["/r", "/r/a", "/r/b", "/r/c/d", "/rx"]
    );
    assert_eq!(
        keys(s.range("").await.unwrap()),
        ["/q", "/r", "/r/a", "/r/b", "/r/c/d", "/rx", "/s/r/x"]
    );

    let empty = s.range("/nothing/").await.unwrap();
    assert!(empty.kvs.is_empty());
    assert_eq!(empty.revision, last);

    // The revision moves with writes outside the prefix too.
    let outside = s.put("/q", b"again".to_vec(), None).await.unwrap();
    let listing = s.range("/r/").await.unwrap();
    assert_eq!(listing.revision, outside);
    assert_eq!(listing.kvs, expected);
}

async fn revisions_count_writes(b: &Backend) {
    let s = &b.store;
    let base = b.revision().await;
    assert_eq!(s.put("/n/a", b"1".to_vec(), None).await.unwrap(), base + 1);
    assert_eq!(s.put("/n/b", b"1".to_vec(), None).await.unwrap(), base + 2);
    assert_eq!(s.put("/n/a", b"2".to_vec(), None).await.unwrap(), base + 3);
    assert!(s.delete("/n/b").await.unwrap());
    assert_eq!(b.revision().await, base + 4);

    // Writes that change nothing do not count.
    assert!(!s.delete("/n/b").await.unwrap());
    assert!(matches!(
        s.compare_and_swap("/n/a", base + 1, b"x".to_vec(), None)
            .await
            .unwrap(),
        Cas::Conflict { .. }
    ));
    assert!(!s.compare_and_delete("/n/a", base + 1).await.unwrap());
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let empty_lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.keep_alive(lease).await.unwrap();
    s.revoke_lease(empty_lease).await.unwrap();
    assert_eq!(b.revision().await, base + 4);

    assert_eq!(
        s.compare_and_swap("/n/a", base + 3, b"3".to_vec(), None)
            .await
            .unwrap(),
        Cas::Swapped { revision: base + 5 }
    );
    assert!(s.compare_and_delete("/n/a", base + 5).await.unwrap());
    assert_eq!(b.revision().await, base + 6);

    // Revoking a lease deletes all its keys in one revision.
    s.put("/n/l1", b"".to_vec(), Some(lease)).await.unwrap();
    s.put("/n/l2", b"".to_vec(), Some(lease)).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(b.revision().await, base + 9);
    assert!(s.range("/n/").await.unwrap().kvs.is_empty());
}

async fn create_revision_kept_until_delete(b: &Backend) {
    let s = &b.store;
    let created = s.put("/c", b"1".to_vec(), None).await.unwrap();
    let updated = s.put("/c", b"2".to_vec(), None).await.unwrap();
    assert_eq!(
        s.get("/c").await.unwrap(),
        Some(kv("/c", b"2", created, updated))
    );

    let Cas::Swapped { revision: swapped } = s
        .compare_and_swap("/c", updated, b"3".to_vec(), None)
        .await
        .unwrap()
    else {
        panic!("the swap should have happened");
    };
    assert_eq!(
        s.get("/c").await.unwrap(),
        Some(kv("/c", b"3", created, swapped))
    );
    let listed = s.range("/c").await.unwrap().kvs;
    assert_eq!(listed, [kv("/c", b"3", created, swapped)]);

    assert!(s.delete("/c").await.unwrap());
    let recreated = s.put("/c", b"4".to_vec(), None).await.unwrap();
    assert!(recreated > swapped);
    assert_eq!(
        s.get("/c").await.unwrap(),
        Some(kv("/c", b"4", recreated, recreated))
    );
}

async fn compare_and_swap(b: &Backend) {
    let s = &b.store;
    // Expected 0: the key must not exist.
    let Cas::Swapped { revision: r1 } = s
        .compare_and_swap("/k", 0, b"a".to_vec(), None)
        .await
        .unwrap()
    else {
        panic!("creating a missing key should succeed");
    };
    assert_eq!(s.get("/k").await.unwrap(), Some(kv("/k", b"a", r1, r1)));
    assert_eq!(
        s.compare_and_swap("/k", 0, b"b".to_vec(), None)
            .await
            .unwrap(),
        Cas::Conflict {
            current: Some(kv("/k", b"a", r1, r1))
        }
    );

    // A stale revision conflicts and shows what is there now.
    let r2 = s.put("/k", b"b".to_vec(), None).await.unwrap();
    assert_eq!(
        s.compare_and_swap("/k", r1, b"c".to_vec(), None)
            .await
            .unwrap(),
        Cas::Conflict {
            current: Some(kv("/k", b"b", r1, r2))
        }
    );
    assert_eq!(s.get("/k").await.unwrap(), Some(kv("/k", b"b", r1, r2)));

    // The current revision swaps.
    let swapped = s
        .compare_and_swap("/k", r2, b"c".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(swapped, Cas::Swapped { revision: r2 + 1 });
    assert_eq!(s.get("/k").await.unwrap(), Some(kv("/k", b"c", r1, r2 + 1)));

    // A missing key conflicts with any other expectation, and there is nothing to show.
    assert_eq!(
        s.compare_and_swap("/missing", r1, b"x".to_vec(), None)
            .await
            .unwrap(),
        Cas::Conflict { current: None }
    );
    assert_eq!(s.get("/missing").await.unwrap(), None);

    // After a delete, 0 is right again.
    assert!(s.delete("/k").await.unwrap());
    assert!(matches!(
        s.compare_and_swap("/k", 0, b"d".to_vec(), None)
            .await
            .unwrap(),
        Cas::Swapped { .. }
    ));

    // A swap can bind the key to a lease.
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let Cas::Swapped { revision } = s
        .compare_and_swap("/leased", 0, b"l".to_vec(), Some(lease))
        .await
        .unwrap()
    else {
        panic!("creating a missing key should succeed");
    };
    let stored = s.get("/leased").await.unwrap().unwrap();
    assert_eq!(stored.lease, Some(lease));
    assert_eq!(stored.mod_revision, revision);
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("/leased").await.unwrap(), None);
}

async fn compare_and_delete(b: &Backend) {
    let s = &b.store;
    let r1 = s.put("/d", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("/d", b"2".to_vec(), None).await.unwrap();

    assert!(!s.compare_and_delete("/d", r1).await.unwrap(), "stale");
    assert!(!s.compare_and_delete("/d", 0).await.unwrap(), "it exists");
    assert_eq!(s.get("/d").await.unwrap(), Some(kv("/d", b"2", r1, r2)));
    assert_eq!(b.revision().await, r2);

    assert!(s.compare_and_delete("/d", r2).await.unwrap());
    assert_eq!(s.get("/d").await.unwrap(), None);
    assert_eq!(b.revision().await, r2 + 1);
    assert!(
        !s.compare_and_delete("/d", r2).await.unwrap(),
        "already gone"
    );
    assert!(!s.compare_and_delete("/never", 0).await.unwrap());
    assert_eq!(b.revision().await, r2 + 1);
}

async fn cas_create_race_has_one_winner(b: &Backend) {
    const RACERS: usize = 20;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = Arc::clone(&b.store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let value = format!("racer-{i}").into_bytes();
                let outcome = store
                    .compare_and_swap("/race", 0, value.clone(), None)
                    .await
                    .unwrap();
                (value, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut seen_by_losers = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            (value, Cas::Swapped { revision }) => winners.push((value, revision)),
            (_, Cas::Conflict { current }) => {
                seen_by_losers.push(current.expect("a loser sees the winner's key"))
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer creates the key");
    let (value, revision) = winners.remove(0);
    let stored = kv("/race", &value, revision, revision);
    assert_eq!(s_get(b, "/race").await, Some(stored.clone()));
    assert_eq!(seen_by_losers.len(), RACERS - 1);
    assert!(seen_by_losers.iter().all(|kv| *kv == stored));
}

async fn s_get(b: &Backend, key: &str) -> Option<KeyValue> {
    b.store.get(key).await.unwrap()
}

async fn cas_counter_loses_no_increment(b: &Backend) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 5;
    let workers: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&b.store);
            tokio::spawn(async move {
                let mut swaps = Vec::new();
                let mut current = store.get("/counter").await.unwrap();
                while swaps.len() < INCREMENTS {
                    let (expected, count) = match &current {
                        Some(kv) => {
                            let count: usize =
                                std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                            (kv.mod_revision, count)
                        }
                        None => (0, 0),
                    };
                    let next = (count + 1).to_string().into_bytes();
                    match store
                        .compare_and_swap("/counter", expected, next, None)
                        .await
                        .unwrap()
                    {
                        Cas::Swapped { revision } => {
                            swaps.push(revision);
                            current = store.get("/counter").await.unwrap();
                        }
                        Cas::Conflict { current: now } => current = now,
                    }
                }
                swaps
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    for worker in workers {
        for revision in worker.await.unwrap() {
            assert!(revisions.insert(revision), "two swaps at one revision");
        }
    }
    let total = TASKS * INCREMENTS;
    assert_eq!(revisions.len(), total);
    let stored = s_get(b, "/counter").await.unwrap();
    assert_eq!(stored.value, total.to_string().into_bytes());
    assert_eq!(Some(&stored.mod_revision), revisions.last());
    // Every swap was one write, one after the other.
    let first = *revisions.first().unwrap();
    assert_eq!(
        revisions.into_iter().collect::<Vec<_>>(),
        (first..first + total as i64).collect::<Vec<_>>()
    );
}

async fn watch_replays_then_follows(b: &Backend) {
    let s = &b.store;
    let r1 = s.put("/w/a", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("/w/b", b"1".to_vec(), None).await.unwrap();
    s.put("/x/a", b"elsewhere".to_vec(), None).await.unwrap();
    let r4 = s.put("/w/a", b"2".to_vec(), None).await.unwrap();
    assert!(s.delete("/w/b").await.unwrap());
    let r5 = r4 + 1;

    let mut watch = s.watch("/w/", r1).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Put(kv("/w/a", b"1", r1, r1))
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Put(kv("/w/b", b"1", r2, r2))
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Put(kv("/w/a", b"2", r1, r4))
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "/w/b".into(),
            mod_revision: r5
        }
    );

    // Then live changes, in order.
    let mut live = Vec::new();
    for i in 0..5u8 {
        live.push(s.put("/w/c", vec![i], None).await.unwrap());
    }
    for (i, revision) in live.iter().enumerate() {
        let got = expect_put(next_event(&mut watch).await);
        assert_eq!(got.key, "/w/c");
        assert_eq!(got.value, [i as u8]);
        assert_eq!(got.mod_revision, *revision);
        assert_eq!(got.create_revision, live[0]);
    }

    // From a later revision, only what came since; 0 means "from the start".
    let mut later = s.watch("/w/", r4).await.unwrap();
    assert_eq!(next_event(&mut later).await.revision(), r4);
    assert_eq!(next_event(&mut later).await.revision(), r5);
    assert_eq!(next_event(&mut later).await.revision(), live[0]);
    let mut all = s.watch("/w/", 0).await.unwrap();
    assert_eq!(
        next_event(&mut all).await,
        WatchEvent::Put(kv("/w/a", b"1", r1, r1))
    );

    // Put events carry the key's lease.
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("/w/l", b"l".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(expect_put(next_event(&mut watch).await).lease, Some(lease));
    s.revoke_lease(lease).await.unwrap();
    assert!(matches!(
        next_event(&mut watch).await,
        WatchEvent::Delete { key, .. } if key == "/w/l"
    ));

    // A watch from the future starts when the store gets there.
    let now = b.revision().await;
    let mut future = s.watch("/w/", now + 2).await.unwrap();
    s.put("/w/f", b"skipped".to_vec(), None).await.unwrap();
    s.put("/w/f", b"seen".to_vec(), None).await.unwrap();
    let got = expect_put(next_event(&mut future).await);
    assert_eq!(
        (got.mod_revision, got.value.as_slice()),
        (now + 2, &b"seen"[..])
    );
}

async fn watch_sees_only_its_prefix(b: &Backend) {
    let s = &b.store;
    let from = b.revision().await + 1;
    let mut watch = s.watch("/p/", from).await.unwrap();
    let mut all = s.watch("", from).await.unwrap();

    for key in ["/p", "/pq", "/q/p/", "/P/x"] {
        s.put(key, b"no".to_vec(), None).await.unwrap();
    }
    assert!(s.delete("/pq").await.unwrap());
    let inside = s.put("/p/x", b"yes".to_vec(), None).await.unwrap();
    s.put("/p0", b"no".to_vec(), None).await.unwrap();
    assert!(s.delete("/p/x").await.unwrap());

    // Events arrive in revision order, so anything outside the prefix would come first.
    let first = expect_put(next_event(&mut watch).await);
    assert_eq!((first.key.as_str(), first.mod_revision), ("/p/x", inside));
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "/p/x".into(),
            mod_revision: inside + 2
        }
    );
    let last = s.put("/p/y/z", b"yes".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), last);

    // The empty prefix sees everything.
    let mut keys = Vec::new();
    for _ in 0..9 {
        keys.push(next_event(&mut all).await.key().to_owned());
    }
    assert_eq!(
        keys,
        ["/p", "/pq", "/q/p/", "/P/x", "/pq", "/p/x", "/p0", "/p/x", "/p/y/z"]
    );
}

async fn watch_from_compacted_revision_fails(b: &Backend) {
    let s = &b.store;
    let mut revisions = Vec::new();
    for i in 0..5u8 {
        revisions.push(s.put("/h/k", vec![i], None).await.unwrap());
    }
    let compact_to = revisions[3];
    s.compact(compact_to).await.unwrap();

    let mut old = s.watch("/h/", revisions[1]).await.unwrap();
    match next_item(&mut old).await {
        Some(Err(StoreError::Compacted { compact_revision })) => {
            assert_eq!(compact_revision, compact_to)
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next_item(&mut old).await.is_none(), "the error ends it");

    // From the compaction point on, history is still there; the data is untouched.
    let mut kept = s.watch("/h/", compact_to).await.unwrap();
    assert_eq!(next_event(&mut kept).await.revision(), revisions[3]);
    assert_eq!(next_event(&mut kept).await.revision(), revisions[4]);
    assert_eq!(s_get(b, "/h/k").await.unwrap().value, [4]);

    // Compacting again to an older revision is a no-op; the future is refused.
    s.compact(revisions[2]).await.unwrap();
    s.compact(compact_to).await.unwrap();
    let future = s.compact(revisions[4] + 10).await;
    assert!(
        matches!(future, Err(StoreError::Rejected(_))),
        "compacting the future: {future:?}"
    );
}

async fn lease_expiry_deletes_keys(b: &Backend) {
    let s = &b.store;
    let granted_at = Instant::now();
    let lease = s.grant_lease(b.short_ttl).await.unwrap();
    let put = s.put("/e/a", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("/e/b", b"2".to_vec(), None).await.unwrap();
    assert_eq!(s_get(b, "/e/a").await.unwrap().lease, Some(lease));
    let mut watch = s.watch("/e/a", put + 1).await.unwrap();

    let deadline = b.short_ttl + DEADLINE;
    match tokio::time::timeout(deadline, watch_next_raw(&mut watch)).await {
        Ok(Some(Ok(WatchEvent::Delete { key, .. }))) => assert_eq!(key, "/e/a"),
        other => panic!("expected the key's delete on expiry, got {other:?}"),
    }
    let lived = granted_at.elapsed();
    assert!(
        lived + Duration::from_millis(20) >= b.short_ttl,
        "the lease ended after {lived:?}, before its TTL {:?}",
        b.short_ttl
    );
    assert_eq!(s_get(b, "/e/a").await, None);
    assert!(
        s_get(b, "/e/b").await.is_some(),
        "keys without the lease stay"
    );

    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    assert!(matches!(
        s.put("/e/c", b"".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    assert_eq!(s_get(b, "/e/c").await, None);
}

async fn watch_next_raw(
    watch: &mut flynn_store::WatchStream,
) -> Option<Result<WatchEvent, StoreError>> {
    futures::StreamExt::next(watch).await
}

async fn keep_alive_extends_lease(b: &Backend) {
    let s = &b.store;
    let ttl = b.short_ttl;
    let lease = s.grant_lease(ttl).await.unwrap();
    s.put("/ka", b"alive".to_vec(), Some(lease)).await.unwrap();

    // Renew four times a TTL for twice the TTL: the key outlives its first deadline.
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        s.keep_alive(lease).await.unwrap();
        assert!(s_get(b, "/ka").await.is_some(), "the kept lease ended");
    }

    // Left alone, it ends.
    let stopped = Instant::now();
    eventually(ttl + DEADLINE, "the lease to end", || async {
        s_get(b, "/ka").await.is_none()
    })
    .await
    .unwrap();
    assert!(stopped.elapsed() + Duration::from_millis(20) >= ttl / 2);
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

async fn revoke_deletes_keys_and_notifies(b: &Backend) {
    let s = &b.store;
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("/v/a", b"a".to_vec(), Some(lease)).await.unwrap();
    s.put("/v/b", b"b".to_vec(), Some(lease)).await.unwrap();
    s.put("/v/c", b"c".to_vec(), None).await.unwrap();
    // Rewriting a key without the lease detaches it.
    s.put("/v/d", b"d".to_vec(), Some(lease)).await.unwrap();
    s.put("/v/d", b"d2".to_vec(), None).await.unwrap();
    assert_eq!(s_get(b, "/v/d").await.unwrap().lease, None);

    // So does binding it to another lease.
    let other = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("/v/g", b"g".to_vec(), Some(lease)).await.unwrap();
    let detached = s.put("/v/g", b"g2".to_vec(), Some(other)).await.unwrap();

    let mut watch = s.watch("/v/", detached + 1).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    let mut deleted = BTreeSet::new();
    let mut revisions = BTreeSet::new();
    for _ in 0..2 {
        match next_event(&mut watch).await {
            WatchEvent::Delete { key, mod_revision } => {
                deleted.insert(key);
                revisions.insert(mod_revision);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    assert_eq!(deleted, BTreeSet::from(["/v/a".into(), "/v/b".into()]));
    assert_eq!(revisions, BTreeSet::from([detached + 1]), "one revision");
    // Nothing else was deleted: the next event is the next write.
    let next = s.put("/v/e", b"e".to_vec(), None).await.unwrap();
    assert_eq!(next, detached + 2);
    assert_eq!(next_event(&mut watch).await.revision(), next);

    let left: Vec<String> = s
        .range("/v/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["/v/c", "/v/d", "/v/e", "/v/g"]);
    s.revoke_lease(other).await.unwrap();
    assert_eq!(s_get(b, "/v/g").await, None);

    let gone =
        |r: Result<_, StoreError>| matches!(r, Err(StoreError::LeaseNotFound(id)) if id == lease);
    assert!(gone(s.revoke_lease(lease).await));
    assert!(gone(s.keep_alive(lease).await));
    assert!(gone(
        s.put("/v/f", b"".to_vec(), Some(lease)).await.map(drop)
    ));
}

async fn unknown_leases_are_refused(b: &Backend) {
    let s = &b.store;
    let before = b.revision().await;
    let unknown = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseNotFound(id)) if id == UNKNOWN_LEASE);
    assert!(unknown(
        s.put("/u", b"".to_vec(), Some(UNKNOWN_LEASE))
            .await
            .map(drop)
    ));
    assert!(unknown(
        s.compare_and_swap("/u", 0, b"".to_vec(), Some(UNKNOWN_LEASE))
            .await
            .map(drop)
    ));
    assert!(unknown(s.keep_alive(UNKNOWN_LEASE).await));
    assert!(unknown(s.revoke_lease(UNKNOWN_LEASE).await));
    assert_eq!(s_get(b, "/u").await, None);
    assert_eq!(b.revision().await, before);

    // A swap that does not happen does not look at the lease.
    s.put("/u", b"there".to_vec(), None).await.unwrap();
    assert!(matches!(
        s.compare_and_swap("/u", 0, b"".to_vec(), Some(UNKNOWN_LEASE))
            .await
            .unwrap(),
        Cas::Conflict { current: Some(_) }
    ));
}

async fn empty_key_is_refused(b: &Backend) {
    let s = &b.store;
    let before = b.revision().await;
    let rejected = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Rejected(_)));
    assert!(rejected(s.get("").await.map(drop)));
    assert!(rejected(s.put("", b"x".to_vec(), None).await.map(drop)));
    assert!(rejected(s.delete("").await.map(drop)));
    assert!(rejected(
        s.compare_and_swap("", 0, b"x".to_vec(), None)
            .await
            .map(drop)
    ));
    assert!(rejected(s.compare_and_delete("", 0).await.map(drop)));
    assert_eq!(b.revision().await, before);
    assert!(s.range("").await.unwrap().kvs.is_empty());
}

/// Listing page by page at the first page's revision: pages are sorted, follow each other, say
/// when more remain, and read the keys as they were at that revision (or, when a backend cannot
/// read that revision any more, say Compacted, never something newer).
async fn range_pages_at_one_revision(b: &Backend) {
    let s = &b.store;
    let key = |i: usize| format!("/p/{i:02}");
    for i in 0..10 {
        s.put(&key(i), b"1".to_vec(), None).await.unwrap();
    }
    s.put("/o", b"before".to_vec(), None).await.unwrap();
    let last = s.put("/q", b"after".to_vec(), None).await.unwrap();
    let full = s.range("/p/").await.unwrap();
    assert_eq!(full.kvs.len(), 10);

    let first = s.range_page("/p/", None, 4, None).await.unwrap();
    assert_eq!(first.revision, last);
    assert!(first.more);
    assert_eq!(first.kvs, full.kvs[..4]);
    let at = Some(first.revision);
    let second = s.range_page("/p/", Some(&key(3)), 4, at).await.unwrap();
    assert!(second.more);
    assert_eq!(second.kvs, full.kvs[4..8]);
    assert_eq!(second.revision, last);
    let third = s.range_page("/p/", Some(&key(7)), 4, at).await.unwrap();
    assert!(!third.more);
    assert_eq!(third.kvs, full.kvs[8..]);
    // A page that ends exactly at the last key may or may not know that none remain; the
    // next one is empty.
    let exact = s.range_page("/p/", Some(&key(5)), 4, at).await.unwrap();
    assert_eq!(exact.kvs, full.kvs[6..]);
    let empty = s.range_page("/p/", Some(&key(9)), 4, at).await.unwrap();
    assert!(empty.kvs.is_empty() && !empty.more);
    // A limit of 0 still moves on; `after` outside (before) the prefix starts at the prefix.
    assert_eq!(s.range_page("/p/", None, 0, at).await.unwrap().kvs.len(), 1);
    let from_outside = s.range_page("/p/", Some("/o"), 2, at).await.unwrap();
    assert_eq!(from_outside.kvs, full.kvs[..2]);
    let everything = s.range_page("", None, 100, None).await.unwrap();
    assert_eq!(everything.kvs.len(), 12);
    assert!(!everything.more);

    // Writes to keys already listed do not disturb the rest of a listing.
    s.put(&key(0), b"2".to_vec(), None).await.unwrap();
    s.put("/o", b"2".to_vec(), None).await.unwrap();
    let again = s.range_page("/p/", Some(&key(3)), 4, at).await.unwrap();
    assert_eq!(again, second);
    // A write to a key still to list: the page as at the listing's revision, or Compacted.
    s.put(&key(5), b"2".to_vec(), None).await.unwrap();
    s.delete(&key(6)).await.unwrap();
    match s.range_page("/p/", Some(&key(3)), 4, at).await {
        Ok(page) => assert_eq!(page, second),
        Err(StoreError::Compacted { .. }) => assert!(b.etcd.is_none(), "etcd keeps history"),
        Err(e) => panic!("{e}"),
    }
    // The listing as it is now, and one from the future.
    let now = s.range_page("/p/", None, 100, None).await.unwrap();
    assert_eq!(now.kvs.len(), 9);
    assert_eq!(now.revision, b.revision().await);
    assert!(matches!(
        s.range_page("/p/", None, 4, Some(now.revision + 100)).await,
        Err(StoreError::Rejected(_))
    ));
    // A revision compacted away is gone for good.
    s.compact(now.revision).await.unwrap();
    assert!(matches!(
        s.range_page("/p/", Some(&key(3)), 4, at).await,
        Err(StoreError::Compacted { .. })
    ));
}

/// A listing of more keys than fit a page (the store's own `range` pages too) holds every key.
async fn range_of_many_keys(b: &Backend) {
    let s = &b.store;
    let n = flynn_store::DEFAULT_PAGE + 7;
    let keys: Vec<String> = (0..n).map(|i| format!("/many/{i:06}")).collect();
    futures::future::try_join_all(keys.chunks(n / 8 + 1).map(|chunk| async move {
        for key in chunk {
            s.put(key, vec![b'v'; 8], None).await?;
        }
        Ok::<_, StoreError>(())
    }))
    .await
    .unwrap();
    let listing = s.range("/many/").await.unwrap();
    assert_eq!(listing.revision, b.revision().await);
    let listed: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(listed, keys.iter().map(String::as_str).collect::<Vec<_>>());
    let paged = flynn_store::list(s.as_ref(), "/many/", 1000).await.unwrap();
    assert_eq!(paged, listing);
}

/// `status` names the store and its current revision; another store has another id.
async fn status_identifies_the_store(b: &Backend) {
    let s = &b.store;
    let before = s.status().await.unwrap();
    let revision = s.put("/s", b"1".to_vec(), None).await.unwrap();
    let after = s.status().await.unwrap();
    assert_eq!(after.id, before.id);
    assert!(!after.id.is_empty() && !after.member.is_empty());
    assert_eq!(after.revision, revision);
    assert_eq!(after.revision, b.revision().await);
    let other = match (&b.etcd, &b.dir) {
        (Some(_), _) => Backend::etcd().await,
        (None, Some(_)) => Backend::file().await,
        (None, None) => Backend::memory().await,
    };
    assert_ne!(other.store.status().await.unwrap().id, after.id);
}

/// Pages of a part of a prefix, `(after, until]`: they stop at `until` (inclusive).
async fn range_pages_up_to_a_bound(b: &Backend) {
    let s = &b.store;
    let key = |i: usize| format!("/p/{i:02}");
    for i in 0..10 {
        s.put(&key(i), b"1".to_vec(), None).await.unwrap();
    }
    s.put("/q", b"after".to_vec(), None).await.unwrap();
    let full = s.range("/p/").await.unwrap();
    let at = Some(full.revision);
    // (03, 06]: 04, 05, 06.
    let first = s
        .range_page_until("/p/", Some(&key(3)), Some(&key(6)), 2, at)
        .await
        .unwrap();
    assert_eq!(first.kvs, full.kvs[4..6]);
    assert_eq!(first.revision, full.revision);
    let second = s
        .range_page_until("/p/", Some(&key(5)), Some(&key(6)), 2, at)
        .await
        .unwrap();
    assert_eq!(second.kvs, full.kvs[6..7]);
    assert!(!second.more);
    // A bound between keys, from the start, and past a bound: nothing.
    let part = s
        .range_page_until("/p/", None, Some("/p/02x"), 100, at)
        .await
        .unwrap();
    assert_eq!(part.kvs, full.kvs[..3]);
    assert!(!part.more);
    let past = s
        .range_page_until("/p/", Some("/p/05"), Some("/p/04"), 100, at)
        .await
        .unwrap();
    assert!(past.kvs.is_empty() && !past.more);
    // No bound: the rest of the prefix.
    let rest = s
        .range_page_until("/p/", Some(&key(7)), None, 100, at)
        .await
        .unwrap();
    assert_eq!(rest.kvs, full.kvs[8..]);
    assert!(!rest.more);
    // A bound past the prefix: the prefix still ends the range.
    let wide = s
        .range_page_until("/p/", Some(&key(7)), Some("/z"), 100, None)
        .await
        .unwrap();
    assert_eq!(wide.kvs, full.kvs[8..]);
}

for_each_backend!(
    range_pages_up_to_a_bound,
    range_pages_at_one_revision,
    range_of_many_keys,
    status_identifies_the_store,
    empty_key_is_refused,
    get_put_delete,
    range_by_prefix_sorted,
    revisions_count_writes,
    create_revision_kept_until_delete,
    compare_and_swap,
    compare_and_delete,
    cas_create_race_has_one_winner,
    cas_counter_loses_no_increment,
    watch_replays_then_follows,
    watch_sees_only_its_prefix,
    watch_from_compacted_revision_fails,
    lease_expiry_deletes_keys,
    keep_alive_extends_lease,
    revoke_deletes_keys_and_notifies,
    unknown_leases_are_refused,
);

/// The embedded store on a file keeps its keys, revisions and leases across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (revision, lease, created, kept, id) = {
        let store = EmbeddedStore::open(&path).unwrap();
        let created = store.put("/f/a", b"1".to_vec(), None).await.unwrap();
        store.put("/f/a", b"2".to_vec(), None).await.unwrap();
        store.put("/f/gone", b"x".to_vec(), None).await.unwrap();
        assert!(store.delete("/f/gone").await.unwrap());
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        let kept = store
            .put("/f/leased", b"l".to_vec(), Some(lease))
            .await
            .unwrap();
        let short = store.grant_lease(Duration::from_secs(2)).await.unwrap();
        store
            .put("/g/short", b"s".to_vec(), Some(short))
            .await
            .unwrap();
        let revision = store.range("").await.unwrap().revision;
        let id = store.status().await.unwrap().id;
        (revision, lease, created, kept, id)
    };

    let store = EmbeddedStore::open(&path).unwrap();
    // The same store: the id drawn when the file was created is kept.
    assert_eq!(store.status().await.unwrap().id, id);
    // A lease restarts its TTL on reopen, and still ends.
    assert!(store.get("/g/short").await.unwrap().is_some());
    let mut short = store.watch("/g/", revision + 1).await.unwrap();
    let listing = store.range("/f/").await.unwrap();
    assert_eq!(listing.revision, revision);
    assert_eq!(
        listing.kvs,
        [
            kv("/f/a", b"2", created, created + 1),
            KeyValue {
                lease: Some(lease),
                ..kv("/f/leased", b"l", kept, kept)
            },
        ]
    );

    // Revisions and lease ids go on from where they were.
    let mut watch = store.watch("/f/", revision + 1).await.unwrap();
    assert_eq!(
        store.put("/f/b", b"3".to_vec(), None).await.unwrap(),
        revision + 1
    );
    assert_eq!(next_event(&mut watch).await.revision(), revision + 1);
    let other = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert_ne!(other, lease);

    // The lease lives on and still owns its key; history from before the reopen is gone.
    store.keep_alive(lease).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("/f/leased").await.unwrap(), None);
    let mut old = store.watch("/f/", created).await.unwrap();
    assert!(matches!(
        next_item(&mut old).await,
        Some(Err(StoreError::Compacted { .. }))
    ));

    assert!(matches!(
        next_event(&mut short).await,
        WatchEvent::Delete { key, .. } if key == "/g/short"
    ));
    assert_eq!(store.get("/g/short").await.unwrap(), None);
}

/// etcd limits the size of a request; going over it is the caller's mistake, not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_oversized_values() {
    let b = Backend::etcd().await;
    // Over etcd's --max-request-bytes (1.5 MiB), then over its gRPC message limit (2 MiB).
    for size in [1_600_000, 3 << 20] {
        let refused = b.store.put("/big", vec![b'x'; size], None).await;
        assert!(
            matches!(&refused, Err(StoreError::Rejected(_))),
            "{size} bytes: {refused:?}"
        );
        assert!(!refused.unwrap_err().is_transient());
    }
    assert_eq!(s_get(&b, "/big").await, None);
}
