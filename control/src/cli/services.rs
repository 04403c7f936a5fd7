//! `flynn service`: list services and instances, register and deregister instances.
//!
//! `register --ttl 30s` keeps the registration alive with heartbeats for as long as the
//! command runs, and deregisters on Ctrl-C or SIGTERM; without `--ttl` it is permanent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::client::{segment, Client};
use super::output::say;
use super::output::{self, Format};
use super::Ctx;
use crate::api::types::{InstanceView, NewInstance, ServiceView};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServiceArgs {
    #[command(subcommand)]
    action: Option<ServiceAction>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum ServiceAction {
    /// List services, or the instances of SERVICE
    List {
        service: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Register ADDR (ip:port) as an instance of SERVICE
    Register {
        service: String,
        addr: String,
        /// Instance id [default: derived from the address]
        #[arg(long)]
        id: Option<String>,
        /// Expire the registration after this long without a heartbeat, and keep it alive
        /// while this command runs (e.g. 10s); without it, the registration is permanent
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Metadata, KEY=VALUE (repeatable)
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
    },
    /// Deregister an instance of SERVICE, by id or address
    Deregister { service: String, instance: String },
}

fn parse_meta(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

pub async fn run(ctx: &Ctx, args: ServiceArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match args.action {
        None => list_services(&client, args.output).await,
        Some(ServiceAction::List {
            service: None,
            output,
        }) => list_services(&client, output).await,
        Some(ServiceAction::List {
            service: Some(service),
            output,
        }) => list_instances(&client, &service, output).await,
        Some(ServiceAction::Register {
            service,
            addr,
            id,
            ttl,
            meta,
        }) => register(&client, &service, addr, id, ttl, meta.into_iter().collect()).await,
        Some(ServiceAction::Deregister { service, instance }) => {
            deregister(&client, &service, &instance).await
        }
    }
}

async fn list_services(client: &Client, format: Format) -> anyhow::Result<()> {
    let services: Vec<ServiceView> = client.get("/services").await?;
    let rows = services
        .iter()
        .map(|s| vec![s.name.clone(), s.instances.to_string()])
        .collect();
    output::list(format, &services, &["SERVICE", "INSTANCES"], rows)
}

fn instances_path(service: &str) -> String {
    format!("/services/{}/instances", segment(service))
}

async fn list_instances(client: &Client, service: &str, format: Format) -> anyhow::Result<()> {
    let instances: Vec<InstanceView> = client.get(&instances_path(service)).await?;
    let rows = instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.addr.to_string(),
                i.ttl_seconds
                    .map_or_else(|| "permanent".to_owned(), |t| format!("{t}s")),
                i.registered_at
                    .as_deref()
                    .map(output::ago)
                    .unwrap_or_default(),
            ]
        })
        .collect();
    output::list(
        format,
        &instances,
        &["ID", "ADDR", "TTL", "REGISTERED"],
        rows,
    )
}

async fn register(
    client: &Client,
    service: &str,
    addr: String,
    id: Option<String>,
    ttl: Option<Duration>,
    meta: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let ttl_seconds = ttl.map(|t| t.as_secs().max(1));
    let new = NewInstance {
        addr,
        id,
        ttl_seconds,
        meta,
    };
    let instance: InstanceView = client.post(&instances_path(service), &new).await?;
    say!(
        "registered {} ({}) as an instance of {service}",
        instance.id,
        instance.addr
    );
    let Some(ttl_seconds) = ttl_seconds else {
        return Ok(());
    };
    say!("keeping it alive (TTL {ttl_seconds}s); Ctrl-C deregisters it");
    let path = format!("{}/{}", instances_path(service), segment(&instance.id));
    let every = Duration::from_millis(ttl_seconds * 1000 / 3).max(Duration::from_millis(200));
    let beat_path = format!("{path}/heartbeat");
    let heartbeats = async {
        loop {
            tokio::time::sleep(every).await;
            let beat: Result<InstanceView, _> = client.post(&beat_path, &()).await;
            if let Err(e) = beat {
                if e.code() == Some("not_found") {
                    return anyhow::Error::from(e).context("the registration expired");
                }
                eprintln!("flynn: heartbeat failed (retrying): {e}");
            }
        }
    };
    tokio::select! {
        e = heartbeats => Err(e),
        _ = shutdown() => {
            let _: InstanceView = client.delete(&path).await?;
            say!("deregistered {}", instance.id);
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn deregister(client: &Client, service: &str, instance: &str) -> anyhow::Result<()> {
    let id = match instance.parse::<SocketAddr>() {
        Ok(addr) => crate::api::id_for_addr(&addr),
        Err(_) => instance.to_owned(),
    };
    let path = format!("{}/{}", instances_path(service), segment(&id));
    let removed: InstanceView = client.delete(&path).await?;
    say!(
        "deregistered {} ({}) from {service}",
        removed.id,
        removed.addr
    );
    Ok(())
}
