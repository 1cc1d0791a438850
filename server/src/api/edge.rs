//! What every request meets before its handler: the request-line and header limits, answered
//! with Mattermost error bodies, and path cleaning the way Mattermost's router (gorilla/mux)
//! does it: a path with doubled slashes, `.` or `..` segments is answered `301 Moved
//! Permanently` to the cleaned path, query kept.
//!
//! The limits here sit below the HTTP layer's own (hyper: a URI of 64 KiB, 100 headers, a
//! header block of about 400 KB), so a client that exceeds ours gets JSON with
//! `Content-Type: application/json`. A request beyond hyper's limits never reaches this code:
//! hyper answers `414`/`431` itself with an empty body, which is the one documented exception.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::error_response;

/// Longest request target (path and query) answered normally.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields, and most bytes of names and values together, answered normally.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The middleware: limits first, then path cleaning.
pub async fn guard(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return error_response(
            StatusCode::URI_TOO_LONG,
            "api.context.uri_too_long.app_error",
            "The request URI is too long.",
            &format!("{uri_len} bytes; at most {MAX_URI_BYTES}"),
        );
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "api.context.headers_too_large.app_error",
            "The request headers are too large.",
            &format!(
                "{} fields, {header_bytes} bytes; at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        );
    }
    let path = req.uri().path();
    let clean = clean_path(path);
    if clean != path {
        let target = match req.uri().query() {
            Some(q) => format!("{clean}?{q}"),
            None => clean,
        };
        if let Ok(location) = HeaderValue::from_str(&target) {
            return (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// gorilla/mux's `cleanPath`: Go's `path.Clean` (one slash between segments, no `.`, `..`
/// resolved, never above the root), keeping a trailing slash the request had.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut clean = format!("/{}", out.join("/"));
    if p.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn paths_are_cleaned_like_gorilla_mux_does() {
        for (dirty, clean) in [
            (
                "/api/v4/posts/abc//reactions",
                "/api/v4/posts/abc/reactions",
            ),
            ("//api/v4/users/me", "/api/v4/users/me"),
            ("/api/v4/./users/../teams", "/api/v4/teams"),
            ("/api/v4/users/", "/api/v4/users/"),
            ("/api/v4//users//", "/api/v4/users/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("", "/"),
            ("/api/v4/system/ping", "/api/v4/system/ping"),
        ] {
            assert_eq!(clean_path(dirty), clean, "{dirty}");
        }
    }
}
