//! The one error shape of the API: `{"code", "message", "detail"?}` with a status per code.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flynn_store::StoreError;
use serde::{Deserialize, Serialize};

/// The most bytes a request body may have; a longer one is a 413.
pub const BODY_LIMIT: usize = 2 << 20;

/// The JSON body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Everything a handler can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule; nothing was written.
    #[error("{message}")]
    Validation {
        message: String,
        /// The offending field, when there is one.
        field: Option<&'static str>,
    },
    /// The request clashes with what exists (a taken domain, port or name).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("a valid controller key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    /// The request body is over the limit; nothing was written.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The store failed; a transient failure is a 503.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value in the store that does not parse, or another bug on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::Validation {
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Validation {
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::Conflict(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound(message.into())
    }

    /// A request body over [`BODY_LIMIT`].
    pub fn body_too_large() -> ApiError {
        ApiError::PayloadTooLarge(format!(
            "the request body is over the limit of {} MiB",
            BODY_LIMIT >> 20
        ))
    }

    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_error",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Store(e) if e.is_transient() => "service_unavailable",
            ApiError::Store(_) | ApiError::Internal(_) => "unknown_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let detail = match self {
            ApiError::Validation {
                field: Some(field), ..
            } => Some(serde_json::json!({ "field": field })),
            _ => None,
        };
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"flynn\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::body_too_large();
        }
        ApiError::validation(format!("invalid request body: {}", rejection.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::body_too_large();
        }
        ApiError::validation(format!("invalid request body: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::validation(format!("invalid query: {}", rejection.body_text()))
    }
}

/// What handlers return.
pub type ApiResult<T> = Result<T, ApiError>;
