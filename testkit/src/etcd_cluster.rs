//! A real etcd cluster: several `etcd` processes on loopback, each with its own client and
//! peer ports and data dir, forming one raft group. Members can be SIGKILLed one by one (the
//! leader, found through `etcdctl endpoint status`) to test what survives a member's death.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::etcd::{healthy, spawn_member};
use crate::{free_port, wait_for_port};

/// One member.
struct Member {
    name: String,
    client_port: u16,
    child: Option<Child>,
}

/// The cluster, killed when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    _data: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one is healthy (the cluster has a leader).
    /// Panics with a clear message when the `etcd` binary is missing.
    pub async fn start(size: usize) -> EtcdCluster {
        let data = tempfile::tempdir().expect("temporary dir for etcd");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let token = format!("flynn-test-{}", std::process::id() ^ u32::from(ports[0].0));
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client_port, peer_port)) in ports.iter().copied().enumerate() {
            let name = format!("m{i}");
            let child = spawn_member(
                &name,
                &data.path().join(&name),
                (client_port, peer_port),
                &initial,
                Some(&token),
            );
            members.push(Member {
                name,
                client_port,
                child: Some(child),
            });
        }
        let cluster = EtcdCluster {
            members,
            _data: data,
        };
        for member in &cluster.members {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], member.client_port));
            wait_for_port(addr, Duration::from_secs(20))
                .await
                .expect("etcd member did not start");
        }
        // /health answers true once the member has a leader and applies writes.
        for member in &cluster.members {
            assert!(
                healthy(member.client_port, 400).await,
                "etcd member {} never became healthy",
                member.name
            );
        }
        cluster
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...`: every member, as the store and router take it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// `http://127.0.0.1:P1,...` of the members still running, for etcdctl.
    pub fn endpoints(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        urls.join(",")
    }

    /// The index of the current raft leader, asked of the running members with `etcdctl
    /// endpoint status` (None when none of them knows one).
    pub async fn leader(&self) -> Option<usize> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["endpoint", "status", "-w", "json", "--endpoints"])
            .arg(self.endpoints())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot run `etcdctl` ({e}): install it with `apt-get install etcd-client`")
            });
        let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        // [{"Endpoint":"http://…","Status":{"header":{"member_id":N,…},"leader":N,…}}, …]
        let leader_endpoint = statuses.as_array()?.iter().find_map(|s| {
            let status = &s["Status"];
            let member = status["header"]["member_id"].as_u64()?;
            (member != 0 && status["leader"].as_u64() == Some(member))
                .then(|| s["Endpoint"].as_str().map(str::to_owned))?
        })?;
        self.members
            .iter()
            .position(|m| leader_endpoint.ends_with(&format!(":{}", m.client_port)))
    }

    /// SIGKILLs member `index` (its data stays).
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill().await;
        }
    }

    /// How many members run.
    pub fn running(&self) -> usize {
        self.members.iter().filter(|m| m.child.is_some()).count()
    }
}
