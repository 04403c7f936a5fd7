//! `flynn run`, `kill`, `log`, `env`, `limit`, `release` and `info` on the real Docker Engine,
//! through the real `flynn` binary and the host agent's API.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Setup;

impl Setup {
    /// The app's current release id (`flynn release show --json`).
    async fn release_id(&self) -> String {
        let out = self.flynn(&["release", "show", "--json"]).await;
        let release: Value = serde_json::from_str(out.ok()).expect("json");
        release["id"].as_str().expect("id").to_owned()
    }

    /// `docker inspect` of the running containers of process type `web` (those that are
    /// still there when inspected: a deploy removes the old ones meanwhile).
    fn web_containers(&self) -> Vec<Value> {
        self.containers
            .running()
            .iter()
            .filter_map(|id| {
                let out = std::process::Command::new("docker")
                    .args(["inspect", id])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())?;
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                let container = v.get(0)?.clone();
                let running = container["State"]["Running"] == true;
                (running && container["Config"]["Labels"]["flynn.type"] == "web")
                    .then_some(container)
            })
            .collect()
    }
}

fn env_of(container: &Value) -> Vec<String> {
    container["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn run_prints_output_takes_stdin_and_returns_the_exit_status() {
    let s = Setup::new("runner").await;
    s.flynn(&["run", "/webapp", "echo", "hi"])
        .await
        .fails_with("has no release yet");
    s.deploy().await;

    let started = Instant::now();
    let out = s
        .flynn(&[
            "run",
            "-e",
            "EXIT_CODE=7",
            "/webapp",
            "echo",
            "hello",
            "world",
        ])
        .await;
    eprintln!(
        "flynn run (attached, one-off container): {:?}",
        started.elapsed()
    );
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(out.stdout, "hello world\n");
    assert_eq!(out.stderr, "echo done\n");
    let ok = s.flynn(&["run", "/webapp", "echo", "fine"]).await;
    assert_eq!((ok.code, ok.stdout.as_str()), (0, "fine\n"), "{ok:?}");

    // Stdin reaches the command; its end closes the command's stdin.
    let mut command = s.client.command(
        s.client.cwd.path(),
        &["-a", &s.app, "run", "/webapp", "cat"],
    );
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("flynn run");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"line one\nline two\n")
        .await
        .expect("write");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("flynn run cat ends")
        .expect("output");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "line one\nline two\n"
    );

    // Detached (the test server, which runs until stopped): the job's id; it shows in
    // `flynn ps` as type `run`; `flynn kill` stops it, and its container and record go.
    let out = s.flynn(&["run", "-d", "/webapp"]).await;
    let id = out.ok().trim().to_owned();
    assert_eq!(id.len(), 36, "a job id: {out:?}");
    let jobs = s.jobs().await;
    let job = jobs.iter().find(|j| j["id"] == id.as_str()).expect("in ps");
    assert_eq!(job["type"], "run");
    assert_eq!(
        s.flynn(&["kill", &id]).await.ok(),
        format!("Job {id} killed.\n")
    );
    s.settle("no one-off container left", || async {
        s.containers.all().is_empty()
    })
    .await;
    s.settle("no one-off job left", || async {
        s.jobs().await.is_empty()
    })
    .await;

    // Bad input: nothing runs.
    s.flynn(&["run", "-e", "NOVALUE", "/webapp", "echo"])
        .await
        .fails_with("invalid environment variable \"NOVALUE\"");
    let out = s.flynn(&["run", "/does-not-exist"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("/does-not-exist"), "{out:?}");
    s.settle("its container removed", || async {
        s.containers.all().is_empty()
    })
    .await;
}

#[tokio::test]
async fn env_set_reaches_new_containers_and_rollback_restores() {
    let s = Setup::new("envy").await;
    s.flynn(&["env"]).await.fails_with("has no release yet");
    s.deploy().await;
    s.flynn(&["scale", "web=1"]).await.ok();
    let first = s.release_id().await;
    assert_eq!(s.flynn(&["env"]).await.ok(), "");

    let out = s
        .flynn(&["env", "set", "GREETING=hello there", "COLOR=blue"])
        .await;
    let out = out.ok();
    assert!(out.starts_with("Created release "), "{out}");
    assert!(out.contains("Deployed release "), "{out}");
    let second = s.release_id().await;
    assert_ne!(first, second);
    assert_eq!(
        s.flynn(&["env"]).await.ok(),
        "COLOR=blue\nGREETING=hello there\n"
    );
    assert_eq!(
        s.flynn(&["env", "get", "GREETING"]).await.ok(),
        "hello there\n"
    );
    // The new release's container has it (the old one's goes).
    s.settle(
        "one web container, of the new release, with GREETING",
        || async {
            let web = s.web_containers();
            web.len() == 1 && env_of(&web[0]).contains(&"GREETING=hello there".to_owned())
        },
    )
    .await;
    let out = s.flynn(&["run", "/webapp", "env", "COLOR"]).await;
    assert_eq!(out.ok(), "blue\n");

    // Bad input: one line, no new release.
    s.flynn(&["env", "set", "NOEQUALS"])
        .await
        .fails_with("invalid environment variable \"NOEQUALS\"");
    s.flynn(&["env", "set", "=x"])
        .await
        .fails_with("invalid environment variable");
    s.flynn(&["env", "unset", "MISSING"])
        .await
        .fails_with("MISSING is not set");
    s.flynn(&["env", "get", "MISSING"])
        .await
        .fails_with("MISSING is not set");
    assert_eq!(s.release_id().await, second);

    s.flynn(&["env", "unset", "COLOR"]).await.ok();
    assert_eq!(s.flynn(&["env"]).await.ok(), "GREETING=hello there\n");
    let third = s.release_id().await;

    // Rollback: the release before the current one, deployed.
    let out = s.flynn(&["release", "rollback"]).await;
    assert!(
        out.ok()
            .contains(&format!("Rolling back to release {second}")),
        "{out:?}"
    );
    assert_eq!(s.release_id().await, second);
    let list = s.flynn(&["release"]).await;
    let list = list.ok();
    for id in [&first, &second, &third] {
        assert!(list.contains(id.as_str()), "{list}");
    }
    s.flynn(&["release", "rollback", &second])
        .await
        .fails_with("already the current release");
    s.flynn(&["release", "rollback", "nope"])
        .await
        .fails_with("has no release \"nope\"");
    let show = s.flynn(&["release", "show"]).await;
    assert!(show.ok().contains("ENV[COLOR]:    blue"), "{show:?}");
    s.settle("the web job runs the rolled-back release", || async {
        let web = s.web_containers();
        web.len() == 1 && env_of(&web[0]).contains(&format!("FLYNN_RELEASE_ID={second}"))
    })
    .await;

    let info = s.flynn(&["info"]).await;
    let info = info.ok();
    assert!(info.contains(&format!("Release: {second}")), "{info}");
    assert!(info.contains("Scale:   web=1"), "{info}");
    s.flynn(&["scale", "web=0"]).await.ok();
}

#[tokio::test]
async fn limit_sets_the_memory_of_new_containers() {
    let s = Setup::new("limited").await;
    s.deploy().await;
    s.flynn(&["scale", "web=1"]).await.ok();
    assert_eq!(s.flynn(&["limit"]).await.ok(), "web: memory=1GB\n");
    let before = s.release_id().await;
    s.flynn(&["limit", "set", "web", "memory=lots"])
        .await
        .fails_with("memory=\"lots\" is not a size");
    s.flynn(&["limit", "set", "web", "memory=1KB"])
        .await
        .fails_with("minimum");
    s.flynn(&["limit", "set", "web", "cpu=100"])
        .await
        .fails_with("unknown resource \"cpu\"");
    s.flynn(&["limit", "set", "worker", "memory=256MB"])
        .await
        .fails_with("has no process type \"worker\"");
    assert_eq!(s.release_id().await, before);

    let out = s.flynn(&["limit", "set", "web", "memory=256MB"]).await;
    assert!(out.ok().contains("Deployed release"), "{out:?}");
    assert_eq!(s.flynn(&["limit"]).await.ok(), "web: memory=256MB\n");
    s.settle("the new web container has 256 MiB", || async {
        let web = s.web_containers();
        web.len() == 1 && web[0]["HostConfig"]["Memory"] == 256u64 << 20
    })
    .await;
    s.flynn(&["scale", "web=0"]).await.ok();
}

#[tokio::test]
async fn kill_replaces_the_job_and_log_follows_output() {
    let s = Setup::new("killjoy").await;
    s.deploy().await;
    s.flynn(&["scale", "web=2"]).await.ok();
    let before = s.up().await;
    assert_eq!(before.len(), 2);
    let victim = before.iter().next().expect("a job").clone();

    // `flynn log -f` streams what a job prints (one line per request here).
    let mut command = s
        .client
        .command(s.client.cwd.path(), &["-a", &s.app, "log", "-f"]);
    let mut follower = command.spawn().expect("flynn log -f");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let marker = format!("/marker-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let _ = s.server.get("killjoy.localhost", &marker).await;
            let next = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await;
            if let Ok(Ok(Some(line))) = next {
                if line.contains(&marker) {
                    return line;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {marker}\nserver log:\n{}", s.server.log()));
    eprintln!(
        "flynn log -f: a request's line arrived in {:?}",
        started.elapsed()
    );
    assert!(found.contains(" app[web."), "{found}");
    assert!(
        found.ends_with(&format!("]: request GET {marker}")),
        "{found}"
    );
    let _ = follower.kill().await;

    // Without -f: the lines so far; -j: one job's.
    let out = s.flynn(&["log", "-t", "web"]).await;
    assert!(out.ok().contains(&marker), "{out:?}");
    let out = s.flynn(&["log", "-j", &victim, "-r"]).await;
    let out = out.ok();
    assert!(out.lines().all(|l| l.starts_with("request ")), "{out}");

    // Kill: the job goes, a new one takes its place.
    let started = Instant::now();
    let out = s.flynn(&["kill", &victim]).await;
    assert_eq!(out.ok(), format!("Job {victim} killed.\n"));
    s.settle("a new job up in place of the killed one", || async {
        let up = s.up().await;
        up.len() == 2 && !up.contains(&victim)
    })
    .await;
    eprintln!("flynn kill: replaced in {:?}", started.elapsed());
    s.settle("the killed job's container gone", || async {
        s.containers.all().len() == 2
    })
    .await;

    // Bad input: one line, nothing changed.
    s.flynn(&["kill", "no-such-job"])
        .await
        .fails_with("has no job \"no-such-job\"");
    s.flynn(&["log", "-j", "no-such-job"])
        .await
        .fails_with("has no job \"no-such-job\"");
    s.flynn(&["log", "-t", "worker"])
        .await
        .fails_with("no process type \"worker\"");
    assert_eq!(s.up().await.len(), 2);
    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
}

/// The host agent's API holds a client to the controller's limits: a request head that does
/// not come within 10 s is cut off (slowloris), and the attach upgrade of `flynn run` still
/// works on it (the run test above).
#[tokio::test]
async fn the_agents_api_cuts_off_an_unfinished_request_head() {
    let s = Setup::new("headless").await;
    let hosts = s.api("GET", "/hosts", "").await;
    let api = hosts[0]["api"]
        .as_str()
        .expect("the agent's API address")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&api).await.expect("connect");
    stream
        .write_all(b"GET /jobs HTTP/1.1\r\nHost: agent\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "still open after 20 s");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5), "{took:?}");
}
