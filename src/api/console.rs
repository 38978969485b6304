//! The tenant console at `/console`: a tenant signs in with its API key
//! (kept in the tab's sessionStorage, sent as a bearer header, never in a
//! cookie) and sees its quota and month-to-date use, submits and cancels
//! jobs (with the API's own validation messages, why pending, where
//! placed), its use over time (`/v1/usage/series`), statements to
//! download, vouchers and token calls. Plain JavaScript over the same API
//! curl uses; nothing from another origin (air-gapped data centres).

use axum::routing::get;
use axum::Router;

use super::page::{asset, CSS, HTML, JS};

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Routes: `/console`, `/assets/console.js`, `/assets/console.css`.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/console", get(|| async { asset(HTML, INDEX_HTML) }))
        .route(
            "/assets/console.js",
            get(|| async { asset(JS, CONSOLE_JS) }),
        )
        .route(
            "/assets/console.css",
            get(|| async { asset(CSS, CONSOLE_CSS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_loads_nothing_from_elsewhere_and_keeps_the_key_in_the_tab() {
        assert!(
            !INDEX_HTML.contains("http"),
            "index.html references another origin"
        );
        assert!(
            !CONSOLE_CSS.contains("http"),
            "console.css references another origin"
        );
        let js_urls = CONSOLE_JS.matches("http").count();
        let svg_ns = CONSOLE_JS.matches("http://www.w3.org/2000/svg").count();
        assert_eq!(js_urls, svg_ns, "console.js references another origin");
        assert!(!CONSOLE_JS.contains("localStorage") && !CONSOLE_JS.contains("document.cookie"));
        assert!(CONSOLE_JS.contains("sessionStorage"));
        // Every endpoint the console reads is one the API serves.
        for path in [
            "/v1/quota",
            "/v1/jobs",
            "/v1/usage/series",
            "/v1/statements/",
            "/v1/vouchers",
            "/v1/calls",
        ] {
            assert!(CONSOLE_JS.contains(path), "console.js does not use {path}");
        }
    }
}
