//! Smart HTTP git: `GET info/refs?service=…`, `POST git-upload-pack`, `POST git-receive-pack`,
//! each through `git http-backend` with the request and response bodies streamed. The key is
//! HTTP Basic's password (any user name; `flynn git-credentials` gives it to git) or a bearer
//! key. No key or a wrong one: 401 with `WWW-Authenticate`, so git asks for credentials. An
//! app that does not exist: 404. The dumb protocol (plain GETs of refs and objects) is refused.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use flynn_builder::git::{CgiRequest, HttpBackend, Repos};

use super::super::apps;
use super::super::auth::constant_time_eq;
use super::super::error::ApiError;
use super::GitState;

const DUMB: &str = "the dumb HTTP git protocol is not served here: use git 1.6.6 or later\n";

pub async fn info_refs(
    State(state): State<GitState>,
    Path(repo): Path<String>,
    request: Request,
) -> Response {
    let service = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("service="))
            .filter(|s| matches!(*s, "git-upload-pack" | "git-receive-pack"))
    });
    if service.is_none() {
        if authorize(&state, request.headers()).is_none() {
            return unauthorized();
        }
        return text(StatusCode::FORBIDDEN, DUMB);
    }
    serve(state, repo, "info/refs", request).await
}

pub async fn upload_pack(
    State(state): State<GitState>,
    Path(repo): Path<String>,
    request: Request,
) -> Response {
    serve(state, repo, "git-upload-pack", request).await
}

pub async fn receive_pack(
    State(state): State<GitState>,
    Path(repo): Path<String>,
    request: Request,
) -> Response {
    serve(state, repo, "git-receive-pack", request).await
}

/// Any other path under a repository: what a dumb-protocol client asks for.
pub async fn dumb(State(state): State<GitState>, request: Request) -> Response {
    if authorize(&state, request.headers()).is_none() {
        return unauthorized();
    }
    text(StatusCode::FORBIDDEN, DUMB)
}

/// Runs `git http-backend` for `rest` of the app's repository.
async fn serve(state: GitState, repo: String, rest: &str, request: Request) -> Response {
    let Some(user) = authorize(&state, request.headers()) else {
        return unauthorized();
    };
    let name = repo.strip_suffix(".git").unwrap_or(&repo);
    let app = match apps::find(&state.api, name).await {
        Ok(app) => app.value,
        Err(ApiError::NotFound(_)) => {
            return text(
                StatusCode::NOT_FOUND,
                &format!("app {name:?} not found (flynn create {name})\n"),
            )
        }
        Err(e) => return text(e.status(), &format!("{e}\n")),
    };
    let dir_name = match state.git.repos.ensure(&app.id).await {
        Ok(_) => Repos::dir_name(&app.id).unwrap_or_default(),
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "cannot make the app's git repository");
            return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
        }
    };
    let (parts, body) = request.into_parts();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let config = &state.git.config;
    let cgi = CgiRequest {
        path_info: format!("/{dir_name}/{rest}"),
        method: parts.method.as_str().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: header(CONTENT_TYPE),
        content_length: header(CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        content_encoding: header(CONTENT_ENCODING),
        git_protocol: header(axum::http::HeaderName::from_static("git-protocol")),
        remote_addr: String::new(),
        remote_user: user,
        // What the pre-receive hook needs to call the build endpoint.
        env: vec![
            (
                "FLYNN_GIT_HOOK".to_owned(),
                config.flynn_bin.display().to_string(),
            ),
            (
                "FLYNN_BUILD_URL".to_owned(),
                format!(
                    "{}/apps/{}/builds",
                    config.controller_url.trim_end_matches('/'),
                    app.id
                ),
            ),
            ("FLYNN_BUILD_KEY".to_owned(), state.api.config.key.clone()),
        ],
    };
    let mut backend = match HttpBackend::spawn(state.git.repos.root(), &cgi) {
        Ok(backend) => backend,
        Err(e) => {
            tracing::error!(error = %e, "cannot start git http-backend");
            return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
        }
    };
    backend.feed(body.into_data_stream());
    let head = match backend.head().await {
        Ok(head) => head,
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "git http-backend gave no answer");
            return text(StatusCode::BAD_GATEWAY, &format!("{e}\n"));
        }
    };
    let mut response = Response::new(Body::from_stream(backend.into_body()));
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in head.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The user name of a request carrying the key (HTTP Basic password, or a bearer key).
fn authorize(state: &GitState, headers: &HeaderMap) -> Option<String> {
    let key = state.api.config.key.as_bytes();
    let (scheme, token) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))?;
    if scheme.eq_ignore_ascii_case("basic") {
        let (user, password) = basic(token.trim())?;
        constant_time_eq(password.as_bytes(), key).then_some(user)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        constant_time_eq(token.trim().as_bytes(), key).then(|| "flynn".to_owned())
    } else {
        None
    }
}

/// The 401 answer that makes git ask for credentials.
fn unauthorized() -> Response {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "the cluster key is required: HTTP Basic with the key as password \
         (flynn create sets up `flynn git-credentials` for the remote)\n",
    );
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"flynn\""),
    );
    response
}

/// `user:password` of an HTTP Basic token.
fn basic(token: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::basic;

    #[test]
    fn basic_credentials() {
        // "flynn:s3cret:x" (a colon in the password is the password's)
        assert_eq!(
            basic("Zmx5bm46czNjcmV0Ong="),
            Some(("flynn".to_owned(), "s3cret:x".to_owned()))
        );
        assert_eq!(basic("not base64!"), None);
        assert_eq!(basic("bm9jb2xvbg=="), None); // "nocolon"
    }
}
