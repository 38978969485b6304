//! The Helm chart and the Grafana dashboards: the chart ships exactly the
//! CRDs in `crds/` and the dashboards in `dashboards/`, the dashboards follow
//! the metric-name contract, and `helm lint` passes (helm-sdkpy).

#[path = "support/dashboards.rs"]
mod dashboards;

use dashboards::{dashboard_files, load, panel_queries, repo_root};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `name → bytes` of the files with extension `ext` directly in `dir` (empty if `dir` is absent).
fn files_by_name(dir: &Path, ext: &str) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn assert_same_files(source: &str, copy: &str, ext: &str) {
    let root = repo_root();
    let want = files_by_name(&root.join(source), ext);
    let have = files_by_name(&root.join(copy), ext);
    let want_names: Vec<_> = want.keys().collect();
    let have_names: Vec<_> = have.keys().collect();
    assert_eq!(
        have_names, want_names,
        "{copy}/ must hold exactly the .{ext} files of {source}/; fix: rm {copy}/*.{ext} && cp {source}/*.{ext} {copy}/"
    );
    for (name, bytes) in &want {
        assert!(
            have[name] == *bytes,
            "{copy}/{name} differs from {source}/{name}; fix: cp {source}/{name} {copy}/{name}"
        );
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    assert_same_files("crds", "charts/zhisuan/crds", "yaml");
}

#[test]
fn chart_dashboards_are_the_shipped_ones() {
    assert_same_files("dashboards", "charts/zhisuan/dashboards", "json");
    assert!(
        dashboard_files(&repo_root().join("dashboards")).len() >= 2,
        "dashboards/ must hold the Operations and Finance dashboards"
    );
}

/// Metric names of the contract in the project brief; a panel naming anything
/// else would chart nothing.
const CONTRACT_METRICS: &[&str] = &[
    "zhisuan_region_gpus",
    "zhisuan_region_gpus_allocated",
    "zhisuan_region_gpu_utilisation",
    "zhisuan_region_pue",
    "zhisuan_region_green_share",
    "zhisuan_region_carbon_kg_total",
    "zhisuan_region_facility_kwh_total",
    "zhisuan_node_gpus_allocated",
    "zhisuan_pending_jobs",
    "zhisuan_placement_decisions_total",
    "zhisuan_bind_errors_total",
    "zhisuan_preemptions_total",
    "zhisuan_admission_wait_seconds",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_XID_ERRORS",
    "zhisuan_device_healthy",
    "zhisuan_pod_energy_joules_total",
    "zhisuan_device_idle_energy_joules_total",
    "zhisuan_tenant_gpu_seconds_total",
    "zhisuan_tenant_tokens_total",
    "zhisuan_tenant_energy_kwh_total",
    "zhisuan_tenant_carbon_kg_total",
    "zhisuan_tenant_charge_fen_total",
    "zhisuan_tenant_voucher_redeemed_fen_total",
    "zhisuan_tenant_net_fen_total",
    "zhisuan_voucher_balance_fen",
];

/// Identifiers in a PromQL expression that look like zhisuan / DCGM metric names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("zhisuan_") || word.starts_with("DCGM_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[test]
fn dashboards_use_contract_metrics_and_variables() {
    for file in dashboard_files(&repo_root().join("dashboards")) {
        let dash = load(&file);
        let name = file.display();
        let vars: Vec<&str> = dash["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: templating.list missing"))
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            vars.contains(&"datasource"),
            "{name}: no datasource variable"
        );
        assert!(vars.contains(&"region"), "{name}: no region variable");
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{name}: only {} panels", panels.len());
        let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "{name}: duplicate panel ids");
        for panel in panels {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: panel {} does not use the datasource variable",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}");
            }
        }
    }
    let finance = load(&repo_root().join("dashboards/finance.json"));
    let finance_vars = finance["templating"]["list"].to_string();
    assert!(
        finance_vars.contains("\"tenant\""),
        "finance: no tenant variable"
    );

    let queries = panel_queries();
    assert!(!queries.is_empty());
    for q in &queries {
        let names = metric_names(&q.expr);
        assert!(
            !names.is_empty(),
            "{} / {}: no metric in {}",
            q.dashboard,
            q.panel,
            q.expr
        );
        for n in names {
            assert!(
                CONTRACT_METRICS.contains(&n.as_str()),
                "{} / {}: metric {n} is not in the metric-name contract",
                q.dashboard,
                q.panel
            );
        }
    }
}

const LINT_SCRIPT: &str = r#"
import asyncio, json, sys
import helm_sdkpy
res = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(sys.argv[1]))
print(json.dumps(res))
"#;

fn helm_sdkpy_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import helm_sdkpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Lints a chart directory; returns the lint messages of severity warning or error.
fn helm_lint(chart: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args(["-c", LINT_SCRIPT])
        .arg(chart)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "helm lint of {} failed: {}",
        chart.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let res: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("lint output is not JSON ({e}): {stdout}"));
    assert_eq!(res["TotalChartsLinted"], 1, "lint saw no chart: {res}");
    let mut bad: Vec<serde_json::Value> = res["Messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        // helm's support.Severity: 1 info, 2 warning, 3 error.
        .filter(|m| m["Severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    bad.extend(res["Errors"].as_array().cloned().unwrap_or_default());
    bad
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn helm_lint_passes() {
    if !helm_sdkpy_installed() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "helm-sdkpy is not installed (CI): pip install --ignore-requires-python helm-sdkpy"
            );
        }
        eprintln!("skipped: helm-sdkpy not installed");
        return;
    }
    let chart = repo_root().join("charts/zhisuan");
    let problems = helm_lint(&chart);
    assert!(
        problems.is_empty(),
        "helm lint (default values): {problems:?}"
    );

    // The HA variant: PostgreSQL from a Secret, 3 replicas, ServiceMonitor, own
    // catalog, the vendor's device plugin instead of zhisuan's.
    let tmp = tempfile::tempdir().unwrap();
    let ha = tmp.path().join("zhisuan");
    copy_dir(&chart, &ha);
    let values = std::fs::read_to_string(ha.join("values.yaml")).unwrap();
    let values = values
        .replace("  replicas: 1\n", "  replicas: 3\n")
        .replace("  backend: sqlite\n", "  backend: postgres\n")
        .replace(
            "    existingSecret: \"\"\n    secretKey: url",
            "    existingSecret: zhisuan-pg\n    secretKey: url",
        )
        .replace(
            "serviceMonitor:\n  enabled: false",
            "serviceMonitor:\n  enabled: true",
        )
        .replace(
            "regions:\n  catalog: \"\"",
            "regions:\n  catalog: |\n    regions: []",
        )
        .replace(
            "  devicePlugin:\n    enabled: true",
            "  devicePlugin:\n    enabled: false",
        );
    assert!(values.contains("replicas: 3") && values.contains("existingSecret: zhisuan-pg"));
    assert!(values.contains("devicePlugin:\n    enabled: false"));
    std::fs::write(ha.join("values.yaml"), values).unwrap();
    let problems = helm_lint(&ha);
    assert!(problems.is_empty(), "helm lint (HA values): {problems:?}");

    // And lint can fail: a template with broken YAML is reported.
    let broken = tmp.path().join("broken");
    copy_dir(&chart, &broken);
    std::fs::write(
        broken.join("templates/broken.yaml"),
        "kind: [unclosed\n  x: {{ .Values.nope.nope }}\n",
    )
    .unwrap();
    assert!(
        !helm_lint(&broken).is_empty(),
        "helm lint accepted a broken template"
    );
}
