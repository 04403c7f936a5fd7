//! `git push flynn main` against a real `flynn server`: the controller's smart HTTP git
//! endpoint (real git, real `git http-backend`), its key checks, the pre-receive hook's rules,
//! the credential helper `flynn create` sets up, serialised pushes ([`endpoint`]); and whole
//! pushes built by the builder on the real Docker Engine, deployed and served through the
//! router, a second push under wrk, a failing build, a cancelled push ([`deploy`]); a Python
//! app ([`python`]), a static app ([`static_app`]) and a Procfile-only app whose image a host
//! rebuilds from the slug the controller keeps ([`slug`]). The tests fail (never skip) without
//! git, Docker, curl or wrk, and remove the containers and images they make.

mod deploy;
mod endpoint;
#[path = "../jobs/engine.rs"]
#[allow(dead_code)]
mod engine;
#[path = "../cli/harness.rs"]
#[allow(dead_code)]
mod harness;
mod python;
mod slug;
mod static_app;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::{Client, Server};

/// A Python app (standard library only, beside `import`) answering every GET on `$PORT` with a
/// JSON object of `fields` (Python `"key": expr` pairs) and the release it runs.
fn python_json_server(import: &str, fields: &str) -> String {
    format!(
        r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
{import}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{{fields},
                           "release": os.environ.get("FLYNN_RELEASE_ID", "")}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"#
    )
}

/// How long one `git push` may take here (a build included).
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// A `flynn server` with its own host agent, an app created from a git work tree.
struct Push {
    // Dropped in this order: the server, then its containers and the app's images.
    server: Server,
    _cleanup: Cleanup,
    client: Client,
    app: String,
    /// The git work tree the app was created in.
    repo: PathBuf,
}

impl Push {
    /// A server and an app named `<prefix>-<random>` created in a fresh git work tree.
    async fn new(prefix: &str) -> Push {
        let host = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let app = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let cleanup = Cleanup {
            host: host.clone(),
            app: app.clone(),
        };
        let client = Client::new();
        let server =
            Server::embedded_with(&client, &["--host-id", &host, "--drain-delay", "200ms"]).await;
        let repo = client.cwd.path().join("app");
        std::fs::create_dir_all(&repo).expect("repo dir");
        git_ok(&client, &repo, &["init", "-q", "-b", "main"]);
        let out = client.run_in(&repo, &["create", &app], &[]).await;
        let out = out.ok();
        assert!(out.starts_with(&format!("Created {app}\n")), "{out}");
        assert!(out.contains("Added git remote flynn"), "{out}");
        Push {
            server,
            _cleanup: cleanup,
            client,
            app,
            repo,
        }
    }

    /// `git ARGS` in the work tree.
    fn git(&self, args: &[&str]) -> Output {
        git(&self.client, &self.repo, args)
    }

    /// Writes `files` and commits them.
    fn commit(&self, files: &[(&str, &[u8])], message: &str) {
        for (name, content) in files {
            let path = self.repo.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, content).expect("write");
        }
        git_ok(&self.client, &self.repo, &["add", "-A"]);
        git_ok(&self.client, &self.repo, &["commit", "-q", "-m", message]);
    }

    /// `git push flynn REFSPEC`, with what it printed.
    fn push(&self, refspec: &str) -> Pushed {
        let mut command = self.git_command(&["push", "flynn", refspec]);
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run git push");
        wait_with_timeout(child, PUSH_TIMEOUT)
    }

    fn git_command(&self, args: &[&str]) -> Command {
        git_command(&self.client, &self.repo, args)
    }

    /// The app's answer through the router (`GET /` at `<app>.localhost`) as JSON, if it
    /// answers 200.
    async fn answer(&self) -> Option<serde_json::Value> {
        let host = format!("{}.localhost", self.app);
        let r = self.server.get(&host, "/").await.ok()?;
        (r.status == 200).then(|| r.json().ok()).flatten()
    }

    /// Asserts that `pushed` succeeded (showing the server's log when not) and printed
    /// each of `lines`.
    #[track_caller]
    fn assert_pushed(&self, pushed: &Pushed, lines: &[&str]) {
        assert!(
            pushed.ok,
            "{}\nserver log:\n{}",
            pushed.text,
            self.server.log()
        );
        for line in lines {
            assert!(
                pushed.text.contains(line),
                "{line:?} missing:\n{}",
                pushed.text
            );
        }
    }

    /// The controller's base URL.
    fn controller(&self) -> String {
        format!("http://{}", self.server.controller)
    }
}

/// What a `git push` did.
#[derive(Debug)]
struct Pushed {
    ok: bool,
    /// stdout and stderr (git prints the remote's lines on stderr).
    text: String,
    took: Duration,
}

fn wait_with_timeout(child: std::process::Child, timeout: Duration) -> Pushed {
    let started = std::time::Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("git push output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("git push did not end within {timeout:?}");
        }
    };
    Pushed {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took: started.elapsed(),
    }
}

/// git with the client's HOME (its own empty global config) and a fixed identity.
fn git_command(client: &Client, dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", client.home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Flynn Test")
        .env("GIT_AUTHOR_EMAIL", "test@flynn.invalid")
        .env("GIT_COMMITTER_NAME", "Flynn Test")
        .env("GIT_COMMITTER_EMAIL", "test@flynn.invalid")
        .stdin(Stdio::null());
    command
}

fn git(client: &Client, dir: &Path, args: &[&str]) -> Output {
    git_command(client, dir, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e} (the tests need git)"))
}

#[track_caller]
fn git_ok(client: &Client, dir: &Path, args: &[&str]) -> String {
    let out = git(client, dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the host agent's containers and the images built for the app, when dropped.
struct Cleanup {
    host: String,
    app: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = list(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=flynn.host={}", self.host),
        ]);
        let builds = list(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=flynn.builder.app-name={}", self.app),
        ]);
        for id in containers.iter().chain(&builds) {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        // The app's images, then what they sat on (a dependency layer, `:deps-…`, goes once
        // its children are gone): a few passes.
        for _ in 0..3 {
            let mut images = list(&[
                "images",
                "-aq",
                "--filter",
                &format!("label=flynn.builder.app-name={}", self.app),
            ]);
            images.extend(list(&[
                "images",
                "-q",
                "--filter",
                &format!("reference=flynn/app-{}", self.app),
            ]));
            if images.is_empty() {
                break;
            }
            for id in images {
                let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
            }
        }
    }
}
