//! The JSON the API takes and gives (Flynn's shapes), shared by the controller and the CLI.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use flynn_store::types::{BackendProtocol, ProxyProtocol, Route};
use serde::{Deserialize, Deserializer, Serialize};

/// An application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// The current release.
    #[serde(default)]
    pub release_id: Option<String>,
    /// Seconds a deploy waits for each new job to be up and served by every router before it
    /// fails and rolls back (Flynn's default: 30).
    #[serde(default = "default_deploy_timeout")]
    pub deploy_timeout: u64,
    pub created_at: String,
    pub updated_at: String,
}

fn default_strategy() -> String {
    "all-at-once".to_owned()
}

pub fn default_deploy_timeout() -> u64 {
    30
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub deploy_timeout: Option<u64>,
}

/// `POST /apps/:app`: absent fields keep their value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
}

/// What an artifact is: an image to run, or a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub uri: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArtifact {
    #[serde(rename = "type")]
    pub kind: String,
    pub uri: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// How to run one process type of a release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessType {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Flynn's other process fields (volumes, resources, ...), kept as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default)]
    pub port: u16,
    #[serde(default = "default_proto")]
    pub proto: String,
}

fn default_proto() -> String {
    "tcp".to_owned()
}

/// A release: artifacts plus configuration. Never changes once created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessType>,
    pub created_at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessType>,
}

/// How many processes of each type of a release an app wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formation {
    pub app: String,
    pub release: String,
    #[serde(default)]
    pub processes: BTreeMap<String, i64>,
    #[serde(default)]
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NewFormation {
    #[serde(default)]
    pub processes: BTreeMap<String, i64>,
    #[serde(default)]
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
}

/// `PUT /apps/:app/release`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub id: String,
}

/// A route as stored and served: the router's JSON plus timestamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoute {
    #[serde(flatten)]
    pub route: Route,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The kind of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    #[default]
    Http,
    Tcp,
}

/// `POST /apps/:app/routes`. HTTP routes take `domain` (and `path`), TCP routes `port`
/// (absent or 0: the next free one).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    #[serde(rename = "type", default)]
    pub kind: RouteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default: `<app>-web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub leader: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_backends: Option<bool>,
    #[serde(default)]
    pub disable_keep_alives: bool,
    /// A certificate to create (or reuse, if the same one exists) for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<NewCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// HTTP routes: the protocol to the backends (http1 by default; h2c or h2 (TLS) for gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
}

/// `PUT /apps/:app/routes/:id`: absent fields keep their value; `domain`, `path`, `port` and
/// `type` may be sent (as a whole route is) but not changed. `certificate_id: null` removes the
/// certificate, `proxy_protocol: null` the PROXY header.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouteUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_backends: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_keep_alives: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<NewCertificate>,
    #[serde(
        default,
        deserialize_with = "some_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_id: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "some_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_protocol: Option<Option<ProxyProtocol>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RouteKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Anything else a whole route carries (id, app_id, timestamps) is ignored.
    #[serde(flatten, skip_serializing)]
    pub ignored: serde_json::Map<String, serde_json::Value>,
}

/// A present field, even `null`, is `Some`.
fn some_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /certificates`, or inline in a route.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCertificate {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCertificate").finish_non_exhaustive()
    }
}

/// A certificate as the API shows it: never its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    pub id: String,
    pub cert: String,
    /// DNS names of the leaf certificate (subject alternative names, else the common name).
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A service instance as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub service: String,
    pub addr: SocketAddr,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Seconds the registration lives without a heartbeat; None: until deregistered.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub registered_at: Option<String>,
}

/// `POST /services/:service/instances`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub addr: String,
    /// Default: derived from the address, so registering twice is idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// One service with its instance count, for `GET /services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub instances: usize,
}

/// A change, as `GET /events` lists and streams it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases with every event; resume with `since_id` or `Last-Event-Id`.
    #[serde(default)]
    pub id: i64,
    /// The app the object belongs to, if any.
    #[serde(default)]
    pub app: Option<String>,
    /// app, app_deletion, app_release, release, artifact, scale, route, route_deletion,
    /// certificate, certificate_deletion.
    pub object_type: String,
    pub object_id: String,
    #[serde(default)]
    pub data: serde_json::Value,
    pub created_at: String,
}

/// Where a job is in its life. The scheduler creates jobs `pending`; the host agent moves them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Assigned to a host, not started yet.
    #[default]
    Pending,
    /// The container runs; its port does not answer yet.
    Starting,
    /// Its port answers; registered as an instance of `<app>-<type>`.
    Up,
    /// Deregistered, being stopped.
    Stopping,
    /// Stopped because it was asked to.
    Down,
    /// Ended without being asked to (see `exit_status` and `error`).
    Crashed,
    /// Wanted, but no live host matches its process type's tags (Flynn's): `error` says why.
    /// Not on any host; the scheduler places it (same id) when a matching host comes.
    Blocked,
}

impl JobState {
    /// Pending, starting or up: counts towards a formation.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Pending | JobState::Starting | JobState::Up)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Starting => "starting",
            JobState::Up => "up",
            JobState::Stopping => "stopping",
            JobState::Down => "down",
            JobState::Crashed => "crashed",
            JobState::Blocked => "blocked",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One process of a formation, placed on a host: `<prefix>/jobs/<host>/<id>`. The scheduler
/// creates it and sets `stop`; the host agent writes everything about how it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub app_id: String,
    pub app_name: String,
    pub release_id: String,
    #[serde(rename = "type")]
    pub process_type: String,
    pub host_id: String,
    #[serde(default)]
    pub state: JobState,
    /// The scheduler wants it stopped.
    #[serde(default)]
    pub stop: bool,
    /// How many jobs of this slot crashed before this one (Flynn's restart back-off).
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The instance address, ip:port on the host's external IP (processes with a port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When it came up (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_at_ms: Option<u64>,
    /// When it ended (Unix ms): stopped or crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
}

/// A host agent, registered under its lease at `<prefix>/hosts/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub external_ip: std::net::IpAddr,
    /// The agent's API (none yet: empty).
    #[serde(default)]
    pub api: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: HostCapacity,
    /// The Docker Engine's version.
    #[serde(default)]
    pub docker_version: String,
    pub registered_at: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// Bytes.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub cpus: u64,
}

/// Where a deployment is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Created; the scheduler's leader has not taken it up yet.
    #[default]
    Pending,
    Running,
    /// The new release serves; the old one's jobs are gone.
    Complete,
    /// Rolled back: the old release serves (see `error`).
    Failed,
}

impl DeploymentStatus {
    pub fn is_done(self) -> bool {
        matches!(self, DeploymentStatus::Complete | DeploymentStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::Running => "running",
            DeploymentStatus::Complete => "complete",
            DeploymentStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deploy of a new release for an app, by its strategy: `<prefix>/deployments/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub app_id: String,
    pub app_name: String,
    #[serde(default)]
    pub old_release_id: Option<String>,
    pub new_release_id: String,
    /// all-at-once or one-by-one.
    pub strategy: String,
    /// The counts the new release gets (the old formation's, for the types it has).
    #[serde(default)]
    pub processes: BTreeMap<String, i64>,
    /// The old formation's counts, restored on failure.
    #[serde(default)]
    pub old_processes: BTreeMap<String, i64>,
    #[serde(default)]
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Seconds each new job has to be up and served by every router.
    pub deploy_timeout: u64,
    #[serde(default)]
    pub status: DeploymentStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub events: Vec<DeploymentEvent>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One step of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub created_at: String,
    /// running, up, down, crashed, failed, complete, ...
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub message: String,
}
