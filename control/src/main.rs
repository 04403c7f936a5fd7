//! `flynn`: the command line, the controller, and the all-in-one `flynn server`.

/// The same allocator as flynn-router: `flynn server` runs the router's request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flynn_router::alloc::tune();
    flynn_control::cli::main()
}
