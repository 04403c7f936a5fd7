//! Apps as containers, against the real Docker Engine: `flynn deploy --image` and `flynn scale`
//! through the real `flynn` binary and a real `flynn server` (its scheduler and in-process host
//! agent), traffic through its router. The tests fail (never skip) when the engine is missing,
//! and remove every container and image they made, also when they fail.

mod commands;
mod deploys;
#[allow(dead_code)]
mod engine;
#[path = "../cli/harness.rs"]
#[allow(dead_code)]
mod harness;
mod hosts;
mod logs;
mod placement;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use flynn_testkit::docker::{docker, Containers};
use flynn_testkit::eventually;
use serde_json::Value;

use engine::TestImage;
use harness::{Client, Server};

/// How long the jobs' changes may take to show (a container starts in well under a second
/// here; this leaves room for a loaded machine).
const SETTLE: Duration = Duration::from_secs(20);

/// An app on a fresh `flynn server` with its own host agent, and its image deployed.
struct Setup {
    // Dropped in this order: the server, its containers, the image.
    server: Server,
    containers: Containers,
    image: TestImage,
    client: Client,
    app: String,
}

impl Setup {
    async fn new(app: &str) -> Setup {
        Setup::on(app, None).await
    }

    /// On the embedded store, or on `etcd`.
    async fn on(app: &str, etcd: Option<&str>) -> Setup {
        let image = TestImage::build();
        let containers = Containers::new("test");
        let client = Client::new();
        let server = start(&client, &containers, etcd).await;
        assert_eq!(
            client.run(&["create", app]).await.ok(),
            format!("Created {app}\n")
        );
        Setup {
            server,
            containers,
            image,
            client,
            app: app.to_owned(),
        }
    }

    async fn flynn(&self, args: &[&str]) -> harness::Run {
        let mut all = vec!["-a", self.app.as_str()];
        all.extend_from_slice(args);
        self.client.run(&all).await
    }

    async fn deploy(&self) {
        let out = self.flynn(&["deploy", "--image", &self.image.tag]).await;
        let out = out.ok();
        assert!(out.starts_with("Created release "), "{out}");
        assert!(out.contains("Deployed release "), "{out}");
    }

    /// `flynn ps -o json`.
    async fn jobs(&self) -> Vec<Value> {
        let out = self.flynn(&["ps", "-o", "json"]).await;
        let jobs: Value = serde_json::from_str(out.ok()).expect("json");
        jobs.as_array().expect("list").clone()
    }

    /// Ids of the jobs that are up.
    async fn up(&self) -> BTreeSet<String> {
        self.jobs()
            .await
            .iter()
            .filter(|j| j["state"] == "up" && j["stop"] != true)
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The registered instances of `<app>-web`.
    async fn instances(&self) -> Vec<Value> {
        let service = format!("{}-web", self.app);
        let out = self
            .client
            .run(&["service", "list", &service, "-o", "json"])
            .await;
        let instances: Value = serde_json::from_str(out.ok()).expect("json");
        instances.as_array().expect("list").clone()
    }

    /// The backends (job ids) the router reaches for the app, over `tries` requests.
    async fn routed(&self, tries: usize) -> BTreeSet<String> {
        let host = format!("{}.localhost", self.app);
        let mut seen = BTreeSet::new();
        for _ in 0..tries {
            if let Ok(r) = self.server.get(&host, "/").await {
                if r.status == 200 {
                    if let Some(b) = r
                        .json()
                        .ok()
                        .and_then(|j| j["backend"].as_str().map(str::to_owned))
                    {
                        seen.insert(b);
                    }
                }
            }
        }
        seen
    }

    /// Waits until `check` holds, or fails with the server's log.
    async fn settle<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if let Err(e) = eventually(SETTLE, what, check).await {
            panic!("{e}\nserver log:\n{}", self.server.log());
        }
    }
}

/// A `flynn server` whose host agent is `containers`' host.
async fn start(client: &Client, containers: &Containers, etcd: Option<&str>) -> Server {
    let args = ["--host-id", &containers.host, "--drain-delay", "200ms"];
    match etcd {
        Some(etcd) => Server::etcd_with(client, etcd, &args).await,
        None => Server::embedded_with(client, &args).await,
    }
}

#[tokio::test]
async fn deploy_scale_up_route_and_scale_down() {
    let s = Setup::new("scaly").await;
    s.deploy().await;
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=0\n");

    let started = Instant::now();
    let out = s.flynn(&["scale", "web=3"]).await;
    let out = out.ok();
    let scaled = started.elapsed();
    assert!(out.starts_with("scaling web: 0=>3\n"), "{out}");
    assert!(out.contains("scale completed in"), "{out}");
    assert_eq!(out.matches(" up\n").count(), 3, "{out}");
    let up = s.up().await;
    assert_eq!(up.len(), 3, "{:?}", s.jobs().await);

    // Three containers, as the agent was asked to make them.
    let running = s.containers.running();
    assert_eq!(running.len(), 3);
    let inspect: Value = serde_json::from_str(&docker(
        &[
            &["inspect"][..],
            &running.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    ))
    .expect("inspect json");
    for container in inspect.as_array().expect("list") {
        let labels = &container["Config"]["Labels"];
        assert_eq!(labels["flynn.host"], s.containers.host.as_str());
        assert_eq!(labels["flynn.app-name"], "scaly");
        assert_eq!(labels["flynn.type"], "web");
        let job = labels["flynn.job"].as_str().expect("job label");
        assert!(up.contains(job), "{job} not in {up:?}");
        let env: Vec<&str> = container["Config"]["Env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"PORT=8080"), "{env:?}");
        assert!(
            env.contains(&format!("FLYNN_JOB_ID={job}").as_str()),
            "{env:?}"
        );
        assert!(env.contains(&"FLYNN_APP_NAME=scaly"), "{env:?}");
        assert!(env.contains(&"FLYNN_PROCESS_TYPE=web"), "{env:?}");
        let host = &container["HostConfig"];
        assert_eq!(host["Init"], true);
        assert_eq!(host["Memory"], 1u64 << 30);
        assert!(matches!(
            host["RestartPolicy"]["Name"].as_str(),
            Some("no" | "")
        ));
        let binding = &host["PortBindings"]["8080/tcp"][0];
        assert_eq!(binding["HostIp"], "127.0.0.1");
    }

    // Three instances with the jobs' meta, each served through the router.
    let instances = s.instances().await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    for instance in &instances {
        let id = instance["id"].as_str().expect("id");
        assert!(up.contains(id));
        assert_eq!(instance["meta"]["FLYNN_JOB_ID"], id);
        assert_eq!(instance["meta"]["FLYNN_APP_NAME"], "scaly");
        assert_eq!(instance["meta"]["FLYNN_PROCESS_TYPE"], "web");
        assert!(instance["meta"]["FLYNN_RELEASE_ID"].is_string());
        assert!(instance["meta"]["FLYNN_APP_ID"].is_string());
        assert!(instance["addr"]
            .as_str()
            .expect("addr")
            .starts_with("127.0.0.1:"));
    }
    s.settle("all three jobs routed", || async {
        s.routed(30).await == up
    })
    .await;
    eprintln!(
        "flynn scale web=3: {scaled:?} to three jobs up, {:?} to all three answering through the router",
        started.elapsed()
    );

    // 3 → 1 → 0: containers and instances go.
    let out = s.flynn(&["scale", "web=1"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert_eq!(s.containers.all().len(), 1);
    assert_eq!(s.instances().await.len(), 1);
    let left = s.up().await;
    assert_eq!(left.len(), 1);
    s.settle("only the one left is routed", || async {
        s.routed(10).await == left
    })
    .await;
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=1\n");

    let started = Instant::now();
    s.flynn(&["scale", "web=0"]).await.ok();
    eprintln!("flynn scale web=0 (from 1): {:?}", started.elapsed());
    assert!(s.containers.all().is_empty());
    assert!(s.instances().await.is_empty());
    assert!(s.jobs().await.is_empty());
    let r = s.server.get("scaly.localhost", "/").await.expect("answer");
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn a_killed_job_is_restarted_and_registered_again() {
    let s = Setup::new("phoenix").await;
    s.deploy().await;
    s.flynn(&["scale", "web=2"]).await.ok();
    let before = s.up().await;
    assert_eq!(before.len(), 2);
    let victim = before.iter().next().expect("a job").clone();
    let container = docker(&["ps", "-q", "--filter", &format!("label=flynn.job={victim}")]);
    let started = Instant::now();
    docker(&["kill", container.trim()]);

    // Replaced by a new job, up and registered; the killed one's container is gone.
    s.settle("a new job up in place of the killed one", || async {
        let up = s.up().await;
        up.len() == 2 && !up.contains(&victim)
    })
    .await;
    let after = s.up().await;
    s.settle("two instances, the new one among them", || async {
        let ids: BTreeSet<String> = s
            .instances()
            .await
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect();
        ids == after
    })
    .await;
    s.settle("the new job answers through the router", || async {
        s.routed(20).await == after
    })
    .await;
    eprintln!("killed job replaced and routed in {:?}", started.elapsed());
    assert_eq!(s.containers.all().len(), 2);
    let jobs = s.jobs().await;
    let restarted = jobs
        .iter()
        .find(|j| !before.contains(j["id"].as_str().unwrap_or_default()))
        .expect("the new job");
    assert_eq!(restarted["restarts"], 1, "{jobs:?}");

    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
}

#[tokio::test]
async fn bad_input_is_one_line_and_changes_nothing() {
    let s = Setup::new("picky").await;
    // An image the engine lacks: no artifact, no release.
    let missing = format!("flynn-test-missing:{}", uuid::Uuid::new_v4().simple());
    s.flynn(&["deploy", "--image", &missing])
        .await
        .fails_with("is not in the Docker Engine");
    s.flynn(&["scale"]).await.fails_with("has no release yet");
    s.flynn(&["scale", "web=1"])
        .await
        .fails_with("has no release yet");

    s.deploy().await;
    s.flynn(&["scale", "web=-1"])
        .await
        .fails_with("web=-1: a count must be 0-10000");
    s.flynn(&["scale", "web=three"])
        .await
        .fails_with("invalid scale \"web=three\"");
    s.flynn(&["scale", "web"])
        .await
        .fails_with("expected TYPE=COUNT");
    s.flynn(&["scale", "worker=1"])
        .await
        .fails_with("has no process type \"worker\" (it has: web)");
    // One bad count spoils the whole command.
    s.flynn(&["scale", "web=1", "worker=1"])
        .await
        .fails_with("has no process type \"worker\"");
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=0\n");
    // Give a (wrong) scheduler the time to act on anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.jobs().await.is_empty());
    assert!(s.containers.all().is_empty());
}

/// The host agent restarts (its server killed, a new one on the same store and host id): it
/// adopts the containers of the jobs still wanted, and removes a container with its label that
/// no job wants. Nothing is orphaned, nothing restarted.
#[tokio::test]
async fn a_restarted_agent_adopts_its_jobs_and_removes_the_rest() {
    let etcd = flynn_testkit::Etcd::start().await;
    let mut s = Setup::on("sticky", Some(&etcd.url())).await;
    s.deploy().await;
    s.flynn(&["scale", "web=2"]).await.ok();
    let jobs = s.up().await;
    let mut containers = s.containers.running();
    containers.sort();
    assert_eq!(containers.len(), 2);
    let stray = docker(&[
        "run",
        "-d",
        "--init",
        "--label",
        &format!("flynn.host={}", s.containers.host),
        "--label",
        "flynn.job=nobody-wants-me",
        &s.image.tag,
    ]);
    let stray = stray.trim().to_owned();

    // SIGKILL: the agent says nothing to its containers. Then a new server on the same store
    // and host id (and a new controller key, so the client config is written again).
    let pid = s.server.pid().expect("pid").to_string();
    Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    std::fs::remove_file(s.client.flynnrc()).expect("remove ~/.flynnrc");
    let new = start(&s.client, &s.containers, Some(&etcd.url())).await;
    drop(std::mem::replace(&mut s.server, new));
    let started = Instant::now();
    s.settle("the stray container removed", || async {
        !s.containers.all().contains(&stray)
    })
    .await;
    let mut now = s.containers.all();
    now.sort();
    assert_eq!(now, containers, "the same two containers, adopted");
    s.settle("both jobs registered and routed again", || async {
        s.instances().await.len() == 2 && s.routed(20).await == jobs
    })
    .await;
    eprintln!(
        "restarted agent adopted its jobs in {:?}",
        started.elapsed()
    );
    assert_eq!(s.up().await, jobs);

    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
}
