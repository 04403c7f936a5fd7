//! vendor/ is pingora's release plus vendor/patches, nothing else: `vendor/apply.sh` rebuilds
//! both crates from their crates.io archives (checksums pinned) into a temporary dir, and every
//! file must equal vendor/'s, with no file more or less on either side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn vendor_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("vendor")
}

/// Every file under `root` (relative path → contents).
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

#[test]
fn vendored_pingora_is_the_release_plus_its_patches() {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(vendor_dir().join("apply.sh"))
        .arg(out.path())
        .output()
        .expect("run vendor/apply.sh");
    assert!(
        run.status.success(),
        "vendor/apply.sh failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for krate in ["pingora-core", "pingora-proxy"] {
        let rebuilt = files(&out.path().join(krate));
        let vendored = files(&vendor_dir().join(krate));
        assert!(rebuilt.len() > 10, "{krate}: too few files rebuilt");
        let only_rebuilt: Vec<_> = rebuilt
            .keys()
            .filter(|p| !vendored.contains_key(*p))
            .collect();
        let only_vendored: Vec<_> = vendored
            .keys()
            .filter(|p| !rebuilt.contains_key(*p))
            .collect();
        assert!(
            only_rebuilt.is_empty() && only_vendored.is_empty(),
            "{krate}: files only in release+patches {only_rebuilt:?}, only in vendor/ {only_vendored:?}"
        );
        let differ: Vec<_> = rebuilt
            .iter()
            .filter(|(path, bytes)| vendored.get(*path) != Some(bytes))
            .map(|(path, _)| path)
            .collect();
        assert!(
            differ.is_empty(),
            "{krate}: vendor/ differs from release+patches in {differ:?} \
             (make the change a patch: see vendor/README.md)"
        );
    }
}

#[test]
fn every_vendor_patch_says_what_and_why() {
    let mut patches: Vec<_> = std::fs::read_dir(vendor_dir().join("patches"))
        .expect("vendor/patches")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    assert!(!patches.is_empty(), "no patches");
    for patch in patches {
        let text = std::fs::read_to_string(&patch).expect("read patch");
        let header = text.split("\ndiff ").next().unwrap_or_default();
        assert!(
            header.starts_with("flynn patch: ") && header.contains("\nWhy"),
            "{}: the header must start with `flynn patch: <what>` and say why",
            patch.display()
        );
        assert!(text.contains("\n+++ b/"), "{}: no diff", patch.display());
    }
}
