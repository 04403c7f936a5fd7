//! Deploys from the command line: every command that makes a new release deploys it through
//! the controller's deployer ([`deploy`]), printing its progress; `flynn deployment` lists an
//! app's deployments.

use std::time::{Duration, Instant};

use clap::Args;

use super::client::{segment, Client, ClientError};
use super::jobs::current_app;
use super::output::{self, say, Format};
use super::Ctx;
use crate::api::types::{App, Deployment, DeploymentStatus, Release, ReleaseRef};

/// The longest the CLI follows a deployment (the deployer has its own timeouts).
const FOLLOW_AT_MOST: Duration = Duration::from_secs(3600);
/// How long following goes on through a controller or store that does not answer.
const FOLLOW_THROUGH: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct DeploymentArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

/// Deploys `release` (already created) as the app's release by the app's strategy and follows
/// the deployment to its end; an error says why it failed (the old release then still serves).
pub async fn deploy(client: &Client, app: &App, release: &Release) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut deployment: Deployment = client
        .post(
            &format!("/apps/{}/deploy", segment(&app.id)),
            &ReleaseRef {
                id: release.id.clone(),
            },
        )
        .await?;
    let mut printed = 0;
    loop {
        for event in deployment.events.iter().skip(printed) {
            match (&event.job_type, &event.job_id) {
                (Some(_), Some(_)) => say!("==> {}", event.message),
                _ => say!("=====> {}", event.message),
            }
        }
        printed = deployment.events.len();
        match deployment.status {
            DeploymentStatus::Complete => break,
            DeploymentStatus::Failed => anyhow::bail!(
                "deploy of release {} failed ({}): {}",
                release.id,
                match &deployment.old_release_id {
                    Some(old) => format!("release {old} still serves"),
                    None => "nothing was running".to_owned(),
                },
                deployment.error.as_deref().unwrap_or("no reason given")
            ),
            DeploymentStatus::Pending | DeploymentStatus::Running => {}
        }
        if started.elapsed() > FOLLOW_AT_MOST {
            anyhow::bail!(
                "deployment {} still runs after {}; follow it with `flynn deployment`",
                deployment.id,
                humantime::format_duration(FOLLOW_AT_MOST)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        deployment = follow(client, &deployment.id).await?;
    }
    say!(
        "Deployed release {} to {} in {:.3}s",
        release.id,
        app.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The deployment as it is now. The deployment runs on without this client: a controller or
/// store that cannot answer for a moment (a controller restarting, an etcd election) is asked
/// again for up to [`FOLLOW_THROUGH`].
async fn follow(client: &Client, id: &str) -> anyhow::Result<Deployment> {
    let started = Instant::now();
    loop {
        match client.get(&format!("/deployments/{}", segment(id))).await {
            Ok(deployment) => return Ok(deployment),
            Err(e) if transient(&e) && started.elapsed() < FOLLOW_THROUGH => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The controller could not be reached, or could not reach its store.
fn transient(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } => *status == http::StatusCode::SERVICE_UNAVAILABLE,
        _ => false,
    }
}

/// `flynn deployment`: the app's deployments, newest first.
pub async fn list(ctx: &Ctx, args: DeploymentArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    let deployments: Vec<Deployment> = client
        .get(&format!("/apps/{}/deployments", segment(&app.id)))
        .await?;
    let rows = deployments
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.status.to_string(),
                d.strategy.clone(),
                d.old_release_id.clone().unwrap_or_default(),
                d.new_release_id.clone(),
                output::ago(&d.created_at),
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::list(
        args.output,
        &deployments,
        &[
            "ID",
            "STATUS",
            "STRATEGY",
            "OLD RELEASE",
            "NEW RELEASE",
            "CREATED",
            "ERROR",
        ],
        rows,
    )
}
