//! The tenant console in a real browser: the API (standalone, simulated
//! cluster) serves `/console`; `tests/console/console_test.py` drives the
//! system's headless Chromium through Playwright (sign-in, a job that runs,
//! one that waits and why, a 422, cancel, statements, charts, a revoked key,
//! the first paint with 1,000 jobs). Screenshots: `target/console/`.
//! Skipped without Playwright or Chromium, except under CI (`CI` set).

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/standalone.rs"]
mod standalone;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{json, Value};

const ADMIN: &str = "console-test-admin-key-0123456789";

fn playwright() -> bool {
    Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn call(
    client: &Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> Value {
    let mut req = client.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().expect("request");
    let status = resp.status();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

#[test]
fn the_tenant_console_works_in_a_real_browser() {
    let (Some(bin), true) = (chromium::chromium(), playwright()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs chromium and Python's playwright (.ci/run installs them)"
        );
        eprintln!("skipped: no chromium or no playwright");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let db_path = db.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = zhisuan::api::ApiConfig {
        rate_limit: zhisuan::api::RateLimit {
            per_second: 100_000.0,
            burst: 100_000.0,
        },
        ..zhisuan::api::ApiConfig::with_admin_key(ADMIN)
    };
    let (addr, _) = standalone::serve(&runtime, config, &db);
    let base = format!("http://{addr}");
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = reqwest::Method::POST;
    // A tenant whose V100M32 GPU-hours this month are used up from the
    // start: a job that may only run there waits, and says why.
    let tenant_without_v100 = |name: &str| -> String {
        let key = call(
            &client,
            post.clone(),
            format!("{base}/v1/tenants"),
            ADMIN,
            Some(json!({"name": name})),
        )["api_key"]
            .as_str()
            .unwrap()
            .to_string();
        call(
            &client,
            reqwest::Method::PUT,
            format!("{base}/v1/tenants/{name}/quota"),
            ADMIN,
            Some(json!({"gpus": {"*": 8}, "gpu_hours_per_month": {"V100M32": 0}})),
        );
        key
    };
    let key = tenant_without_v100("acme");
    // Metered GPU time of the last two days, as the controller's meter (or
    // `zhisuan ledger ingest`) writes it: the charts draw it.
    let now = chrono::Utc::now().timestamp();
    let month_start = zhisuan::ledger::Month::of(chrono::Utc::now())
        .start()
        .timestamp();
    let ledger = zhisuan::ledger::Ledger::open(&db_path).unwrap();
    let used = |source: &str, start: i64, hours: i64| zhisuan::ledger::UsageRecord {
        source: source.into(),
        tenant: "acme".into(),
        job: "acme/earlier".into(),
        region: "guian".into(),
        node: "guian-g2-003".into(),
        model: "G2".into(),
        gpu_milli: 2000,
        start: chrono::DateTime::from_timestamp(start, 0).unwrap(),
        end: chrono::DateTime::from_timestamp(start + hours * 3600, 0).unwrap(),
        it_energy_j: 1_000_000 * hours,
        pue: 1.2,
        green_share: 0.5,
        grid_kg_per_kwh: 0.57,
    };
    ledger
        .ingest(
            &[
                used("pod-1", now - 86_400 - 7_200, 2),
                // This month's (the operator page's totals), however
                // early in the month the test runs.
                used("pod-2", (now - 3 * 3600).max(month_start), 1),
            ],
            &[],
        )
        .unwrap();
    // Workloads waiting two hours and one hour ago, as the leading
    // controller samples them: the operator page's "pending over time".
    for (ago, counts) in [
        (2 * 3600, vec![("QuotaExceeded", 3), ("Unschedulable", 1)]),
        (3600, vec![("QuotaExceeded", 1)]),
    ] {
        let by: std::collections::BTreeMap<String, u64> = counts
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect();
        ledger.record_pending(now - ago, &by).unwrap();
    }
    let keys = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/v1/tenants/acme/keys"),
        ADMIN,
        None,
    );
    let key_id = keys["keys"][0]["id"]
        .as_str()
        .expect("a key id")
        .to_string();
    // A tenant whose job waits (its only model's GPU-hours are used up),
    // for the operator page's "why pending".
    let slow = tenant_without_v100("slow");
    call(
        &client,
        post.clone(),
        format!("{base}/v1/jobs"),
        &slow,
        Some(
            json!({"kind": "training", "name": "stuck", "replicas": 1, "gpus_per_replica": 1,
                    "gpu_models": ["V100M32"], "image": "r/t:1"}),
        ),
    );
    // A tenant's key may not list everyone's waiting jobs.
    let refused = client
        .get(format!("{base}/v1/pending"))
        .bearer_auth(&slow)
        .send()
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    // Nor everyone's waiting over time.
    let refused = client
        .get(format!("{base}/v1/series/pending"))
        .bearer_auth(&slow)
        .send()
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    // A second tenant with 1,000 jobs, for the first paint.
    let load_key = call(
        &client,
        post.clone(),
        format!("{base}/v1/tenants"),
        ADMIN,
        Some(json!({"name": "load"})),
    )["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..1000 {
        call(
            &client,
            post.clone(),
            format!("{base}/v1/jobs"),
            &load_key,
            Some(
                json!({"kind": "training", "name": format!("j-{i}"), "replicas": 1,
                        "gpus_per_replica": 1, "image": "r/t:1"}),
            ),
        );
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console_test.py");
    let run = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg(script)
        .args([
            "--base",
            &base,
            "--key",
            &key,
            "--key-id",
            &key_id,
            "--load-key",
            &load_key,
        ])
        .args(["--admin", ADMIN, "--chromium", bin.to_str().unwrap()])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the browser test failed ({}):\n{}\n{}",
        run.status,
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    let figures: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("figures");
    let paint = figures["first_paint_ms_1000_jobs"].as_f64().unwrap();
    eprintln!(
        "console first paint with 1,000 jobs: {paint} ms (median of 3; runs {})",
        figures["first_paint_ms_runs"]
    );
    for shot in [
        "1-wrong-key.png",
        "2-jobs.png",
        "3-invalid.png",
        "4-signed-in.png",
        "5-revoked.png",
        "7-operator-page.png",
        "6-1000-jobs.png",
    ] {
        let len = std::fs::metadata(out.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            len > 10_000,
            "screenshot {shot} missing or blank ({len} bytes)"
        );
    }
}
