//! A built image becomes a release and is deployed: a `docker` artifact of the image (with,
//! for a buildpack build, where its slug is: [`super::slugs`]), a
//! release with the build's process types and the previous release's env (and, for the
//! types it had, their ports, env and limits), then the app's deployer by its strategy. The
//! first push of an app also scales `web` to 1 and waits for it to be up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::Json;
use flynn_builder::{Built, Output};
use flynn_store::types::Route;

use super::super::error::ApiResult;
use super::super::extract::Body;
use super::super::types::{
    App, Deployment, DeploymentStatus, JobState, NewArtifact, NewFormation, NewRelease, Port,
    Release, ReleaseRef,
};
use super::super::{deployments, formations, jobs, releases, routes, ApiState};
use super::builds::say;
use super::{slugs, GitState};

/// The port `web` listens on (it gets it as `$PORT`) when the image names none, as `flynn
/// deploy --image` gives it.
pub const WEB_PORT: u16 = 8080;

/// What a successful push made.
#[derive(Clone, Debug)]
pub struct Deployed {
    pub release_id: String,
    pub url: Option<String>,
}

/// The app's current release, if it has one: the build gets its env, the new release keeps
/// its env and what it said of each process type.
pub async fn current(api: &ApiState, app: &App) -> ApiResult<Option<Release>> {
    Ok(match &app.release_id {
        Some(id) => Some(releases::find(api, id).await?),
        None => None,
    })
}

/// Releases `built` over `previous` (the app's release when the build began) and deploys it.
pub async fn release_and_deploy(
    state: &GitState,
    app: &App,
    previous: Option<Release>,
    (build_id, built): (&str, &Built),
    rev: Option<&str>,
    out: &Output,
) -> Result<Deployed, String> {
    let api = &state.api;
    say(out, "-----> Releasing".to_owned()).await;
    let mut meta = BTreeMap::from([
        (slugs::META_IMAGE.to_owned(), built.image.clone()),
        ("build.kind".to_owned(), built.kind.clone()),
        (slugs::META_BUILD.to_owned(), build_id.to_owned()),
    ]);
    if let Some(rev) = rev {
        meta.insert("git.rev".to_owned(), rev.to_owned());
    }
    if let (Some(_), Some(stack)) = (&built.slug, &built.stack) {
        let base = state.git.config.controller_url.trim_end_matches('/');
        let url = format!("{base}{}", slugs::url_path(&app.id, build_id));
        meta.insert(slugs::META_URL.to_owned(), url);
        meta.insert(slugs::META_STACK.to_owned(), stack.clone());
    }
    let release = create_release(api, app, previous, built, meta)
        .await
        .map_err(|e| format!("cannot create the release: {e}"))?;
    let types: Vec<&str> = release.processes.keys().map(String::as_str).collect();
    say(
        out,
        format!(
            "       release {} (process types: {})",
            release.id,
            types.join(", ")
        ),
    )
    .await;
    say(out, format!("-----> Deploying ({})", app.strategy)).await;
    let (_, Json(deployment)) = deployments::create(
        State(api.clone()),
        Path(app.id.clone()),
        Body(ReleaseRef {
            id: release.id.clone(),
        }),
    )
    .await
    .map_err(|e| format!("cannot deploy release {}: {e}", release.id))?;
    follow(api, deployment, out).await?;
    if app.release_id.is_none() && release.processes.contains_key("web") {
        say(out, "       first push: scaling web to 1".to_owned()).await;
        scale_web(api, app, &release, out).await?;
    }
    let url = web_url(state, app).await;
    match &url {
        Some(url) => say(out, format!("=====> {} deployed to {url}", app.name)).await,
        None => say(out, format!("=====> {} deployed (no HTTP route)", app.name)).await,
    }
    Ok(Deployed {
        release_id: release.id,
        url,
    })
}

async fn create_release(
    api: &ApiState,
    app: &App,
    previous: Option<Release>,
    built: &Built,
    meta: BTreeMap<String, String>,
) -> ApiResult<Release> {
    let (_, Json(artifact)) = releases::create_artifact(
        State(api.clone()),
        Body(NewArtifact {
            kind: "docker".to_owned(),
            uri: built.image_id.clone(),
            meta: meta.clone(),
        }),
    )
    .await?;
    let processes = built
        .processes
        .iter()
        .map(|(name, args)| {
            // What the previous release said of this type (ports, env, limits) stays.
            let mut process = previous
                .as_ref()
                .and_then(|r| r.processes.get(name).cloned())
                .unwrap_or_default();
            process.args = args.clone();
            if name == "web" {
                // The image's own port (a Dockerfile's EXPOSE) wins; else the one it had.
                match built.port {
                    Some(port) => process.ports = vec![tcp(port)],
                    None if process.ports.is_empty() => process.ports = vec![tcp(WEB_PORT)],
                    None => {}
                }
            }
            (name.clone(), process)
        })
        .collect();
    let (_, Json(release)) = releases::create(
        State(api.clone()),
        Body(NewRelease {
            app_id: Some(app.id.clone()),
            artifacts: vec![artifact.id],
            env: previous.map(|r| r.env).unwrap_or_default(),
            meta,
            processes,
        }),
    )
    .await?;
    Ok(release)
}

fn tcp(port: u16) -> Port {
    Port {
        port,
        proto: "tcp".to_owned(),
    }
}

/// Prints the deployment's events until it ends; its error if it failed.
async fn follow(api: &ApiState, mut deployment: Deployment, out: &Output) -> Result<(), String> {
    let mut printed = 0;
    loop {
        for event in deployment.events.iter().skip(printed) {
            say(out, format!("       {}", event.message)).await;
        }
        printed = deployment.events.len();
        match deployment.status {
            DeploymentStatus::Complete => return Ok(()),
            DeploymentStatus::Failed => {
                return Err(format!(
                    "deploy failed ({}): {}",
                    match &deployment.old_release_id {
                        Some(old) => format!("release {old} still serves"),
                        None => "nothing was running".to_owned(),
                    },
                    deployment.error.as_deref().unwrap_or("no reason given")
                ))
            }
            DeploymentStatus::Pending | DeploymentStatus::Running => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        deployment = api
            .db
            .get::<Deployment>(&api.db.deployment(&deployment.id))
            .await
            .map_err(|e| format!("cannot follow the deployment: {e}"))?
            .ok_or_else(|| format!("deployment {} vanished", deployment.id))?
            .value;
    }
}

/// `web=1` for the new release, and waits (the app's deploy timeout) until its job is up.
async fn scale_web(
    api: &ApiState,
    app: &App,
    release: &Release,
    out: &Output,
) -> Result<(), String> {
    let _scaled = formations::put(
        State(api.clone()),
        Path((app.id.clone(), release.id.clone())),
        Body(NewFormation {
            processes: BTreeMap::from([("web".to_owned(), 1)]),
            tags: BTreeMap::new(),
        }),
    )
    .await
    .map_err(|e| format!("cannot scale web: {e}"))?;
    let timeout = Duration::from_secs(app.deploy_timeout.max(1));
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let jobs = jobs::all(&api.db)
            .await
            .map_err(|e| format!("cannot read the jobs: {e}"))?;
        let web = jobs.iter().map(|j| &j.value).filter(|j| {
            j.app_id == app.id && j.release_id == release.id && j.process_type == "web"
        });
        for job in web {
            if job.state == JobState::Up {
                say(out, format!("       web job {} up", job.id)).await;
                return Ok(());
            }
            if let Some(error) = &job.error {
                last_error = Some(error.clone());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the web job was not up within {}s{}",
                timeout.as_secs(),
                last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `http://<the app's / route's domain>[:<router port>]`, as `flynn info` shows it.
async fn web_url(state: &GitState, app: &App) -> Option<String> {
    let Json(routes) = routes::list_app(State(state.api.clone()), Path(app.id.clone()))
        .await
        .ok()?;
    let domain = routes.iter().find_map(|r| match &r.route {
        Route::Http(h) if h.path == "/" && !h.domain.starts_with('*') => Some(h.domain.clone()),
        _ => None,
    })?;
    Some(match state.git.config.web_port.filter(|p| *p != 80) {
        Some(port) => format!("http://{domain}:{port}"),
        None => format!("http://{domain}"),
    })
}
