//! The git remote `flynn`: where `flynn create` records the app of a repository, and where
//! other commands find it.

use std::process::{Command, Stdio};

use super::config::Cluster;

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

/// Where `cluster` serves git: its GitURL, else `<controller>/git`.
pub fn git_base(cluster: &Cluster) -> String {
    cluster
        .git_url
        .clone()
        .unwrap_or_else(|| format!("{}/git", cluster.controller_url.trim_end_matches('/')))
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

/// Makes `flynn git-credentials` the credential helper of `base` (`http://host:port`) in the
/// current repository, ahead of any other helper (an empty value resets git's list), so that
/// a push needs no typing.
pub fn set_credential_helper(base: &str, cluster: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let helper = format!(
        "!{} -c {} git-credentials",
        shell_quote(&exe.display().to_string()),
        shell_quote(cluster)
    );
    let key = format!("credential.{base}.helper");
    let _ = git(&["config", "--local", "--unset-all", &key]);
    git(&["config", "--local", "--add", &key, ""])
        .and_then(|_| git(&["config", "--local", "--add", &key, &helper]))
        .map(|_| ())
        .ok_or_else(|| anyhow::anyhow!("cannot set the git credential helper for {base}"))
}

/// `scheme://host:port` of a URL (what git matches credential helpers on).
pub fn url_base(url: &str) -> Option<String> {
    let uri: http::Uri = url.trim().parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// What git asks a credential helper (`protocol=http`, `host=127.0.0.1:8081`, ...): the
/// `key=value` lines up to a blank line.
pub fn parse_credential_request(input: &str) -> Vec<(String, String)> {
    input
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Whether a git remote base `git_base` (`http://host:port/git`) serves the credential
/// request's protocol and host.
pub fn credential_matches(git_base: &str, protocol: &str, host: &str) -> bool {
    let Ok(uri) = git_base.trim().parse::<http::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => 0,
    };
    let with_port = |host: &str, port: Option<u16>| match port {
        Some(p) if p != default_port => format!("{}:{p}", host.to_ascii_lowercase()),
        _ => host.to_ascii_lowercase(),
    };
    let ours = with_port(authority.host(), authority.port_u16());
    let theirs = match host.parse::<http::uri::Authority>() {
        Ok(a) => with_port(a.host(), a.port_u16()),
        Err(_) => return false,
    };
    scheme.eq_ignore_ascii_case(protocol) && ours == theirs
}

#[cfg(test)]
mod tests {
    use super::app_from_url;
    use super::{credential_matches, parse_credential_request, shell_quote, url_base};

    #[test]
    fn credential_requests_and_matching() {
        let request = parse_credential_request(
            "protocol=http\nhost=127.0.0.1:8081\npath=git/a.git\n\nignored=1\n",
        );
        assert_eq!(request.len(), 3);
        assert_eq!(request[1], ("host".to_owned(), "127.0.0.1:8081".to_owned()));
        assert!(credential_matches(
            "http://127.0.0.1:8081/git",
            "http",
            "127.0.0.1:8081"
        ));
        assert!(credential_matches(
            "http://Flynn.example:80/git",
            "http",
            "flynn.example"
        ));
        assert!(!credential_matches(
            "http://127.0.0.1:8081/git",
            "https",
            "127.0.0.1:8081"
        ));
        assert!(!credential_matches(
            "http://127.0.0.1:8081/git",
            "http",
            "127.0.0.1:8082"
        ));
        assert!(!credential_matches("not a url", "http", "127.0.0.1:8081"));
        assert_eq!(
            url_base("http://127.0.0.1:8081/git/a.git").as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }

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
