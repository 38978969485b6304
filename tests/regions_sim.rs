//! `zhisuan sim` end to end: the three policies on the shipped catalog and
//! workload reach the issue's figures, and a bad catalog is rejected at load.

use std::process::Command;

fn zhisuan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .args(args)
        .output()
        .expect("run zhisuan")
}

/// The issue's figures for green against nearest; every miss, named. The
/// mean wait must be at most `wait_ratio` × nearest's.
fn issue_figures(
    near: &serde_json::Value,
    green: &serde_json::Value,
    wait_ratio: f64,
) -> Result<(), String> {
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let mut misses = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            misses.push(what);
        }
    };
    let (gc, nc) = (f(green, "carbon_kg"), f(near, "carbon_kg"));
    check(gc <= 0.70 * nc, format!("carbon ≥ 30% lower: {gc} vs {nc}"));
    let (gk, nk) = (f(green, "energy_cost_cny"), f(near, "energy_cost_cny"));
    check(
        gk <= 0.80 * nk,
        format!("energy cost ≥ 20% lower: {gk} vs {nk}"),
    );
    for k in ["slo_violations", "residency_violations", "never_placed"] {
        check(green[k] == 0, format!("{k} = {}", green[k]));
    }
    let (gw, nw) = (f(green, "mean_wait_s"), f(near, "mean_wait_s"));
    check(
        gw <= wait_ratio * nw,
        format!("mean wait ≤ {wait_ratio} × nearest: {gw} vs {nw}"),
    );
    if misses.is_empty() {
        Ok(())
    } else {
        Err(misses.join("; "))
    }
}

fn runs(seed: u32) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let seed = seed.to_string();
    let out = zhisuan(&[
        "sim",
        "--policy",
        "nearest,green,round-robin",
        "--json",
        "--seed",
        &seed,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = |p: &str| {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["policy"] == p)
            .unwrap()
            .clone()
    };
    (run("nearest"), run("green"), run("round-robin"))
}

#[test]
fn green_beats_nearest_without_violations() {
    let (near, green, rr) = runs(1);
    for r in [&near, &green, &rr] {
        for key in [
            "jobs",
            "gpu_hours",
            "facility_kwh",
            "carbon_kg",
            "energy_cost_cny",
            "slo_violations",
            "residency_violations",
            "mean_wait_s",
        ] {
            assert!(r.get(key).is_some(), "missing {key}");
        }
        let regions = r["regions"].as_array().unwrap();
        assert_eq!(regions.len(), 10);
        assert!(regions.iter().all(|g| g["name"].is_string()
            && g["utilisation_pct"].is_number()
            && g["carbon_kg"].is_number()));
        // Every policy runs the same work.
        assert_eq!(r["jobs"], near["jobs"]);
        assert!(
            (r["gpu_hours"].as_f64().unwrap() - near["gpu_hours"].as_f64().unwrap()).abs() < 1e-6
        );
    }
    // The issue: mean wait no worse than nearest + 10% (shipped seed).
    if let Err(misses) = issue_figures(&near, &green, 1.10) {
        panic!("seed 1: {misses}");
    }
    // The baselines ignore SLOs and residency; the simulation counts it.
    assert!(rr["slo_violations"].as_u64().unwrap() > 0);
}

/// The seed orders ties among equal-power nodes (the same for every
/// policy); the figures must not hang on the shipped one. Carbon, cost and
/// violations must hold on every seed. The mean wait (under a second, moved
/// by tie order) must hold on the mean over the seeds, and no seed may be
/// worse than nearest by more than 25%: through the controller's scheduler
/// seed 2 alone is +14.1% (0.91 s vs 0.80 s; docs/regions.md). The seeds
/// run as concurrent processes (each a whole simulation).
#[test]
fn the_figures_hold_on_other_seeds() {
    let handles: Vec<_> = (2..=10)
        .map(|seed| std::thread::spawn(move || (seed, runs(seed))))
        .collect();
    let runs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("a seed's run"))
        .collect();
    let mut misses: Vec<String> = runs
        .iter()
        .filter_map(|(seed, (near, green, _))| {
            issue_figures(near, green, 1.25)
                .err()
                .map(|m| format!("seed {seed}: {m}"))
        })
        .collect();
    let mean = |policy: usize| {
        runs.iter()
            .map(|(_, r)| [&r.0, &r.1][policy]["mean_wait_s"].as_f64().unwrap())
            .sum::<f64>()
            / runs.len() as f64
    };
    let (near, green) = (mean(0), mean(1));
    if green > 1.10 * near {
        misses.push(format!(
            "mean wait over seeds 2-10 ≤ 1.10 × nearest: {green} vs {near}"
        ));
    }
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

#[test]
fn bad_catalog_is_rejected_with_file_entry_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/regions/catalog.yaml"
    ))
    .unwrap();
    std::fs::write(&path, good.replacen("pue: 1.13", "pue: 0.95", 1)).unwrap();
    let out = zhisuan(&["sim", "--regions", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("(zhongwei)") && err.contains("pue 0.95"),
        "{err}"
    );
    let out = zhisuan(&["sim", "--policy", "fastest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--policy"));
}
