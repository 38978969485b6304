//! The web page in headless Chromium, and (with the demo) every dashboard
//! panel query through a real Prometheus.

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/dashboards.rs"]
mod dashboards;
#[path = "support/prometheus.rs"]
mod prometheus_server;

use std::net::SocketAddr;

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A tool the test needs: missing fails under CI, else the test is skipped.
fn required(
    found: Option<std::path::PathBuf>,
    name: &str,
    install: &str,
) -> Option<std::path::PathBuf> {
    if found.is_none() {
        assert!(!ci(), "{name} is not installed (CI): {install}");
        eprintln!("skipped: {name} not installed");
    }
    found
}

/// Serves the page plus a `/v1/overview` (the API's own types, so the
/// fixture cannot drift from what the API sends) with a few rows of each
/// chart's figures.
async fn page_server_with_fixture_overview() -> SocketAddr {
    use zhisuan::api::overview::{Overview, RegionNow, VoucherBalance};
    use zhisuan::ledger::pending::PendingNow;
    use zhisuan::ledger::totals::TenantMonth;
    let region = |name: &str, gpus: u64, allocated: f64, green: f64, carbon_kg: i64| RegionNow {
        name: name.into(),
        gpus,
        gpus_allocated: allocated,
        green_share: green,
        milli_gpu_s: 3_600_000 * 100,
        facility_j: 3_600_000 * 500,
        carbon_mg: carbon_kg * 1_000_000,
    };
    let now = chrono::Utc::now();
    let overview = Overview {
        month: zhisuan::ledger::Month::of(now).to_string(),
        as_of: now,
        regions: vec![
            region("wuhu", 400, 100.5, 0.2, 300),
            region("zhongwei", 800, 600.0, 0.6, 120),
        ],
        pending: Some(PendingNow {
            at_s: now.timestamp() / 60 * 60,
            total: 3,
            by_reason: [("insufficient GPUs".to_string(), 3)].into(),
        }),
        tenants: vec![
            TenantMonth {
                tenant: "acme".into(),
                milli_gpu_s: 3_600_000 * 40,
                gross_fen: 120_000,
                voucher_fen: 50_000,
                net_fen: 70_000,
                tokens: [("basic".to_string(), 12_000)].into(),
            },
            TenantMonth {
                tenant: "gov-hz".into(),
                gross_fen: 1_000,
                net_fen: 1_000,
                ..TenantMonth::default()
            },
        ],
        tenants_total: 2,
        tenants_hidden: false,
        vouchers: vec![VoucherBalance {
            tenant: "acme".into(),
            id: "v1".into(),
            issuer: "city".into(),
            spendable_fen: 950_000,
            valid_until: now + chrono::Duration::days(30),
        }],
    };
    let body = serde_json::to_string(&overview).unwrap();
    let app = zhisuan::api::page::router().route(
        "/v1/overview",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Charts of the page that have data whenever the system has run a while
/// (the pending chart may rightly be empty).
const CHARTS_WITH_DATA: &[&str] = &[
    "chart-region-gpus",
    "chart-region-green",
    "chart-region-carbon",
    "chart-tenant-spend",
    "chart-vouchers",
    "chart-tokens",
];

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
    let Some(bin) = required(chromium::chromium(), "chromium", "apt-get install chromium") else {
        return;
    };
    let addr = page_server_with_fixture_overview().await;
    let url = format!("http://{addr}/");
    tokio::task::spawn_blocking(move || {
        assert_page_draws_charts(&bin, &url, &[CHARTS_WITH_DATA, &["chart-pending"]].concat())
    })
    .await
    .unwrap();
}

/// A `zhisuan demo` child process, interrupted (Ctrl-C) and reaped on drop.
struct Demo {
    child: Option<std::process::Child>,
    addr: String,
}

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
const START_AT: &str = "2026-11-01T00:00:00Z";

/// `zhisuan demo` on `addr` with a fixed start, JSON summary and the test admin key.
fn demo_command(addr: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zhisuan"));
    cmd.args(["demo", "--listen", addr, "--status-every", "0", "--json"])
        .args(["--start-at", START_AT])
        .args(extra)
        .env("ZHISUAN_ADMIN_KEY", ADMIN_KEY);
    cmd
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let addr = format!("127.0.0.1:{}", prometheus_server::free_port());
        let child = demo_command(&addr, extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start zhisuan demo");
        let demo = Demo {
            child: Some(child),
            addr,
        };
        let start = std::time::Instant::now();
        while reqwest::blocking::get(format!("http://{}/metrics", demo.addr)).is_err() {
            assert!(
                start.elapsed().as_secs() < 120,
                "demo did not serve /metrics within 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        demo
    }

    /// Interrupts the demo like Ctrl-C and returns its JSON summary.
    fn stop(mut self) -> serde_json::Value {
        let child = self.child.take().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
        summary_of(child.wait_with_output().unwrap())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn summary_of(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "demo failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "demo summary is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a demo to its `--sim-hours` end and returns the summary.
fn run_demo_to_end(extra: &[&str]) -> serde_json::Value {
    let addr = format!("127.0.0.1:{}", prometheus_server::free_port());
    let out = demo_command(&addr, extra)
        .output()
        .expect("run zhisuan demo");
    summary_of(out)
}

fn fen(v: &serde_json::Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn assert_money_adds_up(summary: &serde_json::Value) {
    for t in summary["tenants"].as_array().unwrap() {
        assert_eq!(
            fen(t, "gross_fen"),
            fen(t, "voucher_fen") + fen(t, "net_fen"),
            "gross = voucher + net for {t}"
        );
    }
    assert_eq!(
        fen(summary, "gross_fen"),
        fen(summary, "voucher_fen") + fen(summary, "net_fen")
    );
}

#[test]
fn demo_feeds_every_dashboard_panel_and_the_page() {
    let Some(prom_bin) = required(
        prometheus_server::binary(),
        "prometheus",
        "apt-get install prometheus",
    ) else {
        return;
    };
    // One simulated hour per wall second: the trace's busy hours pass in seconds.
    let demo = Demo::start(&["--speed", "3600"]);
    let prom = prometheus_server::Prometheus::start(&prom_bin, &demo.addr);

    let queries = dashboards::panel_queries();
    assert!(queries.len() >= 20, "only {} panel queries", queries.len());
    let mut empty: Vec<String> = Vec::new();
    prom.wait_until(
        std::time::Duration::from_secs(150),
        "every panel query to return data",
        || {
            empty = queries
                .iter()
                .filter(|q| prom.query(&q.expr).is_empty())
                .map(|q| format!("{} / {}: {}", q.dashboard, q.panel, q.expr))
                .collect();
            if !empty.is_empty() {
                eprintln!(
                    "{} panel queries still without data, e.g. {}",
                    empty.len(),
                    empty[0]
                );
            }
            empty.is_empty()
        },
    );

    // The page draws the demo's own data.
    if let Some(chrome) = required(chromium::chromium(), "chromium", "apt-get install chromium") {
        assert_page_draws_charts(&chrome, &format!("http://{}/", demo.addr), CHARTS_WITH_DATA);
    }

    // Statements are dated in simulated time (the demo starts 2026-11-01 and
    // runs hours per second; the wall clock is elsewhere).
    let base = format!("http://{}", demo.addr);
    let http = reqwest::blocking::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"name": "probe"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = created["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let sim_now: String = http
        .get(format!("{base}/v1/quota"))
        .bearer_auth(key)
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["month"]
        .as_str()
        .unwrap()
        .to_string();
    let st: serde_json::Value = http
        .get(format!("{base}/v1/statements/{sim_now}"))
        .bearer_auth(key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let as_of = st["as_of"].as_str().unwrap_or_else(|| panic!("{st}"));
    assert!(
        sim_now.as_str() >= "2026-11" && as_of.starts_with(&sim_now) && as_of < "2026-11-08",
        "statement dated {as_of} (month {sim_now}); the simulated week starts 2026-11-01"
    );

    let summary = demo.stop();
    assert!(summary["jobs"]["placed"].as_u64().unwrap() > 0, "{summary}");
    let memory = &summary["memory"];
    assert!(memory["rss_mib_end"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(memory["jobs_kept"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        summary["regions"].as_array().unwrap().len(),
        10,
        "{summary}"
    );
    assert!(fen(&summary, "gross_fen") > 0, "{summary}");
    assert!(
        fen(&summary, "voucher_fen") > 0,
        "vouchers were used: {summary}"
    );
    assert_money_adds_up(&summary);
}

#[test]
fn demo_restarted_on_the_same_db_does_not_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.sqlite");
    let twice = dir.path().join("twice.sqlite");
    // No model calls: they are real wall-clock calls, not replayed, so two
    // runs would bill different calls.
    let fast = ["--speed", "200000", "--model-calls-per-s", "0"];
    let db = |p: &std::path::Path| p.display().to_string();

    let straight =
        run_demo_to_end(&[&fast[..], &["--db", &db(&once), "--sim-hours", "5"]].concat());
    let first = run_demo_to_end(&[&fast[..], &["--db", &db(&twice), "--sim-hours", "2"]].concat());
    let resumed =
        run_demo_to_end(&[&fast[..], &["--db", &db(&twice), "--sim-hours", "5"]].concat());

    assert!(fen(&first, "records_ingested") > 0, "{first}");
    assert!(
        fen(&resumed, "records_already_present") >= fen(&first, "records_ingested"),
        "the resumed run replays what the first stored: {resumed}"
    );
    assert_eq!(resumed["sim_now"], straight["sim_now"]);
    assert!(
        fen(&straight, "gross_fen") > fen(&first, "gross_fen"),
        "more usage after 5 h than after 2 h"
    );
    // Interrupted and resumed = run straight through, to the fen, per tenant.
    for key in ["gross_fen", "voucher_fen", "net_fen"] {
        assert_eq!(fen(&resumed, key), fen(&straight, key), "{key}");
    }
    let per_tenant = |s: &serde_json::Value| -> Vec<(String, i64, i64)> {
        s["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["tenant"].as_str().unwrap().to_string(),
                    fen(t, "gross_fen"),
                    fen(t, "net_fen"),
                )
            })
            .collect()
    };
    assert_eq!(per_tenant(&resumed), per_tenant(&straight));
    assert_money_adds_up(&resumed);
    // The demo samples its waiting jobs into the ledger in simulated time,
    // as a controller does: the operator page's "pending over time".
    let end = chrono::NaiveDateTime::parse_from_str(
        straight["sim_now"].as_str().unwrap(),
        "%Y-%m-%d %H:%M",
    )
    .unwrap()
    .and_utc()
    .timestamp();
    let ledger = zhisuan::ledger::Ledger::open(&db(&once)).unwrap();
    let s = ledger
        .pending_series(
            end - 6 * 3600,
            end + 3600,
            zhisuan::ledger::series::Bucket::Hour,
        )
        .unwrap();
    assert!(
        s.total.iter().map(|p| p.samples).sum::<i64>() > 0,
        "no pending samples: {s:?}"
    );
    assert!(s.reasons.iter().any(|(r, _)| r == "capacity"), "{s:?}");
}

/// Sum of a summary's per-region (the world's own metering) or per-tenant
/// (the ledger's) GPU-hours.
fn gpu_hours(summary: &serde_json::Value, list: &str) -> f64 {
    summary[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["gpu_hours"].as_f64().unwrap())
        .sum()
}

/// The demo killed with -9 while tenants' jobs from the API run, then
/// restarted on the same `--db`: the API's jobs are back with the same ids
/// (the journal replays them), and the ledger bills exactly the GPU time the
/// resumed world metered from the start — nothing lost, nothing twice
/// (before the journal, the API's jobs vanished and the workload's later
/// jobs took their ids: their usage was billed again under new record ids).
#[test]
fn demo_killed_with_9_and_restarted_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kept.sqlite").display().to_string();
    let run = [
        "--db",
        db.as_str(),
        "--sim-hours",
        "4",
        "--model-calls-per-s",
        "0",
    ];
    let demo = Demo::start(&[&["--speed", "900"][..], &run].concat());
    let http = reqwest::blocking::Client::new();
    let base = format!("http://{}", demo.addr);
    let made: serde_json::Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"name": "kilo"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = made["api_key"].as_str().expect("a tenant key").to_string();
    let mut ids = Vec::new();
    for (name, gpus) in [("big", 8), ("small", 2)] {
        let job: serde_json::Value = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .json(
                &serde_json::json!({"kind": "training", "name": name, "replicas": 1,
                "gpus_per_replica": gpus, "image": "r/t:1", "max_runtime_s": 7200}),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        ids.push((job["id"].as_str().expect("a job id").to_string(), name));
    }
    // Let the jobs run a while (≈ 1 simulated hour), then kill -9.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let mut demo = demo;
    let mut child = demo.child.take().unwrap();
    child.kill().expect("kill -9");
    child.wait().unwrap();

    let demo = Demo::start(&[&["--speed", "900"][..], &run].concat());
    for (id, name) in &ids {
        let job: serde_json::Value = http
            .get(format!("http://{}/v1/jobs/{id}", demo.addr))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            job["name"], *name,
            "job {id} is the same job after the restart: {job}"
        );
    }
    let mut demo = demo;
    let child = demo.child.take().unwrap();
    let resumed = summary_of(child.wait_with_output().unwrap());
    assert_money_adds_up(&resumed);
    let (world, ledger) = (
        gpu_hours(&resumed, "regions"),
        gpu_hours(&resumed, "tenants"),
    );
    assert!(world > 0.0, "{resumed}");
    assert!(
        (world - ledger).abs() < 1e-6 * world.max(1.0),
        "billed GPU-hours {ledger} = metered {world}"
    );
    let kilo = resumed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "kilo")
        .expect("the API tenant is billed");
    assert!(kilo["gpu_hours"].as_f64().unwrap() > 10.0, "{kilo}");
}
