//! Region choice on catalogs and workloads it was never tuned on (issue
//! #18): `zhisuan sim --generated SEED --policy all` over 40 seeded pairs
//! (3–7 regions, prices, green profiles, PUE, distances, scarce models, NPUs,
//! gangs, residency, SLOs, load from light to saturated; `sim::generate`):
//! seeds 1–20, which the policy's changes were judged on, and 21–40, which
//! none was (docs/regions.md "Seeds never tuned on").
//! On every pair the default policy has no SLO or residency violation and
//! leaves no job unplaced. The other two bars are NOT met yet, so
//! they are held as ratchets at what the policy reaches today (docs/regions.md
//! "Generalisation"): a baseline (nearest, round-robin, cheapest-first,
//! greenest-first) dominates it on (carbon, energy cost, mean wait) on at
//! most 6 of the 40 pairs (2 of seeds 1–20, 4 of 21–40), and its mean wait
//! is within 1.10 × nearest's (+1 s) on at least 14 (8 and 6). Every pair's
//! figures are printed; a change that makes either count worse fails, one
//! that makes it better should tighten the bar.

use std::process::Command;

const SEEDS: std::ops::RangeInclusive<u64> = 1..=40;

fn sim(seed: u64) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .args(["sim", "--generated", &seed.to_string(), "--policy", "all"])
        .args(["--json", "--quiet"])
        .output()
        .expect("run zhisuan");
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One policy's run of a pair.
fn run<'a>(v: &'a serde_json::Value, policy: &str) -> &'a serde_json::Value {
    let runs = v["runs"].as_array().expect("runs");
    runs.iter()
        .find(|r| r["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} run"))
}

/// What the default policy misses on one pair, in words.
fn misses(seed: u64, v: &serde_json::Value) -> Vec<String> {
    let green = run(v, "green");
    let mut out = Vec::new();
    for k in ["slo_violations", "residency_violations", "never_placed"] {
        if green[k] != 0 {
            out.push(format!("seed {seed}: {k} = {}", green[k]));
        }
    }
    out
}

/// Who dominates the default policy on one pair, in words (empty: nobody).
fn dominated(seed: u64, v: &serde_json::Value) -> Option<String> {
    let green = run(v, "green");
    let by = v["comparison"]["green_dominated_by"]
        .as_array()
        .expect("dominance");
    if !by.is_empty() {
        let f = |r: &serde_json::Value| {
            format!(
                "{} carbon {:.1} kg, cost {:.2} CNY, wait {:.1} s",
                r["policy"],
                r["carbon_kg"].as_f64().unwrap(),
                r["energy_cost_cny"].as_f64().unwrap(),
                r["mean_wait_s"].as_f64().unwrap()
            )
        };
        let doms: Vec<String> = by.iter().map(|p| f(run(v, p.as_str().unwrap()))).collect();
        return Some(format!(
            "seed {seed}: green ({}) dominated by {}",
            f(green),
            doms.join("; ")
        ));
    }
    None
}

/// Pairs a baseline may dominate the default policy on, and pairs its mean
/// wait must be within 1.10 × nearest's on (of 40): today's figures.
const MOST_DOMINATED: usize = 6;
const LEAST_WAIT_MET: usize = 14;

#[test]
fn the_default_policy_keeps_every_constraint_on_generated_pairs() {
    let handles: Vec<_> = SEEDS
        .map(|seed| std::thread::spawn(move || (seed, sim(seed))))
        .collect();
    let mut all = Vec::new();
    let (mut doms, mut wait_met) = (Vec::new(), 0);
    for h in handles {
        let (seed, v) = h.join().expect("a pair's run");
        let (g, n) = (run(&v, "green"), run(&v, "nearest"));
        eprintln!(
            "seed {seed:>2}: green vs nearest carbon {:+.1}%, cost {:+.1}%, wait {:.1} s vs {:.1} s",
            -v["comparison"]["carbon_reduction_vs_nearest_pct"].as_f64().unwrap(),
            -v["comparison"]["energy_cost_reduction_vs_nearest_pct"]
                .as_f64()
                .unwrap(),
            g["mean_wait_s"].as_f64().unwrap(),
            n["mean_wait_s"].as_f64().unwrap(),
        );
        all.extend(misses(seed, &v));
        doms.extend(dominated(seed, &v));
        let (gw, nw) = (
            g["mean_wait_s"].as_f64().unwrap(),
            n["mean_wait_s"].as_f64().unwrap(),
        );
        wait_met += usize::from(gw <= 1.10 * nw + 1.0);
    }
    eprintln!("{}", doms.join("\n"));
    eprintln!(
        "mean wait ≤ 1.10 × nearest (+1 s) on {wait_met} of {} pairs",
        SEEDS.count()
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
