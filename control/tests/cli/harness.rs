//! A real `flynn server` on free ports with its own HOME and data dir, and the real `flynn`
//! binary run against it from a directory outside any git repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flynn_testkit::client::{self, Response};
use flynn_testkit::{eventually, free_port};
use tokio::process::{Child, Command};

pub const FLYNN: &str = env!("CARGO_BIN_EXE_flynn");

/// How long a route may take to be served; the contract is milliseconds, this leaves room
/// for a loaded CI machine.
pub const APPLY: Duration = Duration::from_secs(5);

/// What one `flynn` run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "flynn failed: {self:?}");
        &self.stdout
    }

    /// Asserts failure with exactly one line on stderr containing `needle`.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert_ne!(self.code, 0, "flynn should have failed: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected on stderr: {self:?}");
        assert!(lines[0].starts_with("flynn: "), "{self:?}");
        assert!(
            lines[0].contains(needle),
            "{needle:?} not in {:?}",
            lines[0]
        );
    }
}

/// A client environment: HOME (holding ~/.flynnrc) and a working directory.
pub struct Client {
    pub home: tempfile::TempDir,
    pub cwd: tempfile::TempDir,
}

impl Client {
    pub fn new() -> Client {
        Client {
            home: tempfile::tempdir().expect("home"),
            cwd: tempfile::tempdir().expect("cwd"),
        }
    }

    pub fn flynnrc(&self) -> PathBuf {
        self.home.path().join(".flynnrc")
    }

    /// Runs `flynn ARGS` in the working directory.
    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_in(self.cwd.path(), args, &[]).await
    }

    /// Runs `flynn ARGS` in `dir` with extra environment variables.
    pub async fn run_in(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = self.command(dir, args);
        command.envs(env.iter().copied());
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("flynn finished within 30s")
            .expect("run flynn");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(FLYNN);
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// `flynn server`, killed when dropped.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub controller: SocketAddr,
    pub admin: SocketAddr,
    /// The one port TCP routes may use.
    pub tcp_port: u16,
    pub data: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// On the embedded store under a fresh data dir; writes `client`'s ~/.flynnrc.
    pub async fn embedded(client: &Client) -> Server {
        Server::start(client, None, &[]).await
    }

    /// On the embedded store, with extra flags.
    pub async fn embedded_with(client: &Client, args: &[&str]) -> Server {
        Server::start(client, None, args).await
    }

    /// On etcd (`etcd://…`).
    pub async fn etcd(client: &Client, store: &str) -> Server {
        Server::start(client, Some(store), &[]).await
    }

    /// On etcd, with extra flags.
    pub async fn etcd_with(client: &Client, store: &str, args: &[&str]) -> Server {
        Server::start(client, Some(store), args).await
    }

    async fn start(client: &Client, store: Option<&str>, args: &[&str]) -> Server {
        let data = tempfile::tempdir().expect("data dir");
        let log = data.path().join("server.log");
        let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (http, https, controller, admin) = (addr(), addr(), addr(), addr());
        let tcp_port = free_port();
        let mut command = Command::new(FLYNN);
        command
            .arg("server")
            .args(["--http-addr", &http.to_string()])
            .args(["--https-addr", &https.to_string()])
            .args(["--controller-addr", &controller.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--tcp-ports", &format!("{tcp_port}-{tcp_port}")])
            .args(["--tcp-ip", "127.0.0.1"])
            .args(["--threads", "1", "--log", "info"])
            .current_dir(data.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", client.home.path())
            .env("FLYNN_DATA", data.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .kill_on_drop(true);
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        command.args(args);
        let child = command.spawn().expect("start flynn server");
        let server = Server {
            child,
            http,
            https,
            controller,
            admin,
            tcp_port,
            data,
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let controller = self.controller.to_string();
        let admin = self.admin.to_string();
        let ready = eventually(Duration::from_secs(30), "flynn server ready", || {
            let (controller, admin) = (controller.clone(), admin.clone());
            async move {
                let ping = client::get(&controller, "/ping", "controller").await;
                let health = client::get(&admin, "/health", "admin").await;
                ping.is_ok_and(|r| r.status == 200) && health.is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        if let Err(e) = ready {
            panic!("{e}\nserver log:\n{}", self.log());
        }
    }

    /// The controller key it generated.
    pub fn key(&self) -> String {
        std::fs::read_to_string(self.data.path().join("controller.key"))
            .expect("controller.key")
            .trim()
            .to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A GET through the router's HTTP listener.
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<Response> {
        client::get(&self.http.to_string(), path, host).await
    }

    /// Waits until `host``path` answers 200 through the router; how long it took.
    pub async fn wait_served(&self, host: &str, path: &str) -> Duration {
        let started = Instant::now();
        let served = eventually(APPLY, &format!("{host}{path} served"), || async move {
            self.get(host, path).await.is_ok_and(|r| r.status == 200)
        })
        .await;
        if let Err(e) = served {
            panic!("{e}\nserver log:\n{}", self.log());
        }
        started.elapsed()
    }
}
