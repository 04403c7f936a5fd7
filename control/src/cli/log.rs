//! `flynn log [-f] [-t TYPE] [-j JOB] [-n N] [-r]`: the output of the app's jobs, read from their
//! host agents (`docker logs`), each line as Flynn printed it:
//! `2006-01-02T15:04:05.000000Z app[web.JOB]: text`. Jobs whose containers are gone (stopped,
//! crashed, one-offs that ended) show the end of their output as their host agent kept it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use super::agent::{Agent, Lines};
use super::client::{segment, Client};
use super::jobs::current_app;
use super::output::say;
use super::Ctx;
use crate::api::types::{App, Host, Job, Release};
use crate::host::run::{LogLine, RUN_TYPE};

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Keep streaming new lines (and the lines of jobs that start later), until interrupted
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// Only the jobs of this process type
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub process_type: Option<String>,
    /// Only this job
    #[arg(short = 'j', long = "job", value_name = "JOB")]
    pub job: Option<String>,
    /// Only the last N lines of each job
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<u64>,
    /// The lines' text alone, without time and job
    #[arg(short = 'r', long = "raw-output")]
    pub raw: bool,
}

/// `2024-01-01T00:00:00.123456789Z` → `2024-01-01T00:00:00.123456Z` (Flynn's microseconds).
fn flynn_time(time: &str) -> String {
    match time.split_once('.') {
        Some((seconds, rest)) => {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let zone = &rest[digits.len()..];
            format!("{seconds}.{:0<6.6}{zone}", digits)
        }
        None => time.to_owned(),
    }
}

fn format(line: &LogLine, job: &Job, raw: bool) -> String {
    if raw {
        return line.msg.clone();
    }
    format!(
        "{} app[{}.{}]: {}",
        flynn_time(&line.time),
        job.process_type,
        job.id,
        line.msg
    )
}

pub async fn log(ctx: &Ctx, args: LogArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    if let Some(process_type) = &args.process_type {
        let release: Option<Release> = match &app.release_id {
            Some(id) => Some(client.get(&format!("/releases/{}", segment(id))).await?),
            None => None,
        };
        let known = release.is_some_and(|r| r.processes.contains_key(process_type));
        if !known && process_type != RUN_TYPE {
            anyhow::bail!(
                "app {} has no process type {process_type:?} in its release",
                app.name
            );
        }
    }
    let mut jobs = selected(&client, &app, &args).await?;
    let hosts = hosts(&client).await?;
    if !args.follow || args.job.is_some() {
        // The finished ones too (when following: only the one asked for by -j).
        for job in finished(&client, &hosts, &app).await {
            if wanted(&job, &args) && !jobs.iter().any(|j| j.id == job.id) {
                jobs.push(job);
            }
        }
    }
    if let Some(id) = &args.job {
        if jobs.is_empty() {
            anyhow::bail!("app {} has no job {id:?} (see flynn ps)", app.name);
        }
    }
    if !args.follow {
        let mut all = Vec::new();
        for job in &jobs {
            let Some(agent) = agent_of(&hosts, job, &client) else {
                continue;
            };
            let mut lines = match open(&agent, job, false, args.lines).await {
                Ok(lines) => lines,
                // Ended meanwhile and its output not kept: nothing to show of it.
                Err(e) if args.job.is_none() => {
                    tracing::debug!(job = %job.id, error = %e, "no log");
                    continue;
                }
                Err(e) => return Err(e),
            };
            while let Some(line) = lines.next().await? {
                if let Ok(line) = serde_json::from_slice::<LogLine>(&line) {
                    all.push((line, job.clone()));
                }
            }
        }
        all.sort_by(|a, b| a.0.time.cmp(&b.0.time));
        for (line, job) in all {
            say!("{}", format(&line, &job, args.raw));
        }
        return Ok(());
    }
    if args.job.is_some() {
        // One job: its stream, until the job ends.
        for job in &jobs {
            let Some(agent) = agent_of(&hosts, job, &client) else {
                anyhow::bail!("the host of job {} is gone", job.id);
            };
            let mut lines = open(&agent, job, true, args.lines).await?;
            while let Some(line) = lines.next().await? {
                if let Ok(line) = serde_json::from_slice::<LogLine>(&line) {
                    say!("{}", format(&line, job, args.raw));
                }
            }
        }
        return Ok(());
    }
    // Follow: one stream per job, new jobs picked up as they come.
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let mut following = BTreeSet::new();
    let mut hosts = hosts;
    loop {
        for job in jobs.drain(..) {
            if following.contains(&job.id) {
                continue;
            }
            let Some(agent) = agent_of(&hosts, &job, &client) else {
                continue;
            };
            following.insert(job.id.clone());
            let tx = tx.clone();
            let tail = args.lines;
            let raw = args.raw;
            tokio::spawn(async move {
                let Ok(mut lines) = open(&agent, &job, true, tail).await else {
                    return;
                };
                while let Ok(Some(line)) = lines.next().await {
                    if let Ok(line) = serde_json::from_slice::<LogLine>(&line) {
                        if tx.send(format(&line, &job, raw)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        let poll = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(poll);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => say!("{line}"),
                    None => return Ok(()),
                },
                () = &mut poll => break,
            }
        }
        jobs = selected(&client, &app, &args).await.unwrap_or_default();
        hosts = self::hosts(&client).await.unwrap_or(hosts);
    }
}

/// The app's jobs that `-t` and `-j` select, that have a container (not pending).
async fn selected(client: &Client, app: &App, args: &LogArgs) -> anyhow::Result<Vec<Job>> {
    let jobs: Vec<Job> = client
        .get(&format!("/apps/{}/jobs", segment(&app.id)))
        .await?;
    Ok(jobs
        .into_iter()
        .filter(|j| wanted(j, args))
        .filter(|j| j.container_id.is_some())
        .collect())
}

/// Whether `-t` and `-j` select the job.
fn wanted(job: &Job, args: &LogArgs) -> bool {
    args.process_type
        .as_ref()
        .is_none_or(|t| &job.process_type == t)
        && args.job.as_ref().is_none_or(|id| &job.id == id)
}

/// The app's finished jobs whose output the live hosts kept (a host that does not answer
/// is skipped).
async fn finished(client: &Client, hosts: &HashMap<String, Host>, app: &App) -> Vec<Job> {
    let mut all = Vec::new();
    let path = format!("/finished?app={}", segment(&app.id));
    for host in hosts.values() {
        let Ok(agent) = Agent::new(host, client) else {
            continue;
        };
        match agent
            .json::<Vec<Job>>(hyper::Method::GET, &path, None::<&()>)
            .await
        {
            Ok(jobs) => all.extend(jobs),
            Err(e) => tracing::debug!(host = %host.id, error = %e, "no finished jobs"),
        }
    }
    all
}

async fn hosts(client: &Client) -> anyhow::Result<HashMap<String, Host>> {
    let hosts: Vec<Host> = client.get("/hosts").await?;
    Ok(hosts.into_iter().map(|h| (h.id.clone(), h)).collect())
}

fn agent_of(hosts: &HashMap<String, Host>, job: &Job, client: &Client) -> Option<Agent> {
    hosts
        .get(&job.host_id)
        .and_then(|h| Agent::new(h, client).ok())
}

async fn open(agent: &Agent, job: &Job, follow: bool, tail: Option<u64>) -> anyhow::Result<Lines> {
    let mut path = format!("/jobs/{}/logs?follow={follow}", segment(&job.id));
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    Ok(Lines::new(agent.stream(&path).await?))
}

#[cfg(test)]
mod tests {
    use super::flynn_time;

    #[test]
    fn times_in_microseconds() {
        assert_eq!(
            flynn_time("2024-01-01T00:00:00.123456789Z"),
            "2024-01-01T00:00:00.123456Z"
        );
        assert_eq!(
            flynn_time("2024-01-01T00:00:00.5Z"),
            "2024-01-01T00:00:00.500000Z"
        );
        assert_eq!(flynn_time("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
    }
}
