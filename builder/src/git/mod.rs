//! Git over smart HTTP, the plumbing: the per-app bare repositories ([`repo`]), `git
//! http-backend` run per request with streamed bodies and its process group killed when the
//! client goes ([`backend`], [`cgi`]), the rule of which pushes deploy ([`refs`]) and the
//! pushed tree as a tar stream ([`archive`]).
//!
//! The controller serves it (`/git/<app>.git/...`); each repository's pre-receive hook runs
//! `flynn git-hook pre-receive`, which sends the pushed tree to the controller's build
//! endpoint and prints the build's output, so the pusher sees it as `remote:` lines.

pub mod archive;
pub mod backend;
pub mod cgi;
pub mod refs;
pub mod repo;

pub use self::backend::{CgiRequest, HttpBackend};
pub use self::cgi::{CgiError, CgiHead};
pub use self::refs::{PushError, RefUpdate};
pub use self::repo::Repos;

/// What the git plumbing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
    #[error("I/O error on {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgi(#[from] CgiError),
    #[error("the pushed tree is over {} MiB", .0 >> 20)]
    TooLarge(u64),
    #[error("invalid app id {0:?}")]
    BadAppId(String),
}
