//! A slug split in two image layers: its dependencies and the rest.
//!
//! Most of a slug is what the app depends on (a Python virtualenv: thousands of files, tens
//! of MB), and it rarely changes between two pushes. Written into an image every time, it
//! dominates a warm push on a slow storage driver (fuse-overlayfs here: seconds to upload
//! and commit). So the entries under [`DEPENDENCY_DIRS`] go into a layer of their own, an
//! image named by the hash of their tar (`<repo>:deps-<hash>`) and reused while it exists;
//! the app's own files go on top. The image has the same files as with one layer.

use std::io::{self, Read};

use crate::context::Tar;
use crate::stack;

/// The directories of `/app` (relative to it) that hold dependencies.
pub const DEPENDENCY_DIRS: &[&str] = &[".venv"];

/// A slug's tar, parted in layers.
pub struct Split {
    /// Its `app/Procfile`, if any.
    pub procfile: Option<Vec<u8>>,
    /// The entries under [`DEPENDENCY_DIRS`], if there are any.
    pub deps: Option<Deps>,
    /// The other entries and the runner (`runner/init`).
    pub app: Vec<u8>,
}

/// The dependency entries of a slug as a layer's tar (after an `app` directory entry of
/// fixed metadata: the hash must not change with the app's files), and its sha256 (hex).
pub struct Deps {
    pub tar: Vec<u8>,
    pub hash: String,
}

/// Checks that every entry of a slug's tar is under `app/` (no absolute path, no `..`), finds
/// its Procfile, and parts it in layers; `runner` goes in the app's as `runner/init`.
pub fn split(slug_tar: &[u8], runner: &[u8]) -> io::Result<Split> {
    let mut procfile = None;
    let mut deps = Tar::new();
    deps.dir("app", 0o755, u64::from(stack::UID))?;
    let mut app = Tar::new();
    let mut any_deps = false;
    let mut archive = tar::Archive::new(slug_tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let clean = path.trim_start_matches("./");
        let inside = clean == "app" || clean == "app/" || clean.starts_with("app/");
        if !inside || clean.split('/').any(|c| c == "..") {
            return Err(io::Error::other(format!("entry {path:?} is outside app/")));
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if clean == "app/Procfile" && entry.header().entry_type().is_file() {
            procfile = Some(data.clone());
        }
        let to = if is_dependency(clean) {
            any_deps = true;
            &mut deps
        } else {
            &mut app
        };
        copy(to.builder(), &entry, &data)?;
    }
    app.dir("runner", 0o755, 0)?;
    app.file("runner/init", runner, 0o755, 0)?;
    let deps = match any_deps {
        true => {
            let tar = deps.finish()?;
            let hash = super::load::sha256_hex(&tar);
            Some(Deps { tar, hash })
        }
        false => None,
    };
    Ok(Split {
        procfile,
        deps,
        app: app.finish()?,
    })
}

/// Whether a (clean) entry path is under one of the [`DEPENDENCY_DIRS`].
fn is_dependency(clean: &str) -> bool {
    let Some(inner) = clean.strip_prefix("app/") else {
        return false;
    };
    DEPENDENCY_DIRS.iter().any(|dir| {
        inner
            .strip_prefix(dir)
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    })
}

/// Appends `entry` (its header, path, link target and `data`) to `to`.
fn copy<R: Read>(
    to: &mut tar::Builder<Vec<u8>>,
    entry: &tar::Entry<'_, R>,
    data: &[u8],
) -> io::Result<()> {
    let mut header = entry.header().clone();
    let path = entry.path()?.into_owned();
    match entry.link_name()? {
        Some(target) => to.append_link(&mut header, &path, target.as_ref()),
        None => to.append_data(&mut header, &path, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(extra: &str) -> Vec<u8> {
        let mut app = Tar::new();
        app.dir("app", 0o755, 1000).expect("dir");
        app.file("app/Procfile", b"web: python app.py\n", 0o644, 1000)
            .expect("file");
        app.file("app/app.py", extra.as_bytes(), 0o644, 1000)
            .expect("file");
        app.dir("app/.venv", 0o755, 1000).expect("dir");
        app.file("app/.venv/pyvenv.cfg", b"home = /usr/bin\n", 0o644, 1000)
            .expect("file");
        app.dir("app/.venvish", 0o755, 1000).expect("dir");
        app.finish().expect("tar")
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar)
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn dependencies_go_apart_and_their_hash_ignores_the_app() {
        let one = split(&slug("v1"), b"#!/bin/sh\n").expect("split");
        assert_eq!(one.procfile.as_deref(), Some(&b"web: python app.py\n"[..]));
        let deps = one.deps.expect("deps");
        assert_eq!(
            names(&deps.tar),
            ["app", "app/.venv", "app/.venv/pyvenv.cfg"]
        );
        assert_eq!(
            names(&one.app),
            [
                "app",
                "app/Procfile",
                "app/app.py",
                "app/.venvish",
                "runner",
                "runner/init"
            ]
        );
        let two = split(&slug("v2 changed"), b"#!/bin/sh\n").expect("split");
        assert_eq!(two.deps.expect("deps").hash, deps.hash);
        assert_eq!(deps.hash.len(), 64);

        let mut plain = Tar::new();
        plain
            .file("app/index.html", b"hi", 0o644, 1000)
            .expect("file");
        let plain = split(&plain.finish().expect("tar"), b"").expect("split");
        assert!(plain.deps.is_none());
        assert_eq!(
            names(&plain.app),
            ["app/index.html", "runner", "runner/init"]
        );

        let mut bad = Tar::new();
        bad.file("etc/passwd", b"x", 0o644, 0).expect("file");
        let err = split(&bad.finish().expect("tar"), b"")
            .err()
            .expect("outside");
        assert!(err.to_string().contains("outside app/"), "{err}");
    }
}
