//! `flynn run [-d] CMD…` (a one-off job of the app's current release, on a host agent, attached
//! or detached) and `flynn kill JOB`.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use tokio::io::AsyncWriteExt;

use super::agent::Agent;
use super::client::{segment, Client};
use super::jobs::app_and_release;
use super::output::say;
use super::Ctx;
use crate::api::types::{Host, Job};
use crate::host::run::{read_frame, Frame, RunRequest};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run detached: print the job's id and return (its output: `flynn log -j ID`)
    #[arg(short = 'd', long = "detached")]
    pub detached: bool,
    /// An extra environment variable of the job, KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command and its arguments, run in a new container of the app's current release;
    /// attached, your stdin goes to it, its stdout and stderr come back, and its exit status
    /// becomes flynn's
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The job's id (`flynn ps`); a formation's job is replaced by a new one
    #[arg(value_name = "JOB")]
    pub job: String,
}

/// `KEY=VALUE` with a usable name.
pub fn parse_env(raw: &str) -> anyhow::Result<(String, String)> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => anyhow::bail!("invalid environment variable {raw:?}: expected KEY=VALUE"),
    }
}

/// The live host that runs the job: the one with the fewest jobs of this app.
pub async fn pick_host(client: &Client, app_id: &str) -> anyhow::Result<Host> {
    let hosts: Vec<Host> = client.get("/hosts").await?;
    let jobs: Vec<Job> = client
        .get(&format!("/apps/{}/jobs", segment(app_id)))
        .await?;
    hosts
        .into_iter()
        .filter(|h| !h.api.is_empty())
        .min_by_key(|h| {
            let load = jobs.iter().filter(|j| j.host_id == h.id).count();
            (load, h.id.clone())
        })
        .ok_or_else(|| anyhow::anyhow!("no host agent is up to run the job"))
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<()> {
    let env = args
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    if args.command.first().is_none_or(|c| c.is_empty()) {
        anyhow::bail!("a command to run is required");
    }
    let client = ctx.client()?;
    let (app, release) = app_and_release(ctx, &client).await?;
    let host = pick_host(&client, &app.id).await?;
    let agent = Agent::new(&host, &client)?;
    let request = RunRequest {
        app_id: app.id.clone(),
        release_id: release.id.clone(),
        args: args.command.clone(),
        env,
    };
    if args.detached {
        let job: Job = agent
            .json(http::Method::POST, "/runs", Some(&request))
            .await?;
        say!("{}", job.id);
        return Ok(());
    }
    let (_job, connection) = agent.attach("/runs", &request).await?;
    let (mut from_job, mut to_job) = tokio::io::split(connection);
    // Stdin goes up until it ends; then the job's stdin is closed.
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_job).await;
        let _ = to_job.shutdown().await;
    });
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let status = loop {
        match read_frame(&mut from_job).await {
            Ok(Some((Frame::Stdout, data))) => {
                let _ = stdout.write_all(&data).and_then(|()| stdout.flush());
            }
            Ok(Some((Frame::Stderr, data))) => {
                let _ = stderr.write_all(&data).and_then(|()| stderr.flush());
            }
            Ok(Some((Frame::Exit, data))) => {
                let text = String::from_utf8_lossy(&data);
                break text.trim().parse::<i64>().ok();
            }
            Ok(Some((Frame::Error, data))) => {
                anyhow::bail!("{}", String::from_utf8_lossy(&data).trim());
            }
            Ok(None) => anyhow::bail!("the connection to the job ended before its exit status"),
            Err(e) => anyhow::bail!("the connection to the job failed: {e}"),
        }
    };
    let Some(status) = status else {
        anyhow::bail!("the job ended without an exit status");
    };
    // The command's status is flynn's (std::process::exit: stdin's reader must not hold the
    // process open).
    let _ = stdout.flush();
    std::process::exit(i32::try_from(status).unwrap_or(1));
}

pub async fn kill(ctx: &Ctx, args: KillArgs) -> anyhow::Result<()> {
    if args.job.trim().is_empty() {
        anyhow::bail!("a job id is required (see flynn ps)");
    }
    let client = ctx.client()?;
    let name = ctx.app()?;
    let path = format!("/apps/{}/jobs/{}", segment(&name), segment(&args.job));
    let job: Job = client.delete(&path).await?;
    say!("Job {} killed.", job.id);
    Ok(())
}
