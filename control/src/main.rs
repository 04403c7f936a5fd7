//! `flynn`: the command line. The controller API and the all-in-one `flynn server` land with
//! issue #4; until then this binary only explains that.
use clap::Parser;

/// Flynn command line (the controller and `flynn server` are not built yet; see the README).
#[derive(Parser)]
#[command(name = "flynn", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!(
        "the flynn controller is not built yet: run the router with `flynn-router --help`"
    )
}
