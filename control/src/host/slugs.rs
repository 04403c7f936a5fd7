//! An app image this engine lacks, rebuilt from its slug.
//!
//! A buildpack build's artifact names the image by id (`uri`) and by tag (`docker.image`), and
//! says where its slug is (`slug.url`, on the controller that built it, and `slug.stack`; see
//! `crate::api::git::slugs`). When a job's image is not in the engine (another machine, or
//! the image was removed), the agent fetches the slug with the cluster key and builds the image
//! locally on the stack image ([`flynn_builder::slug::image_from_slug`]), tagged as on the
//! build machine; the job runs that tag. Jobs of one image starting at once wait for one
//! rebuild (a lock per tag). Artifacts without a slug run their image as is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::docker::DockerError;
use super::Ctx;
use crate::api::git::slugs::{META_BUILD, META_IMAGE, META_STACK, META_URL};
use crate::api::types::Artifact;

/// The largest slug fetched (compressed).
const MAX_SLUG: usize = 2 << 30;
/// How long connecting to the controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the slug's answer may stall (its head, or between two chunks of its body).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent's rebuilds in progress: one lock per image tag.
#[derive(Default)]
pub struct Slugs {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Slugs {
    fn lock_for(&self, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the locks nobody holds or waits for.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(tag.to_owned()).or_default().clone()
    }
}

/// The image a job of `artifact` runs: `image` (the artifact's image) when the engine has it
/// or the artifact has no slug; else its tag, rebuilt from the slug when the engine lacks that
/// too. The error is the job's crash reason.
pub(crate) async fn image(
    ctx: &Ctx,
    artifact: &Artifact,
    image: String,
    (app_id, app_name): (&str, &str),
) -> Result<String, String> {
    let (Some(url), Some(tag)) = (artifact.meta.get(META_URL), artifact.meta.get(META_IMAGE))
    else {
        return Ok(image);
    };
    if present(ctx, &image).await? {
        return Ok(image);
    }
    let lock = ctx.slugs.lock_for(tag);
    let _rebuilding = lock.lock().await;
    // Another job of the image may have rebuilt it while this one waited.
    if present(ctx, tag).await? {
        return Ok(tag.clone());
    }
    let started = Instant::now();
    tracing::info!(artifact = %artifact.id, image = %tag, slug = %url,
        "the image is not in the engine: rebuilding it from its slug");
    let url = slug_url(url, ctx.config.controller_url.as_deref())?;
    let slug = fetch(&url, &ctx.config.key)
        .await
        .map_err(|e| format!("cannot fetch the slug of image {tag} from {url}: {e}"))?;
    let fetched = started.elapsed();
    let stack = match artifact.meta.get(META_STACK) {
        Some(stack) => stack.clone(),
        None => flynn_builder::Options::default().stack().0,
    };
    let build = artifact.meta.get(META_BUILD).map_or("", String::as_str);
    let labels = flynn_builder::slug::labels(app_id, app_name, build);
    let (out, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    let log = tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            tracing::debug!(line = %line.trim(), "rebuilding an image from its slug");
        }
    });
    let docker = &ctx.engine.docker;
    let built = flynn_builder::slug::image_from_slug(docker, &stack, slug, tag, labels, &out).await;
    drop(out);
    let _ = log.await;
    let built = built.map_err(|e| format!("cannot rebuild image {tag} from its slug: {e}"))?;
    tracing::info!(image = %tag, id = %built.image_id, fetched = ?fetched, took = ?started.elapsed(),
        "an image rebuilt from its slug");
    Ok(tag.clone())
}

/// Whether the engine has `image`.
async fn present(ctx: &Ctx, image: &str) -> Result<bool, String> {
    match ctx.engine.image_id(image).await {
        Ok(_) => Ok(true),
        Err(DockerError::NoImage(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The slug's URL: as the artifact says, or its path on `controller` when the agent is told
/// where the controller is (`--controller-url`).
fn slug_url(recorded: &str, controller: Option<&str>) -> Result<Uri, String> {
    let bad = |e: String| format!("the artifact's slug URL {recorded:?}: {e}");
    let uri: Uri = recorded
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match controller {
        Some(base) => format!("{}{path}", base.trim_end_matches('/'))
            .parse::<Uri>()
            .map_err(|e| format!("--controller-url {base:?}: {e}"))?,
        None => uri,
    };
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(bad(format!(
            "{uri} is not an http:// URL (the only kind fetched)"
        )));
    }
    Ok(uri)
}

/// The most of an error answer's body read (for its message).
const MAX_ERROR: usize = 4096;

/// The start of an error answer's body, at most [`MAX_ERROR`] bytes (a server that is not
/// the controller may send anything, and much of it).
async fn error_text<B>(body: &mut B) -> Vec<u8>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut text = Vec::new();
    while text.len() < MAX_ERROR {
        match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    text.truncate(MAX_ERROR);
    text
}

/// `GET url` with the cluster key: the body, at most [`MAX_SLUG`] bytes.
async fn fetch(url: &Uri, key: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        !key.is_empty(),
        "the host agent has no --controller-key to fetch it with"
    );
    let authority = url
        .authority()
        .map(|a| match a.port_u16() {
            Some(_) => a.to_string(),
            None => format!("{}:80", a.host()),
        })
        .ok_or_else(|| anyhow::anyhow!("no host"))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, &authority)
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Empty::<Bytes>::new())?;
    let fetched = async {
        let response = tokio::time::timeout(STALL_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {STALL_TIMEOUT:?}"))??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = error_text(&mut body).await;
            let message = serde_json::from_slice::<crate::api::ErrorBody>(&text)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&text).trim().to_owned());
            anyhow::bail!("{status}: {message}");
        }
        let mut slug = Vec::new();
        loop {
            let frame = tokio::time::timeout(STALL_TIMEOUT, body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("the answer stalled for {STALL_TIMEOUT:?}"))?;
            let Some(frame) = frame else { break };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            anyhow::ensure!(
                slug.len() + data.len() <= MAX_SLUG,
                "the slug is over {} GiB",
                MAX_SLUG >> 30
            );
            slug.extend_from_slice(&data);
        }
        Ok(slug)
    }
    .await;
    driver.abort();
    fetched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_urls() {
        let recorded = "http://127.0.0.1:8081/apps/a/slugs/b";
        let uri = slug_url(recorded, None).expect("as recorded");
        assert_eq!(uri.to_string(), recorded);
        let uri = slug_url(recorded, Some("http://10.0.0.5:8081/")).expect("moved");
        assert_eq!(uri.to_string(), "http://10.0.0.5:8081/apps/a/slugs/b");
        let err = slug_url("https://x/apps/a/slugs/b", None).expect_err("https");
        assert!(err.contains("not an http:// URL"), "{err}");
        assert!(slug_url("/apps/a/slugs/b", None).is_err());
        assert!(slug_url(recorded, Some("not a url")).is_err());
    }

    #[tokio::test]
    async fn an_error_answer_is_read_in_part() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let huge = 64 << 20;
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = format!("HTTP/1.1 502 Bad Gateway\r\ncontent-length: {huge}\r\n\r\n");
            conn.write_all(head.as_bytes()).await.expect("head");
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(huge >> 20) {
                if conn.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let url: Uri = format!("http://{addr}/apps/a/slugs/b")
            .parse()
            .expect("url");
        let err = fetch(&url, "key").await.expect_err("a 502").to_string();
        assert!(
            err.starts_with("502 Bad Gateway: xxx"),
            "{}",
            &err[..err.len().min(200)]
        );
        assert!(err.len() < 2 * MAX_ERROR, "{} bytes of message", err.len());
        server.abort();
    }
}
