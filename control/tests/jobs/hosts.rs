//! More than one machine, on one etcd: two `flynn host` agents (each on its own 127.0.0.x), and
//! two controllers whose schedulers elect one leader. A SIGKILLed agent's jobs move to the other
//! agent and it removes its orphaned containers when it comes back; a SIGKILLed leading
//! controller is replaced by the other one's scheduler within seconds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flynn_testkit::Etcd;

use super::harness::{Client, Server, FLYNN};
use super::{Containers, Setup, TestImage};

/// The host agents' lease: a dead agent's jobs are placed again this long after its death.
const HOST_TTL: Duration = Duration::from_secs(2);

/// A `flynn host` process, SIGKILLed when dropped (its containers are removed by its
/// [`Containers`]).
pub(super) struct Agent {
    child: std::process::Child,
    ip: &'static str,
    store: String,
    key: String,
    data: tempfile::TempDir,
    pub(super) host: String,
    tags: Vec<String>,
}

impl Agent {
    pub(super) fn start(store: &str, key: &str, host: &str, ip: &'static str) -> Agent {
        Agent::tagged(store, key, host, ip, &[])
    }

    /// With `--tag` for each of `tags` (KEY=VALUE).
    pub(super) fn tagged(
        store: &str,
        key: &str,
        host: &str,
        ip: &'static str,
        tags: &[&str],
    ) -> Agent {
        let data = tempfile::tempdir().expect("agent data dir");
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let child = spawn(store, key, host, ip, data.path(), &tags);
        Agent {
            child,
            ip,
            store: store.to_owned(),
            key: key.to_owned(),
            data,
            host: host.to_owned(),
            tags,
        }
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new process with the same host id, data dir and address.
    pub(super) fn restart(&mut self) {
        self.kill();
        self.child = spawn(
            &self.store,
            &self.key,
            &self.host,
            self.ip,
            self.data.path(),
            &self.tags,
        );
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    store: &str,
    key: &str,
    host: &str,
    ip: &str,
    data: &Path,
    tags: &[String],
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("agent.log"))
        .expect("agent log");
    Command::new(FLYNN)
        .arg("host")
        .args(["--store", store, "--data"])
        .arg(data)
        .args(["--host-id", host, "--external-ip", ip])
        .args(["--host-lease-ttl", &format!("{}s", HOST_TTL.as_secs())])
        .args(["--drain-delay", "200ms", "--log", "info"])
        .args(tags.iter().flat_map(|t| ["--tag", t.as_str()]))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLYNN_CONTROLLER_KEY", key)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start flynn host")
}

/// Fails with every log when `check` does not hold within [`super::SETTLE`].
pub(super) async fn settle<F, Fut>(s: &Setup, agents: &[&Agent], what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = flynn_testkit::eventually(super::SETTLE, what, check).await {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| format!("agent {} log:\n{}", a.host, a.log()))
            .collect();
        panic!("{e}\nserver log:\n{}\n{}", s.server.log(), logs.join("\n"));
    }
}

/// The jobs that are up, by host.
pub(super) async fn up_on(s: &Setup, host: &str) -> BTreeSet<String> {
    s.jobs()
        .await
        .iter()
        .filter(|j| j["state"] == "up" && j["stop"] != true && j["host_id"] == host)
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_dead_agents_jobs_move_and_its_containers_go_when_it_returns() {
    let etcd = Etcd::start().await;
    let client = Client::new();
    let server = Server::etcd_with(&client, &etcd.url(), &["--no-host-agent"]).await;
    let key = server.key();
    client.run(&["create", "duo"]).await.ok();
    // Dropped in this order: the agents, B's containers, then the server, A's containers and
    // the image (which no container uses by then).
    let s = Setup {
        server,
        containers: Containers::new("test"),
        image: TestImage::build(),
        client,
        app: "duo".to_owned(),
    };
    let (a, b) = (&s.containers, Containers::new("test"));
    let mut agent_a = Agent::start(&etcd.url(), &key, &a.host, "127.0.0.2");
    let agent_b = Agent::start(&etcd.url(), &key, &b.host, "127.0.0.3");
    // Both agents registered before scaling (else both jobs go to the first one).
    let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
    settle(
        &s,
        &[&agent_a, &agent_b],
        "both hosts registered",
        || async {
            store
                .range("/flynn/hosts/")
                .await
                .is_ok_and(|l| l.kvs.len() == 2)
        },
    )
    .await;
    s.deploy().await;

    // One job on each host, each published on its host's address and routed.
    let out = s.flynn(&["scale", "web=2"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    let (on_a, on_b) = (up_on(&s, &a.host).await, up_on(&s, &b.host).await);
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "{:?}", s.jobs().await);
    assert_eq!((a.running().len(), b.running().len()), (1, 1));
    let mut addrs: Vec<String> = s
        .instances()
        .await
        .iter()
        .filter_map(|i| {
            i["addr"]
                .as_str()
                .map(|a| a.split(':').next().unwrap_or("").to_owned())
        })
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["127.0.0.2", "127.0.0.3"]);
    let both: BTreeSet<String> = on_a.union(&on_b).cloned().collect();
    settle(&s, &[&agent_a, &agent_b], "both jobs routed", || async {
        s.routed(20).await == both
    })
    .await;

    // SIGKILL agent A: its container keeps running, but once its lease is gone its job is
    // placed on B, and only B's jobs answer.
    let orphan = a.running();
    let killed = Instant::now();
    agent_a.kill();
    settle(
        &s,
        &[&agent_a, &agent_b],
        "A's job placed on B and up",
        || async { up_on(&s, &b.host).await.len() == 2 && up_on(&s, &a.host).await.is_empty() },
    )
    .await;
    let moved = killed.elapsed();
    let after = up_on(&s, &b.host).await;
    assert!(after.is_superset(&on_b), "B's own job kept running");
    let on_b = after;
    settle(
        &s,
        &[&agent_a, &agent_b],
        "only B's two jobs answer",
        || async { s.routed(20).await == on_b },
    )
    .await;
    let routed = killed.elapsed();
    assert_eq!(s.jobs().await.len(), 2, "A's job record is gone");
    assert_eq!(b.running().len(), 2);
    assert_eq!(a.running(), orphan, "A's container outlived its agent");
    eprintln!(
        "agent SIGKILLed (lease {HOST_TTL:?}): its job up on the other host after {moved:?}, \
         only live jobs routed after {routed:?}"
    );

    // A comes back: it removes the container no job wants, and takes nothing from B.
    let restarted = Instant::now();
    agent_a.restart();
    settle(&s, &[&agent_a, &agent_b], "A's orphan removed", || async {
        a.all().is_empty()
    })
    .await;
    eprintln!(
        "restarted agent removed its orphan in {:?}",
        restarted.elapsed()
    );
    assert_eq!(up_on(&s, &b.host).await, on_b);
    assert_eq!(s.routed(20).await, on_b);

    let out = s.flynn(&["scale", "web=0"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert!(a.all().is_empty() && b.all().is_empty());
    assert!(s.jobs().await.is_empty());
    drop(agent_b);
    drop(agent_a);
}

/// The scheduler leader's id (`/flynn/scheduler/leader`), if any.
async fn leader(store: &dyn flynn_store::Store) -> Option<String> {
    let kv = store.get("/flynn/scheduler/leader").await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// The scheduler id a server logged when it started leading.
fn leads(server: &Server, id: &str) -> bool {
    server
        .log()
        .lines()
        .any(|l| l.contains("leading the scheduler") && l.contains(id))
}

#[tokio::test]
async fn a_follower_scheduler_takes_over_from_a_killed_leader() {
    let etcd = Etcd::start().await;
    let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
    let image = TestImage::build();
    let containers = Containers::new("test");
    // The first controller (no host agent) leads; the second runs the host agent.
    let first_client = Client::new();
    let first = Server::etcd_with(&first_client, &etcd.url(), &["--no-host-agent"]).await;
    flynn_testkit::eventually(Duration::from_secs(10), "a scheduler leads", || async {
        leader(store.as_ref()).await.is_some()
    })
    .await
    .expect("a leader");
    let first_id = leader(store.as_ref()).await.expect("leader");
    assert!(leads(&first, &first_id), "{}", first.log());
    let client = Client::new();
    let second = Server::etcd_with(
        &client,
        &etcd.url(),
        &["--host-id", &containers.host, "--drain-delay", "200ms"],
    )
    .await;
    client.run(&["create", "heir"]).await.ok();
    let s = Setup {
        server: second,
        containers,
        image,
        client,
        app: "heir".to_owned(),
    };
    s.deploy().await;
    s.flynn(&["scale", "web=1"]).await.ok();
    assert_eq!(
        leader(store.as_ref()).await.as_deref(),
        Some(first_id.as_str())
    );

    // SIGKILL the leader, then scale through the survivor at once: its scheduler takes over
    // (the leader key names it) and places the new job.
    let pid = first.pid().expect("pid").to_string();
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    // When the leader key names another scheduler, and when that one placed the new job.
    let watch = {
        let store = store.clone();
        let first_id = first_id.clone();
        tokio::spawn(async move {
            let mut took_over = None;
            loop {
                if took_over.is_none() {
                    if let Some(id) = leader(store.as_ref()).await.filter(|id| *id != first_id) {
                        took_over = Some((id, killed.elapsed()));
                    }
                }
                let jobs = store.range("/flynn/jobs/").await.map(|l| l.kvs.len());
                if let (Some((id, took_over)), Ok(2)) = (&took_over, jobs) {
                    return (id.clone(), *took_over, killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let out = s.flynn(&["scale", "web=2"]).await;
    let scaled = killed.elapsed();
    assert!(out.ok().contains("scale completed"), "{out:?}");
    let (new_id, took_over, placed) = watch.await.expect("watch");
    assert!(leads(&s.server, &new_id), "{}", s.server.log());
    eprintln!(
        "scheduler failover: a new leader {took_over:?} after the leader's death, the new job \
         placed after {placed:?}, `flynn scale web=2` through the survivor done after {scaled:?}"
    );
    assert!(
        placed < Duration::from_secs(5),
        "the new leader acted {placed:?} after the old one's death (target: 5 s)"
    );
    assert_eq!(s.up().await.len(), 2);
    let up = s.up().await;
    s.settle("both jobs routed", || async { s.routed(20).await == up })
        .await;

    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
    drop(first);
}
