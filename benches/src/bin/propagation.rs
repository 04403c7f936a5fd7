//! How fast store changes reach the data path, and how fast a router starts with a million
//! routes.
//!
//! Runs a real etcd (flynn-testkit), an HTTP backend, and the release `flynn-router` binary
//! (`FLYNN_ROUTER_BIN`, default `<workspace>/target/release/flynn-router`). Then:
//!
//! 1. Propagation: for `PROP_ROUTES` (300) new routes, the time from the store put returning to
//!    the first request on the new host that is served 200 (a keep-alive raw HTTP/1.1 client
//!    polling in a tight loop). Also for new instances of a routed service (503 → 200).
//! 2. Start-up: `STARTUP_ROUTES` (1,000,000) routes (ids `http-<uuid>`) and 1000 instances in a
//!    fresh etcd (written in transactions of 128 puts, 8 at a time: a few minutes for a
//!    million), a fresh router, the time until `/health` is 200, until `flynn_router_routes`
//!    shows every route and until the last route is served, and the router's RSS, also per route
//!    above a router with no routes. Repeated `STARTUP_RUNS` (3) times. Then propagation again,
//!    on the last of those routers: write → served with the big table.
//! 3. Restart from a snapshot (`--snapshot`): a router started with a snapshot path and no
//!    file lists as above and saves its table; then, `STARTUP_RUNS` times, a router restarted
//!    on that file (the one before stopped by SIGTERM): the same times and memory, the file's
//!    size and how long it took to load (from the router's log). Then propagation on the last
//!    of those.
//! 4. Joining a live router (`--join-peers`): `STARTUP_RUNS` times, a router with no snapshot
//!    file started beside the last restarted one takes that router's table; the same times and
//!    memory. (The cold start-ups above run with `--join-peers false`.)
//!
//! etcd answers a range with one gRPC message; the client refuses messages over 64 MiB (the
//! router's limit, `MAX_MESSAGE` in the store's etcd backend) and a million routes are about
//! 275 MB, so the router lists in pages of 10,000 keys at one revision. etcd's own limit on a
//! request is `--max-request-bytes` (1.5 MiB by default): the fill's transactions stay far
//! below it.
//!
//! `ROUTER_THREADS` sets `--threads` (default: the router's own, one per CPU).
//!
//! `cargo build --release -p flynn-router && cargo run --release -p flynn-benches --bin propagation`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Client, Txn, TxnOp};
use flynn_benches::{env_usize, route_id};
use flynn_store::mirror;
use flynn_store::schema::ROUTE_SPLITS;
use flynn_store::Keys;
use flynn_testkit::backend::Backend;
use flynn_testkit::client::{self, Conn};
use flynn_testkit::{free_port, Etcd};
use futures::{StreamExt, TryStreamExt};
use tokio::process::{Child, Command};

/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// Services the start-up routes are spread over (each gets one instance).
const STARTUP_SERVICES: usize = 1000;
/// Parts listed side by side, as the router does by default (`FLYNN_STORE_LIST_PARALLEL`).
const MIRROR_PARALLEL: usize = 4;
/// Longest wait for one change to show before the run counts as failed.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

fn router_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("FLYNN_ROUTER_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/flynn-router"),
    };
    if !bin.is_file() {
        bail!(
            "no router binary at {} (run `cargo build --release -p flynn-router`, or set FLYNN_ROUTER_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

fn http_route(id: &str, domain: &str, service: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id, "type": "http", "domain": domain, "path": "/", "service": service,
    })
    .to_string()
    .into_bytes()
}

fn instance(id: &str, backend: &Backend) -> Vec<u8> {
    serde_json::json!({"id": id, "addr": backend.addr.to_string()})
        .to_string()
        .into_bytes()
}

/// A router process on fresh loopback ports; killed when dropped.
struct Router {
    child: Child,
    http: String,
    admin: String,
    log: tempfile::NamedTempFile,
}

impl Router {
    fn start(bin: &PathBuf, store_url: &str) -> anyhow::Result<Router> {
        Router::start_with(bin, store_url, None, false)
    }

    /// A router keeping its table in `snapshot` (`--snapshot`), when given; taking a live
    /// router's table at start when `join` (`--join-peers`; else it lists the store).
    fn start_with(
        bin: &PathBuf,
        store_url: &str,
        snapshot: Option<&Path>,
        join: bool,
    ) -> anyhow::Result<Router> {
        let http = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let https = format!("127.0.0.1:{}", free_port());
        let log = tempfile::NamedTempFile::new()?;
        let upgrade_sock = log.path().with_extension("upgrade.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("--store")
            .arg(store_url)
            .arg("--http-addr")
            .arg(&http)
            .arg("--admin-addr")
            .arg(&admin)
            .arg("--log")
            // The snapshot's load and save times are info lines of the store sync.
            .arg("warn,flynn_router::sync=info")
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .kill_on_drop(true)
            // By env, which binaries without these listeners ignore: keep the HTTPS listener
            // (default 0.0.0.0:8443) and the upgrade socket away from anything else running.
            .env("FLYNN_HTTPS_ADDR", https)
            .env("FLYNN_TCP_IP", "127.0.0.1")
            .env("FLYNN_UPGRADE_SOCK", upgrade_sock)
            .env("FLYNN_JOIN_PEERS", join.to_string());
        if let Ok(threads) = std::env::var("ROUTER_THREADS") {
            cmd.arg("--threads").arg(threads);
        }
        if let Some(snapshot) = snapshot {
            cmd.arg("--snapshot").arg(snapshot);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Router {
            child,
            http,
            admin,
            log,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("router has exited")
    }

    /// SIGTERM, and the wait for the exit (a router with `--snapshot` saves its table first).
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid()?.to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        match exited {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("router exited with {status}:\n{}", self.log_tail()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("router still running 60 s after SIGTERM"),
        }
    }

    /// `took_ms` of the last log line with `message` (the snapshot's load or save).
    fn logged_ms(&self, message: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.log.path()).ok()?;
        text.lines()
            .rev()
            .filter(|l| l.contains(message))
            .find_map(|l| {
                l.split_once("took_ms=")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `/health` every millisecond until it answers 200.
    async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(resp) = client::get(&self.admin, "/health", "localhost").await {
                if resp.status == 200 {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("router exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("router not healthy after {within:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The value of a gauge in `/metrics`.
    async fn gauge(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let resp = client::get(&self.admin, "/metrics", "localhost").await?;
        let text = resp.text();
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as i64))
    }

    /// Resident and peak resident memory in KiB, from `/proc/<pid>/status`.
    fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc/<pid>/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Nearest-rank percentiles of a sample, in milliseconds.
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * ms.len() as f64).ceil() as usize;
        ms[i.clamp(1, ms.len()) - 1]
    };
    Summary {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: ms.last().copied().unwrap_or(0.0),
    }
}

/// The head of a table of [`print_row`]s.
fn print_head() {
    println!(
        "| {:<44} | {:>8} | {:>8} | {:>8} | {:>8} |",
        "", "p50", "p90", "p99", "max"
    );
    println!(
        "|{:-<46}|{:->10}|{:->10}|{:->10}|{:->10}|",
        "", "", "", "", ""
    );
}

fn print_row(what: &str, samples: &[Duration]) {
    let s = summarize(samples);
    println!(
        "| {what:<44} | {:>8.3} | {:>8.3} | {:>8.3} | {:>8.3} |",
        s.p50, s.p90, s.p99, s.max
    );
}

/// Requests `host` on `conn` (reconnecting when needed) until it is served 200; the time from
/// `since` to that answer.
async fn until_served(
    conn: &mut Conn,
    addr: &str,
    host: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let mut last = 0;
    loop {
        match conn.get("/", host, &[]).await {
            Ok(resp) if resp.status == 200 => return Ok(since.elapsed()),
            Ok(resp) => last = resp.status,
            Err(_) => *conn = Conn::open(addr).await?,
        }
        if since.elapsed() > PROPAGATION_LIMIT {
            bail!("{host} still answers {last} after {PROPAGATION_LIMIT:?}");
        }
    }
}

struct Propagation {
    route_after_put: Vec<Duration>,
    /// When a watch of our own (in this process) saw the same put, after the put returned
    /// (zero when it came first): how much of the propagation time is etcd's.
    watch_after_put: Vec<Duration>,
    route_after_issue: Vec<Duration>,
    route_put: Vec<Duration>,
    instance_after_put: Vec<Duration>,
    rss_kib: u64,
}

async fn propagation(bin: &PathBuf, count: usize) -> anyhow::Result<Propagation> {
    let etcd = Etcd::start().await;
    let mut router = Router::start(bin, &etcd.url())?;
    router.wait_healthy(Duration::from_secs(20)).await?;
    propagate(&etcd, &router, count).await
}

/// Propagation through a running router on `etcd`.
async fn propagate(etcd: &Etcd, router: &Router, count: usize) -> anyhow::Result<Propagation> {
    let store = flynn_store::open(&etcd.url()).await?;
    let keys = Keys::default();
    let backend = Backend::start("propagation").await;
    store
        .put(
            &keys.instance("prop-web", "i1"),
            instance("i1", &backend),
            None,
        )
        .await?;
    let mut conn = Conn::open(&router.http).await?;

    // Warm the connection and the router's pool to the backend.
    store
        .put(
            &keys.route("http-warm"),
            http_route("http-warm", "warm.bench.test", "prop-web"),
            None,
        )
        .await?;
    until_served(&mut conn, &router.http, "warm.bench.test", Instant::now()).await?;

    let mut out = Propagation {
        route_after_put: Vec::with_capacity(count),
        watch_after_put: Vec::with_capacity(count),
        route_after_issue: Vec::with_capacity(count),
        route_put: Vec::with_capacity(count),
        instance_after_put: Vec::with_capacity(count),
        rss_kib: 0,
    };

    // A watch of our own on the routes, to tell etcd's share of the time from the router's.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let from = store.range(&keys.routes()).await?.revision + 1;
    let mut events = store.watch(&keys.routes(), from).await?;
    let watcher = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(Ok(event)) = events.next().await {
                let now = Instant::now();
                if let Ok(mut seen) = seen.lock() {
                    seen.insert(event.key().to_owned(), now);
                }
            }
        }
    });

    // New routes to a service that has an instance: 404 → 200.
    for i in 0..count {
        let id = format!("http-prop-{i}");
        let host = format!("prop-{i}.bench.test");
        let issued = Instant::now();
        store
            .put(&keys.route(&id), http_route(&id, &host, "prop-web"), None)
            .await?;
        let put_done = Instant::now();
        until_served(&mut conn, &router.http, &host, put_done).await?;
        out.route_after_put.push(put_done.elapsed());
        out.route_after_issue.push(issued.elapsed());
        out.route_put.push(put_done - issued);
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        let watched = loop {
            let at = seen
                .lock()
                .ok()
                .and_then(|s| s.get(&keys.route(&id)).copied());
            if let Some(at) = at {
                break at;
            }
            if Instant::now() > deadline {
                bail!("our own watch never saw {id}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        out.watch_after_put
            .push(watched.saturating_duration_since(put_done));
    }
    watcher.abort();

    // New instances of routed services that had none: 503 → 200.
    for i in 0..count {
        let service = format!("inst-{i}");
        let id = format!("http-inst-{i}");
        let host = format!("inst-{i}.bench.test");
        store
            .put(&keys.route(&id), http_route(&id, &host, &service), None)
            .await?;
        // Wait for the route itself (503: routed, no instance).
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            match conn.get("/", &host, &[]).await {
                Ok(resp) if resp.status == 503 => break,
                Ok(_) => {}
                Err(_) => conn = Conn::open(&router.http).await?,
            }
            if Instant::now() > deadline {
                bail!("route {host} never showed up");
            }
        }
        store
            .put(
                &keys.instance(&service, "i1"),
                instance("i1", &backend),
                None,
            )
            .await?;
        let put_done = Instant::now();
        until_served(&mut conn, &router.http, &host, put_done).await?;
        out.instance_after_put.push(put_done.elapsed());
    }
    out.rss_kib = router.memory_kib()?.0;
    Ok(out)
}

/// Writes `routes` routes over `STARTUP_SERVICES` services (one instance each), in transactions
/// of `TXN_OPS` puts, a few at a time.
async fn fill(etcd: &Etcd, backend: &Backend, routes: usize) -> anyhow::Result<()> {
    let client = Client::connect([format!("http://{}", etcd.client_addr())], None).await?;
    let keys = Keys::default();
    let instances = (0..STARTUP_SERVICES).map(|s| {
        let svc = format!("svc-{s}");
        (keys.instance(&svc, "i1"), instance("i1", backend))
    });
    let routes = (0..routes).map(|i| {
        let id = route_id(i);
        let domain = format!("r-{i}.startup.test");
        let svc = format!("svc-{}", i % STARTUP_SERVICES);
        (keys.route(&id), http_route(&id, &domain, &svc))
    });
    let mut puts = instances.chain(routes).peekable();
    let batches = std::iter::from_fn(move || {
        puts.peek()?;
        Some(puts.by_ref().take(TXN_OPS).collect::<Vec<_>>())
    });
    futures::stream::iter(batches.map(|chunk| {
        let mut kv = client.kv_client();
        let ops: Vec<TxnOp> = chunk
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        async move { kv.txn(Txn::new().and_then(ops)).await.map(drop) }
    }))
    .buffer_unordered(8)
    .try_for_each(|()| async { Ok(()) })
    .await?;
    Ok(())
}

struct Startup {
    healthy: Duration,
    all_routes: Duration,
    first_served: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    /// CPU seconds the router and etcd spent from the router's start to the last route served.
    router_cpu: f64,
    etcd_cpu: f64,
    router: Router,
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 Hz.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The pid of the etcd serving `etcd` (the process with its data dir on the command line).
fn etcd_pid(etcd: &Etcd) -> anyhow::Result<u32> {
    let dir = etcd.data_dir().display().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "etcd" && cmdline.contains(&dir) {
            return Ok(pid);
        }
    }
    bail!("no etcd process with {dir} on its command line")
}

/// The machine's 1-minute load average (`/proc/loadavg`): the benchmark shares the CPUs.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// RSS of a router with no routes (the 1000 instances only), in KiB.
async fn empty_router_kib(bin: &PathBuf, backend: &Backend) -> anyhow::Result<u64> {
    let etcd = Etcd::start().await;
    fill(&etcd, backend, 0).await?;
    let mut router = Router::start(bin, &etcd.url())?;
    router.wait_healthy(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(router.memory_kib()?.0)
}

async fn startup(
    bin: &PathBuf,
    etcd: &Etcd,
    routes: usize,
    snapshot: Option<&Path>,
    join: bool,
) -> anyhow::Result<Startup> {
    let etcd_pid = etcd_pid(etcd)?;
    let etcd_cpu = cpu_seconds(etcd_pid)?;
    let started = Instant::now();
    let mut router = Router::start_with(bin, &etcd.url(), snapshot, join)?;
    router.wait_healthy(Duration::from_secs(120)).await?;
    let healthy = started.elapsed();
    loop {
        let seen = router.gauge("flynn_router_routes").await?.unwrap_or(0);
        if seen as usize >= routes {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {seen} of {routes} routes after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all_routes = started.elapsed();
    let mut conn = Conn::open(&router.http).await?;
    let last = routes - 1;
    until_served(
        &mut conn,
        &router.http,
        &format!("r-{last}.startup.test"),
        Instant::now(),
    )
    .await?;
    let first_served = started.elapsed();
    let router_cpu = cpu_seconds(router.pid()?)?;
    let etcd_cpu = cpu_seconds(etcd_pid)? - etcd_cpu;
    let instances = router.gauge("flynn_router_instances").await?.unwrap_or(0);
    if instances as usize != STARTUP_SERVICES {
        bail!("{instances} instances in the table, expected {STARTUP_SERVICES}");
    }
    // Let the listing and decode buffers be freed before reading the resident size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_kib, hwm_kib) = router.memory_kib()?;
    Ok(Startup {
        healthy,
        all_routes,
        first_served,
        rss_kib,
        hwm_kib,
        router_cpu,
        etcd_cpu,
        router,
    })
}

fn print_startup_head(first: &str) {
    println!(
        "| {first} | /health 200 (ms) | all routes in metric (ms) | first 200 on last route (ms) | VmRSS (MiB) | VmHWM (MiB) | RSS per route above empty (B) | router CPU (s) | etcd CPU (s) | load avg |"
    );
    println!("|----:|-----------------:|--------------------------:|-----------------------------:|------------:|------------:|------------------------------:|---------------:|-------------:|---------:|");
}

/// One row of start-up numbers; returns the RSS per route above the empty router.
fn print_startup(run: &str, s: &Startup, empty_kib: u64, routes: usize) -> f64 {
    let per_route = (s.rss_kib.saturating_sub(empty_kib) * 1024) as f64 / routes as f64;
    println!(
        "| {run:>3} | {:>16.0} | {:>25.0} | {:>28.0} | {:>11.1} | {:>11.1} | {:>29.0} | {:>14.2} | {:>12.2} | {:>8.2} |",
        s.healthy.as_secs_f64() * 1e3,
        s.all_routes.as_secs_f64() * 1e3,
        s.first_served.as_secs_f64() * 1e3,
        s.rss_kib as f64 / 1024.0,
        s.hwm_kib as f64 / 1024.0,
        per_route,
        s.router_cpu,
        s.etcd_cpu,
        load_average(),
    );
    per_route
}

/// The start-up target's line: the slowest of the runs against 5 s.
fn print_start_target(routes: usize, what: &str, worst: Duration) {
    println!(
        "target {routes}-route {what} to the last route served < 5 s: {} (worst {:.0} ms)",
        if worst < Duration::from_secs(5) {
            "met"
        } else {
            "MISSED"
        },
        worst.as_secs_f64() * 1e3
    );
}

/// Lists the routes through a mirror as the router does (its parts side by side), keeping
/// nothing: how many keys, and how long until the last page.
async fn mirror_listing(store: Arc<dyn flynn_store::Store>) -> anyhow::Result<(usize, Duration)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let options = mirror::Options {
        splits: ROUTE_SPLITS,
        parallel: MIRROR_PARALLEL,
        ..mirror::Options::default()
    };
    let started = Instant::now();
    let task = mirror::spawn(store, Keys::default().routes(), tx, options);
    let mut count = 0;
    while let Some(event) = rx.recv().await {
        if let mirror::MirrorEvent::Page(page) = event {
            count += page.kvs.len();
            if page.last {
                break;
            }
        }
    }
    let took = started.elapsed();
    task.abort();
    Ok((count, took))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = router_bin()?;
    let count = env_usize("PROP_ROUTES", 300)?;
    let routes = env_usize("STARTUP_ROUTES", 1_000_000)?.max(1);
    let runs = env_usize("STARTUP_RUNS", 3)?;
    let threads = std::env::var("ROUTER_THREADS").unwrap_or_else(|_| "default".into());
    println!("router: {} (--threads {threads})", bin.display());
    println!();

    let p = propagation(&bin, count).await?;
    println!("## Propagation: {count} changes, one at a time (milliseconds)");
    println!();
    print_head();
    print_row("new route: put returned → first 200", &p.route_after_put);
    print_row("new route: put issued → first 200", &p.route_after_issue);
    print_row("(etcd put round trip)", &p.route_put);
    print_row(
        "(same put seen by a watch in this process)",
        &p.watch_after_put,
    );
    print_row(
        "new instance: put returned → first 200",
        &p.instance_after_put,
    );
    println!();
    println!(
        "router RSS with {} routes: {:.1} MiB",
        2 * count + 1,
        p.rss_kib as f64 / 1024.0
    );
    let p99 = summarize(&p.route_after_put).p99;
    println!(
        "target p99 < 10 ms (route put returned → 200): {}",
        if p99 < 10.0 { "met" } else { "MISSED" }
    );
    println!();

    let backend = Backend::start("startup").await;
    let empty_kib = empty_router_kib(&bin, &backend).await?;
    let etcd = Etcd::start().await;
    let filling = Instant::now();
    fill(&etcd, &backend, routes).await?;
    let filled = filling.elapsed();
    let store = flynn_store::open(&etcd.url()).await?;
    let listing = Instant::now();
    let listed = store.range(&Keys::default().routes()).await?.kvs.len();
    let listing = listing.elapsed();
    let (mirrored, mirror_listing) = mirror_listing(store.clone()).await?;
    drop(store);
    println!(
        "## Start-up: {routes} routes, {STARTUP_SERVICES} instances (etcd filled in {:.1} s; \
         a router with no routes: {:.1} MiB)",
        filled.as_secs_f64(),
        empty_kib as f64 / 1024.0
    );
    println!();
    println!(
        "Listing the routes from this process, no table: page after page, {listed} routes in \
         {:.0} ms; as the router's mirror does (parts side by side), {mirrored} in {:.0} ms.",
        listing.as_secs_f64() * 1e3,
        mirror_listing.as_secs_f64() * 1e3,
    );
    println!();
    print_startup_head("run");
    let mut worst = Duration::ZERO;
    let mut worst_bytes = 0.0f64;
    let mut last = None;
    for run in 1..=runs.max(1) {
        let s = startup(&bin, &etcd, routes, None, false).await?;
        worst = worst.max(s.first_served);
        worst_bytes = worst_bytes.max(print_startup(&run.to_string(), &s, empty_kib, routes));
        last = Some(s.router);
    }
    println!();
    print_start_target(routes, "start-up", worst);
    println!(
        "target table memory <= 300 B per route above an empty router: {} (worst {worst_bytes:.0} B)",
        if worst_bytes <= 300.0 { "met" } else { "MISSED" },
    );
    println!();

    // Restarts from a snapshot: one router lists and saves, the next ones load it.
    drop(last);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("router.snapshot");
    let cold = startup(&bin, &etcd, routes, Some(&file), false).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cold.router.logged_ms("saved the table snapshot").is_none() {
        if Instant::now() > deadline {
            bail!("no snapshot saved after 120 s:\n{}", cold.router.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved_ms = cold.router.logged_ms("saved the table snapshot");
    println!(
        "## Restart from a snapshot (`--snapshot`): {routes} routes; the snapshot saved in {} ms \
         ({:.1} MB) by a router that had listed the store (`cold`)",
        saved_ms.unwrap_or(0),
        std::fs::metadata(&file)?.len() as f64 / 1e6
    );
    println!();
    print_startup_head("run (load ms)");
    print_startup("cold", &cold, empty_kib, routes);
    cold.router.stop().await?;
    let mut worst_restart = Duration::ZERO;
    let mut last = None;
    for run in 1..=runs.max(1) {
        let s = startup(&bin, &etcd, routes, Some(&file), false).await?;
        worst_restart = worst_restart.max(s.first_served);
        let load = s.router.logged_ms("loaded the table snapshot");
        print_startup(
            &format!("{run} ({})", load.map_or("-".into(), |ms| ms.to_string())),
            &s,
            empty_kib,
            routes,
        );
        if run == runs.max(1) {
            last = Some(s.router);
        } else {
            s.router.stop().await?;
        }
    }
    println!();
    print_start_target(routes, "restart (snapshot)", worst_restart);
    println!();

    // New routers joining the live one (`last`): each takes its table (`--join-peers`), no
    // snapshot file of its own.
    if last.is_some() {
        println!(
            "## A new router joining a live one (`--join-peers`, no snapshot file): {routes} routes"
        );
        println!();
        print_startup_head("run");
        let mut worst_join = Duration::ZERO;
        for run in 1..=runs.max(1) {
            let s = startup(&bin, &etcd, routes, None, true).await?;
            if s.router
                .logged_ms("took the table of a live router")
                .is_none()
            {
                bail!(
                    "run {run} did not take the live router's table:\n{}",
                    s.router.log_tail()
                );
            }
            worst_join = worst_join.max(s.first_served);
            print_startup(&run.to_string(), &s, empty_kib, routes);
            s.router.stop().await?;
        }
        println!();
        print_start_target(routes, "start-up (joining a live router)", worst_join);
        println!();
    }

    if let Some(router) = last {
        let p = propagate(&etcd, &router, count).await?;
        println!(
            "## Propagation with {routes} routes in the table (restarted from the snapshot): \
             {count} changes (milliseconds)"
        );
        println!();
        print_head();
        print_row("new route: put returned → first 200", &p.route_after_put);
        print_row("new route: put issued → first 200", &p.route_after_issue);
        print_row("(etcd put round trip)", &p.route_put);
        print_row(
            "new instance: put returned → first 200",
            &p.instance_after_put,
        );
        let p99 = summarize(&p.route_after_put).p99;
        println!();
        println!(
            "target p99 < 5 ms (route put returned → 200, {routes} routes): {}",
            if p99 < 5.0 { "met" } else { "MISSED" }
        );
    }
    Ok(())
}
