//! `flynn`: the command line, with Flynn's syntax: `flynn [-a APP] [-c CLUSTER] COMMAND`.
//!
//! The app comes from `-a`, else `$FLYNN_APP`, else the git remote `flynn` of the current
//! repository; the cluster from `-c`, else the default of `~/.flynnrc`. Errors print as one
//! line on stderr with a non-zero exit.

pub mod agent;
mod apps;
pub mod client;
mod cluster;
pub mod config;
mod credentials;
mod deploys;
pub mod git;
mod git_hook;
mod jobs;
mod log;
pub mod output;
mod release;
mod routes;
mod run;
mod services;
mod stack;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use self::client::Client;
use self::config::{Cluster, Config};
use self::output::Format;

/// Flynn: apps, routes and services on your own servers.
#[derive(Parser, Debug)]
#[command(name = "flynn", version, propagate_version = true)]
pub struct Cli {
    /// The app to act on [default: $FLYNN_APP, else the app of the git remote `flynn`]
    #[arg(short = 'a', long = "app", value_name = "APP", env = "FLYNN_APP")]
    pub app: Option<String>,

    /// The cluster to talk to [default: the default cluster of ~/.flynnrc]
    #[arg(
        short = 'c',
        long = "cluster",
        value_name = "CLUSTER",
        env = "FLYNN_CLUSTER"
    )]
    pub cluster: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an app (named NAME, or with a generated name)
    Create(apps::CreateArgs),
    /// Change how the app's new releases are deployed (--strategy, --deploy-timeout)
    Update(apps::DeployArgs),
    /// List apps
    Apps {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Show an app
    Info {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Delete an app and its routes
    Delete(apps::DeleteArgs),
    /// List an app's routes, or add, update and remove them
    Route(routes::RouteArgs),
    /// List services and their instances, register and deregister instances
    Service(services::ServiceArgs),
    /// Scale an app's process types (TYPE=COUNT...); without arguments, print the scale
    Scale(jobs::ScaleArgs),
    /// List an app's jobs
    Ps(jobs::PsArgs),
    /// Deploy an image from the Docker Engine as the app's new release
    Deploy(jobs::DeployArgs),
    /// List an app's deployments
    Deployment(deploys::DeploymentArgs),
    /// Stop a job (a formation's job is replaced by a new one)
    Kill(run::KillArgs),
    /// Show the output of the app's jobs (-f: keep streaming)
    Log(log::LogArgs),
    /// Run a command in a new one-off container of the app's release (attached: stdin, stdout,
    /// stderr and its exit status; -d: detached)
    Run(run::RunArgs),
    /// Show the app's environment, or set, unset or get variables (each change: a new
    /// release, deployed)
    Env(release::EnvArgs),
    /// Show the process types' limits, or set one's (a new release, deployed)
    Limit(release::LimitArgs),
    /// List the app's releases, show one, or roll back to an earlier one
    Release(release::ReleaseArgs),
    /// Manage the clusters in ~/.flynnrc
    Cluster(cluster::ClusterArgs),
    /// Run the all-in-one server: router, controller, scheduler and host agent on one node
    Server(Box<crate::server::Args>),
    /// Run a host agent: the jobs the scheduler places on this host, as Docker containers
    Host(Box<crate::host::cmd::Args>),
    /// Build the stack image buildpack apps build and run on, in the local Docker Engine
    Stack(stack::StackArgs),
    /// Git credential helper: gives git the cluster key for a cluster's git endpoint
    /// (`flynn create` sets it up for the app's remote)
    GitCredentials(credentials::CredentialsArgs),
    /// The pre-receive hook of the controller's git repositories (run by git, not by hand)
    #[command(hide = true)]
    GitHook(git_hook::HookArgs),
}

/// Parses the command line, runs it, and turns an error into one line and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flynn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        app: cli.app,
        cluster: cli.cluster,
    };
    match cli.command {
        // The server runs its own runtimes.
        Command::Server(args) => crate::server::run(*args),
        Command::Host(args) => crate::host::cmd::run(*args),
        Command::Cluster(args) => cluster::run(&ctx, args),
        Command::GitCredentials(args) => credentials::run(&ctx, args),
        command => {
            // A bug is still one line, never a backtrace.
            std::panic::set_hook(Box::new(|info| eprintln!("flynn: internal error: {info}")));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(dispatch(&ctx, command))
        }
    }
}

async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => apps::create(ctx, args).await,
        Command::Update(args) => apps::update(ctx, args).await,
        Command::Apps { output } => apps::list(ctx, output).await,
        Command::Info { output } => apps::info(ctx, output).await,
        Command::Delete(args) => apps::delete(ctx, args).await,
        Command::Route(args) => routes::run(ctx, args).await,
        Command::Service(args) => services::run(ctx, args).await,
        Command::Scale(args) => jobs::scale(ctx, args).await,
        Command::Ps(args) => jobs::ps(ctx, args).await,
        Command::Deploy(args) => jobs::deploy(ctx, args).await,
        Command::Deployment(args) => deploys::list(ctx, args).await,
        Command::Kill(args) => run::kill(ctx, args).await,
        Command::Log(args) => log::log(ctx, args).await,
        Command::Run(args) => run::run(ctx, args).await,
        Command::Env(args) => release::env(ctx, args).await,
        Command::Limit(args) => release::limit(ctx, args).await,
        Command::Release(args) => release::release(ctx, args).await,
        Command::Stack(args) => stack::run(args).await,
        Command::GitHook(args) => git_hook::run(args).await,
        Command::Cluster(_)
        | Command::Server(_)
        | Command::Host(_)
        | Command::GitCredentials(_) => Ok(()),
    }
}

/// What every client command needs: the app and cluster flags.
pub struct Ctx {
    app: Option<String>,
    cluster: Option<String>,
}

impl Ctx {
    pub fn config(&self) -> anyhow::Result<(std::path::PathBuf, Config)> {
        let path = config::path()?;
        let config = Config::load(&path)?;
        Ok((path, config))
    }

    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        let (_, config) = self.config()?;
        Ok(config.select(self.cluster.as_deref())?.clone())
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.cluster()?)?)
    }

    /// The app: `-a`/`$FLYNN_APP`, else the git remote `flynn`.
    pub fn app(&self) -> anyhow::Result<String> {
        if let Some(app) = self.app.as_deref().filter(|a| !a.is_empty()) {
            return Ok(app.to_owned());
        }
        if let Some(app) = git::remote_app("flynn") {
            return Ok(app);
        }
        anyhow::bail!(
            "no app given: use -a APP, set FLYNN_APP, or run this in a git repository with a \
             `flynn` remote (flynn create adds one)"
        )
    }
}
