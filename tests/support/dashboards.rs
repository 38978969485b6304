//! Reads the Grafana dashboards in `dashboards/` and yields every panel query
//! with the dashboard variables substituted, ready for Prometheus' HTTP API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The dashboard JSON files, sorted by name.
pub fn dashboard_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

pub fn load(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Grafana's built-in interval variables and the dashboards' own variables,
/// replaced the way Grafana does with "All" selected.
pub fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("${tenant}", ".*")
        .replace("$tenant", ".*")
        .replace("${region}", ".*")
        .replace("$region", ".*")
}

pub fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for file in dashboard_files(&repo_root().join("dashboards")) {
        let dash = load(&file);
        let title = dash["title"].as_str().unwrap_or("?").to_string();
        for panel in dash["panels"].as_array().expect("panels array") {
            let panel_title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().expect("targets array") {
                let expr = target["expr"].as_str().expect("target.expr");
                out.push(PanelQuery {
                    dashboard: title.clone(),
                    panel: panel_title.clone(),
                    expr: substitute(expr),
                });
            }
        }
    }
    out
}
