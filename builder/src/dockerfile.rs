//! Dockerfile builds: a tree with a `Dockerfile` at its root (and no `BUILDPACK_URL`) is built
//! by the engine's build API, the classic builder (no BuildKit: `# syntax=` front ends are
//! not available), with the tree as the context. There is no registry: every `FROM` image must
//! already be in the engine, which is checked first so the error says which one is missing.
//!
//! A `.dockerignore` at the root leaves paths out of the context with Docker's rules (see
//! [`crate::dockerignore`]), so `COPY . /app` does not copy them. `Dockerfile` and
//! `.dockerignore` themselves are always sent, as the docker CLI sends them: the engine reads
//! them and then drops them from the context when `.dockerignore` excludes them. A malformed
//! pattern fails the build before anything is sent, naming its line.
//!
//! The image runs with its own entrypoint and command (`web`'s argv is empty); its first
//! `EXPOSE`d TCP port is where `web` listens ([`crate::Built::port`]; the release declares it,
//! so `PORT` is set to it too). An image that exposes nothing must listen on `$PORT`.

use bollard::Docker;

use crate::context::{Keep, Tar};
use crate::dockerignore::Dockerignore;
use crate::engine;
use crate::{say, stack, Build, BuildError, Built, Output};

/// Builds `build`'s Dockerfile into the image `tag`.
pub async fn build(
    docker: &Docker,
    build: &Build,
    tag: &str,
    out: &Output,
) -> Result<Built, BuildError> {
    let path = build.source.join("Dockerfile");
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| BuildError::Source(format!("cannot read the Dockerfile: {e}")))?;
    say(out, "-----> Dockerfile detected").await?;
    let ignore = match tokio::fs::read(build.source.join(".dockerignore")).await {
        Ok(bytes) => Dockerignore::parse(&String::from_utf8_lossy(&bytes))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Dockerignore::default(),
        Err(e) => {
            return Err(BuildError::Source(format!(
                "cannot read the .dockerignore: {e}"
            )))
        }
    };
    for image in base_images(&text) {
        if !stack::exists(docker, &image).await? {
            return Err(BuildError::MissingBaseImage(image));
        }
    }
    let source = build.source.clone();
    let has_ignore = !ignore.is_empty();
    let (context, left_out) = tokio::task::spawn_blocking(move || {
        let left_out = std::cell::Cell::new(0usize);
        let keep = |path: &str, is_dir: bool| context_keeps(&ignore, path, is_dir, &left_out);
        let mut tar = Tar::new();
        tar.tree_filtered(&source, "", 0, &keep)?;
        tar.finish().map(|bytes| (bytes, left_out.get()))
    })
    .await
    .map_err(|e| BuildError::Source(e.to_string()))?
    .map_err(|e| BuildError::Source(format!("the build context: {e}")))?;
    if has_ignore {
        say(
            out,
            format!("-----> .dockerignore: {left_out} paths left out of the build context"),
        )
        .await?;
    }
    say(out, format!("-----> Building the image {tag}")).await?;
    // The classic builder adds a step (an intermediate container) per label: one, which
    // names the build (the tag names the app).
    let labels = [(engine::LABEL_BUILD.to_owned(), build.build_id.clone())].into();
    let (image_id, inspect, guard) = engine::build_image(docker, context, tag, labels, out).await?;
    let port = inspect
        .config
        .and_then(|c| c.exposed_ports)
        .and_then(|ports| first_tcp_port(ports.iter().map(String::as_str)));
    match port {
        Some(port) => say(out, format!("-----> web listens on port {port} (EXPOSE)")).await?,
        None => {
            say(
                out,
                "-----> the image exposes no port: web must listen on $PORT",
            )
            .await?
        }
    }
    guard.keep();
    Ok(Built {
        image: tag.to_owned(),
        image_id,
        processes: [("web".to_owned(), Vec::new())].into_iter().collect(),
        kind: "Dockerfile".to_owned(),
        port,
        slug: None,
        stack: None,
    })
}

/// Whether the context keeps `path`; counts what it leaves out (a directory once).
fn context_keeps(
    ignore: &Dockerignore,
    path: &str,
    is_dir: bool,
    left_out: &std::cell::Cell<usize>,
) -> Keep {
    // Sent anyway: the engine needs them, and drops them itself when they are excluded.
    if path == "Dockerfile" || path == ".dockerignore" || !ignore.excludes(path) {
        return Keep::Yes;
    }
    if is_dir && ignore.may_take_back_under(path) {
        return Keep::Inside;
    }
    left_out.set(left_out.get() + 1);
    Keep::No
}

/// The lowest `port/tcp` among an image's exposed ports.
fn first_tcp_port<'a>(ports: impl Iterator<Item = &'a str>) -> Option<u16> {
    ports
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            (proto == "tcp").then(|| port.parse::<u16>().ok()).flatten()
        })
        .min()
}

/// The images the Dockerfile's `FROM` lines name, without `scratch`, earlier stages, or names
/// built from `ARG`s (the engine resolves those itself).
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    let mut logical = String::new();
    for raw in dockerfile.lines() {
        let line = raw.trim();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            logical.push_str(start);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let words: Vec<&str> = logical.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let args: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            if let Some(image) = args.first() {
                let known = image.eq_ignore_ascii_case("scratch")
                    || image.contains('$')
                    || stages.iter().any(|s| s.eq_ignore_ascii_case(image));
                if !known && !images.iter().any(|i| i == image) {
                    images.push((*image).to_owned());
                }
            }
            if args.len() >= 3 && args[1].eq_ignore_ascii_case("AS") {
                stages.push(args[2].to_owned());
            }
        }
        logical.clear();
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines() {
        let text =
            "# syntax is not used\nARG V=1\nFROM --platform=linux/amd64 flynn/stack:x AS build\n\
                    RUN make \\\n  all\nfrom scratch\nFROM build AS final\nFROM other/img:${V}\n\
                    FROM busybox\nCOPY --from=build /a /a\nFROM busybox\n";
        assert_eq!(base_images(text), ["flynn/stack:x", "busybox"]);
    }

    #[test]
    fn exposed_ports() {
        assert_eq!(
            first_tcp_port(["8080/tcp", "53/udp", "5000/tcp"].into_iter()),
            Some(5000)
        );
        assert_eq!(first_tcp_port(["53/udp"].into_iter()), None);
        assert_eq!(first_tcp_port(std::iter::empty()), None);
    }
}
