//! The Docker Engine, through bollard, pinned to the API version the engines here accept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures::StreamExt;

/// Docker Engine 20.10 speaks API 1.41 at most; bollard's default is newer.
pub const API_VERSION: &ClientVersion = &ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Labels on every container a host agent starts.
pub const LABEL_HOST: &str = "flynn.host";
pub const LABEL_JOB: &str = "flynn.job";
pub const LABEL_APP: &str = "flynn.app";
pub const LABEL_APP_NAME: &str = "flynn.app-name";
pub const LABEL_RELEASE: &str = "flynn.release";
pub const LABEL_TYPE: &str = "flynn.type";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("image {0:?} is not in the Docker Engine")]
    NoImage(String),
    #[error("the Docker Engine refused: {0}")]
    Engine(String),
}

impl From<BollardError> for DockerError {
    fn from(e: BollardError) -> Self {
        match e {
            BollardError::DockerResponseServerError { message, .. } => DockerError::Engine(message),
            other => DockerError::Engine(other.to_string()),
        }
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// What a container runs as: everything the agent derives from a job.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub image: String,
    /// The whole command line; empty: the image's entrypoint and command.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub memory: Option<i64>,
    /// The container port published on `ip:host_port`.
    pub publish: Option<Publish>,
}

#[derive(Clone, Copy, Debug)]
pub struct Publish {
    pub container_port: u16,
    pub ip: IpAddr,
    pub host_port: u16,
}

/// A container carrying a host agent's labels.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

/// Where a running container can be reached.
#[derive(Clone, Debug)]
pub struct Running {
    /// Its address on the engine's bridge network, and its container port (health checks).
    pub inside: Option<SocketAddr>,
    /// The published address, ip:port on the host.
    pub published: Option<SocketAddr>,
}

/// The engine's size and version.
#[derive(Clone, Debug, Default)]
pub struct EngineInfo {
    pub version: String,
    pub memory: u64,
    pub cpus: u64,
}

#[derive(Clone, Debug)]
pub struct Engine {
    pub(super) docker: Docker,
    socket: String,
}

impl Engine {
    /// Connects (lazily) to the engine's unix socket at `socket` (a path or unix:// URL).
    pub fn connect(socket: &str) -> Result<Engine, DockerError> {
        let docker = Docker::connect_with_unix(socket, 120, API_VERSION).map_err(|e| {
            DockerError::Unreachable {
                socket: socket.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(Engine {
            docker,
            socket: socket.to_owned(),
        })
    }

    fn unreachable(&self, e: BollardError) -> DockerError {
        DockerError::Unreachable {
            socket: self.socket.clone(),
            reason: e.to_string(),
        }
    }

    /// The engine's version, memory and CPUs; fails when the engine does not answer.
    pub async fn info(&self) -> Result<EngineInfo, DockerError> {
        let info = self.docker.info().await.map_err(|e| self.unreachable(e))?;
        Ok(EngineInfo {
            version: info.server_version.unwrap_or_default(),
            memory: info.mem_total.unwrap_or(0).max(0) as u64,
            cpus: info.ncpu.unwrap_or(0).max(0) as u64,
        })
    }

    /// The id (sha256:…) of a local image, by name or id.
    pub async fn image_id(&self, image: &str) -> Result<String, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => inspect
                .id
                .ok_or_else(|| DockerError::Engine(format!("image {image:?} has no id"))),
            Err(e) if is_not_found(&e) => Err(DockerError::NoImage(image.to_owned())),
            Err(BollardError::DockerResponseServerError { message, .. }) => {
                Err(DockerError::Engine(message))
            }
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Every container (running or not) carrying `label=value`.
    pub async fn find(&self, label: &str, value: &str) -> Result<Vec<Found>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                Some(Found {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                })
            })
            .collect())
    }

    /// Creates and starts a container; its id. A container left by a failed start is removed.
    pub async fn run(&self, spec: &Spec) -> Result<String, DockerError> {
        let mut host = HostConfig {
            init: Some(true),
            memory: spec.memory,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        };
        let mut exposed = None;
        if let Some(publish) = spec.publish {
            let port = format!("{}/tcp", publish.container_port);
            exposed = Some(vec![port.clone()]);
            host.port_bindings = Some(HashMap::from([(
                port,
                Some(vec![PortBinding {
                    host_ip: Some(publish.ip.to_string()),
                    host_port: Some(publish.host_port.to_string()),
                }]),
            )]));
        }
        let (entrypoint, cmd) = match spec.args.split_first() {
            Some((first, rest)) => (Some(vec![first.clone()]), Some(rest.to_vec())),
            None => (None, None),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd,
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: exposed,
            host_config: Some(host),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) if is_not_found(&e) => return Err(DockerError::NoImage(spec.image.clone())),
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove(&created.id).await;
            return Err(e.into());
        }
        Ok(created.id)
    }

    /// Where a running container answers; None once it is gone.
    pub async fn running(&self, id: &str) -> Result<Option<Running>, DockerError> {
        let inspect = match self.docker.inspect_container(id, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            return Ok(None);
        }
        let settings = inspect.network_settings.unwrap_or_default();
        let mut inside = None;
        let mut published = None;
        if let Some((port, bindings)) = settings.ports.unwrap_or_default().into_iter().next() {
            let container_port = port.split('/').next().and_then(|p| p.parse::<u16>().ok());
            let ip = settings
                .networks
                .unwrap_or_default()
                .into_values()
                .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            if let (Some(ip), Some(port)) = (ip, container_port) {
                inside = Some(SocketAddr::new(ip, port));
            }
            published = bindings.unwrap_or_default().into_iter().find_map(|b| {
                let ip = b.host_ip?.parse::<IpAddr>().ok()?;
                let port = b.host_port?.parse::<u16>().ok()?;
                Some(SocketAddr::new(ip, port))
            });
        }
        Ok(Some(Running { inside, published }))
    }

    /// Waits until the container stops; its exit status (None: it is gone, or the engine
    /// could not say).
    pub async fn wait(&self, id: &str) -> Option<i64> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = Box::pin(self.docker.wait_container(id, Some(options)));
        match stream.next().await {
            Some(Ok(exit)) => Some(exit.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(e)) => {
                tracing::debug!(container = id, error = %e, "waiting for a container failed");
                None
            }
            None => None,
        }
    }

    /// SIGTERM (to its init, which passes it on), then SIGKILL after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(3600) as i32)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a container, running or not; logs a failure.
    pub async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            // 409: its removal is already under way.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "cannot remove a container"),
        }
    }
}
