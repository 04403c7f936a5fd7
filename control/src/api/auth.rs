//! The controller key: `Authorization: Bearer <key>` on every request but `/ping`.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiState;

pub async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/ping" {
        return next.run(request).await;
    }
    if authorized(request.headers(), &state.config.key) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Whether `headers` carry `Authorization: Bearer <key>` (the controller's check, also the
/// host agent's: both take the cluster key).
pub(crate) fn authorized(headers: &axum::http::HeaderMap, key: &str) -> bool {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    given.is_some_and(|token| constant_time_eq(token.as_bytes(), key.as_bytes()))
}

/// Compares without stopping at the first difference, so timing tells nothing about the key.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b""));
    }
}
