//! `flynn scale` (Flynn's syntax: `web=3 worker=1`, waits for the jobs unless `-n`; no
//! argument prints the scale; `--tag web:disk=ssd` asks for hosts with that tag, as Flynn's
//! formation tags), `flynn ps`, and `flynn deploy --image`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clap::Args;

use super::client::{segment, Client};
use super::output::say;
use super::output::{self, Format};
use super::Ctx;
use crate::api::types::{
    App, Artifact, Formation, Host, Job, JobState, NewArtifact, NewFormation, NewRelease, Release,
};
use crate::host::docker::{DockerError, Engine};
use crate::scheduler::placement;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// TYPE=COUNT (repeatable); none: print the current scale
    #[arg(value_name = "TYPE=COUNT")]
    pub counts: Vec<String>,
    /// Do not wait for the jobs to start or stop
    #[arg(short = 'n', long = "no-wait")]
    pub no_wait: bool,
    /// How long to wait for the jobs
    #[arg(short = 't', long = "timeout", default_value = "60s",
        value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// TYPE:KEY=VALUE (repeatable): the process type's jobs run only on hosts with this tag
    /// (`flynn host --tag KEY=VALUE`)
    #[arg(long = "tag", value_name = "TYPE:KEY=VALUE")]
    pub tags: Vec<String>,
    /// TYPE:KEY (repeatable): drop a tag the process type asked for
    #[arg(long = "untag", value_name = "TYPE:KEY")]
    pub untags: Vec<String>,
}

/// `web:disk=ssd` → (web, disk, ssd).
fn parse_tag(raw: &str) -> anyhow::Result<(String, String, String)> {
    let parsed = raw.split_once(':').and_then(|(t, kv)| {
        let (k, v) = kv.split_once('=')?;
        (!t.is_empty() && !k.is_empty()).then(|| (t.to_owned(), k.to_owned(), v.to_owned()))
    });
    parsed.ok_or_else(|| {
        anyhow::anyhow!("--tag {raw:?}: expected TYPE:KEY=VALUE (e.g. web:disk=ssd)")
    })
}

/// `web:disk` → (web, disk).
fn parse_untag(raw: &str) -> anyhow::Result<(String, String)> {
    raw.split_once(':')
        .filter(|(t, k)| !t.is_empty() && !k.is_empty() && !k.contains('='))
        .map(|(t, k)| (t.to_owned(), k.to_owned()))
        .ok_or_else(|| anyhow::anyhow!("--untag {raw:?}: expected TYPE:KEY (e.g. web:disk)"))
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// An image in the Docker Engine (name or id): it becomes an artifact and a new release
    #[arg(long = "image", value_name = "IMAGE")]
    pub image: String,
    /// The Docker Engine's socket (where the image is)
    #[arg(
        long = "docker-socket",
        env = "FLYNN_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_socket: String,
}

/// The app the command is for ([`Ctx::app`]), fetched.
pub(super) async fn current_app(ctx: &Ctx, client: &Client) -> anyhow::Result<App> {
    let name = ctx.app()?;
    Ok(client.get(&format!("/apps/{}", segment(&name))).await?)
}

/// The app and its current release.
pub(super) async fn app_and_release(ctx: &Ctx, client: &Client) -> anyhow::Result<(App, Release)> {
    let app = current_app(ctx, client).await?;
    let Some(release_id) = &app.release_id else {
        anyhow::bail!(
            "app {} has no release yet: deploy one first (flynn deploy --image IMAGE)",
            app.name
        );
    };
    let release: Release = client
        .get(&format!("/releases/{}", segment(release_id)))
        .await?;
    Ok((app, release))
}

/// The app's formation for `release`, if it has one.
async fn formation(client: &Client, app: &App, release: &str) -> anyhow::Result<Option<Formation>> {
    let path = format!("/apps/{}/formations/{}", segment(&app.id), segment(release));
    match client.get::<Formation>(&path).await {
        Ok(formation) => Ok(Some(formation)),
        Err(e) if e.code() == Some("not_found") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn parse_count(raw: &str) -> anyhow::Result<(String, i64)> {
    let parsed = raw
        .split_once('=')
        .filter(|(t, _)| !t.is_empty())
        .and_then(|(t, n)| Some((t.to_owned(), n.trim().parse::<i64>().ok()?)));
    parsed.ok_or_else(|| {
        anyhow::anyhow!(
            "invalid scale {raw:?}: expected TYPE=COUNT with a whole number, e.g. web=3"
        )
    })
}

pub async fn scale(ctx: &Ctx, args: ScaleArgs) -> anyhow::Result<()> {
    let counts = args
        .counts
        .iter()
        .map(|c| parse_count(c))
        .collect::<anyhow::Result<BTreeMap<String, i64>>>()?;
    let new_tags = args
        .tags
        .iter()
        .map(|t| parse_tag(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let untags = args
        .untags
        .iter()
        .map(|t| parse_untag(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = ctx.client()?;
    let (app, release) = app_and_release(ctx, &client).await?;
    let (current, mut tags) = formation(&client, &app, &release.id)
        .await?
        .map(|f| (f.processes, f.tags))
        .unwrap_or_default();
    let retag = !args.tags.is_empty() || !args.untags.is_empty();
    if counts.is_empty() && !retag {
        let scale: Vec<String> = release
            .processes
            .keys()
            .map(|t| {
                let n = current.get(t).copied().unwrap_or(0);
                match tags.get(t).filter(|t| !t.is_empty()) {
                    Some(tags) => format!("{t}={n} ({})", placement::describe(tags)),
                    None => format!("{t}={n}"),
                }
            })
            .collect();
        say!("{}", scale.join(" "));
        return Ok(());
    }
    for (process_type, key, value) in &new_tags {
        tags.entry(process_type.clone())
            .or_default()
            .insert(key.clone(), value.clone());
    }
    for (process_type, key) in &untags {
        if let Some(of_type) = tags.get_mut(process_type) {
            of_type.remove(key);
        }
    }
    tags.retain(|_, of_type| !of_type.is_empty());
    let mut processes = current.clone();
    processes.extend(counts.clone());
    let path = format!(
        "/apps/{}/formations/{}",
        segment(&app.id),
        segment(&release.id)
    );
    let _: Formation = client
        .put(
            &path,
            &NewFormation {
                processes: processes.clone(),
                tags: tags.clone(),
            },
        )
        .await?;
    let changes: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!("{t}: {}=>{n}", current.get(t).copied().unwrap_or(0)))
        .collect();
    if changes.is_empty() {
        say!("tags changed");
    } else {
        say!("scaling {}", changes.join(", "));
    }
    if args.no_wait {
        return Ok(());
    }
    let started = Instant::now();
    // An omni type runs its count on every host with its tags.
    let hosts: Vec<Host> = client.get("/hosts").await?;
    let expected: BTreeMap<String, i64> = processes
        .iter()
        .map(|(t, n)| {
            let omni = release.processes.get(t).is_some_and(placement::is_omni);
            let of_type = tags.get(t).cloned().unwrap_or_default();
            let hosts = hosts
                .iter()
                .filter(|h| placement::matches(&of_type, h))
                .count();
            let n = if omni && hosts > 0 {
                n * hosts as i64
            } else {
                *n
            };
            (t.clone(), n)
        })
        .collect();
    // A job on a host without its type's tags is on its way out (the scheduler moves it).
    let fits = |job: &Job| {
        let of_type = tags.get(&job.process_type);
        of_type.is_none_or(|tags| {
            hosts
                .iter()
                .find(|h| h.id == job.host_id)
                .is_some_and(|h| placement::matches(tags, h))
        })
    };
    wait_for(&client, &app, &release.id, &expected, &fits, args.timeout).await?;
    say!("scale completed in {:.3}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Waits until the release has exactly `want` jobs of each type, all up; prints each job's
/// progress. A crashed job ends the wait with an error (the scheduler restarts it).
async fn wait_for(
    client: &Client,
    app: &App,
    release: &str,
    want: &BTreeMap<String, i64>,
    fits: &dyn Fn(&Job) -> bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // Each job's type and the state last printed.
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    let path = format!("/apps/{}/jobs", segment(&app.id));
    let mut first = true;
    loop {
        let jobs: Vec<Job> = client.get(&path).await?;
        let jobs: Vec<Job> = jobs
            .into_iter()
            .filter(|j| j.release_id == release)
            .collect();
        for job in &jobs {
            if job.state == JobState::Crashed {
                anyhow::bail!("{} job {} crashed: {}", job.process_type, job.id, why(job));
            }
            let state = shown_state(job);
            let printed = seen.get(&job.id).map(|(_, s)| s.as_str());
            if printed != Some(state.as_str()) {
                // Jobs already up before the change are not news.
                if !(first && job.state == JobState::Up && !job.stop) {
                    say!("==> {} {} {state}", job.process_type, job.id);
                }
                seen.insert(job.id.clone(), (job.process_type.clone(), state));
            }
        }
        first = false;
        // A stopped job's record goes once its container is removed.
        seen.retain(|id, (process_type, state)| {
            let here = jobs.iter().any(|j| &j.id == id);
            if !here && state != "down" {
                say!("==> {process_type} {id} down");
            }
            here
        });
        let missing: Vec<String> = want
            .iter()
            .filter_map(|(t, n)| {
                let of_type: Vec<&Job> = jobs.iter().filter(|j| &j.process_type == t).collect();
                let up = of_type
                    .iter()
                    .filter(|j| j.state == JobState::Up && !j.stop && fits(j))
                    .count();
                let done = of_type.len() as i64 == *n && up as i64 == *n;
                (!done).then(|| format!("{t}: {up} of {n} up, {} jobs", of_type.len()))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {} waiting for the jobs ({}); the scheduler keeps trying",
                humantime::format_duration(timeout),
                missing.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job marked stop shows as stopping until its record goes; a blocked one says why.
fn shown_state(job: &Job) -> String {
    if job.stop && job.state.is_active() {
        JobState::Stopping.to_string()
    } else if job.state == JobState::Blocked {
        format!("blocked: {}", why(job))
    } else {
        job.state.to_string()
    }
}

fn why(job: &Job) -> String {
    match (&job.error, job.exit_status) {
        (Some(error), _) => error.clone(),
        (None, Some(status)) => format!("exit status {status}"),
        (None, None) => "it stopped".to_owned(),
    }
}

pub async fn ps(ctx: &Ctx, args: PsArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    let jobs: Vec<Job> = client
        .get(&format!("/apps/{}/jobs", segment(&app.id)))
        .await?;
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.process_type.clone(),
                shown_state(j),
                output::ago(&j.created_at),
                j.release_id.clone(),
            ]
        })
        .collect();
    output::list(
        args.output,
        &jobs,
        &["ID", "TYPE", "STATE", "CREATED", "RELEASE"],
        rows,
    )
}

pub async fn deploy(ctx: &Ctx, args: DeployArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    // Nothing is written before the image is known to exist.
    let engine = Engine::connect(&args.docker_socket)?;
    let image_id = match engine.image_id(&args.image).await {
        Ok(id) => id,
        Err(DockerError::NoImage(image)) => anyhow::bail!(
            "image {image:?} is not in the Docker Engine at {} (build or load it first)",
            args.docker_socket
        ),
        Err(e) => return Err(e.into()),
    };
    let previous: Option<Release> = match &app.release_id {
        Some(id) => Some(client.get(&format!("/releases/{}", segment(id))).await?),
        None => None,
    };
    let artifact: Artifact = client
        .post(
            "/artifacts",
            &NewArtifact {
                kind: "docker".to_owned(),
                uri: image_id.clone(),
                meta: BTreeMap::from([("docker.image".to_owned(), args.image.clone())]),
            },
        )
        .await?;
    let (env, processes) = match &previous {
        Some(release) => (release.env.clone(), release.processes.clone()),
        None => (
            BTreeMap::new(),
            BTreeMap::from([("web".to_owned(), Default::default())]),
        ),
    };
    let release: Release = client
        .post(
            "/releases",
            &NewRelease {
                app_id: Some(app.id.clone()),
                artifacts: vec![artifact.id.clone()],
                env,
                meta: BTreeMap::new(),
                processes,
            },
        )
        .await?;
    say!("Created release {} ({})", release.id, args.image);
    deploy_release(&client, &app, previous.as_ref(), &release).await
}

/// Deploys `release` (already created) as the app's current release: every command that makes
/// a new release (`deploy`, `env`, `limit`, `release rollback`) goes through here.
pub(super) async fn deploy_release(
    client: &Client,
    app: &App,
    _previous: Option<&Release>,
    release: &Release,
) -> anyhow::Result<()> {
    // Through the controller's deployer, by the app's strategy (zero-downtime when it runs).
    super::deploys::deploy(client, app, release).await
}
