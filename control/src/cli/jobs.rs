//! `flynn scale` (Flynn's syntax: `web=3 worker=1`, waits for the jobs unless `-n`; no
//! argument prints the scale), `flynn ps`, and `flynn deploy --image`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clap::Args;

use super::client::{segment, Client};
use super::output::say;
use super::output::{self, Format};
use super::Ctx;
use crate::api::types::{
    App, Artifact, Formation, Job, JobState, NewArtifact, NewFormation, NewRelease, Release,
};
use crate::host::docker::{DockerError, Engine};

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
    let client = ctx.client()?;
    let (app, release) = app_and_release(ctx, &client).await?;
    let current = formation(&client, &app, &release.id)
        .await?
        .map(|f| f.processes)
        .unwrap_or_default();
    if counts.is_empty() {
        let scale: Vec<String> = release
            .processes
            .keys()
            .map(|t| format!("{t}={}", current.get(t).copied().unwrap_or(0)))
            .collect();
        say!("{}", scale.join(" "));
        return Ok(());
    }
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
                tags: BTreeMap::new(),
            },
        )
        .await?;
    let changes: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!("{t}: {}=>{n}", current.get(t).copied().unwrap_or(0)))
        .collect();
    say!("scaling {}", changes.join(", "));
    if args.no_wait {
        return Ok(());
    }
    let started = Instant::now();
    wait_for(&client, &app, &release.id, &processes, args.timeout).await?;
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
        seen.retain(|id, (process_type, _)| {
            let here = jobs.iter().any(|j| &j.id == id);
            if !here {
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
                    .filter(|j| j.state == JobState::Up && !j.stop)
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

/// A job marked stop shows as stopping until its record goes.
fn shown_state(job: &Job) -> String {
    if job.stop && job.state.is_active() {
        JobState::Stopping.to_string()
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
