//! `git push` to the controller: smart HTTP git under `/git/<app>.git/` ([`http`]) and the
//! build endpoint its pre-receive hook calls, `POST /apps/{app}/builds` ([`builds`]), which
//! builds the pushed tree into an image, releases and deploys it, streaming its output.
//!
//! A push goes: `git push` → [`http`] (HTTP Basic, the cluster key as password) → `git
//! http-backend` → `git receive-pack` → the repository's pre-receive hook, `flynn git-hook
//! pre-receive` (the controller's own binary) → `git archive` of the pushed revision, streamed
//! to [`builds`] → `flynn_builder::build`, a release, a deploy. The build's lines flow back
//! the same way and reach the pusher as `remote:` lines; the hook's exit status accepts or
//! rejects the push. When the pusher goes away (Ctrl-C), the controller kills the backend's
//! process group, the hook's request to [`builds`] drops, and the build is cancelled.
//!
//! Pushes to one app are serialised: while a build of the app runs, another push is refused
//! with a message saying so (it is not queued: the pusher decides whether to push again).
//! Repositories live under `<data>/git/<app id>.git`; a controller's repositories are its own
//! (several controllers on one store each keep theirs: push to one of them). So are the
//! slugs of its buildpack builds ([`slugs`]), which host agents fetch from it to rebuild an
//! app's image their engine lacks.

mod builds;
mod http;
mod release;
pub mod slugs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, post};
use axum::Router;
use flynn_builder::git::Repos;

pub use self::builds::BuildMessage;
use super::ApiState;

/// How the controller serves git and builds.
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// Repositories go in `<data>/git`, build caches in `<data>/build-cache`, builds' source
    /// trees in `<data>/builds` while they build, slugs in `<data>/slugs`.
    pub data: PathBuf,
    /// The `flynn` binary the pre-receive hook runs (the controller's own).
    pub flynn_bin: PathBuf,
    /// Where the hook reaches the controller, e.g. `http://127.0.0.1:8081`; also the base of
    /// the slug URLs in artifacts (host agents may replace it: `--controller-url`).
    pub controller_url: String,
    /// The Docker Engine builds run on (None: the default socket).
    pub docker: Option<String>,
    /// The router's HTTP port, for the app URL printed at the end of a push.
    pub web_port: Option<u16>,
    /// The largest pushed tree (uncompressed tar bytes) a build takes.
    pub max_source: u64,
}

impl GitConfig {
    pub fn new(data: PathBuf, flynn_bin: PathBuf, controller_url: String) -> GitConfig {
        GitConfig {
            data,
            flynn_bin,
            controller_url,
            docker: None,
            web_port: None,
            max_source: 1 << 30,
        }
    }
}

/// What the git handlers share.
#[derive(Clone)]
pub struct GitState {
    api: ApiState,
    git: Arc<GitShared>,
}

struct GitShared {
    config: GitConfig,
    repos: Repos,
    /// Apps with a build under way, and when it started.
    building: Mutex<HashMap<String, Instant>>,
}

/// The git endpoint and the build endpoint; merged into the controller's router (they take
/// the key their own way: HTTP Basic for git, the bearer key for builds).
pub fn router(api: ApiState, config: GitConfig) -> Router {
    let state = GitState {
        git: Arc::new(GitShared {
            repos: Repos::new(config.data.join("git")),
            config,
            building: Mutex::new(HashMap::new()),
        }),
        api: api.clone(),
    };
    let builds = Router::new()
        .route("/apps/{app}/builds", post(builds::create))
        .route("/apps/{app}/slugs/{build}", get(slugs::get))
        .layer(from_fn_with_state(api, super::auth::require_key));
    Router::new()
        .route("/git/{repo}/info/refs", get(http::info_refs))
        .route("/git/{repo}/git-upload-pack", post(http::upload_pack))
        .route("/git/{repo}/git-receive-pack", post(http::receive_pack))
        .route("/git/{repo}/{*rest}", any(http::dumb))
        .merge(builds)
        .with_state(state)
}
