use clap::Parser;
use flynn_router::config::Args;
use flynn_router::server::{self, StoreSource};
use flynn_store::Keys;

/// mimalloc: the request path allocates and frees many small buffers; glibc's malloc cost
/// about a tenth of the router's CPU under load (benches/README.md). Built with
/// `--cfg flynn_system_alloc` (`cargo rustc --release --bin flynn-router -- --cfg
/// flynn_system_alloc`), the router keeps the system allocator, so that a heap profiler
/// (heaptrack, valgrind's massif) sees every allocation.
#[cfg(not(flynn_system_alloc))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flynn_router::alloc::tune();
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
    flynn_router::config::init_logging(&args.log)?;
    args.validate()?;
    args.router.check_free()?;
    tracing::info!(
        store = %args.store,
        http = ?args.router.http_addrs,
        https = ?args.router.https(),
        admin = %args.router.admin_addr,
        "starting flynn-router"
    );
    let config = args.router.into_config(
        StoreSource::Url(args.store),
        Keys::new(&args.store_prefix),
        &[],
        "/tmp/flynn-router-upgrade.sock",
    )?;
    server::build(config).run_forever()
}
