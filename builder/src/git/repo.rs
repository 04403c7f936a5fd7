//! The bare repositories pushes land in: one per app, `<root>/<app id>.git`, made on first
//! use, with the settings smart HTTP needs and flynn's pre-receive hook.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::GitError;

/// The pre-receive hook of every repository: it runs the binary named by
/// `$FLYNN_GIT_HOOK` (the controller's own `flynn`, which `git http-backend` is started
/// with), so a push to the repository from anywhere but the controller's git endpoint
/// is refused.
pub const PRE_RECEIVE: &str = r#"#!/bin/sh
# Installed by flynn: a push of main or master is built, released and deployed.
if [ -z "$FLYNN_GIT_HOOK" ]; then
    echo "this repository takes pushes through the flynn controller's git endpoint only" >&2
    exit 1
fi
exec "$FLYNN_GIT_HOOK" git-hook pre-receive
"#;

/// What every repository's config says, besides `git init`'s defaults.
const CONFIG: &str = "[http]
\treceivepack = true
\tuploadpack = true
\tgetanyfile = false
[receive]
\tdenyDeletes = true
\tkeepAlive = 1
";

/// The repositories under one directory.
#[derive(Debug)]
pub struct Repos {
    root: PathBuf,
    creating: tokio::sync::Mutex<()>,
}

impl Repos {
    pub fn new(root: impl Into<PathBuf>) -> Repos {
        Repos {
            root: root.into(),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory the repositories are in (`GIT_PROJECT_ROOT`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The repository's directory name under [`Repos::root`].
    pub fn dir_name(app_id: &str) -> Result<String, GitError> {
        let valid = !app_id.is_empty()
            && app_id.len() <= 100
            && app_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(GitError::BadAppId(app_id.to_owned()));
        }
        Ok(format!("{app_id}.git"))
    }

    /// The app's repository, made if missing; its directory.
    pub async fn ensure(&self, app_id: &str) -> Result<PathBuf, GitError> {
        let dir = self.root.join(Repos::dir_name(app_id)?);
        let hook = dir.join("hooks").join("pre-receive");
        if hook_is_current(&hook).await {
            return Ok(dir);
        }
        let _creating = self.creating.lock().await;
        if hook_is_current(&hook).await {
            return Ok(dir);
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|source| GitError::Io {
                what: "the repositories' directory",
                source,
            })?;
        if !dir.join("HEAD").exists() {
            init(&dir).await?;
        }
        write_hook(&hook).await?;
        tracing::info!(repo = %dir.display(), "git repository ready");
        Ok(dir)
    }
}

async fn hook_is_current(hook: &Path) -> bool {
    tokio::fs::read_to_string(hook)
        .await
        .is_ok_and(|text| text == PRE_RECEIVE)
}

async fn init(dir: &Path) -> Result<(), GitError> {
    // Made aside and renamed into place, so a half-made repository is never served.
    let tmp = dir.with_extension(format!("init-{}", std::process::id()));
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let out = Command::new("git")
        .args(["init", "--bare", "--quiet", "--initial-branch=main"])
        .arg(&tmp)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .await
        .map_err(|source| GitError::Spawn {
            what: "git init",
            source,
        })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            what: "git init",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let io = |source| GitError::Io {
        what: "a new repository",
        source,
    };
    let config = tmp.join("config");
    let mut text = tokio::fs::read_to_string(&config).await.map_err(io)?;
    text.push_str(CONFIG);
    tokio::fs::write(&config, text).await.map_err(io)?;
    // The sample hooks are noise.
    let _ = tokio::fs::remove_dir_all(tmp.join("hooks")).await;
    tokio::fs::create_dir_all(tmp.join("hooks"))
        .await
        .map_err(io)?;
    tokio::fs::rename(&tmp, dir).await.map_err(io)
}

async fn write_hook(hook: &Path) -> Result<(), GitError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| GitError::Io {
        what: "the pre-receive hook",
        source,
    };
    let tmp = hook.with_extension("tmp");
    tokio::fs::write(&tmp, PRE_RECEIVE).await.map_err(io)?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .await
        .map_err(io)?;
    tokio::fs::rename(&tmp, hook).await.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_make_safe_names() {
        assert_eq!(
            Repos::dir_name("6f1c-aa_b").expect("valid"),
            "6f1c-aa_b.git"
        );
        for bad in ["", "..", "a/b", "a.git", "x y", &"a".repeat(101)] {
            assert!(Repos::dir_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_repository_is_made_once_with_its_hook() {
        let root = std::env::temp_dir().join(format!("flynn-repos-{}", std::process::id()));
        let repos = Repos::new(&root);
        let dir = repos.ensure("app1").await.expect("made");
        let again = repos.ensure("app1").await.expect("still there");
        assert_eq!(dir, again);
        let hook = std::fs::read_to_string(dir.join("hooks/pre-receive")).expect("hook");
        assert_eq!(hook, PRE_RECEIVE);
        let out = std::process::Command::new("git")
            .args(["config", "--get", "http.getanyfile"])
            .current_dir(&dir)
            .output()
            .expect("git config");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "false");
        let head = std::fs::read_to_string(dir.join("HEAD")).expect("HEAD");
        assert_eq!(head.trim(), "ref: refs/heads/main");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
