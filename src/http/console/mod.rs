//! The on-call console, on the admin listener at `/console`: server-rendered
//! pages (askama templates, no script, no external asset) over the same
//! `ops` actions the admin API and the CLI run. Signing in with the admin
//! token starts a session (see [`session`]); every form that changes
//! something carries the session's CSRF token. Every answer forbids
//! framing, caching and any script or asset from elsewhere
//! ([`CONTENT_SECURITY_POLICY`] and the headers beside it).

mod pages;
pub mod session;
mod views;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};

pub use session::Sessions;

use super::AppState;

/// Only this origin's stylesheet; no script, no frame, forms to here only.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", axum::routing::post(pages::logout))
        .route("/console/events", get(pages::events))
        .route("/console/events/{id}", get(pages::event))
        .route("/console/replay", get(pages::replay_confirm).post(pages::replay))
        .route("/console/cache", get(pages::cache))
        .route("/console/audit", get(pages::audit))
        .route("/console/static/console.css", get(stylesheet))
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; iw_console=abc; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "iw_console").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c").as_deref(), Some("3"));
        assert_eq!(cookie(&h, "iw"), None);
    }
}
