//! `flynn git-hook pre-receive` (hidden): the pre-receive hook of the controller's git
//! repositories. `git receive-pack` runs it with the pushed refs on stdin; it checks that
//! the push deploys (main or master, not deleted), streams `git archive` of the pushed commit
//! to the controller's build endpoint (`$FLYNN_BUILD_URL`, key `$FLYNN_BUILD_KEY`, both set by
//! the controller's git endpoint) and prints the build's lines, which the pusher sees as
//! `remote:` lines. It exits non-zero, rejecting the push, when the build, release or deploy
//! fails.

use std::io::Read;
use std::time::Instant;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use flynn_builder::git::{archive, refs};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use crate::api::git::BuildMessage;
use crate::api::ErrorBody;

#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// The hook git runs this as
    #[arg(value_parser = ["pre-receive"])]
    pub hook: String,
}

pub async fn run(_args: HookArgs) -> anyhow::Result<()> {
    let url = std::env::var("FLYNN_BUILD_URL").context(
        "FLYNN_BUILD_URL is not set: this hook runs under the controller's git endpoint",
    )?;
    let key = std::env::var("FLYNN_BUILD_KEY").context("FLYNN_BUILD_KEY is not set")?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read the pushed refs")?;
    let updates = refs::parse(&input)?;
    let update = refs::deployable(&updates)?;
    let started = Instant::now();
    println!(
        "-----> Receiving {} ({})",
        update.short_name(),
        &update.new[..10]
    );
    let result = build(&url, &key, &update.new).await;
    let took = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!("-----> Done in {took:.1}s");
            Ok(())
        }
        Err(e) => Err(e.context(format!("push rejected after {took:.1}s"))),
    }
}

/// Sends the tree of `rev` to the build endpoint and prints what it says.
async fn build(url: &str, key: &str, rev: &str) -> anyhow::Result<()> {
    let uri: Uri = format!("{url}?rev={rev}")
        .parse()
        .with_context(|| format!("bad FLYNN_BUILD_URL {url:?}"))?;
    let authority = uri
        .authority()
        .map(|a| match a.port_u16() {
            Some(_) => a.to_string(),
            None => format!("{}:80", a.host()),
        })
        .context("FLYNN_BUILD_URL has no host")?;
    let mut archive = archive::spawn_archive(rev)?;
    let stdout = archive.stdout.take().context("git archive: no stdout")?;
    let body = futures::stream::unfold(stdout, |mut stdout| async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        match stdout.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(Frame::data(buf.freeze())), stdout)),
            Err(e) => Some((Err(e), stdout)),
        }
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, &authority)
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .header(
            http::header::USER_AGENT,
            concat!("flynn-git-hook/", env!("CARGO_PKG_VERSION")),
        )
        .body(StreamBody::new(body))?;
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("cannot reach the controller at {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("the controller did not take the source")?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        // Refused, maybe before reading the whole tree: `git archive` is killed on drop.
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()));
        anyhow::bail!("{message}");
    }
    // Taken: the whole tree was read.
    let archived = archive.wait_with_output().await?;
    if !archived.status.success() {
        anyhow::bail!(
            "git archive failed: {}",
            String::from_utf8_lossy(&archived.stderr).trim()
        );
    }
    let mut pending = BytesMut::new();
    let mut outcome = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the build's answer broke off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Bytes = pending.split_to(end + 1).freeze();
            match serde_json::from_slice::<BuildMessage>(&line[..end]) {
                Ok(BuildMessage::Line(text)) => println!("{text}"),
                Ok(BuildMessage::Tick) => {}
                Ok(done @ (BuildMessage::Done { .. } | BuildMessage::Failed(_))) => {
                    outcome = Some(done)
                }
                Err(e) => anyhow::bail!("the controller sent a bad build message: {e}"),
            }
        }
    }
    driver.abort();
    match outcome {
        Some(BuildMessage::Done { .. }) => Ok(()),
        Some(BuildMessage::Failed(reason)) => anyhow::bail!("{reason}"),
        _ => anyhow::bail!("the controller ended the build without a result"),
    }
}
