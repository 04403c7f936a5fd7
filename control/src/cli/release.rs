//! `flynn env`, `flynn limit` and `flynn release`: each change is a new release (releases never
//! change), deployed through the same path as `flynn deploy`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use super::client::{segment, Client};
use super::jobs::{app_and_release, current_app, deploy_release};
use super::output::say;
use super::output::{self, Format};
use super::run::parse_env;
use super::Ctx;
use crate::api::types::{App, Artifact, Formation, Job, NewRelease, ProcessType, Release};

/// Flynn's default memory limit of a process type that sets none.
const DEFAULT_MEMORY: i64 = 1 << 30;
/// The least memory the Docker Engine accepts for a container.
const MIN_MEMORY: i64 = 6 << 20;

#[derive(Args, Debug)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: Option<EnvCommand>,
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Set variables (KEY=VALUE...): a new release with them, deployed
    Set {
        #[arg(value_name = "KEY=VALUE", required = true)]
        vars: Vec<String>,
    },
    /// Remove variables (KEY...): a new release without them, deployed
    Unset {
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Print one variable's value
    Get {
        #[arg(value_name = "KEY")]
        key: String,
    },
}

#[derive(Args, Debug)]
pub struct LimitArgs {
    #[command(subcommand)]
    pub command: Option<LimitCommand>,
}

#[derive(Subcommand, Debug)]
pub enum LimitCommand {
    /// Set a process type's limits (memory=256MB; units B, KB, MB, GB, TB, binary as in
    /// Flynn): a new release with them, deployed
    Set {
        #[arg(value_name = "TYPE")]
        process_type: String,
        #[arg(value_name = "RESOURCE=VALUE", required = true)]
        limits: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    pub command: Option<ReleaseCommand>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Show a release (default: the current one)
    Show {
        #[arg(value_name = "RELEASE")]
        id: Option<String>,
        /// As JSON
        #[arg(long = "json")]
        json: bool,
    },
    /// Deploy an earlier release again (default: the one before the current one)
    Rollback {
        #[arg(value_name = "RELEASE")]
        id: Option<String>,
    },
}

/// A new release like `base` with `change` applied, created and deployed.
async fn release_with(
    client: &Client,
    app: &App,
    base: &Release,
    change: impl FnOnce(&mut NewRelease),
) -> anyhow::Result<()> {
    let mut new = NewRelease {
        app_id: Some(app.id.clone()),
        artifacts: base.artifacts.clone(),
        env: base.env.clone(),
        meta: base.meta.clone(),
        processes: base.processes.clone(),
    };
    change(&mut new);
    let release: Release = client.post("/releases", &new).await?;
    say!("Created release {}", release.id);
    deploy_release(client, app, Some(base), &release).await
}

fn env_name(key: &str) -> anyhow::Result<()> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        anyhow::bail!("invalid environment variable name {key:?}");
    }
    Ok(())
}

pub async fn env(ctx: &Ctx, args: EnvArgs) -> anyhow::Result<()> {
    // Input is checked before anything is read or written.
    match &args.command {
        Some(EnvCommand::Set { vars }) => {
            for var in vars {
                parse_env(var)?;
            }
        }
        Some(EnvCommand::Unset { keys }) => keys.iter().try_for_each(|k| env_name(k))?,
        Some(EnvCommand::Get { key }) => env_name(key)?,
        None => {}
    }
    let client = ctx.client()?;
    let (app, release) = app_and_release(ctx, &client).await?;
    match args.command {
        None => {
            for (k, v) in &release.env {
                say!("{k}={v}");
            }
            Ok(())
        }
        Some(EnvCommand::Get { key }) => match release.env.get(&key) {
            Some(value) => {
                say!("{value}");
                Ok(())
            }
            None => anyhow::bail!("{key} is not set"),
        },
        Some(EnvCommand::Set { vars }) => {
            let vars = vars
                .iter()
                .map(|v| parse_env(v))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            release_with(&client, &app, &release, |new| new.env.extend(vars)).await
        }
        Some(EnvCommand::Unset { keys }) => {
            if let Some(missing) = keys.iter().find(|k| !release.env.contains_key(*k)) {
                anyhow::bail!("{missing} is not set");
            }
            release_with(&client, &app, &release, |new| {
                for key in &keys {
                    new.env.remove(key);
                }
            })
            .await
        }
    }
}

/// A size as Flynn's `flynn limit` takes it: a number and an optional unit, B, K(B), M(B),
/// G(B), T(B) (also KiB, MiB, ...), all powers of 1024.
pub fn parse_memory(raw: &str) -> Result<i64, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("memory={raw:?} is not a size (e.g. memory=256MB)");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes > i64::MAX as f64 / 2.0 {
        return Err(format!("memory={raw:?} is too large"));
    }
    let bytes = bytes as i64;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory={raw:?} is below the Docker Engine's minimum of 6MB"
        ));
    }
    Ok(bytes)
}

/// Bytes the way Flynn prints them: the largest unit that divides them.
pub fn format_memory(bytes: i64) -> String {
    for (unit, scale) in [
        ("TB", 1i64 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ] {
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

fn memory_of(process: &ProcessType) -> i64 {
    crate::host::job_memory_limit(process).unwrap_or(DEFAULT_MEMORY)
}

pub async fn limit(ctx: &Ctx, args: LimitArgs) -> anyhow::Result<()> {
    let parsed = match &args.command {
        Some(LimitCommand::Set { limits, .. }) => {
            let mut memory = None;
            for limit in limits {
                match limit.split_once('=') {
                    Some(("memory", value)) => {
                        memory = Some(parse_memory(value).map_err(anyhow::Error::msg)?)
                    }
                    Some((resource, _)) => anyhow::bail!(
                        "unknown resource {resource:?} in {limit:?} (memory=SIZE, e.g. memory=256MB)"
                    ),
                    None => anyhow::bail!("invalid limit {limit:?}: expected RESOURCE=VALUE, e.g. memory=256MB"),
                }
            }
            memory
        }
        None => None,
    };
    let client = ctx.client()?;
    let (app, release) = app_and_release(ctx, &client).await?;
    let Some(LimitCommand::Set { process_type, .. }) = args.command else {
        for (name, process) in &release.processes {
            say!("{name}: memory={}", format_memory(memory_of(process)));
        }
        return Ok(());
    };
    if !release.processes.contains_key(&process_type) {
        let known: Vec<&str> = release.processes.keys().map(String::as_str).collect();
        anyhow::bail!(
            "release {} has no process type {process_type:?} (it has: {})",
            release.id,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    let Some(memory) = parsed else {
        anyhow::bail!("no limit given (memory=SIZE, e.g. memory=256MB)");
    };
    release_with(&client, &app, &release, |new| {
        if let Some(process) = new.processes.get_mut(&process_type) {
            let resources = process
                .extra
                .entry("resources")
                .or_insert_with(|| serde_json::json!({}));
            if !resources.is_object() {
                *resources = serde_json::json!({});
            }
            resources["memory"] = serde_json::json!({ "limit": memory });
        }
    })
    .await
}

/// The app's releases, oldest first.
async fn releases(client: &Client, app: &App) -> anyhow::Result<Vec<Release>> {
    let mut releases: Vec<Release> = client
        .get(&format!("/apps/{}/releases", segment(&app.id)))
        .await?;
    releases.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    Ok(releases)
}

pub async fn release(ctx: &Ctx, args: ReleaseArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let app = current_app(ctx, &client).await?;
    match args.command {
        None => {
            let mut releases = releases(&client, &app).await?;
            releases.reverse();
            let rows = releases
                .iter()
                .map(|r| {
                    let current = app.release_id.as_ref() == Some(&r.id);
                    vec![
                        r.id.clone(),
                        output::ago(&r.created_at),
                        if current {
                            "current".to_owned()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            output::list(args.output, &releases, &["ID", "CREATED", ""], rows)
        }
        Some(ReleaseCommand::Show { id, json }) => {
            let id = match id.or_else(|| app.release_id.clone()) {
                Some(id) => id,
                None => anyhow::bail!("app {} has no release yet", app.name),
            };
            let release: Release = client.get(&format!("/releases/{}", segment(&id))).await?;
            if release
                .app_id
                .as_ref()
                .is_some_and(|owner| owner != &app.id)
            {
                anyhow::bail!("release {id} belongs to another app");
            }
            if json || args.output == Format::Json {
                return output::json(&release);
            }
            show(&client, &release).await
        }
        Some(ReleaseCommand::Rollback { id }) => {
            let Some(current_id) = app.release_id.clone() else {
                anyhow::bail!("app {} has no release yet: nothing to roll back", app.name);
            };
            let releases = releases(&client, &app).await?;
            let current = releases
                .iter()
                .find(|r| r.id == current_id)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("the current release {current_id} is not the app's")
                })?;
            let target = match id {
                Some(id) if id == current_id => {
                    anyhow::bail!("release {id} is already the current release")
                }
                Some(id) => releases
                    .iter()
                    .find(|r| r.id == id)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("app {} has no release {id:?}", app.name))?,
                None => {
                    let at = releases
                        .iter()
                        .position(|r| r.id == current_id)
                        .unwrap_or(0);
                    match at.checked_sub(1).and_then(|i| releases.get(i)) {
                        Some(previous) => previous.clone(),
                        None => anyhow::bail!(
                            "app {} has no release before the current one ({current_id})",
                            app.name
                        ),
                    }
                }
            };
            say!("Rolling back to release {}", target.id);
            deploy_release(&client, &app, Some(&current), &target).await
        }
    }
}

/// What `flynn info` adds about the app's processes: its release, that release's formation
/// and the app's jobs.
#[derive(Debug, Default, serde::Serialize)]
pub struct Running {
    pub release: Option<Release>,
    pub formation: BTreeMap<String, i64>,
    pub jobs: Vec<Job>,
}

pub async fn running(client: &Client, app: &App) -> anyhow::Result<Running> {
    let Some(id) = &app.release_id else {
        return Ok(Running::default());
    };
    let release: Release = client.get(&format!("/releases/{}", segment(id))).await?;
    let path = format!("/apps/{}/formations/{}", segment(&app.id), segment(id));
    let formation = match client.get::<Formation>(&path).await {
        Ok(f) => f.processes,
        Err(e) if e.code() == Some("not_found") => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    let jobs: Vec<Job> = client
        .get(&format!("/apps/{}/jobs", segment(&app.id)))
        .await?;
    Ok(Running {
        release: Some(release),
        formation,
        jobs,
    })
}

/// `flynn info`'s lines about them.
pub fn print_running(running: &Running) {
    let Some(release) = &running.release else {
        return;
    };
    let scale: Vec<String> = release
        .processes
        .keys()
        .map(|t| format!("{t}={}", running.formation.get(t).copied().unwrap_or(0)))
        .collect();
    say!("{:<9}{}", "Scale:", scale.join(" "));
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for job in &running.jobs {
        *states
            .entry(format!("{} {}", job.process_type, job.state))
            .or_default() += 1;
    }
    let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    say!(
        "{:<9}{}",
        "Jobs:",
        if states.is_empty() {
            "none".to_owned()
        } else {
            states.join(", ")
        }
    );
}

async fn show(client: &Client, release: &Release) -> anyhow::Result<()> {
    let mut fields = vec![("ID", release.id.clone())];
    for id in &release.artifacts {
        let artifact: Result<Artifact, _> =
            client.get(&format!("/artifacts/{}", segment(id))).await;
        let text = match artifact {
            Ok(a) => {
                let name = a
                    .meta
                    .get("docker.image")
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                format!("{} {}{name}", a.kind, a.uri)
            }
            Err(_) => id.clone(),
        };
        fields.push(("Artifact", text));
    }
    let types: Vec<&str> = release.processes.keys().map(String::as_str).collect();
    fields.push(("Process Types", types.join(", ")));
    fields.push(("Created At", release.created_at.clone()));
    for (label, value) in fields {
        say!("{:<15}{value}", format!("{label}:"));
    }
    for (k, v) in &release.env {
        say!("{:<15}{v}", format!("ENV[{k}]:"));
    }
    for (name, process) in &release.processes {
        say!(
            "{:<15}memory={}",
            format!("LIMIT[{name}]:"),
            format_memory(memory_of(process))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256MB"), Ok(256 << 20));
        assert_eq!(parse_memory("256m"), Ok(256 << 20));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory("67108864"), Ok(64 << 20));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("256XB").is_err());
        assert!(parse_memory("").is_err());
        assert!(parse_memory("1KB").unwrap_err().contains("minimum"));
        assert!(parse_memory("99999999TB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_memory(256 << 20), "256MB");
        assert_eq!(format_memory(1 << 30), "1GB");
        assert_eq!(format_memory(1536 << 20), "1536MB");
    }
}
