use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{free_port, wait_for_port};

/// A real etcd server on free loopback ports, with its data in a temporary directory.
/// It is killed when dropped. `stop` and `restart` simulate an outage with the same data.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers. Panics with a clear message when the `etcd`
    /// binary is missing: the tests need the real thing (`apt-get install etcd-server`).
    pub async fn start() -> Etcd {
        let data = tempfile::tempdir().expect("temporary dir for etcd");
        let mut etcd = Etcd {
            child: None,
            data,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    /// `etcd://127.0.0.1:PORT`, as the store and the router take it.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// Kills the server; its data stays for [`Etcd::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.child = Some(spawn_member(
            "test",
            &self.data.path().join("etcd"),
            (self.client_port, self.peer_port),
            &format!("test={peer}"),
            None,
        ));
        wait_for_port(self.client_addr(), Duration::from_secs(20))
            .await
            .expect("etcd did not start");
        // The port opens a moment before etcd serves; wait for its health endpoint.
        assert!(
            healthy(self.client_port, 200).await,
            "etcd on port {} never became healthy",
            self.client_port
        );
    }
}

/// Starts one etcd member named `name` with its data in `data_dir`, serving clients and peers
/// on loopback `ports` (client, peer); `initial_cluster` is its `--initial-cluster`, `token`
/// the cluster's token when it forms a new cluster of several. Killed when dropped. Panics
/// with a clear message when the `etcd` binary is missing.
pub(crate) fn spawn_member(
    name: &str,
    data_dir: &Path,
    (client_port, peer_port): (u16, u16),
    initial_cluster: &str,
    token: Option<&str>,
) -> Child {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new("etcd");
    command
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"));
    if let Some(token) = token {
        command
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={token}"));
    }
    command
        .arg("--log-level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `etcd` ({e}): install it with `apt-get install etcd-server`")
        })
}

/// Whether the member on `client_port` reports itself healthy (it has a leader and applies
/// writes) within `tries` polls 25 ms apart.
pub(crate) async fn healthy(client_port: u16, tries: u32) -> bool {
    let addr = format!("127.0.0.1:{client_port}");
    for _ in 0..tries {
        if let Ok(resp) = crate::client::get(&addr, "/health", "localhost").await {
            if resp.status == 200 && resp.text().contains("true") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
