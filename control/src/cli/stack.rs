//! `flynn stack build`: the stack image buildpack apps build and run on, made in the local
//! Docker Engine from Debian's packages (needs root and mmdebstrap). Builds make it on their
//! first need; this makes it ahead of time, or again with --force.

use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use flynn_builder::stack;

#[derive(Args, Debug)]
pub struct StackArgs {
    #[command(subcommand)]
    command: StackCommand,
}

#[derive(Subcommand, Debug)]
enum StackCommand {
    /// Build flynn/stack:<version> (a no-op when the engine has it, unless --force)
    Build {
        /// Build it again even if the engine has it
        #[arg(long)]
        force: bool,
        /// The Docker Engine's socket
        #[arg(
            long,
            env = "FLYNN_DOCKER_SOCKET",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker_socket: String,
    },
    /// Print the name of the stack image this version of flynn builds
    Show,
}

pub async fn run(args: StackArgs) -> anyhow::Result<()> {
    match args.command {
        StackCommand::Show => {
            println!("{}", stack::default_image());
            Ok(())
        }
        StackCommand::Build {
            force,
            docker_socket,
        } => build(force, &docker_socket).await,
    }
}

async fn build(force: bool, socket: &str) -> anyhow::Result<()> {
    let docker = flynn_builder::connect(Some(socket))?;
    let image = stack::default_image();
    if !force && stack::exists(&docker, &image).await? {
        println!("{image} is in the Docker Engine already (--force builds it again)");
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            println!("{line}");
        }
    });
    let started = Instant::now();
    let result = stack::build(&docker, &image, &tx).await;
    drop(tx);
    printer.await.context("the output printer")?;
    result.with_context(|| format!("cannot build {image}"))?;
    println!("{image} ready in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
