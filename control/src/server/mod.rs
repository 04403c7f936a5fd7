//! `flynn server`: the all-in-one node. The router (pingora, on the main thread) and the
//! controller API (axum, on its own runtime thread) share one store: the embedded one under
//! the data directory by default, or etcd with `--store etcd://…`. The controller's runtime also
//! runs a scheduler (it leads when no other controller does) and a host agent on the local
//! Docker Engine (unless `--no-host-agent`). With `--no-router` it is a controller node only
//! (the routers being `flynn-router`s on the same etcd).
//!
//! On first start it generates the controller key (`<data>/controller.key`) and writes the
//! client config (`~/.flynnrc`, cluster `default`) so that `flynn create` works at once.

mod setup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flynn_router::config::RouterArgs;
use flynn_router::server::StoreSource;
use flynn_store::{Keys, Store};

use crate::api::{self, ApiConfig, Retention, ServeOptions};
use crate::host::{AgentConfig, HostArgs};
use crate::scheduler::{self, SchedulerConfig};

pub use self::setup::data_dir;

/// Run the router and the controller on one node. Every flag is also a FLYNN_… variable.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the state lives: `embedded` (a file in the data directory),
    /// etcd://host:port[,host:port...], file:///path/store.redb, or memory:
    #[arg(long, env = "FLYNN_STORE", default_value = "embedded")]
    pub store: String,

    /// Key prefix of everything Flynn keeps in the store.
    #[arg(long, env = "FLYNN_STORE_PREFIX", default_value = flynn_store::schema::DEFAULT_PREFIX)]
    pub store_prefix: String,

    /// Data directory (embedded store, controller key) [default: $XDG_DATA_HOME/flynn, else
    /// ~/.local/share/flynn]
    #[arg(long = "data", env = "FLYNN_DATA")]
    pub data: Option<PathBuf>,

    /// The controller API's listener.
    #[arg(
        long = "controller-addr",
        env = "FLYNN_CONTROLLER_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub controller_addr: SocketAddr,

    /// New apps get the route <app>.<domain> ("" for none).
    #[arg(
        long = "default-domain",
        env = "FLYNN_DEFAULT_DOMAIN",
        default_value = "localhost"
    )]
    pub default_domain: String,

    /// The controller key [default: <data>/controller.key, generated on first start]
    #[arg(
        long = "controller-key",
        env = "FLYNN_CONTROLLER_KEY",
        hide_env_values = true
    )]
    pub controller_key: Option<String>,

    /// Name of this cluster in the client config.
    #[arg(
        long = "cluster-name",
        env = "FLYNN_CLUSTER_NAME",
        default_value = "default"
    )]
    pub cluster_name: String,

    /// Do not write the client config (~/.flynnrc).
    #[arg(long = "no-client-config", env = "FLYNN_NO_CLIENT_CONFIG")]
    pub no_client_config: bool,

    /// How long a client of the controller API has to send a request head (and how long an
    /// idle kept-alive connection stays open).
    #[arg(
        long = "controller-header-timeout",
        env = "FLYNN_CONTROLLER_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub controller_header_timeout: Duration,

    /// Events kept in the store at most (the oldest go first).
    #[arg(
        long = "events-max-count",
        env = "FLYNN_EVENTS_MAX_COUNT",
        default_value_t = 10_000
    )]
    pub events_max_count: usize,

    /// Bytes of events kept in the store at most, e.g. 64MiB.
    #[arg(
        long = "events-max-bytes",
        env = "FLYNN_EVENTS_MAX_BYTES",
        default_value = "64MiB",
        value_parser = parse_bytes
    )]
    pub events_max_bytes: u64,

    /// Events older than this are deleted.
    #[arg(
        long = "events-max-age",
        env = "FLYNN_EVENTS_MAX_AGE",
        default_value = "7days",
        value_parser = humantime::parse_duration
    )]
    pub events_max_age: Duration,

    /// An /events stream whose client reads nothing for this long is ended (it reconnects
    /// with Last-Event-ID).
    #[arg(
        long = "events-stall-timeout",
        env = "FLYNN_EVENTS_STALL_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub events_stall_timeout: Duration,

    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FLYNN_LOG", default_value = "info")]
    pub log: String,

    /// The lease of the scheduler leader (one of the controllers on the store leads): when the
    /// leader dies, another controller's scheduler takes over within about this long (at
    /// least 2 s, etcd's shortest lease).
    #[arg(long = "scheduler-lease-ttl", env = "FLYNN_SCHEDULER_LEASE_TTL", default_value = "3s",
        value_parser = humantime::parse_duration)]
    pub scheduler_lease_ttl: Duration,

    /// Run no host agent here (jobs then run only on hosts of `flynn host`).
    #[arg(long = "no-host-agent", env = "FLYNN_NO_HOST_AGENT")]
    pub no_host_agent: bool,

    /// Run no router here: the controller API and scheduler (and the host agent) only, for a
    /// controller node beside `flynn-router`s on the same store.
    #[arg(long = "no-router", env = "FLYNN_NO_ROUTER")]
    pub no_router: bool,

    /// The in-process host agent's flags (the same as `flynn host`'s).
    #[command(flatten)]
    pub host: HostArgs,

    /// The router's flags (the same as `flynn-router`'s).
    #[command(flatten)]
    pub router: RouterArgs,
}

/// Runs until SIGTERM or SIGINT (pingora's graceful shutdown); returns only on a start-up error.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    flynn_router::config::init_logging(&args.log)?;
    args.router.validate()?;
    let data = setup::data_dir(args.data.as_deref())?;
    let store_url = setup::store_url(&args.store, &data);
    let key = match &args.controller_key {
        Some(key) if !key.trim().is_empty() => key.trim().to_owned(),
        _ => setup::controller_key(&data)?,
    };
    if !args.no_router {
        args.router.check_free()?;
    }
    let controller_listener =
        std::net::TcpListener::bind(args.controller_addr).with_context(|| {
            format!(
                "cannot listen on {} (--controller-addr)",
                args.controller_addr
            )
        })?;
    controller_listener.set_nonblocking(true)?;

    // The controller's runtime also hosts the embedded store's lease reaper: it runs for
    // the life of the process, on its own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flynn-controller")
        .enable_all()
        .build()
        .context("cannot start the controller's runtime")?;
    let store: Arc<dyn Store> = runtime
        .block_on(flynn_store::open(&store_url))
        .with_context(|| format!("cannot open the store {store_url}"))?;
    let keys = Keys::new(&args.store_prefix);

    // TCP routes may not take the router's own ports nor the controller's.
    let reserved: Vec<u16> = args
        .router
        .own_addrs()
        .chain([&args.controller_addr])
        .map(|a| a.port())
        .collect();
    let mut config = ApiConfig::new(key.clone());
    config.keys = keys.clone();
    config.tcp_ports = args.router.tcp_ports.clone();
    config.reserved_ports = reserved.iter().copied().collect();
    config.default_domain = Some(args.default_domain.trim().to_owned()).filter(|d| !d.is_empty());
    config.retention = Retention {
        max_count: args.events_max_count,
        max_bytes: args.events_max_bytes,
        max_age: args.events_max_age,
    };
    config.events_stall_timeout = args.events_stall_timeout;
    let state = api::ApiState::new(store.clone(), config);
    let agent = if args.no_host_agent {
        None
    } else {
        let mut agent = AgentConfig::from_args(&args.host, &data)?;
        agent.key = key.clone();
        Some(agent)
    };
    let scheduler_id = format!(
        "controller-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut scheduler = SchedulerConfig::new(scheduler_id);
    scheduler.lease_ttl = args.scheduler_lease_ttl.max(Duration::from_secs(2));
    runtime.spawn(scheduler::run(state.db.clone(), scheduler));
    if let Some(agent) = agent {
        runtime.spawn(crate::host::run(state.db.clone(), agent));
    }
    let controller_url = setup::controller_url(args.controller_addr);
    // `git push` lands here: repositories and builds under the data directory.
    let flynn_bin = std::env::current_exe().context("cannot find the flynn binary")?;
    let mut git = api::git::GitConfig::new(data.clone(), flynn_bin, controller_url.clone());
    git.docker = Some(args.host.docker_socket.clone());
    git.web_port = args.router.http_addrs.first().map(|a| a.port());
    let app = api::router(state.clone()).merge(api::git::router(state.clone(), git));
    let options = ServeOptions {
        header_timeout: args.controller_header_timeout,
        ..ServeOptions::default()
    };
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(controller_listener)?
    };
    let controller = std::thread::Builder::new()
        .name("flynn-controller".to_owned())
        .spawn(move || {
            let served = runtime.block_on(async move {
                // Prunes the history from the start, not from the first change.
                state.events.start();
                api::serve(listener, app, options).await
            });
            if let Err(e) = served {
                tracing::error!(error = %e, "the controller API stopped");
            }
        })
        .context("cannot start the controller thread")?;
    tracing::info!(url = %controller_url, store = %store_url, data = %data.display(), "controller API up");

    if !args.no_client_config {
        let router_url = args
            .router
            .http_addrs
            .first()
            .filter(|_| !args.no_router)
            .map(|a| format!("http://localhost:{}", a.port()));
        setup::write_client_config(&args.cluster_name, &controller_url, &key, router_url)?;
    }

    if args.no_router {
        // Until the process is signalled (SIGTERM's default action ends it), or the API fails.
        let _ = controller.join();
        anyhow::bail!("the controller API stopped");
    }
    tracing::info!(http = ?args.router.http_addrs, https = ?args.router.https(),
        admin = %args.router.admin_addr, tcp = ?args.router.tcp_ports, "starting the router");
    let upgrade_sock = data.join("upgrade.sock").display().to_string();
    // The table is kept beside the data (an etcd store is watched from where it was on restart;
    // the embedded store keeps no history across its own restart, so it is listed, the saved
    // table serving meanwhile).
    args.router
        .snapshot
        .get_or_insert_with(|| data.join("router.snapshot"));
    let config = args.router.into_config(
        StoreSource::Shared(store),
        keys,
        &[args.controller_addr.port()],
        &upgrade_sock,
    )?;
    let server = flynn_router::server::build(config);
    server.run_forever()
}

/// A size in bytes: a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("100 KB"), Ok(100_000));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
    }
}
