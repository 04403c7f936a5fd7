//! The build's `/app`: a directory on the host, bind-mounted into the build container.
//!
//! Files written in a container's own filesystem go through its storage driver (on
//! fuse-overlayfs, each one a round trip to a FUSE daemon): copying a cached virtualenv's
//! thousands of files into `/app`, then reading them all back as the slug, took seconds. On
//! the host's filesystem the same work takes a fraction of that (in `/dev/shm`, when there
//! is one with room for a build, a fraction again: creating 1,600 files on this machine's disk takes 1.6 s, in
//! memory 0.3 s), and the slug is read straight from the directory. The pushed tree is copied in first (the build writes into
//! `/app`; the source stays as given), owned by the build user when this process may chown,
//! else writable by everyone (a build tree holds nothing the app's code cannot read).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::context::Tar;
use crate::stack;

/// Where a build's `/app` goes when it can: memory (a slug is held in memory whole anyway).
const MEMORY: &str = "/dev/shm";

/// The free space `/dev/shm` needs for a build to go there: a build that fills a small tmpfs
/// (a container's is 64 MiB by default) would fail where the disk had room.
const MEMORY_NEEDED: u64 = 2 << 30;

/// Whether `/dev/shm` is there with room for a build.
fn memory_has_room() -> bool {
    nix::sys::statvfs::statvfs(MEMORY)
        .is_ok_and(|fs| fs.blocks_available().saturating_mul(fs.fragment_size()) >= MEMORY_NEEDED)
}

/// A build's `/app` on the host, removed (off the async threads) when dropped.
pub struct AppDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl AppDir {
    /// A fresh directory holding a copy of `source` (without a top-level `.git`).
    pub fn new(source: &Path) -> io::Result<AppDir> {
        let named = || tempfile::Builder::new().prefix("flynn-app-").clone();
        let in_memory = memory_has_room()
            .then(|| named().tempdir_in(MEMORY).ok())
            .flatten();
        let dir = match in_memory {
            Some(dir) => dir,
            None => named().tempdir()?,
        };
        let path = dir.path().join("app");
        std::fs::create_dir(&path)?;
        let owned = std::os::unix::fs::lchown(&path, Some(stack::UID), Some(stack::UID)).is_ok();
        open_up(&path, owned, true)?;
        copy_tree(source, &path, source, owned)?;
        Ok(AppDir {
            dir: Some(dir),
            path,
        })
    }

    /// Where it is (bind it at `/app`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AppDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            std::thread::spawn(move || drop(dir));
        }
    }
}

/// The slug: the tree at `path` as a tar under `app/`, owned by the build user; an error
/// when its files hold more than `max` bytes.
pub fn slug(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let size = size(path)?;
    if size > max {
        return Err(io::Error::other(format!(
            "the compiled app is over {} GiB",
            max >> 30
        )));
    }
    let mut tar = Tar::new();
    tar.tree(path, "app", u64::from(stack::UID))?;
    tar.finish()
}

/// The bytes of the regular files under `dir`.
fn size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn copy_tree(from: &Path, to: &Path, root: &Path, owned: bool) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if from == root && entry.file_name() == ".git" {
            continue;
        }
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            if owned {
                std::os::unix::fs::lchown(&target, Some(stack::UID), Some(stack::UID))?;
            }
        } else if kind.is_dir() {
            std::fs::create_dir(&target)?;
            std::fs::set_permissions(&target, PermissionsExt::from_mode(meta.mode() & 0o7777))?;
            open_up(&target, owned, true)?;
            copy_tree(&source, &target, root, owned)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
            open_up(&target, owned, false)?;
        }
        // Sockets, fifos and devices have no place in a build.
    }
    Ok(())
}

/// Gives `path` to the build user, or (when this process may not chown) write access to all.
fn open_up(path: &Path, owned: bool, dir: bool) -> io::Result<()> {
    if owned {
        return std::os::unix::fs::lchown(path, Some(stack::UID), Some(stack::UID));
    }
    let mode = std::fs::metadata(path)?.mode() & 0o7777;
    let open = if dir { 0o777 } else { 0o666 };
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode | open))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_the_tree_becomes_the_slug() {
        let source = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(source.path().join("lib/.git")).expect("dir");
        std::fs::create_dir_all(source.path().join(".git")).expect("dir");
        std::fs::write(source.path().join(".git/HEAD"), b"ref").expect("write");
        std::fs::write(source.path().join("lib/.git/x"), b"kept").expect("write");
        std::fs::write(source.path().join("app.py"), b"print(1)\n").expect("write");
        std::os::unix::fs::symlink("app.py", source.path().join("main.py")).expect("link");
        let app = AppDir::new(source.path()).expect("app dir");
        std::fs::write(app.path().join("built"), b"by the build").expect("write");
        let tar = slug(app.path(), 1 << 20).expect("slug");
        let mut names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "app",
                "app/app.py",
                "app/built",
                "app/lib",
                "app/lib/.git",
                "app/lib/.git/x",
                "app/main.py"
            ]
        );
        let err = slug(app.path(), 4).expect_err("too big");
        assert!(err.to_string().contains("over"), "{err}");
        assert!(source.path().join("app.py").exists());
        assert!(
            !source.path().join("built").exists(),
            "the source stays as given"
        );
    }
}
