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
//! (nearest, nearest-strict, round-robin, cheapest-first, greenest-first)
//! dominates it on (carbon, energy cost, mean wait) on at most 28 of the 160
//! pairs, and its mean wait is within 1.10 × nearest's (+1 s) on at least
//! 60. `nearest` runs residency-bound jobs anywhere, so on some valid pairs
//! no policy that keeps residency can be within its bound (the second test
//! shows one); the bound is therefore also held against `nearest-strict`,
//! the nearest region after green's own hard filters: at least 103. Every
//! pair's figures are printed; a change that makes a count worse fails, one
//! that makes it better should tighten the bar.

use std::process::Command;

const SEEDS: &str = "1..160";

/// `zhisuan sim <args> --json --quiet`, parsed.
fn sim_json<I, S>(args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .arg("sim")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run zhisuan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `zhisuan sim --sweep 1..160 --json`: every pair and the tally.
fn sweep() -> serde_json::Value {
    sim_json(["--sweep", SEEDS])
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
/// Pairs its mean wait must be within 1.10 × nearest-strict's (+1 s) on.
const LEAST_WAIT_MET_OF_STRICT: usize = 103;

#[test]
fn the_default_policy_keeps_every_constraint_on_generated_pairs() {
    let v = sweep();
    let pairs = v["pairs"].as_array().expect("pairs");
    let seeds: Vec<u64> = pairs.iter().map(|p| p["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, (1..=160).collect::<Vec<u64>>());
    let mut all = Vec::new();
    let (mut doms, mut wait_met, mut strict_met) = (Vec::new(), 0, 0);
    for p in pairs {
        let (g, n) = (run(p, "green"), run(p, "nearest"));
        let strict = run(p, "nearest-strict");
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
        let within = f(&g["mean_wait_s"]) <= 1.10 * f(&strict["mean_wait_s"]) + 1.0;
        assert_eq!(
            c["within_wait_bound_of_strict"], within,
            "seed {}",
            p["seed"]
        );
        strict_met += usize::from(within);
    }
    let summary = &v["summary"];
    assert_eq!(summary["within_wait_bound"], wait_met);
    assert_eq!(summary["within_wait_bound_of_strict"], strict_met);
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
    eprintln!(
        "mean wait ≤ 1.10 × nearest-strict (+1 s) on {strict_met} of {} pairs",
        pairs.len()
    );
    if strict_met < LEAST_WAIT_MET_OF_STRICT {
        all.push(format!(
            "wait bound of nearest-strict met on {strict_met} pairs (at least {LEAST_WAIT_MET_OF_STRICT})"
        ));
    }
    if wait_met < LEAST_WAIT_MET {
        all.push(format!(
            "wait bound met on {wait_met} pairs (at least {LEAST_WAIT_MET})"
        ));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

/// Two regions of one 8-GPU node each; the users are 5 ms from `near` and
/// 40 ms from `home`. Both jobs need a whole node and may run only in
/// `home` (residency): `long` arrives at 0 s for 36,000 s, `short` at 60 s
/// for 3,600 s.
const OUT_OF_REACH_CATALOG: &str = "version: 1
accelerators:
- {model: A100, vendor: nvidia, power_w: 400.0}
regions:
- name: near
  hub: near
  side: east
  pue: 1.2
  green_share: 0.1
  price_cny_per_kwh: 0.5
  grid_factor_kg_per_kwh: 0.6
  inventory:
  - {model: A100, nodes: 1, gpus_per_node: 8, cpu_milli: 128000, memory_mib: 1048576}
- name: home
  hub: home
  side: west
  pue: 1.2
  green_share: 0.6
  price_cny_per_kwh: 0.5
  grid_factor_kg_per_kwh: 0.6
  inventory:
  - {model: A100, nodes: 1, gpus_per_node: 8, cpu_milli: 128000, memory_mib: 1048576}
user_regions:
- name: u0
links:
- {a: u0, b: near, rtt_ms: 5.0, bandwidth_gbps: 100.0}
- {a: u0, b: home, rtt_ms: 40.0, bandwidth_gbps: 100.0}
";
const OUT_OF_REACH_WORKLOAD: &str = "name,tenant,kind,arrival_s,duration_s,replicas,gpus_per_replica,gpu_milli,cpu_milli,memory_mib,gpu_models,user_region,latency_slo_ms,residency,accelerator_vendor,mixed_models
long,t0,training,0,36000,1,8,0,4000,16384,,u0,,home,,false
short,t0,training,60,3600,1,8,0,4000,16384,,u0,,home,,false
";

/// Why the wait bound against `nearest` is out of reach on some valid
/// pairs for every policy that keeps residency, and so why the sweep also
/// reports it against `nearest-strict`. `nearest` keeps no residency: it
/// runs `long` in `near` and `short` in `home`, and neither waits. Any
/// schedule that keeps residency runs both on `home`'s one node, one after
/// the other: either `long` waits until `short` is done (60 + 3,600 s) or
/// `short` waits until `long` is (36,000 − 60 s) — even knowing the future,
/// at least 3,660 s in all, a mean of 1,830 s against a bound of 1.10 × 0 +
/// 1 s. The policies that keep residency each wait at least that, break no
/// residency, and are within the bound of nearest-strict alone.
#[test]
fn no_policy_that_keeps_residency_meets_the_bound_of_nearest_on_every_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, workload) = (dir.path().join("c.yaml"), dir.path().join("w.csv"));
    std::fs::write(&catalog, OUT_OF_REACH_CATALOG).unwrap();
    std::fs::write(&workload, OUT_OF_REACH_WORKLOAD).unwrap();
    let v = sim_json([
        "--policy".as_ref(),
        "all".as_ref(),
        "--regions".as_ref(),
        catalog.as_os_str(),
        "--workload".as_ref(),
        workload.as_os_str(),
    ]);
    // The least total wait of any residency-keeping order of the two jobs.
    let (long, short) = ((0.0, 36_000.0), (60.0, 3_600.0));
    let short_first = short.0 + short.1 - long.0;
    let long_first = long.0 + long.1 - short.0;
    let floor = f64::min(short_first, long_first) / 2.0;
    assert_eq!(floor, 1_830.0);
    let nearest = run(&v, "nearest");
    assert_eq!(f(&nearest["mean_wait_s"]), 0.0, "{nearest}");
    assert!(f(&nearest["residency_violations"]) >= 1.0, "{nearest}");
    for policy in ["green", "nearest-strict", "cheapest", "greenest"] {
        let r = run(&v, policy);
        assert_eq!(f(&r["residency_violations"]), 0.0, "{policy}: {r}");
        assert!(f(&r["mean_wait_s"]) >= floor, "{policy}: {r}");
    }
    assert!(1.10 * f(&nearest["mean_wait_s"]) + 1.0 < floor);
    assert_eq!(v["comparison"]["within_wait_bound"], false);
    assert_eq!(v["comparison"]["within_wait_bound_of_strict"], true);
}
