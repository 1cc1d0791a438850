//! Errors: [`ApiError`] is what a handler can fail with, rendered as Mattermost's error body
//! `{id, message, detailed_error, request_id, status_code}`; [`Error`] is what [`crate::run`] fails with.
//!
//! Client mistakes map to 4xx with a stable `id`; only database or internal failures are 500, and
//! their details are logged rather than sent, so nothing about the schema or a token leaks.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Why a request failed. The `&'static str` is the Mattermost-style error id
/// (e.g. `api.context.session_expired.app_error`); the `String` is the human message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("{1}")]
    Unauthorized(&'static str, String),
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{1}")]
    MethodNotAllowed(&'static str, String),
    #[error("{1}")]
    PayloadTooLarge(&'static str, String),
    #[error("{1}")]
    Unsupported(&'static str, String),
    /// The server is at a configured limit (503); the client may retry later.
    #[error("{1}")]
    Unavailable(&'static str, String),
    #[error("database error")]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(id: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest(id, message.into())
    }
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound("app.not_found", format!("{what} not found"))
    }
    pub fn forbidden() -> Self {
        ApiError::Forbidden(
            "api.context.permissions.app_error",
            "You do not have the appropriate permissions.".into(),
        )
    }
    pub fn unauthorized() -> Self {
        ApiError::Unauthorized(
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.".into(),
        )
    }
    pub fn invalid_param(name: &str) -> Self {
        ApiError::BadRequest(
            "api.context.invalid_param.app_error",
            format!("Invalid or missing {name} in request."),
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(..) => StatusCode::FORBIDDEN,
            ApiError::NotFound(..) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(..) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::Conflict(_)) => StatusCode::BAD_REQUEST,
            ApiError::Store(e) if e.is_invalid_text() => StatusCode::BAD_REQUEST,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn id(&self) -> &'static str {
        match self {
            ApiError::BadRequest(id, _)
            | ApiError::Unauthorized(id, _)
            | ApiError::Forbidden(id, _)
            | ApiError::NotFound(id, _)
            | ApiError::MethodNotAllowed(id, _)
            | ApiError::PayloadTooLarge(id, _)
            | ApiError::Unsupported(id, _)
            | ApiError::Unavailable(id, _) => id,
            ApiError::Store(StoreError::Conflict(_)) => "store.sql.unique_constraint",
            ApiError::Store(e) if e.is_invalid_text() => "api.context.invalid_param.app_error",
            ApiError::Store(_) => "app.store.error",
            ApiError::Internal(_) => "app.internal.error",
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Store(StoreError::Conflict(what)) => format!("{what} already exists."),
            ApiError::Store(e) if e.is_invalid_text() => {
                "Text must not contain NUL (\\u0000) characters; remove them and retry.".into()
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                "An internal error occurred; it has been logged.".into()
            }
            other => other.to_string(),
        }
    }
}

/// The exact `Content-Type` of every body this server writes (some clients compare it literally).
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Builds the Mattermost error body for `status`.
pub fn error_response(status: StatusCode, id: &str, message: &str, detailed: &str) -> Response {
    let request_id = crate::ids::new_id();
    let body = serde_json::json!({
        "id": id,
        "message": message,
        "detailed_error": detailed,
        "request_id": request_id,
        "status_code": status.as_u16(),
    });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("X-Request-Id", v);
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        error_response(status, self.id(), &self.public_message(), "")
    }
}

/// Why [`crate::run`] stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}
