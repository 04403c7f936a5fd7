//! `flynn route`: list, `add http`, `add tcp`, `update`, `remove`.

use std::io::Read;

use anyhow::Context;
use clap::{ArgAction, Args, Subcommand, ValueEnum};
use flynn_store::types::{BackendProtocol, ProxyProtocol, Route};

use super::client::segment;
use super::output::say;
use super::output::{self, Format};
use super::Ctx;
use crate::api::types::{NewCertificate, NewRoute, RouteKind, RouteUpdate, StoredRoute};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RouteArgs {
    #[command(subcommand)]
    action: Option<RouteAction>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum RouteAction {
    /// Add a route
    Add {
        #[command(subcommand)]
        kind: AddKind,
    },
    /// Change a route's service, flags or certificate
    Update(UpdateArgs),
    /// Remove a route
    Remove {
        /// The route's id (see `flynn route`)
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum AddKind {
    /// Route HTTP(S) requests for DOMAIN[/PATH]
    Http(AddHttp),
    /// Route a TCP port
    Tcp(AddTcp),
}

#[derive(Args, Debug)]
struct AddHttp {
    /// Service to route to [default: APP-web]
    #[arg(short = 's', long = "service")]
    service: Option<String>,
    /// PEM certificate chain file for TLS ("-" for stdin)
    #[arg(short = 'c', long = "tls-cert", requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key file for TLS ("-" for stdin)
    #[arg(short = 'k', long = "tls-key", requires = "tls_cert")]
    tls_key: Option<String>,
    /// Pin each client to one backend with a cookie
    #[arg(long)]
    sticky: bool,
    /// Send traffic only to the service's leader
    #[arg(long)]
    leader: bool,
    /// Do not drain backends on removal
    #[arg(long = "no-drain-backends")]
    no_drain_backends: bool,
    /// Close backend connections after each request
    #[arg(long = "disable-keep-alives")]
    disable_keep_alives: bool,
    /// Protocol to the backends: http1 (default), h2c (HTTP/2 in clear text, e.g. gRPC) or h2
    /// (HTTP/2 over TLS, the backend's certificate checked against the router's --backend-ca)
    #[arg(long = "backend-protocol", value_parser = parse_backend_protocol)]
    backend_protocol: Option<BackendProtocol>,
    /// example.com, *.example.com or example.com/path
    target: String,
}

#[derive(Args, Debug)]
struct AddTcp {
    /// Service to route to [default: APP-web]
    #[arg(short = 's', long = "service")]
    service: Option<String>,
    /// Port to listen on [default: the next free one]
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Send traffic only to the service's leader
    #[arg(long)]
    leader: bool,
    /// Send a PROXY protocol header to the backend
    #[arg(long = "proxy-protocol", value_enum)]
    proxy_protocol: Option<Proxy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proxy {
    V1,
    V2,
    /// No PROXY header (for update)
    None,
}

impl Proxy {
    fn protocol(self) -> Option<ProxyProtocol> {
        match self {
            Proxy::V1 => Some(ProxyProtocol::V1),
            Proxy::V2 => Some(ProxyProtocol::V2),
            Proxy::None => None,
        }
    }
}

#[derive(Args, Debug)]
struct UpdateArgs {
    /// The route's id
    id: String,
    #[arg(short = 's', long = "service")]
    service: Option<String>,
    #[arg(short = 'c', long = "tls-cert", requires = "tls_key")]
    tls_cert: Option<String>,
    #[arg(short = 'k', long = "tls-key", requires = "tls_cert")]
    tls_key: Option<String>,
    #[arg(long, action = ArgAction::SetTrue, conflicts_with = "no_sticky")]
    sticky: bool,
    #[arg(long = "no-sticky")]
    no_sticky: bool,
    #[arg(long, action = ArgAction::SetTrue, conflicts_with = "no_leader")]
    leader: bool,
    #[arg(long = "no-leader")]
    no_leader: bool,
    #[arg(long = "drain-backends", conflicts_with = "no_drain_backends")]
    drain_backends: bool,
    #[arg(long = "no-drain-backends")]
    no_drain_backends: bool,
    #[arg(long = "disable-keep-alives", conflicts_with = "enable_keep_alives")]
    disable_keep_alives: bool,
    #[arg(long = "enable-keep-alives")]
    enable_keep_alives: bool,
    /// v1, v2, or none (TCP routes)
    #[arg(long = "proxy-protocol", value_enum)]
    proxy_protocol: Option<Proxy>,
    /// Protocol to the backends: http1, h2c or h2 (HTTP routes)
    #[arg(long = "backend-protocol", value_parser = parse_backend_protocol)]
    backend_protocol: Option<BackendProtocol>,
}

fn parse_backend_protocol(raw: &str) -> Result<BackendProtocol, String> {
    serde_json::from_value(serde_json::Value::String(raw.to_ascii_lowercase()))
        .map_err(|e| format!("{raw:?}: {e}"))
}

pub async fn run(ctx: &Ctx, args: RouteArgs) -> anyhow::Result<()> {
    match args.action {
        None => list(ctx, args.output).await,
        Some(RouteAction::Add {
            kind: AddKind::Http(add),
        }) => add_http(ctx, add).await,
        Some(RouteAction::Add {
            kind: AddKind::Tcp(add),
        }) => add_tcp(ctx, add).await,
        Some(RouteAction::Update(update)) => self::update(ctx, update).await,
        Some(RouteAction::Remove { id }) => remove(ctx, &id).await,
    }
}

fn routes_path(app: &str) -> String {
    format!("/apps/{}/routes", segment(app))
}

async fn list(ctx: &Ctx, format: Format) -> anyhow::Result<()> {
    let app = ctx.app()?;
    let routes: Vec<StoredRoute> = ctx.client()?.get(&routes_path(&app)).await?;
    let rows = routes
        .iter()
        .map(|r| match &r.route {
            Route::Http(h) => {
                let scheme = if h.certificate_id.is_some() {
                    "https"
                } else {
                    "http"
                };
                vec![
                    format!("{scheme}:{}", h.domain),
                    h.service.clone(),
                    h.id.clone(),
                    h.sticky.to_string(),
                    h.leader.to_string(),
                    h.path.clone(),
                ]
            }
            Route::Tcp(t) => vec![
                format!("tcp:{}", t.port),
                t.service.clone(),
                t.id.clone(),
                "false".to_owned(),
                t.leader.to_string(),
                String::new(),
            ],
        })
        .collect();
    output::list(
        format,
        &routes,
        &["ROUTE", "SERVICE", "ID", "STICKY", "LEADER", "PATH"],
        rows,
    )
}

/// Reads a certificate and key from files (`-` is stdin, holding both).
fn read_certificate(cert: &str, key: &str) -> anyhow::Result<NewCertificate> {
    let mut stdin = None;
    let mut read = |path: &str, what: &str| -> anyhow::Result<String> {
        if path == "-" {
            if stdin.is_none() {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read stdin")?;
                stdin = Some(text);
            }
            return Ok(stdin.clone().unwrap_or_default());
        }
        std::fs::read_to_string(path).with_context(|| format!("cannot read the TLS {what} {path}"))
    };
    let cert = read(cert, "certificate")?;
    let key = read(key, "key")?;
    Ok(NewCertificate {
        cert: only_blocks(&cert, "CERTIFICATE"),
        key: only_blocks(&key, "PRIVATE KEY"),
    })
}

/// Keeps the PEM blocks whose label ends with `label` (stdin may hold both cert and key).
fn only_blocks(text: &str, label: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN ") && line.trim_end_matches('-').ends_with(label) {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END ") {
            inside = false;
        }
    }
    if out.is_empty() {
        text.to_owned()
    } else {
        out
    }
}

async fn add_http(ctx: &Ctx, add: AddHttp) -> anyhow::Result<()> {
    let app = ctx.app()?;
    let (domain, path) = match add.target.split_once('/') {
        Some((domain, path)) => (domain.to_owned(), Some(format!("/{path}"))),
        None => (add.target.clone(), None),
    };
    let certificate = match (&add.tls_cert, &add.tls_key) {
        (Some(cert), Some(key)) => Some(read_certificate(cert, key)?),
        _ => None,
    };
    let new = NewRoute {
        kind: RouteKind::Http,
        domain: Some(domain),
        path,
        service: add.service,
        sticky: add.sticky,
        leader: add.leader,
        drain_backends: add.no_drain_backends.then_some(false),
        disable_keep_alives: add.disable_keep_alives,
        backend_protocol: add.backend_protocol,
        certificate,
        ..NewRoute::default()
    };
    let route: StoredRoute = ctx.client()?.post(&routes_path(&app), &new).await?;
    say!("{}", route.route.id());
    Ok(())
}

async fn add_tcp(ctx: &Ctx, add: AddTcp) -> anyhow::Result<()> {
    let app = ctx.app()?;
    let new = NewRoute {
        kind: RouteKind::Tcp,
        port: add.port,
        service: add.service,
        leader: add.leader,
        proxy_protocol: add.proxy_protocol.and_then(Proxy::protocol),
        ..NewRoute::default()
    };
    let route: StoredRoute = ctx.client()?.post(&routes_path(&app), &new).await?;
    match &route.route {
        Route::Tcp(t) => say!("{} listening on port {}", t.id, t.port),
        other => say!("{}", other.id()),
    }
    Ok(())
}

/// `Some(true)` / `Some(false)` / `None` from a `--x` / `--no-x` pair.
fn flag(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

async fn update(ctx: &Ctx, args: UpdateArgs) -> anyhow::Result<()> {
    let app = ctx.app()?;
    let certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(read_certificate(cert, key)?),
        _ => None,
    };
    let update = RouteUpdate {
        service: args.service,
        sticky: flag(args.sticky, args.no_sticky),
        leader: flag(args.leader, args.no_leader),
        drain_backends: flag(args.drain_backends, args.no_drain_backends),
        disable_keep_alives: flag(args.disable_keep_alives, args.enable_keep_alives),
        certificate,
        proxy_protocol: args.proxy_protocol.map(Proxy::protocol),
        backend_protocol: args.backend_protocol,
        ..RouteUpdate::default()
    };
    let path = format!("{}/{}", routes_path(&app), segment(&args.id));
    let route: StoredRoute = ctx.client()?.put(&path, &update).await?;
    say!("updated route {}", route.route.id());
    Ok(())
}

async fn remove(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let app = ctx.app()?;
    let path = format!("{}/{}", routes_path(&app), segment(id));
    let _: StoredRoute = ctx.client()?.delete(&path).await?;
    say!("Route {id} removed.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::only_blocks;

    #[test]
    fn splits_pem_blocks() {
        let both = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            only_blocks(both, "CERTIFICATE"),
            "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            only_blocks(both, "PRIVATE KEY"),
            "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(only_blocks("garbage", "CERTIFICATE"), "garbage");
    }
}
