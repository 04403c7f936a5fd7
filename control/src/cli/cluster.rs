//! `flynn cluster`: the clusters in ~/.flynnrc.

use clap::{Args, Subcommand};

use super::config::{self, Cluster, Config};
use super::output::say;
use super::output::{self, Format};
use super::Ctx;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Option<ClusterAction>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Add a cluster: its controller URL (http://host:port) and key
    Add {
        /// Replace a cluster with the same name or URL
        #[arg(short = 'f', long)]
        force: bool,
        /// Make it the default cluster
        #[arg(short = 'd', long)]
        default: bool,
        /// Base URL of the cluster's git endpoint
        #[arg(long = "git-url")]
        git_url: Option<String>,
        name: String,
        url: String,
        key: String,
    },
    /// Remove a cluster
    Remove { name: String },
    /// Show the default cluster, or make NAME the default
    Default { name: Option<String> },
}

/// What `flynn cluster -o json` prints: no keys.
#[derive(serde::Serialize)]
struct ClusterView<'a> {
    name: &'a str,
    controller_url: &'a str,
    default: bool,
}

pub fn run(_ctx: &Ctx, args: ClusterArgs) -> anyhow::Result<()> {
    let path = config::path()?;
    let mut config = Config::load(&path)?;
    match args.action {
        None => {
            let default = config.select(None).ok().map(|c| c.name.clone());
            let views: Vec<ClusterView> = config
                .clusters
                .iter()
                .map(|c| ClusterView {
                    name: &c.name,
                    controller_url: &c.controller_url,
                    default: default.as_deref() == Some(c.name.as_str()),
                })
                .collect();
            let rows = views
                .iter()
                .map(|v| {
                    let url = if v.default {
                        format!("{} (default)", v.controller_url)
                    } else {
                        v.controller_url.to_owned()
                    };
                    vec![v.name.to_owned(), url]
                })
                .collect();
            output::list(args.output, &views, &["NAME", "URL"], rows)
        }
        Some(ClusterAction::Add {
            force,
            default,
            git_url,
            name,
            url,
            key,
        }) => {
            let url = if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            };
            super::client::Client::new(&Cluster {
                name: name.clone(),
                controller_url: url.clone(),
                key: key.clone(),
                git_url: None,
                tls_pin: None,
                router_url: None,
            })?;
            config.add(
                Cluster {
                    name: name.clone(),
                    controller_url: url,
                    key,
                    git_url,
                    tls_pin: None,
                    router_url: None,
                },
                force,
            )?;
            if default {
                config.default = name.clone();
            }
            config.save(&path)?;
            if default {
                say!("Cluster {name:?} added and set as default.");
            } else {
                say!("Cluster {name:?} added.");
            }
            Ok(())
        }
        Some(ClusterAction::Remove { name }) => {
            config.remove(&name)?;
            config.save(&path)?;
            say!("Cluster {name:?} removed.");
            Ok(())
        }
        Some(ClusterAction::Default { name: None }) => {
            let cluster = config.select(None)?;
            say!("{}", cluster.name);
            Ok(())
        }
        Some(ClusterAction::Default { name: Some(name) }) => {
            if config.find(&name).is_none() {
                anyhow::bail!("cluster {name:?} not found (see `flynn cluster`)");
            }
            config.default = name.clone();
            config.save(&path)?;
            say!("{name:?} is now the default cluster.");
            Ok(())
        }
    }
}
