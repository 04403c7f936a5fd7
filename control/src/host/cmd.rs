//! `flynn host`: a host agent on its own, against the cluster's store (etcd).

use std::path::PathBuf;

use anyhow::Context;
use flynn_store::Keys;

use super::{AgentConfig, HostArgs};
use crate::api::db::Db;

/// Run a host agent. Every flag is also a FLYNN_… variable.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cluster's store: etcd://host:port[,host:port...] (or file:///path/store.redb)
    #[arg(long, env = "FLYNN_STORE")]
    pub store: String,

    /// Key prefix of everything Flynn keeps in the store.
    #[arg(long, env = "FLYNN_STORE_PREFIX", default_value = flynn_store::schema::DEFAULT_PREFIX)]
    pub store_prefix: String,

    /// Data directory (the host id) [default: $XDG_DATA_HOME/flynn, else ~/.local/share/flynn]
    #[arg(long = "data", env = "FLYNN_DATA")]
    pub data: Option<PathBuf>,

    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FLYNN_LOG", default_value = "info")]
    pub log: String,

    /// The cluster's controller key: the agent's API asks for it (`flynn run`, `flynn log`);
    /// without it the API refuses every request.
    #[arg(
        long = "controller-key",
        env = "FLYNN_CONTROLLER_KEY",
        hide_env_values = true
    )]
    pub controller_key: Option<String>,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs until SIGTERM or SIGINT. Its containers keep running; the agent adopts them when it
/// starts again (or removes them, if their jobs are gone by then).
pub fn run(args: Args) -> anyhow::Result<()> {
    flynn_router::config::init_logging(&args.log)?;
    let data = crate::server::data_dir(args.data.as_deref())?;
    let mut config = AgentConfig::from_args(&args.host, &data)?;
    match args.controller_key.as_deref().map(str::trim) {
        Some(key) if !key.is_empty() => config.key = key.to_owned(),
        _ => tracing::warn!("no --controller-key: the host agent's API refuses every request"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flynn-host")
        .enable_all()
        .build()
        .context("cannot start the host agent's runtime")?;
    runtime.block_on(async move {
        let store = flynn_store::open(&args.store)
            .await
            .with_context(|| format!("cannot open the store {}", args.store))?;
        let db = Db::new(store, Keys::new(&args.store_prefix));
        tokio::select! {
            () = super::run(db, config) => Ok(()),
            () = shutdown() => Ok(()),
        }
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
