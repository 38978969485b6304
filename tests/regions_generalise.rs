//! Region choice on catalogs and workloads it was never tuned on (issue
//! #18): `zhisuan sim --sweep 1..160`, every policy on 160 seeded pairs
//! (3–7 regions, prices, green profiles, PUE, distances, scarce models, NPUs,
//! gangs, residency, SLOs, load from light to saturated; `sim::generate`):
//! seeds 1–20, which the policy's changes were judged on, 21–40, which none
//! was, and 41–160, first run on 2026-12-07 (docs/regions.md "Seeds never
//! tuned on", "160 pairs"). Holding all 160 keeps a change from being judged
//! on a few pairs: differences of 2–4 pairs in 60 reverse between seed sets.
//! On every pair the default policy has no SLO or residency violation and
//! leaves no job unplaced. The other two bars are NOT met yet, so
//! they are held as ratchets at what the policy reaches today: a baseline
//! (nearest, round-robin, cheapest-first, greenest-first) dominates it on
//! (carbon, energy cost, mean wait) on at most 35 of the 160 pairs, and its
//! mean wait is within 1.10 × nearest's (+1 s) on at least 59. Every pair's
//! figures are printed; a change that makes either count worse fails, one
//! that makes it better should tighten the bar.

use std::process::Command;

const SEEDS: &str = "1..160";

/// `zhisuan sim --sweep 1..160 --json`: every pair and the tally.
fn sweep() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .args(["sim", "--sweep", SEEDS, "--json", "--quiet"])
        .output()
        .expect("run zhisuan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One policy's figures on a pair.
fn run<'a>(pair: &'a serde_json::Value, policy: &str) -> &'a serde_json::Value {
    let runs = pair["runs"].as_array().expect("runs");
    runs.iter()
        .find(|r| r["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} run"))
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().expect("a number")
}

/// What the default policy misses on one pair, in words.
fn misses(pair: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in [
        "green_slo_violations",
        "green_residency_violations",
        "green_never_placed",
    ] {
        if pair[k] != 0 {
            out.push(format!("seed {}: {k} = {}", pair["seed"], pair[k]));
        }
    }
    out
}

/// Who dominates the default policy on one pair, in words (empty: nobody).
fn dominated(pair: &serde_json::Value) -> Option<String> {
    let by = pair["comparison"]["green_dominated_by"]
        .as_array()
        .expect("dominance");
    if by.is_empty() {
        return None;
    }
    let figures = |r: &serde_json::Value| {
        format!(
            "{} carbon {:.1} kg, cost {:.2} CNY, wait {:.1} s",
            r["policy"],
            f(&r["carbon_kg"]),
            f(&r["energy_cost_cny"]),
            f(&r["mean_wait_s"])
        )
    };
    let doms: Vec<String> = by
        .iter()
        .map(|p| figures(run(pair, p.as_str().unwrap())))
        .collect();
    Some(format!(
        "seed {}: green ({}) dominated by {}",
        pair["seed"],
        figures(run(pair, "green")),
        doms.join("; ")
    ))
}

/// Pairs a baseline may dominate the default policy on, and pairs its mean
/// wait must be within 1.10 × nearest's on (of 160): today's figures.
const MOST_DOMINATED: usize = 28;
const LEAST_WAIT_MET: usize = 60;

#[test]
fn the_default_policy_keeps_every_constraint_on_generated_pairs() {
    let v = sweep();
    let pairs = v["pairs"].as_array().expect("pairs");
    let seeds: Vec<u64> = pairs.iter().map(|p| p["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, (1..=160).collect::<Vec<u64>>());
    let mut all = Vec::new();
    let (mut doms, mut wait_met) = (Vec::new(), 0);
    for p in pairs {
        let (g, n) = (run(p, "green"), run(p, "nearest"));
        let c = &p["comparison"];
        eprintln!(
            "seed {:>2}: green vs nearest carbon {:+.1}%, cost {:+.1}%, wait {:.1} s vs {:.1} s",
            p["seed"],
            -f(&c["carbon_reduction_vs_nearest_pct"]),
            -f(&c["energy_cost_reduction_vs_nearest_pct"]),
            f(&g["mean_wait_s"]),
            f(&n["mean_wait_s"]),
        );
        all.extend(misses(p));
        doms.extend(dominated(p));
        // The bound, read from the figures (the sweep's flag must agree).
        let within = f(&g["mean_wait_s"]) <= 1.10 * f(&n["mean_wait_s"]) + 1.0;
        assert_eq!(c["within_wait_bound"], within, "seed {}", p["seed"]);
        wait_met += usize::from(within);
    }
    let summary = &v["summary"];
    assert_eq!(summary["within_wait_bound"], wait_met);
    assert_eq!(summary["dominated"], doms.len());
    eprintln!("{}", doms.join("\n"));
    eprintln!(
        "mean wait ≤ 1.10 × nearest (+1 s) on {wait_met} of {} pairs",
        pairs.len()
    );
    if doms.len() > MOST_DOMINATED {
        all.push(format!(
            "dominated on {} pairs (at most {MOST_DOMINATED})",
            doms.len()
        ));
    }
    if wait_met < LEAST_WAIT_MET {
        all.push(format!(
            "wait bound met on {wait_met} pairs (at least {LEAST_WAIT_MET})"
        ));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}
