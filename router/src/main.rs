use clap::Parser;
use flynn_router::config::Args;
use flynn_router::proxy::UpstreamTimeouts;
use flynn_router::server::{self, RouterConfig, StoreSource};
use flynn_store::Keys;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    args.validate()?;
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
    let server = server::build(RouterConfig {
        store: StoreSource::Url(args.store),
        keys: Keys::new(&args.store_prefix),
        http_addrs: args.http_addrs,
        admin_addr: args.admin_addr,
        threads,
        timeouts: UpstreamTimeouts {
            connect: args.connect_timeout,
            read: args.upstream_timeout,
            ..UpstreamTimeouts::default()
        },
        drain_timeout: args.drain_timeout,
    });
    server.run_forever()
}
