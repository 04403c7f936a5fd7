//! Apps as containers, measured: the release `flynn` binary (`FLYNN_BIN`, default
//! `<workspace>/target/release/flynn`) as a real `flynn server` (controller, scheduler,
//! router and host agent) on a real etcd (flynn-testkit), the real Docker Engine, and the test
//! server (control/tests/jobs/webapp.rs, built static into a FROM-scratch image). Modes
//! (arguments; default all three):
//!
//! - `scale`: `flynn scale web=N` (`SCALE`, 20) from 0: seconds until the command returns
//!   (every job up) and until every one of the N jobs answered through the router; then
//!   `flynn scale web=0`: seconds until it returns, until every container is removed and
//!   every instance deregistered. `ROUNDS` (3) times.
//! - `deploy`: web=`DEPLOY` (10), a one-by-one deploy of a new release under wrk (`-t1 -c8`)
//!   through the router: its duration, requests, non-2xx answers and socket errors.
//! - `failover`: `CONTROLLERS` (3) controller-only nodes (`flynn server --no-router
//!   --no-host-agent`) started before the server, so one of them leads the scheduler. Each
//!   round SIGKILLs the leader, then scales web up by one through the server at once: seconds
//!   from the kill until another scheduler holds the leader key, until the new job is placed
//!   (its record written: the new leader acted) and until it is up. Rounds while a
//!   controller-only node leads.
//!
//! Containers carry `flynn.host=bench-…` and are removed at the end, as is the image.
//! `cargo build --release -p flynn-control --bin flynn && cargo run --release -p flynn-benches --bin apps [scale|deploy|failover]`

mod procs;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use flynn_benches::env_usize;
use flynn_store::Store;
use flynn_testkit::{client, free_port, Etcd};

use flynn_testkit::docker::{Containers, StaticImage};
use flynn_testkit::process::Proc;
use flynn_testkit::wrk::{Wrk, WrkReport};
use procs::flynn;

const APP: &str = "bench";
const HOST: &str = "bench.localhost";
/// The longest any one measured thing may take before the run counts as failed.
const LIMIT: Duration = Duration::from_secs(120);

/// Everything a mode needs.
struct Bench {
    bin: PathBuf,
    home: tempfile::TempDir,
    store: Arc<dyn Store>,
    http: SocketAddr,
    containers: Containers,
    image: StaticImage,
}

impl Bench {
    async fn flynn(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-a", APP];
        all.extend_from_slice(args);
        flynn(&self.bin, self.home.path(), &all).await
    }

    /// Keys under `prefix`.
    async fn count(&self, prefix: &str) -> anyhow::Result<usize> {
        Ok(self.store.range(prefix).await?.kvs.len())
    }

    /// The job ids answering through the router, until `want` distinct ones did.
    async fn routed(&self, want: usize, deadline: Instant) -> anyhow::Result<()> {
        let addr = self.http.to_string();
        let mut seen = BTreeSet::new();
        while seen.len() < want {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} jobs answered through the router",
                    seen.len()
                );
            }
            match client::get(&addr, "/", HOST).await {
                Ok(r) if r.status == 200 => {
                    if let Some(id) = r
                        .json()
                        .ok()
                        .and_then(|j| j["backend"].as_str().map(str::to_owned))
                    {
                        seen.insert(id);
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        Ok(())
    }

    async fn scale(&self, rounds: usize, n: usize) -> anyhow::Result<()> {
        println!("scale web=0 -> {n} -> 0 ({rounds} rounds; seconds)");
        println!("round  up(cli)  up+routed  down(cli)  containers gone  instances gone");
        let service = format!("/flynn/services/{APP}-web/");
        for round in 1..=rounds {
            let started = Instant::now();
            let scaled = format!("web={n}");
            let routed = self.routed(n, started + LIMIT);
            let (cli, routed) = tokio::join!(
                async {
                    let out = self.flynn(&["scale", &scaled]).await;
                    (out, started.elapsed())
                },
                async {
                    let r = routed.await;
                    (r, started.elapsed())
                }
            );
            cli.0?;
            routed.0?;
            let (up, all_routed) = (cli.1, routed.1.max(cli.1));
            let started = Instant::now();
            self.flynn(&["scale", "web=0"]).await?;
            let down = started.elapsed();
            let (mut gone, mut deregistered) = (None, None);
            while gone.is_none() || deregistered.is_none() {
                if started.elapsed() > LIMIT {
                    bail!("containers or instances left after {LIMIT:?}");
                }
                if gone.is_none() && self.containers.all().is_empty() {
                    gone = Some(started.elapsed());
                }
                if deregistered.is_none() && self.count(&service).await? == 0 {
                    deregistered = Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let s = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
            println!(
                "{round:>5}  {:>7.2}  {:>9.2}  {:>9.2}  {:>15.2}  {:>14.2}",
                up.as_secs_f64(),
                all_routed.as_secs_f64(),
                down.as_secs_f64(),
                s(gone),
                s(deregistered)
            );
        }
        Ok(())
    }

    async fn deploy(&self, n: usize) -> anyhow::Result<()> {
        self.flynn(&["scale", &format!("web={n}")]).await?;
        self.routed(n, Instant::now() + LIMIT).await?;
        self.flynn(&["update", "--strategy", "one-by-one"]).await?;
        let wrk = Wrk::start(&self.http.to_string(), HOST);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let out = self.flynn(&["deploy", "--image", &self.image.tag]).await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let WrkReport {
            requests,
            non_2xx,
            socket_errors,
            text,
        } = wrk.finish();
        let out = out?;
        let steps = out.matches("up and served by every router").count();
        println!(
            "one-by-one deploy of {n} instances under wrk -t1 -c8: {:.2} s ({steps} new jobs up \
             and served); wrk: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors",
            took.as_secs_f64()
        );
        if non_2xx != 0 || socket_errors != 0 {
            println!("{text}");
        }
        self.flynn(&["update", "--strategy", "all-at-once"]).await?;
        self.flynn(&["scale", "web=0"]).await?;
        Ok(())
    }

    async fn leader(&self) -> Option<String> {
        let kv = self.store.get("/flynn/scheduler/leader").await.ok()??;
        serde_json::from_slice(&kv.value).ok()
    }

    async fn failover(&self, controllers: &mut [Proc]) -> anyhow::Result<()> {
        println!("scheduler failover: SIGKILL the leader, then scale +1 through the server (seconds from the kill)");
        println!("round  new leader  job placed  job up");
        let mut web = 0;
        for round in 1.. {
            let Some(id) = self.leader().await else {
                bail!("no scheduler leads");
            };
            let Some(victim) = controllers.iter_mut().find(|c| c.log().contains(&id)) else {
                println!("(the server's own scheduler leads now: done)");
                break;
            };
            let jobs = self.count("/flynn/jobs/").await?;
            let killed = Instant::now();
            victim.kill();
            web += 1;
            self.flynn(&["scale", "-n", &format!("web={web}")]).await?;
            let (mut led, mut placed) = (None, None);
            while led.is_none() || placed.is_none() {
                if killed.elapsed() > LIMIT {
                    bail!("no new leader acted within {LIMIT:?}");
                }
                if led.is_none() && self.leader().await.is_some_and(|l| l != id) {
                    led = Some(killed.elapsed());
                }
                if placed.is_none() && self.count("/flynn/jobs/").await? > jobs {
                    placed = Some(killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.routed(web, killed + LIMIT).await?;
            let up = killed.elapsed();
            let s = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
            println!(
                "{round:>5}  {:>10.2}  {:>10.2}  {:>6.2}",
                s(led),
                s(placed),
                up.as_secs_f64()
            );
        }
        self.flynn(&["scale", "web=0"]).await?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let modes: Vec<String> = std::env::args().skip(1).collect();
    let all = modes.is_empty();
    let wants = |m: &str| all || modes.iter().any(|x| x == m);
    for m in &modes {
        if !["scale", "deploy", "failover"].contains(&m.as_str()) {
            bail!("unknown mode {m:?} (scale, deploy, failover)");
        }
    }
    let bin = procs::flynn_bin()?;
    let etcd = Etcd::start().await;
    let store = flynn_store::open(&etcd.url()).await?;
    let key = flynn_testkit::unique();
    let home = tempfile::tempdir()?;

    // Controller-only nodes first: one of them leads the scheduler (failover mode).
    let mut controllers = Vec::new();
    if wants("failover") {
        for _ in 0..env_usize("CONTROLLERS", 3)? {
            let node_home = tempfile::tempdir()?;
            let (proc, _) = procs::server(
                &bin,
                &etcd.url(),
                &key,
                node_home.path(),
                &["--no-router", "--no-host-agent", "--no-client-config"],
            )
            .await?;
            controllers.push(proc);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.get("/flynn/scheduler/leader").await?.is_none() {
            if Instant::now() > deadline {
                bail!("no scheduler leads");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let image = procs::image()?;
    let containers = Containers::new("bench");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tcp = free_port();
    let (server, _) = procs::server(
        &bin,
        &etcd.url(),
        &key,
        home.path(),
        &[
            "--host-id",
            &containers.host,
            "--http-addr",
            &http.to_string(),
            "--no-https",
            "--admin-addr",
            &admin.to_string(),
            "--tcp-ports",
            &format!("{tcp}-{tcp}"),
            "--tcp-ip",
            "127.0.0.1",
        ],
    )
    .await?;
    let bench = Bench {
        bin,
        home,
        store,
        http,
        containers,
        image,
    };
    let result = run(&bench, &mut controllers, &wants).await;
    if result.is_err() {
        eprintln!("server log (tail):");
        let log = server.log();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
    drop(server);
    drop(controllers);
    drop(bench);
    drop(etcd);
    result
}

async fn run(
    bench: &Bench,
    controllers: &mut [Proc],
    wants: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    flynn(&bench.bin, bench.home.path(), &["create", APP]).await?;
    bench
        .flynn(&["deploy", "--image", &bench.image.tag])
        .await?;
    if wants("scale") {
        bench
            .scale(env_usize("ROUNDS", 3)?, env_usize("SCALE", 20)?)
            .await?;
    }
    if wants("deploy") {
        bench.deploy(env_usize("DEPLOY", 10)?).await?;
    }
    if wants("failover") {
        bench.failover(controllers).await?;
    }
    Ok(())
}
