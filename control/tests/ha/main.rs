//! High availability on a real distributed store: a 3-member etcd cluster (three `etcd`
//! processes on loopback), two controllers (`flynn server --no-router --no-host-agent`, each
//! with its scheduler; one leads), two `flynn-router`s and two `flynn host` agents (on
//! 127.0.0.2 and 127.0.0.3), all on the three etcd endpoints. During a one-by-one deploy under
//! wrk through both routers, the etcd leader and the leading controller are SIGKILLed: the
//! deploy must end cleanly (complete, or rolled back with the old release serving), the other
//! controller's scheduler must take over and finish it, not one request through either router
//! may fail, and no container may be left without its job.
//!
//! Needs the Docker Engine, etcd, etcdctl, wrk and the `flynn-router` binary (see
//! [`procs::router_bin`]). Fails, never skips, when one is missing.

#[path = "../jobs/engine.rs"]
#[allow(dead_code)]
mod engine;
#[path = "../cli/harness.rs"]
#[allow(dead_code)]
mod harness;
mod procs;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flynn_store::Store;
use flynn_testkit::docker::{docker, Containers};
use flynn_testkit::EtcdCluster;
use serde_json::Value;

use engine::{TestImage, Wrk};
use harness::Client;
use procs::{settle, Agent, Controller, Router};

const APP: &str = "ha";
const HOST: &str = "ha.localhost";
const WEB: usize = 4;
/// How long things may take to settle on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The scheduler leader's id, if any.
async fn leader(store: &dyn Store) -> Option<String> {
    let kv = store.get("/flynn/scheduler/leader").await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Keys under `prefix` (0 when the store does not answer).
async fn count(store: &dyn Store, prefix: &str) -> usize {
    store.range(prefix).await.map_or(0, |l| l.kvs.len())
}

/// `flynn -a ha ARGS` through `client`.
async fn flynn(client: &Client, args: &[&str]) -> harness::Run {
    let mut all = vec!["-a", APP];
    all.extend_from_slice(args);
    client.run(&all).await
}

/// `flynn ps -o json`: (id, release, state, stop) of each job.
async fn jobs(client: &Client) -> Vec<(String, String, String, bool)> {
    let out = flynn(client, &["ps", "-o", "json"]).await;
    if out.code != 0 {
        return Vec::new();
    }
    let jobs: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    jobs.as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or_default().to_owned();
            (s("id"), s("release_id"), s("state"), j["stop"] == true)
        })
        .collect()
}

/// The app's deployments, newest first.
async fn deployments(client: &Client) -> Vec<Value> {
    let out = flynn(client, &["deployment", "-o", "json"]).await;
    if out.code != 0 {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// The app's current release id.
async fn release(client: &Client) -> String {
    let out = flynn(client, &["info", "-o", "json"]).await;
    let info: Value = serde_json::from_str(out.ok()).expect("json");
    info["app"]["release_id"]
        .as_str()
        .or_else(|| info["release_id"].as_str())
        .or_else(|| info["release"]["id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Job ids of the running containers of both hosts (their `flynn.job` label).
fn container_jobs(hosts: &[&Containers]) -> BTreeSet<String> {
    hosts
        .iter()
        .flat_map(|h| {
            docker(&[
                "ps",
                "--filter",
                &h.filter(),
                "--format",
                "{{.Label \"flynn.job\"}}",
            ])
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_survives_the_etcd_leader_and_the_leading_controller_dying_under_load() {
    engine::require_engine();
    procs::router_bin();
    let mut etcd = EtcdCluster::start(3).await;
    let url = etcd.url();
    let store = flynn_store::open(&url).await.expect("open etcd");
    let key = uuid::Uuid::new_v4().simple().to_string();
    // Dropped last: the image, then the containers (after the agents, declared below them).
    let image = TestImage::build();
    let (on_a, on_b) = (Containers::new("test"), Containers::new("test"));

    // Controller A starts first and leads; B follows. The CLI talks to B (which survives).
    let (client_a, client_b) = (Client::new(), Client::new());
    let mut ctl_a = Controller::start(&url, &key, &client_a).await;
    let no_logs = || String::new();
    settle(SETTLE, "controller A leads", &no_logs, || async {
        leader(store.as_ref()).await.is_some()
    })
    .await;
    let id_a = leader(store.as_ref()).await.expect("a leader");
    assert!(ctl_a.proc.log().contains(&id_a), "{}", ctl_a.proc.log());
    let ctl_b = Controller::start(&url, &key, &client_b).await;
    let routers = [Router::start(&url).await, Router::start(&url).await];
    let agents = [
        Agent::start(&url, &key, &on_a.host, "127.0.0.2"),
        Agent::start(&url, &key, &on_b.host, "127.0.0.3"),
    ];
    let mut named: Vec<(String, std::path::PathBuf)> = vec![
        ("controller A".into(), ctl_a.proc.dir.path().join("log")),
        ("controller B".into(), ctl_b.proc.dir.path().join("log")),
    ];
    for (i, r) in routers.iter().enumerate() {
        named.push((format!("router {i}"), r.proc.dir.path().join("log")));
    }
    for (i, a) in agents.iter().enumerate() {
        named.push((format!("agent {i}"), a.proc.dir.path().join("log")));
    }
    let logs = || {
        named
            .iter()
            .map(|(name, path)| {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                format!("{name} log:\n{log}\n")
            })
            .collect::<String>()
    };
    settle(
        SETTLE,
        "two routers and two hosts registered",
        &logs,
        || async {
            count(store.as_ref(), "/flynn/routers/").await == 2
                && count(store.as_ref(), "/flynn/hosts/").await == 2
        },
    )
    .await;

    // The app: web=4 (two on each host), one-by-one deploys, routed by both routers.
    client_b.run(&["create", APP]).await.ok();
    let out = flynn(&client_b, &["deploy", "--image", &image.tag]).await;
    assert!(out.ok().contains("Deployed release "), "{out:?}");
    let out = flynn(&client_b, &["scale", &format!("web={WEB}")]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    flynn(&client_b, &["update", "--strategy", "one-by-one"])
        .await
        .ok();
    let old_release = release(&client_b).await;
    let old_jobs: BTreeSet<String> = jobs(&client_b).await.into_iter().map(|j| j.0).collect();
    assert_eq!(old_jobs.len(), WEB);
    for r in &routers {
        settle(
            SETTLE,
            "every job routed by both routers",
            &logs,
            || async { r.backends(HOST, 40).await == old_jobs },
        )
        .await;
    }
    assert_eq!(container_jobs(&[&on_a, &on_b]), old_jobs);

    // Load through both routers for the whole run.
    let wrk: Vec<Wrk> = routers
        .iter()
        .map(|r| Wrk::paced(&r.http.to_string(), HOST, 4, 5))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The deploy, through controller B's API; the scheduler leader (A) runs it.
    let deploy = client_b
        .command(
            client_b.cwd.path(),
            &["-a", APP, "deploy", "--image", &image.tag],
        )
        .spawn()
        .expect("run flynn deploy");
    let deploy_started = Instant::now();
    // Once the first new job is up and served by both routers (mid-deploy): SIGKILL the etcd
    // leader and the leading controller.
    settle(SETTLE, "the deploy's first new job up", &logs, || async {
        deployments(&client_b).await.first().is_some_and(|d| {
            d["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["status"] == "up"))
        })
    })
    .await;
    let etcd_leader = etcd.leader().await.expect("the etcd cluster has a leader");
    let killed = Instant::now();
    etcd.kill(etcd_leader).await;
    ctl_a.proc.kill();
    let killed_after = deploy_started.elapsed();

    // B's scheduler takes over (the leader key names it) and runs the deployment on.
    let (id_b, took_over) = loop {
        if let Some(id) = leader(store.as_ref()).await.filter(|id| *id != id_a) {
            break (id, killed.elapsed());
        }
        assert!(
            killed.elapsed() < SETTLE,
            "no new scheduler leader {SETTLE:?} after the kill\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(ctl_b.proc.log().contains(&id_b), "{}", logs());
    settle(
        SETTLE,
        "controller B runs the deployment",
        &logs,
        || async { ctl_b.proc.log().contains("running a deployment") },
    )
    .await;
    let acting = killed.elapsed();

    let output = tokio::time::timeout(Duration::from_secs(180), deploy.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the deploy did not end within 180 s\n{}", logs()))
        .expect("flynn deploy output");
    let deployed_in = deploy_started.elapsed();
    let deploy_out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The deployment object's end: complete with every job on the new release, or failed
    // with the old release back at its scale.
    let newest = deployments(&client_b)
        .await
        .into_iter()
        .next()
        .expect("a deployment");
    let status = newest["status"].as_str().unwrap_or_default().to_owned();
    let new_release = newest["new_release_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let serving = match status.as_str() {
        "complete" => {
            assert!(output.status.success(), "{deploy_out}\n{}", logs());
            new_release.clone()
        }
        "failed" => {
            assert!(!output.status.success(), "{deploy_out}");
            assert!(newest["error"].is_string(), "{newest}");
            old_release.clone()
        }
        other => panic!(
            "deployment ended {other:?}: {newest}\n{deploy_out}\n{}",
            logs()
        ),
    };
    assert_eq!(release(&client_b).await, serving, "{newest}");
    settle(
        SETTLE,
        "only the serving release's jobs, all up",
        &logs,
        || async {
            let jobs = jobs(&client_b).await;
            jobs.len() == WEB
                && jobs
                    .iter()
                    .all(|(_, r, state, stop)| *r == serving && state == "up" && !stop)
        },
    )
    .await;
    let final_jobs: BTreeSet<String> = jobs(&client_b).await.into_iter().map(|j| j.0).collect();
    for r in &routers {
        settle(
            SETTLE,
            "both routers route exactly the final jobs",
            &logs,
            || async { r.backends(HOST, 40).await == final_jobs },
        )
        .await;
    }
    // Nothing orphaned: the running containers are those of the jobs in the store.
    settle(SETTLE, "containers == jobs", &logs, || async {
        container_jobs(&[&on_a, &on_b]) == final_jobs
    })
    .await;
    assert_eq!(on_a.all().len() + on_b.all().len(), WEB);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let reports: Vec<_> = wrk.into_iter().map(Wrk::finish).collect();
    eprintln!(
        "HA: deploy {status} in {deployed_in:?} (etcd leader m{etcd_leader} and controller A \
         SIGKILLed {killed_after:?} into it); scheduler leader B {took_over:?} after the kill, \
         B running the deployment {acting:?} after it; wrk per router: {:?}\n{deploy_out}",
        reports
            .iter()
            .map(|r| (r.requests, r.non_2xx, r.socket_errors))
            .collect::<Vec<_>>()
    );
    for report in &reports {
        assert!(report.requests > 500, "{}", report.text);
        assert_eq!(report.non_2xx, 0, "{}\n{}", report.text, logs());
        assert_eq!(report.socket_errors, 0, "{}\n{}", report.text, logs());
    }
    assert!(
        took_over < Duration::from_secs(10),
        "B led {took_over:?} after the kill"
    );

    // Scale to zero through the survivor: every container and instance goes.
    let out = flynn(&client_b, &["scale", "web=0"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    settle(SETTLE, "no container left", &logs, || async {
        on_a.all().is_empty() && on_b.all().is_empty()
    })
    .await;
    assert!(jobs(&client_b).await.is_empty());
    assert_eq!(count(store.as_ref(), "/flynn/services/").await, 0);
    assert_eq!(etcd.running(), 2);
    drop(agents);
    drop(routers);
    drop(ctl_b);
    drop(ctl_a);
}
