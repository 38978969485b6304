//! The web page at `/` of the API server and the demo: per-region GPU use,
//! green share and carbon; per-tenant spend, vouchers and tokens; pending jobs
//! by reason; use, spend and waiting over time — drawn as SVG charts by plain
//! JavaScript from `/v1/overview` and the series endpoints (the ledger's
//! totals and the scheduler's regions, never `/metrics`' process-lifetime
//! counters), so the page needs no state of its own, no CDN and no network
//! beyond its own origin.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");
/// The stacked-bar charts the page and the tenant console share.
const CHARTS_JS: &str = include_str!("page/charts.js");

/// Routes of the page: `/`, `/assets/page.js`, `/assets/page.css`. Generic over
/// the state so any router (API server, demo) can merge it.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(|| async { asset(HTML, INDEX_HTML) }))
        .route("/assets/page.js", get(|| async { asset(JS, PAGE_JS) }))
        .route("/assets/page.css", get(|| async { asset(CSS, PAGE_CSS) }))
        .route("/assets/charts.js", get(|| async { asset(JS, CHARTS_JS) }))
}

pub(super) const HTML: &str = "text/html; charset=utf-8";
pub(super) const JS: &str = "text/javascript; charset=utf-8";
pub(super) const CSS: &str = "text/css; charset=utf-8";

/// A page asset: from this origin only (CSP), never cached stale.
pub(super) fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Everything comes from this origin; no inline script, no third party.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn fetch(path: &str) -> (StatusCode, String, String) {
        let resp = router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (status, ctype, html) = fetch("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/html"));
        assert!(html.contains("/assets/page.js") && html.contains("/assets/page.css"));
        let (status, ctype, js) = fetch("/assets/page.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/javascript"));
        // The page draws from the API's overview and series, not /metrics.
        for endpoint in [
            "/v1/overview",
            "/v1/series",
            "/v1/series/pending",
            "/v1/pending",
        ] {
            assert!(js.contains(endpoint), "page.js does not read {endpoint}");
        }
        assert!(
            !js.contains("fetch(\"/metrics\""),
            "page.js scrapes /metrics"
        );
        assert_eq!(fetch("/assets/page.css").await.0, StatusCode::OK);
    }

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        assert!(
            !INDEX_HTML.contains("http"),
            "index.html references another origin"
        );
        assert!(
            !PAGE_CSS.contains("http"),
            "page.css references another origin"
        );
        // The only absolute URL in the script is the SVG namespace name.
        for js in [PAGE_JS, CHARTS_JS] {
            let js_urls = js.matches("http").count();
            let svg_ns = js.matches("http://www.w3.org/2000/svg").count();
            assert_eq!(js_urls, svg_ns, "a script references another origin");
        }
    }
}
