//! `git http-backend`, Git's smart HTTP server, run as a CGI program per request.
//!
//! [`HttpBackend::spawn`] starts it in a process group of its own (it runs `git
//! receive-pack` / `git upload-pack`, which run the repository's hooks: all in that group).
//! [`HttpBackend::feed`] streams the request body to its stdin, [`HttpBackend::head`] reads
//! the CGI head of its answer and [`HttpBackend::into_body`] streams the rest; nothing is
//! buffered whole. Dropping the body stream before the backend has finished (the HTTP client
//! went away: a Ctrl-C on `git push`) kills the whole group with SIGKILL, so the hook's
//! request to the build endpoint drops and the build is cancelled.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::cgi::{parse_head, CgiHead};
use super::GitError;

/// The CGI meta-variables of one request (RFC 3875 §4.1) that `git http-backend` reads.
#[derive(Clone, Debug, Default)]
pub struct CgiRequest {
    /// `/<repo>.git/info/refs`, `/<repo>.git/git-receive-pack`, ...
    pub path_info: String,
    pub method: String,
    pub query: String,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// `gzip` when the client compressed the body.
    pub content_encoding: Option<String>,
    /// The `Git-Protocol` header (protocol v2).
    pub git_protocol: Option<String>,
    pub remote_addr: String,
    pub remote_user: String,
    /// More variables for the backend and the hooks it runs.
    pub env: Vec<(String, String)>,
}

/// The process group of one backend: killed when dropped unless the backend has exited.
struct Group {
    pgid: i32,
    /// False once the backend has been reaped (its pid may then be reused).
    alive: Mutex<bool>,
}

impl Group {
    fn kill(&self) {
        let alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        if *alive {
            if let Err(e) = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL) {
                tracing::debug!(pgid = self.pgid, error = %e, "git http-backend: killpg");
            }
        }
    }
}

/// Kills the group when dropped (by the backend, then by its body stream).
struct KillOnDrop(Arc<Group>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// A running `git http-backend`.
pub struct HttpBackend {
    child: Child,
    group: KillOnDrop,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// Bytes read past the head.
    rest: BytesMut,
}

impl HttpBackend {
    /// Starts `git http-backend` for repositories under `project_root`.
    pub fn spawn(project_root: &Path, request: &CgiRequest) -> Result<HttpBackend, GitError> {
        let mut command = Command::new("git");
        command
            .arg("http-backend")
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            // Neither the system's nor the controller user's git config applies.
            .env("HOME", project_root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_PROJECT_ROOT", project_root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .env("PATH_INFO", &request.path_info)
            .env("REQUEST_METHOD", &request.method)
            .env("QUERY_STRING", &request.query)
            .env("REMOTE_ADDR", &request.remote_addr)
            .env("REMOTE_USER", &request.remote_user);
        if let Some(v) = &request.content_type {
            command.env("CONTENT_TYPE", v);
        }
        if let Some(v) = request.content_length {
            command.env("CONTENT_LENGTH", v.to_string());
        }
        if let Some(v) = &request.content_encoding {
            command.env("HTTP_CONTENT_ENCODING", v);
        }
        if let Some(v) = &request.git_protocol {
            command.env("GIT_PROTOCOL", v);
        }
        command
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|source| GitError::Spawn {
            what: "git http-backend",
            source,
        })?;
        let pid = child.id().ok_or_else(|| GitError::Failed {
            what: "git http-backend",
            detail: "exited at once".to_owned(),
        })?;
        let group = KillOnDrop(Arc::new(Group {
            pgid: pid as i32,
            alive: Mutex::new(true),
        }));
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(GitError::Failed {
                what: "git http-backend",
                detail: "no pipes".to_owned(),
            });
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(pid, "git http-backend: {line}");
            }
        });
        Ok(HttpBackend {
            child,
            group,
            stdin: Some(stdin),
            stdout,
            rest: BytesMut::new(),
        })
    }

    /// Streams `body` to the backend's stdin in a task of its own; stdin is closed at the
    /// end. A body that fails midway (the client went away) kills the backend.
    pub fn feed<S, E>(&mut self, body: S)
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let Some(mut stdin) = self.stdin.take() else {
            return;
        };
        let group = self.group.0.clone();
        tokio::spawn(async move {
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) => {
                        if stdin.write_all(&bytes).await.is_err() {
                            // The backend stopped reading: it answers on its own.
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "git request body broken off: stopping git");
                        group.kill();
                        return;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
    }

    /// Reads the CGI head of the answer.
    pub async fn head(&mut self) -> Result<CgiHead, GitError> {
        loop {
            if let Some((head, used)) = parse_head(&self.rest)? {
                let _ = self.rest.split_to(used);
                return Ok(head);
            }
            let read = self
                .stdout
                .read_buf(&mut self.rest)
                .await
                .map_err(|source| GitError::Io {
                    what: "git http-backend",
                    source,
                })?;
            if read == 0 {
                return Err(GitError::Failed {
                    what: "git http-backend",
                    detail: "it ended without an answer".to_owned(),
                });
            }
        }
    }

    /// The rest of the answer, as it comes. Dropping the stream before its end kills the
    /// backend's process group.
    pub fn into_body(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let state = Body {
            first: Some(self.rest.freeze()),
            stdout: self.stdout,
            child: Some(self.child),
            group: self.group,
        };
        futures::stream::unfold(state, |mut s| async move {
            if let Some(first) = s.first.take().filter(|b| !b.is_empty()) {
                return Some((Ok(first), s));
            }
            let mut buf = BytesMut::with_capacity(16 * 1024);
            match s.stdout.read_buf(&mut buf).await {
                Ok(0) => {
                    s.reap().await;
                    None
                }
                Ok(_) => Some((Ok(buf.freeze()), s)),
                Err(e) => Some((Err(e), s)),
            }
        })
    }
}

struct Body {
    first: Option<Bytes>,
    stdout: ChildStdout,
    child: Option<Child>,
    group: KillOnDrop,
}

impl Body {
    /// Waits for the backend after its stdout closed; from then on nothing is killed.
    async fn reap(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match child.wait().await {
            Ok(status) if !status.success() => {
                tracing::warn!(%status, "git http-backend failed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot wait for git http-backend"),
        }
        *self.group.0.alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}
