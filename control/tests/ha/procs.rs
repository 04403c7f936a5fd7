//! The processes of a cluster on one etcd: controllers (`flynn server --no-router
//! --no-host-agent`), routers (the real `flynn-router`) and host agents (`flynn host`), each
//! with its own log, SIGKILLed when dropped (testkit's [`Proc`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flynn_testkit::process::Proc;
use flynn_testkit::{client, eventually, free_port};

use crate::harness::{Client, FLYNN};

/// Waits until `check` holds, or fails with `what` and `logs`.
pub async fn settle<F, Fut>(within: Duration, what: &str, logs: &dyn Fn() -> String, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = eventually(within, what, check).await {
        panic!("{e}\n{}", logs());
    }
}

/// A controller node: the controller API and a scheduler, no router, no host agent.
pub struct Controller {
    pub proc: Proc,
}

impl Controller {
    /// Writes `client`'s ~/.flynnrc (cluster `default`: this controller).
    pub async fn start(store: &str, key: &str, client: &Client) -> Controller {
        let dir = tempfile::tempdir().expect("controller dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(FLYNN);
        command
            .arg("server")
            .args(["--no-router", "--no-host-agent", "--store", store])
            .args(["--controller-addr", &addr.to_string()])
            .args(["--controller-key", key, "--log", "info"])
            .args(["--scheduler-lease-ttl", "3s"])
            .arg("--data")
            .arg(dir.path())
            .current_dir(dir.path())
            .env_clear()
            .env("HOME", client.home.path());
        let controller = Controller {
            proc: Proc::spawn(command, dir),
        };
        let target = addr.to_string();
        settle(
            Duration::from_secs(30),
            "the controller answers",
            &|| controller.proc.log(),
            || async {
                client::get(&target, "/ping", "controller")
                    .await
                    .is_ok_and(|r| r.status == 200)
            },
        )
        .await;
        controller
    }
}

/// The `flynn-router` binary: `$FLYNN_ROUTER_BIN`, else beside `flynn` (cargo builds it with
/// `cargo test --workspace`; alone: `cargo build -p flynn-router` first).
pub fn router_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLYNN_ROUTER_BIN") {
        return bin.into();
    }
    let bin = Path::new(FLYNN).with_file_name("flynn-router");
    assert!(
        bin.exists(),
        "{} is missing: this test runs the real router; build it first \
         (`cargo build -p flynn-router`, which `cargo test --workspace` does) or set FLYNN_ROUTER_BIN",
        bin.display()
    );
    bin
}

/// A `flynn-router` on the store.
pub struct Router {
    pub proc: Proc,
    pub http: SocketAddr,
}

impl Router {
    pub async fn start(store: &str) -> Router {
        let dir = tempfile::tempdir().expect("router dir");
        let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (http, admin) = (addr(), addr());
        let mut command = Command::new(router_bin());
        command
            .args(["--store", store, "--no-https"])
            .args(["--http-addr", &http.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--threads", "1", "--log", "info"])
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .env_clear();
        let router = Router {
            proc: Proc::spawn(command, dir),
            http,
        };
        let target = admin.to_string();
        settle(
            Duration::from_secs(30),
            "the router is healthy",
            &|| router.proc.log(),
            || async {
                client::get(&target, "/health", "admin")
                    .await
                    .is_ok_and(|r| r.status == 200)
            },
        )
        .await;
        router
    }

    /// The job ids that answered `tries` requests for `host` through this router (a failed
    /// request or an error status counts as `"failed"`).
    pub async fn backends(&self, host: &str, tries: usize) -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..tries {
            let answer = client::get(&self.http.to_string(), "/", host).await;
            let backend = answer
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| r.json().ok())
                .and_then(|j| j["backend"].as_str().map(str::to_owned));
            seen.insert(backend.unwrap_or_else(|| "failed".to_owned()));
        }
        seen
    }
}

/// A `flynn host` agent publishing its jobs on `ip`.
pub struct Agent {
    pub proc: Proc,
}

impl Agent {
    pub fn start(store: &str, key: &str, host: &str, ip: &str) -> Agent {
        let dir = tempfile::tempdir().expect("agent dir");
        let mut command = Command::new(FLYNN);
        command
            .arg("host")
            .args(["--store", store, "--host-id", host, "--external-ip", ip])
            .args(["--drain-delay", "200ms", "--log", "info", "--data"])
            .arg(dir.path())
            .env_clear()
            .env("FLYNN_CONTROLLER_KEY", key);
        Agent {
            proc: Proc::spawn(command, dir),
        }
    }
}
