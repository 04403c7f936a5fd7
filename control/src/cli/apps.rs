//! `flynn create`, `update`, `apps`, `info`, `delete`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use flynn_store::types::Route;
use serde::Deserialize;

use super::client::segment;
use super::git;
use super::jobs::current_app;
use super::output::say;
use super::output::{self, Format};
use super::Ctx;
use crate::api::types::{App, AppUpdate, NewApp, StoredRoute};

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The app's name [default: generated]
    pub name: Option<String>,
    /// Git remote to point at the app, when run in a git repository ("" for none)
    #[arg(short = 'r', long = "remote", default_value = "flynn")]
    pub remote: String,
    #[command(flatten)]
    pub deploys: DeployArgs,
}

/// How an app's new releases are deployed.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// How a new release replaces the running one: all new jobs, then the old ones stopped
    /// (all-at-once), or one new job up, one old one drained, in turn (one-by-one)
    /// (a new app: all-at-once)
    #[arg(long, value_parser = ["all-at-once", "one-by-one"])]
    pub strategy: Option<String>,
    /// How long a new release's jobs have to come up before the deploy is rolled back, e.g.
    /// 60s or 2m (a new app: 30s)
    #[arg(long = "deploy-timeout", value_parser = parse_deploy_timeout)]
    pub deploy_timeout: Option<u64>,
}

/// Whole seconds, at least one.
fn parse_deploy_timeout(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    match d.as_secs() {
        0 => Err(format!("{s:?}: at least 1s")),
        secs => Ok(secs),
    }
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Git remote to remove if it points at the app
    #[arg(short = 'r', long = "remote", default_value = "flynn")]
    pub remote: String,
}

pub async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    let cluster = ctx.cluster()?;
    let client = super::client::Client::new(&cluster)?;
    let app: App = client
        .post(
            "/apps",
            &NewApp {
                name: args.name,
                strategy: args.deploys.strategy,
                deploy_timeout: args.deploys.deploy_timeout,
                ..NewApp::default()
            },
        )
        .await?;
    let mut remote = None;
    if !args.remote.is_empty() && git::in_work_tree() {
        let base = git::git_base(&cluster);
        let url = format!("{}/{}.git", base.trim_end_matches('/'), app.name);
        match git::set_remote(&args.remote, &url) {
            Ok(()) => remote = Some(url.clone()),
            Err(e) => eprintln!("flynn: warning: {e:#}"),
        }
        // `git push` then takes the cluster key from `flynn git-credentials`.
        let helper = git::url_base(&url)
            .ok_or_else(|| anyhow::anyhow!("{url:?} is not a URL"))
            .and_then(|base| git::set_credential_helper(&base, &cluster.name));
        if let Err(e) = helper {
            eprintln!("flynn: warning: {e:#}");
        }
    }
    say!("Created {}", app.name);
    if let Some(url) = remote {
        say!("Added git remote {} ({url})", args.remote);
    }
    Ok(())
}

/// `flynn update`: the app's deploy strategy or timeout.
pub async fn update(ctx: &Ctx, args: DeployArgs) -> anyhow::Result<()> {
    if args.strategy.is_none() && args.deploy_timeout.is_none() {
        anyhow::bail!("nothing to change: give --strategy or --deploy-timeout");
    }
    let cluster = ctx.cluster()?;
    let client = super::client::Client::new(&cluster)?;
    let name = ctx.app()?;
    let change = AppUpdate {
        strategy: args.strategy,
        deploy_timeout: args.deploy_timeout,
        meta: None,
    };
    let app: App = client
        .post(&format!("/apps/{}", segment(&name)), &change)
        .await?;
    say!(
        "Updated {}: strategy {}, deploy timeout {}s",
        app.name,
        app.strategy,
        app.deploy_timeout
    );
    Ok(())
}

pub async fn list(ctx: &Ctx, format: Format) -> anyhow::Result<()> {
    let apps: Vec<App> = ctx.client()?.get("/apps").await?;
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.name.clone(),
                a.release_id.clone().unwrap_or_default(),
                output::ago(&a.created_at),
            ]
        })
        .collect();
    output::list(format, &apps, &["ID", "NAME", "RELEASE", "CREATED"], rows)
}

/// What `flynn info -o json` prints.
#[derive(serde::Serialize)]
struct Info {
    #[serde(flatten)]
    app: App,
    web_url: Option<String>,
    routes: Vec<StoredRoute>,
    /// The release, its formation and the jobs.
    #[serde(flatten)]
    running: super::release::Running,
}

pub async fn info(ctx: &Ctx, format: Format) -> anyhow::Result<()> {
    let cluster = ctx.cluster()?;
    let client = super::client::Client::new(&cluster)?;
    let app = current_app(ctx, &client).await?;
    let routes: Vec<StoredRoute> = client
        .get(&format!("/apps/{}/routes", segment(&app.id)))
        .await?;
    let web_url = routes.iter().find_map(|r| match &r.route {
        Route::Http(h) if h.path == "/" && !h.domain.starts_with('*') => {
            Some(web_url(&h.domain, cluster.router_url.as_deref()))
        }
        _ => None,
    });
    let running = super::release::running(&client, &app).await?;
    let info = Info {
        app,
        web_url,
        routes,
        running,
    };
    if format == Format::Json {
        return output::json(&info);
    }
    say!("=== {}", info.app.name);
    let mut fields = vec![("ID", info.app.id.clone())];
    if let Some(url) = &info.web_url {
        fields.push(("Web URL", url.clone()));
    }
    fields.push(("Routes", info.routes.len().to_string()));
    fields.push((
        "Release",
        info.app
            .release_id
            .clone()
            .unwrap_or_else(|| "none".to_owned()),
    ));
    fields.push((
        "Deploys",
        format!(
            "{}, timeout {}s",
            info.app.strategy, info.app.deploy_timeout
        ),
    ));
    fields.push(("Created", output::ago(&info.app.created_at)));
    for (label, value) in fields {
        say!("{:<9}{value}", format!("{label}:"));
    }
    super::release::print_running(&info.running);
    Ok(())
}

/// `http://<domain>`, on the router's port when the cluster config knows it.
fn web_url(domain: &str, router_url: Option<&str>) -> String {
    let port = router_url
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| u.port_u16())
        .filter(|p| *p != 80);
    match port {
        Some(port) => format!("http://{domain}:{port}"),
        None => format!("http://{domain}"),
    }
}

#[derive(Deserialize)]
struct Deleted {
    name: String,
    #[serde(default)]
    deleted_routes: Vec<String>,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    if !args.yes && !confirm(&app.name)? {
        anyhow::bail!("not deleting {}", app.name);
    }
    let deleted: Deleted = client
        .delete(&format!("/apps/{}", segment(&app.id)))
        .await?;
    if !args.remote.is_empty() {
        git::remove_remote_of(&args.remote, &deleted.name);
    }
    let n = deleted.deleted_routes.len();
    say!(
        "Deleted {} (removed {n} route{})",
        deleted.name,
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Asks on the terminal; refuses to guess when there is none.
fn confirm(app: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("refusing to delete {app} without confirmation: pass -y");
    }
    print!("Are you sure you want to delete the app {app:?}? (yes/no): ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "yes" | "y"))
}
