//! The etcd client on several endpoints, against a real 3-member cluster: once the leader is
//! SIGKILLed and a new one elected every request goes through, and once the
//! dead member is out of the client's balance (the client probes its endpoints every 200 ms)
//! requests no longer go to it first.

use std::time::{Duration, Instant};

use flynn_testkit::EtcdCluster;

/// A request that went to the dead member first waits out a retry pause (100 ms) before its
/// next try; one that reaches a live member at once answers well under it.
const SLOW: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_taken_out_of_the_balance() {
    let mut cluster = EtcdCluster::start(3).await;
    let store = flynn_store::open(&cluster.url()).await.expect("open etcd");
    store
        .put("/cluster/k", b"0".to_vec(), None)
        .await
        .expect("a put while all members run");
    let leader = cluster.leader().await.expect("the cluster has a leader");
    cluster.kill(leader).await;
    assert_eq!(cluster.running(), 2);

    // A write in flight while the members notice the death may time out (it is not sent again:
    // the dead leader may have applied it). Once a new leader is known, none fails: one sent to
    // the dead member first is sent again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.leader().await.is_none() {
        assert!(Instant::now() < deadline, "no new leader after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..=20 {
        let value = i.to_string().into_bytes();
        store
            .put("/cluster/k", value.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("put {i} after the new leader's election: {e}"));
        let read = store
            .get("/cluster/k")
            .await
            .expect("a get")
            .expect("the key");
        assert_eq!(read.value, value);
    }

    // Out of the balance: reads go to the live members at once. (With the dead member still
    // chosen, about one read in three would wait out a retry pause.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut slow = 0;
    for _ in 0..40 {
        let started = Instant::now();
        store
            .get("/cluster/k")
            .await
            .expect("a get")
            .expect("the key");
        if started.elapsed() >= SLOW {
            slow += 1;
        }
    }
    assert!(slow <= 3, "{slow} of 40 reads took {SLOW:?} or more");
}
