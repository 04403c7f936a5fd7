//! Tar archives made in memory: a source tree for a build container or a build context, and
//! single files. Owners are set explicitly (the engine extracts them as given); symlinks are
//! kept as links, never followed out of the tree.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// An archive being written.
pub struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    pub fn new() -> Tar {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Tar { builder }
    }

    /// A file at `path` (relative) with `mode`, owned by `owner` (uid = gid).
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32, owner: u64) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner);
        header.set_mtime(0);
        self.builder.append_data(&mut header, path, data)
    }

    /// A directory entry at `path` (relative).
    pub fn dir(&mut self, path: &str, mode: u32, owner: u64) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner);
        header.set_mtime(0);
        self.builder.append_data(&mut header, path, io::empty())
    }

    /// The tree under `root` at `prefix` (a relative directory; empty: the archive's top),
    /// owned by `owner`; a `.git` at the top is left out.
    pub fn tree(&mut self, root: &Path, prefix: &str, owner: u64) -> io::Result<()> {
        self.tree_filtered(root, prefix, owner, &|_, _| Keep::Yes)
    }

    /// [`Tar::tree`] with only what `keep` keeps: it is asked about each path (relative to
    /// `root`, `/`-separated) and whether it is a directory. A directory kept
    /// [`Keep::Inside`] is written only when something under it is, just before that.
    pub fn tree_filtered(
        &mut self,
        root: &Path,
        prefix: &str,
        owner: u64,
        keep: &dyn Fn(&str, bool) -> Keep,
    ) -> io::Result<()> {
        if !prefix.is_empty() {
            self.dir(prefix, 0o755, owner)?;
        }
        let mut walk = Walk {
            root,
            prefix,
            owner,
            keep,
            pending: Vec::new(),
        };
        walk.dir(self, root)
    }

    /// The archive's own writer, for entries copied from another archive.
    pub fn builder(&mut self) -> &mut tar::Builder<Vec<u8>> {
        &mut self.builder
    }

    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

/// What [`Tar::tree_filtered`] does with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Yes,
    No,
    /// A directory left out itself, whose entries are still asked about.
    Inside,
}

/// One walk of [`Tar::tree_filtered`]: the directories kept [`Keep::Inside`] above the
/// current one, each with whether it is written yet.
struct Walk<'a> {
    root: &'a Path,
    prefix: &'a str,
    owner: u64,
    keep: &'a dyn Fn(&str, bool) -> Keep,
    pending: Vec<(String, tar::Header, bool)>,
}

impl Walk<'_> {
    /// Writes the pending directories not written yet, outermost first.
    fn flush(&mut self, tar: &mut Tar) -> io::Result<()> {
        for (name, header, written) in &mut self.pending {
            if !*written {
                tar.builder.append_data(header, &*name, io::empty())?;
                *written = true;
            }
        }
        Ok(())
    }

    fn dir(&mut self, tar: &mut Tar, dir: &Path) -> io::Result<()> {
        let (root, prefix, owner) = (self.root, self.prefix, self.owner);
        let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if dir == root && entry.file_name() == ".git" {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .map_err(|e| io::Error::other(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let name = if prefix.is_empty() {
                rel.clone()
            } else {
                format!("{prefix}/{rel}")
            };
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            let keep = (self.keep)(&rel, kind.is_dir());
            if keep == Keep::No || (keep == Keep::Inside && !kind.is_dir()) {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_mode(meta.mode() & 0o7777);
            header.set_uid(owner);
            header.set_gid(owner);
            header.set_mtime(meta.mtime().max(0) as u64);
            if kind.is_symlink() {
                self.flush(tar)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = std::fs::read_link(&path)?;
                tar.builder.append_link(&mut header, &name, target)?;
            } else if kind.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                if keep == Keep::Inside {
                    self.pending.push((name, header, false));
                    self.dir(tar, &path)?;
                    self.pending.pop();
                } else {
                    self.flush(tar)?;
                    tar.builder.append_data(&mut header, &name, io::empty())?;
                    self.dir(tar, &path)?;
                }
            } else if kind.is_file() {
                self.flush(tar)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                let file = std::fs::File::open(&path)?;
                tar.builder.append_data(&mut header, &name, file)?;
            }
            // Sockets, fifos and devices have no place in a build.
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_keeps_modes_and_links_and_leaves_git_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app.py"), "print(1)\n").expect("write");
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        std::fs::write(dir.path().join(".git/HEAD"), "x").expect("write");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        std::fs::write(dir.path().join("bin/run"), "#!/bin/sh\n").expect("write");
        let run = dir.path().join("bin/run");
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("../app.py", dir.path().join("bin/link")).expect("symlink");

        let mut tar = Tar::new();
        tar.tree(dir.path(), "app", 1000).expect("tree");
        let bytes = tar.finish().expect("finish");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let h = entry.header();
            assert_eq!(h.uid().expect("uid"), 1000);
            seen.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                h.mode().expect("mode"),
                h.entry_type().is_symlink(),
            ));
        }
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app",
                "app/app.py",
                "app/bin",
                "app/bin/link",
                "app/bin/run"
            ]
        );
        assert_eq!(seen[4].1, 0o755);
        assert!(seen[3].2);
    }

    #[test]
    fn a_filtered_tree_writes_a_left_out_directory_only_before_what_it_keeps_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in [
            ("a.txt", "a"),
            ("secret", "s"),
            ("build/out/bin", "b"),
            ("build/keep/v.txt", "v"),
            ("empty/x", "x"),
        ] {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let keep = |path: &str, is_dir: bool| match path {
            "secret" => Keep::No,
            "build/keep/v.txt" => Keep::Yes,
            "build" | "build/keep" | "build/out" | "empty" if is_dir => Keep::Inside,
            p if p.starts_with("build/") || p.starts_with("empty/") => Keep::No,
            _ => Keep::Yes,
        };
        let mut tar = Tar::new();
        tar.tree_filtered(dir.path(), "", 0, &keep).expect("tree");
        let bytes = tar.finish().expect("finish");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                e.path().expect("path").to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, ["a.txt", "build", "build/keep", "build/keep/v.txt"]);
    }
}
