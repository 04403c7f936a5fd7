//! A pushed tree as a tar stream: `git archive` makes it in the pre-receive hook (which alone
//! sees the pushed objects: they are quarantined until the hook accepts the push), and
//! [`extract`] unpacks it into a build's source directory with the system's `tar`.

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use super::refs::is_object_id;
use super::GitError;

/// `git archive --format=tar <rev>` in the current repository, its tar on stdout.
pub fn spawn_archive(rev: &str) -> Result<Child, GitError> {
    if !is_object_id(rev) {
        return Err(GitError::Failed {
            what: "git archive",
            detail: format!("{rev:?} is not an object id"),
        });
    }
    Command::new("git")
        .args(["archive", "--format=tar", rev])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| GitError::Spawn {
            what: "git archive",
            source,
        })
}

/// Unpacks the tar stream `body` into `dir` (which exists); its size. More than `max` bytes
/// is an error ([`GitError::TooLarge`]), as is a body that breaks off or a tar that `tar`
/// refuses; what was unpacked is then left for the caller to remove.
pub async fn extract<S, E>(body: S, dir: &Path, max: u64) -> Result<u64, GitError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut tar = Command::new("tar")
        .args(["-x", "-f", "-", "--no-same-owner", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| GitError::Spawn {
            what: "tar",
            source,
        })?;
    let mut stdin = tar.stdin.take().ok_or_else(|| GitError::Failed {
        what: "tar",
        detail: "no stdin".to_owned(),
    })?;
    let mut body = std::pin::pin!(body);
    let mut size = 0u64;
    let mut write_failed = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| GitError::Failed {
            what: "receiving the source",
            detail: e.to_string(),
        })?;
        size += chunk.len() as u64;
        if size > max {
            return Err(GitError::TooLarge(max));
        }
        if stdin.write_all(&chunk).await.is_err() {
            // tar stopped reading: its exit status says why.
            write_failed = true;
            break;
        }
    }
    drop(stdin);
    let out = tar
        .wait_with_output()
        .await
        .map_err(|source| GitError::Io {
            what: "tar",
            source,
        })?;
    if !out.status.success() || write_failed {
        return Err(GitError::Failed {
            what: "unpacking the source",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::iter(
            bytes
                .chunks(700)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    fn tar_of(dir: &Path) -> Vec<u8> {
        let out = std::process::Command::new("tar")
            .args(["-c", "-f", "-", "-C"])
            .arg(dir)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success());
        out.stdout
    }

    #[tokio::test]
    async fn unpacks_a_stream_and_caps_its_size() {
        let base = std::env::temp_dir().join(format!("flynn-extract-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("sub")).expect("dirs");
        std::fs::create_dir_all(&to).expect("dirs");
        std::fs::write(from.join("sub/a.txt"), "hello").expect("write");
        let tar = tar_of(&from);
        let size = extract(chunks(tar.clone()), &to, 1 << 20)
            .await
            .expect("extracts");
        assert_eq!(size, tar.len() as u64);
        assert_eq!(
            std::fs::read_to_string(to.join("sub/a.txt")).expect("read"),
            "hello"
        );
        let small = extract(chunks(tar.clone()), &to, 100).await;
        assert!(matches!(small, Err(GitError::TooLarge(100))), "{small:?}");
        let junk = extract(chunks(vec![7u8; 4096]), &to, 1 << 20).await;
        assert!(matches!(junk, Err(GitError::Failed { .. })), "{junk:?}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
