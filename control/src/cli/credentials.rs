//! `flynn git-credentials get`: git's credential-helper protocol. Git writes what it needs
//! (`protocol`, `host`, ...) on stdin; for a host that is a cluster's git endpoint, the helper
//! answers `username=flynn` and `password=<the cluster key>`. `store` and `erase` keep nothing
//! (the key lives in ~/.flynnrc). `flynn create` makes this the helper of the app's remote.

use std::io::Read;

use super::config::Cluster;
use super::git;
use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct CredentialsArgs {
    /// What git asks: get, store or erase
    #[arg(value_parser = ["get", "store", "erase"])]
    pub action: String,
}

pub fn run(ctx: &Ctx, args: CredentialsArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    if args.action != "get" {
        return Ok(());
    }
    let request = git::parse_credential_request(&input);
    let field = |name: &str| {
        request
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let (protocol, host) = (field("protocol"), field("host"));
    let (_, config) = ctx.config()?;
    let serves = |c: &&Cluster| git::credential_matches(&git::git_base(c), protocol, host);
    // The cluster named with -c first, then any cluster serving that host.
    let named = ctx
        .cluster
        .as_deref()
        .and_then(|name| config.find(name))
        .filter(serves);
    if let Some(cluster) = named.or_else(|| config.clusters.iter().find(serves)) {
        println!("username=flynn");
        println!("password={}", cluster.key);
    }
    // Nothing printed: git tries its other helpers, then asks.
    Ok(())
}
