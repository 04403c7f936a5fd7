//! Where buildpacks come from: the bundled ones (files in `builder/buildpacks/<name>/bin/`,
//! embedded in the binary), or `BUILDPACK_URL` from the app's env: an absolute path to a
//! buildpack directory on this machine, or a git URL (`https://…`, `git://…`, `file://…`,
//! `ssh://…`, `user@host:path`; `#ref` picks a branch or tag) cloned here with git.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::{say, Build, BuildError, Output};

/// One bundled buildpack's `bin/` files.
pub type BinFiles = [(&'static str, &'static str); 3];

macro_rules! bundled {
    ($name:literal) => {
        [
            (
                "detect",
                include_str!(concat!("../../buildpacks/", $name, "/bin/detect")),
            ),
            (
                "compile",
                include_str!(concat!("../../buildpacks/", $name, "/bin/compile")),
            ),
            (
                "release",
                include_str!(concat!("../../buildpacks/", $name, "/bin/release")),
            ),
        ]
    };
}

/// The bundled buildpacks in detection order.
pub static BUNDLED: [(&str, BinFiles); 3] = [
    ("python", bundled!("python")),
    ("static", bundled!("static")),
    ("procfile", bundled!("procfile")),
];

/// A buildpack's files.
#[derive(Clone, Debug)]
pub enum Files {
    Bundled(&'static BinFiles),
    /// A directory on this machine holding `bin/`.
    Dir(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Buildpack {
    /// A directory name: `python`, …, or `custom` for `BUILDPACK_URL`.
    pub name: String,
    pub files: Files,
    /// From `BUILDPACK_URL`: it must build the app (no fallback to detection).
    pub custom: bool,
}

/// How long cloning a `BUILDPACK_URL` may take.
const CLONE_TIMEOUT: Duration = Duration::from_secs(120);

/// The buildpacks to try, in order, and the checkout to keep alive while they are used.
pub async fn candidates(
    build: &Build,
    out: &Output,
) -> Result<(Vec<Buildpack>, Option<tempfile::TempDir>), BuildError> {
    let Some(url) = build
        .env
        .get("BUILDPACK_URL")
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    else {
        let packs = BUNDLED
            .iter()
            .map(|(name, files)| Buildpack {
                name: (*name).to_owned(),
                files: Files::Bundled(files),
                custom: false,
            })
            .collect();
        return Ok((packs, None));
    };
    let fail = |reason: String| BuildError::BuildpackUrl {
        url: url.to_owned(),
        reason,
    };
    if url.starts_with('/') {
        let dir = PathBuf::from(url);
        check_dir(&dir).map_err(fail)?;
        say(out, format!("-----> Using the buildpack at {url}")).await?;
        return Ok((vec![custom(dir)], None));
    }
    if !is_git_url(url) {
        return Err(fail(
            "neither an absolute path on the build machine nor a git URL".to_owned(),
        ));
    }
    let (repo, reference) = match url.rsplit_once('#') {
        Some((repo, r)) if !r.is_empty() => (repo, Some(r)),
        _ => (url.trim_end_matches('#'), None),
    };
    say(out, format!("-----> Fetching the buildpack {url}")).await?;
    let checkout = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let dir = checkout.path().join("buildpack");
    let mut git = Command::new("git");
    git.args(["clone", "--quiet", "--depth", "1"]);
    if let Some(reference) = reference {
        git.args(["--branch", reference]);
    }
    git.arg("--").arg(repo).arg(&dir);
    git.env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let result = tokio::time::timeout(CLONE_TIMEOUT, git.output())
        .await
        .map_err(|_| fail(format!("git clone took over {} s", CLONE_TIMEOUT.as_secs())))?
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        return Err(fail(format!("git clone failed: {last}")));
    }
    check_dir(&dir).map_err(fail)?;
    Ok((vec![custom(dir)], Some(checkout)))
}

fn custom(dir: PathBuf) -> Buildpack {
    Buildpack {
        name: "custom".to_owned(),
        files: Files::Dir(dir),
        custom: true,
    }
}

fn check_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err("no such directory on the build machine".to_owned());
    }
    for script in ["compile", "release"] {
        if !dir.join("bin").join(script).is_file() {
            return Err(format!("it has no bin/{script}"));
        }
    }
    Ok(())
}

fn is_git_url(url: &str) -> bool {
    let schemes = ["https://", "http://", "git://", "ssh://", "file://"];
    schemes.iter().any(|s| url.starts_with(s))
        || url
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_order_and_files() {
        let names: Vec<_> = BUNDLED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["python", "static", "procfile"]);
        for (name, files) in &BUNDLED {
            for (script, text) in files {
                assert!(text.starts_with("#!/bin/"), "{name}/bin/{script}");
            }
        }
    }

    #[test]
    fn git_urls() {
        assert!(is_git_url("https://example.com/bp.git"));
        assert!(is_git_url("file:///srv/bp"));
        assert!(is_git_url("git@example.com:me/bp.git"));
        assert!(!is_git_url("relative/dir"));
        assert!(!is_git_url("C:stuff"));
    }
}
