//! Architecture rules the code must keep: the domain core (`placement`,
//! `regions`, `ledger`, the job contract `jobs` and the scheduler `schedule`) imports nothing of the edges (`operator`, `api`,
//! `telemetry`, `sim`, `demo`, kube, axum), and packing knows no money.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code part of a line (a `//` comment stripped).
fn code_of(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Lines under `root` whose code matches `rule`, as "file:line: text".
fn offending_lines(root: &Path, rule: impl Fn(&str) -> bool) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if rule(code_of(line)) {
                hits.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

const EDGES: &[&str] = &[
    "crate::operator",
    "crate::api",
    "crate::telemetry",
    "crate::sim",
    "crate::demo",
    "zhisuan::operator",
    "zhisuan::api",
    "zhisuan::telemetry",
    "zhisuan::sim",
    "zhisuan::demo",
    "kube::",
    "axum::",
    "k8s_openapi::",
];

fn imports_an_edge(code: &str) -> bool {
    EDGES.iter().any(|edge| code.contains(edge))
}

/// Money words as whole identifier parts (`price_fen`, `Cny`), not substrings of other words.
fn mentions_money(code: &str) -> bool {
    code.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .flat_map(|ident| ident.split('_'))
        .any(|part| {
            matches!(
                part.to_ascii_lowercase().as_str(),
                "fen" | "price" | "prices" | "cny" | "yuan" | "ledger" | "voucher" | "tariff"
            )
        })
}

fn src(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir)
}

#[test]
fn domain_core_imports_no_edge_module() {
    for core in ["placement", "regions", "ledger", "jobs", "schedule"] {
        let hits = offending_lines(&src(core), imports_an_edge);
        assert!(
            hits.is_empty(),
            "src/{core} is domain core and must not depend on operator/api/telemetry/sim/demo/kube/axum:\n{}",
            hits.join("\n")
        );
    }
}

#[test]
fn packing_knows_no_money() {
    let hits = offending_lines(&src("placement"), |code| {
        mentions_money(code) || code.contains("crate::regions")
    });
    assert!(
        hits.is_empty(),
        "src/placement must not know prices, vouchers, ledgers or regions:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_rules_catch_violations_and_ignore_comments() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bad.rs"),
        "use crate::api::router; // fine comment about crate::sim\n\
         // use crate::operator::x; only a comment\n\
         let price_fen: i64 = 3;\n\
         let offence = defensive();\n",
    )
    .unwrap();
    let edge_hits = offending_lines(dir.path(), imports_an_edge);
    assert_eq!(edge_hits.len(), 1, "{edge_hits:?}");
    assert!(edge_hits[0].contains(":1:"));
    let money_hits = offending_lines(dir.path(), mentions_money);
    assert_eq!(money_hits.len(), 1, "{money_hits:?}");
    assert!(money_hits[0].contains(":3:"));
}

/// Lines of `dir` that use any of `modules` (as `crate::m` or `super::super::m`).
fn uses_modules(dir: &str, modules: &[&str]) -> Vec<String> {
    offending_lines(&src(dir), |code| {
        modules.iter().any(|m| {
            code.contains(&format!("crate::{m}")) || code.contains(&format!("zhisuan::{m}"))
        })
    })
}

#[test]
fn the_api_knows_neither_the_simulator_nor_the_operator() {
    let hits = uses_modules("api", &["sim", "operator", "demo"]);
    assert!(
        hits.is_empty(),
        "src/api serves a JobBackend; which one (sim or operator) is chosen in src/cmd:\n{}",
        hits.join("\n")
    );
}

#[test]
fn telemetry_does_not_import_the_operator() {
    let hits = uses_modules("telemetry", &["operator", "api", "demo"]);
    assert!(
        hits.is_empty(),
        "src/telemetry (node agent) must not depend on the operator, api or demo:\n{}",
        hits.join("\n")
    );
}
