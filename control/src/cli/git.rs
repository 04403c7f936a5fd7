//! The git remote `flynn`: where `flynn create` records the app of a repository, and where
//! other commands find it.

use std::process::{Command, Stdio};

/// The app name in a git remote URL: its last path segment without `.git`
/// (`https://git.example.com/my-app.git`, `git@host:my-app.git`, `http://host/git/my-app`).
pub fn app_from_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let name = url.rsplit(['/', ':']).next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The app of remote `remote` in the current repository, if there is one.
pub fn remote_app(remote: &str) -> Option<String> {
    let url = git(&["config", "--get", &format!("remote.{remote}.url")])?;
    app_from_url(&url)
}

/// Whether the current directory is in a git work tree.
pub fn in_work_tree() -> bool {
    git(&["rev-parse", "--is-inside-work-tree"]).as_deref() == Some("true")
}

/// Points `remote` at `url`, replacing what it pointed at.
pub fn set_remote(remote: &str, url: &str) -> anyhow::Result<()> {
    let _ = git(&["remote", "remove", remote]);
    git(&["remote", "add", remote, url])
        .map(|_| ())
        .ok_or_else(|| anyhow::anyhow!("cannot add the git remote {remote:?}"))
}

/// Removes `remote` if it points at `app`.
pub fn remove_remote_of(remote: &str, app: &str) {
    if remote_app(remote).as_deref() == Some(app) {
        let _ = git(&["remote", "remove", remote]);
    }
}

#[cfg(test)]
mod tests {
    use super::app_from_url;

    #[test]
    fn app_names_from_urls() {
        for (url, app) in [
            ("https://git.example.com/my-app.git", "my-app"),
            ("git@example.com:my-app.git", "my-app"),
            ("http://127.0.0.1:8081/git/my-app.git/", "my-app"),
            ("ssh://git@example.com/apps/my-app", "my-app"),
        ] {
            assert_eq!(app_from_url(url).as_deref(), Some(app), "{url}");
        }
        assert_eq!(app_from_url(""), None);
        assert_eq!(
            app_from_url("https://example.com/"),
            Some("example.com".to_owned())
        );
    }
}
