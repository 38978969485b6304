//! The web page in headless Chromium, and (with the demo) every dashboard
//! panel query through a real Prometheus.

#[path = "support/chromium.rs"]
mod chromium;

use std::net::SocketAddr;

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Serves the page plus a `/metrics` with a few series of each charted metric.
async fn page_server_with_fixture_metrics() -> SocketAddr {
    let registry = prometheus::Registry::new();
    let gauge = |name: &str, labels: &[&str], rows: &[(&[&str], f64)]| {
        let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, name), labels).unwrap();
        registry.register(Box::new(g.clone())).unwrap();
        for (vals, v) in rows {
            g.with_label_values(vals).set(*v);
        }
    };
    gauge(
        "zhisuan_region_gpus",
        &["region"],
        &[(&["zhongwei"], 800.0), (&["wuhu"], 400.0)],
    );
    gauge(
        "zhisuan_region_gpus_allocated",
        &["region"],
        &[(&["zhongwei"], 600.0), (&["wuhu"], 100.5)],
    );
    gauge(
        "zhisuan_region_green_share",
        &["region"],
        &[(&["zhongwei"], 0.6), (&["wuhu"], 0.2)],
    );
    gauge(
        "zhisuan_region_carbon_kg_total",
        &["region"],
        &[(&["zhongwei"], 120.0), (&["wuhu"], 300.0)],
    );
    gauge(
        "zhisuan_tenant_voucher_redeemed_fen_total",
        &["tenant"],
        &[(&["acme"], 50_000.0)],
    );
    gauge(
        "zhisuan_tenant_net_fen_total",
        &["tenant"],
        &[(&["acme"], 70_000.0), (&["gov-hz"], 1_000.0)],
    );
    gauge(
        "zhisuan_voucher_balance_fen",
        &["tenant", "voucher"],
        &[(&["acme", "v1"], 950_000.0)],
    );
    gauge(
        "zhisuan_tenant_tokens_total",
        &["tenant", "tier", "kind"],
        &[(&["acme", "basic", "prompt"], 12_000.0)],
    );
    gauge(
        "zhisuan_pending_jobs",
        &["reason"],
        &[(&["insufficient GPUs"], 3.0)],
    );

    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut buf = String::new();
            prometheus::TextEncoder::new()
                .encode_utf8(&registry.gather(), &mut buf)
                .unwrap();
            buf
        }
    };
    let app = zhisuan::api::page::router().route("/metrics", axum::routing::get(metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Checks a page rendered by Chromium: every chart has bars of non-zero width,
/// and the screenshot holds pixels of the bar colours.
fn assert_page_draws_charts(bin: &std::path::Path, url: &str, charts: &[&str]) {
    let dom = chromium::dump_dom(bin, url);
    assert!(
        dom.contains("data-rendered=\"true\""),
        "page.js did not finish rendering: {dom}"
    );
    let bars = chromium::bars(&dom);
    for chart in charts {
        let drawn = bars
            .iter()
            .filter(|(c, v, w)| c == chart && *v > 0.0 && *w > 0.5)
            .count();
        assert!(drawn > 0, "chart {chart} has no bar with data: {bars:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("page.png");
    chromium::screenshot(bin, url, &png);
    // Bar colours of page.js: allocated GPUs (blue), green share (green).
    let counts = chromium::count_colour_pixels(&png, &["#2f6fb3", "#3fa34d"]);
    assert!(
        counts.iter().all(|&n| n > 200),
        "screenshot shows too few bar pixels {counts:?} (blue, green)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_renders_charts_in_chromium() {
    let Some(bin) = chromium::chromium() else {
        assert!(
            !ci(),
            "chromium is not installed (CI): apt-get install chromium"
        );
        eprintln!("skipped: chromium not installed");
        return;
    };
    let addr = page_server_with_fixture_metrics().await;
    let url = format!("http://{addr}/");
    tokio::task::spawn_blocking(move || {
        assert_page_draws_charts(
            &bin,
            &url,
            &[
                "chart-region-gpus",
                "chart-region-green",
                "chart-region-carbon",
                "chart-tenant-spend",
                "chart-vouchers",
                "chart-tokens",
                "chart-pending",
            ],
        )
    })
    .await
    .unwrap();
}
