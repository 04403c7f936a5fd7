use std::net::SocketAddr;
use std::path::PathBuf;
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("etcd").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `etcd` ({e}): install it with `apt-get install etcd-server`")
            });
        self.child = Some(child);
        wait_for_port(self.client_addr(), Duration::from_secs(20))
            .await
            .expect("etcd did not start");
        // The port opens a moment before etcd serves; wait for its health endpoint.
        let health = format!("127.0.0.1:{}", self.client_port);
        for _ in 0..200 {
            if let Ok(resp) = crate::client::get(&health, "/health", "localhost").await {
                if resp.status == 200 && resp.text().contains("true") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("etcd on port {} never became healthy", self.client_port);
    }
}
