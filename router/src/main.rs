use anyhow::Context;
use clap::Parser;
use flynn_router::config::Args;
use flynn_router::proxy::UpstreamTimeouts;
use flynn_router::server::{self, RouterConfig, StoreSource};
use flynn_router::tcp::TcpSettings;
use flynn_router::tls;
use flynn_store::Keys;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flynn-router: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    args.validate()?;
    // pingora retries a busy address for a while and then panics in a service thread while the
    // process lives on; an operator wants a clear error and an exit instead.
    // (When upgrading, the running router still holds the addresses and hands them over.)
    for addr in args
        .http_addrs
        .iter()
        .chain(&args.https_addrs)
        .chain([&args.admin_addr])
        .filter(|_| !args.upgrade)
    {
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(
        store = %args.store,
        http = ?args.http_addrs,
        admin = %args.admin_addr,
        threads,
        "starting flynn-router"
    );
    let default_cert = match (&args.default_cert, &args.default_key) {
        _ if args.no_default_cert => None,
        (Some(cert), Some(key)) => {
            Some(tls::load_default(cert, key).context("cannot use --default-cert/--default-key")?)
        }
        _ if args.https_addrs.is_empty() => None,
        _ => {
            let (certified, _, _) = tls::self_signed()?;
            tracing::warn!(
                "no --default-cert given: serving a generated self-signed certificate for \
                 localhost to TLS clients whose server name has no route certificate"
            );
            Some(certified)
        }
    };
    let reserved = args
        .http_addrs
        .iter()
        .chain(&args.https_addrs)
        .chain([&args.admin_addr])
        .map(|a| a.port())
        .collect();
    let server = server::build(RouterConfig {
        store: StoreSource::Url(args.store),
        keys: Keys::new(&args.store_prefix),
        http_addrs: args.http_addrs,
        https_addrs: args.https_addrs,
        default_cert,
        h2c: args.h2c,
        proxy_protocol_from: args.proxy_protocol_from,
        cookie_key: args.cookie_key,
        admin_addr: args.admin_addr,
        tcp: TcpSettings {
            ip: args.tcp_ip,
            ports: args.tcp_ports,
            reserved,
            connect_timeout: args.connect_timeout,
        },
        threads,
        timeouts: UpstreamTimeouts {
            connect: args.connect_timeout,
            read: args.upstream_timeout,
            ..UpstreamTimeouts::default()
        },
        drain_timeout: args.drain_timeout,
        upgrade: args.upgrade,
        upgrade_sock: args.upgrade_sock,
    });
    server.run_forever()
}
