//! What `zhisuan sim` reports: the default policy against the others run
//! in the same invocation (ratios against `nearest`, who dominates it,
//! issue #18's wait bound) and the table it prints.

use std::fmt::Write as _;

use serde::Serialize;

use super::regions::SimResult;
use crate::regions::catalog::Side;
use crate::regions::plan::RegionPolicy;

/// Ratios of the default policy against `nearest`, measured in the same run.
/// Totals compare like with like only when both policies placed the same
/// number of jobs; the per-GPU-hour ratios hold either way.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub carbon_reduction_vs_nearest_pct: f64,
    pub energy_cost_reduction_vs_nearest_pct: f64,
    pub mean_wait_vs_nearest_pct: f64,
    /// Jobs the default policy placed, and jobs `nearest` placed.
    pub placed: usize,
    pub nearest_placed: usize,
    /// `false`: one policy left jobs unplaced that the other ran, so the
    /// totals above cover different work; read the per-GPU-hour figures.
    pub same_jobs_placed: bool,
    pub carbon_per_gpu_hour_reduction_pct: f64,
    pub energy_cost_per_gpu_hour_reduction_pct: f64,
    /// With `--max-delay`: carbon of green without the delays (space only)
    /// below nearest's, percent; `carbon_reduction_vs_nearest_pct` is then
    /// space and time together.
    pub space_only_carbon_reduction_vs_nearest_pct: Option<f64>,
    /// The other policies that dominate the default one: no worse on
    /// carbon, energy cost and mean wait, at least [`MATERIAL_PCT`] better
    /// on one, having placed as many jobs. Empty: none does.
    pub green_dominated_by: Vec<String>,
    /// The default policy's mean wait is at most [`WAIT_BOUND_RATIO`] ×
    /// nearest's + [`WAIT_BOUND_SLACK_S`] (issue #18's bound).
    pub within_wait_bound: bool,
    /// The same bound against `nearest-strict`, which keeps residency and
    /// SLOs as the default policy does (`nearest` runs bound jobs anywhere,
    /// so no policy that keeps residency can always be within its bound);
    /// absent when nearest-strict did not run.
    pub within_wait_bound_of_strict: Option<bool>,
}

/// The wait bound of issue #18: the default policy's mean wait at most this
/// many times nearest's ...
pub const WAIT_BOUND_RATIO: f64 = 1.10;
/// ... plus this many seconds (a pair where nearest waits 0 s is not failed
/// by a fraction of a second).
pub const WAIT_BOUND_SLACK_S: f64 = 1.0;

/// The run of the green policy on the workload without its delays, beside
/// the time-shifted one (`--max-delay`).
pub const SPACE_ONLY: &str = "green-space-only";

/// A policy dominates only by being better by this much (percent) on one
/// figure: a 0.03% cheaper run over the same regions is a tie.
pub const MATERIAL_PCT: f64 = 1.0;

/// The runs that dominate `green` on (carbon, energy cost, mean wait).
fn dominating(results: &[SimResult], green: &SimResult) -> Vec<String> {
    let key = |r: &SimResult| [r.carbon_kg, r.energy_cost_milli_fen as f64, r.mean_wait_s];
    let g = key(green);
    let material = 1.0 - MATERIAL_PCT / 100.0;
    results
        .iter()
        .filter(|r| r.policy != green.policy && r.placed >= green.placed)
        .filter(|r| r.policy != SPACE_ONLY)
        .filter(|r| {
            let k = key(r);
            k.iter().zip(&g).all(|(a, b)| a <= b)
                && k.iter().zip(&g).any(|(a, b)| *a < material * b)
        })
        .map(|r| r.policy.clone())
        .collect()
}

/// The run of the policy named `name`, if it ran.
pub(super) fn run_of<'a>(results: &'a [SimResult], name: &str) -> Option<&'a SimResult> {
    results.iter().find(|r| r.policy == name)
}

/// The wait bound that `baseline`'s mean wait sets, in seconds.
fn wait_bound_s(baseline: &SimResult) -> f64 {
    WAIT_BOUND_RATIO * baseline.mean_wait_s + WAIT_BOUND_SLACK_S
}

/// Whether `green`'s mean wait is within the wait bound of `baseline`'s.
fn within_bound(green: &SimResult, baseline: &SimResult) -> bool {
    green.mean_wait_s <= wait_bound_s(baseline)
}

/// `100 × (1 − a / b)`: how much lower `a` is than `b`, in percent
/// (negative when higher).
fn reduction_pct(a: f64, b: f64) -> f64 {
    if b != 0.0 {
        100.0 * (1.0 - a / b)
    } else {
        0.0
    }
}

fn per_gpu_hour(total: f64, gpu_hours: f64) -> f64 {
    if gpu_hours > 0.0 {
        total / gpu_hours
    } else {
        0.0
    }
}

pub(super) fn compare(results: &[SimResult]) -> Option<Comparison> {
    let near = run_of(results, RegionPolicy::Nearest.name())?;
    let green = run_of(results, RegionPolicy::Green.name())?;
    let cost = |r: &SimResult| r.energy_cost_milli_fen as f64;
    Some(Comparison {
        carbon_reduction_vs_nearest_pct: reduction_pct(green.carbon_kg, near.carbon_kg),
        energy_cost_reduction_vs_nearest_pct: reduction_pct(cost(green), cost(near)),
        mean_wait_vs_nearest_pct: if near.mean_wait_s > 0.0 {
            100.0 * (green.mean_wait_s / near.mean_wait_s - 1.0)
        } else if green.mean_wait_s > 0.0 {
            f64::INFINITY
        } else {
            0.0
        },
        placed: green.placed,
        nearest_placed: near.placed,
        same_jobs_placed: green.placed == near.placed,
        carbon_per_gpu_hour_reduction_pct: reduction_pct(
            per_gpu_hour(green.carbon_kg, green.gpu_hours),
            per_gpu_hour(near.carbon_kg, near.gpu_hours),
        ),
        energy_cost_per_gpu_hour_reduction_pct: reduction_pct(
            per_gpu_hour(cost(green), green.gpu_hours),
            per_gpu_hour(cost(near), near.gpu_hours),
        ),
        green_dominated_by: dominating(results, green),
        within_wait_bound: within_bound(green, near),
        within_wait_bound_of_strict: run_of(results, RegionPolicy::NearestStrict.name())
            .map(|strict| within_bound(green, strict)),
        space_only_carbon_reduction_vs_nearest_pct: run_of(results, SPACE_ONLY)
            .map(|r| reduction_pct(r.carbon_kg, near.carbon_kg)),
    })
}

/// "carbon 12.3% lower", "energy cost 2.5% higher", "carbon unchanged".
fn relative(what: &str, reduction_pct: f64) -> String {
    let shown = format!("{:.1}", reduction_pct.abs());
    if shown == "0.0" {
        format!("{what} unchanged")
    } else if reduction_pct > 0.0 {
        format!("{what} {shown}% lower")
    } else {
        format!("{what} {shown}% higher")
    }
}

/// The comparison in words; when the policies placed different numbers of
/// jobs it says so and compares per GPU-hour instead of totals.
fn comparison_line(c: &Comparison) -> String {
    let wait = if c.mean_wait_vs_nearest_pct.is_infinite() {
        "mean wait up from 0 s".to_string()
    } else {
        format!("mean wait {:+.1}%", c.mean_wait_vs_nearest_pct)
    };
    if c.same_jobs_placed {
        format!(
            "green vs nearest: {}, {}, {wait}",
            relative("carbon", c.carbon_reduction_vs_nearest_pct),
            relative("energy cost", c.energy_cost_reduction_vs_nearest_pct),
        )
    } else {
        format!(
            "green vs nearest: green placed {} jobs, nearest {} — the totals cover different work; \
             per GPU-hour: {}, {}; {wait} (placed jobs only)",
            c.placed,
            c.nearest_placed,
            relative("carbon", c.carbon_per_gpu_hour_reduction_pct),
            relative("energy cost", c.energy_cost_per_gpu_hour_reduction_pct),
        )
    }
}

/// Green's mean wait against the wait bound of nearest and of
/// nearest-strict (when it ran).
fn wait_bound_line(results: &[SimResult], c: &Comparison) -> String {
    let bound = |policy: RegionPolicy, within: bool| {
        run_of(results, policy.name()).map(|r| {
            format!(
                "{} {:.2} s ({})",
                policy.name(),
                wait_bound_s(r),
                if within { "within" } else { "NOT within" }
            )
        })
    };
    let bounds: Vec<String> = [
        bound(RegionPolicy::Nearest, c.within_wait_bound),
        c.within_wait_bound_of_strict
            .and_then(|within| bound(RegionPolicy::NearestStrict, within)),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!(
        "green's mean wait {:.2} s against the wait bound ({WAIT_BOUND_RATIO:.2}× the mean wait + {WAIT_BOUND_SLACK_S} s) of {}",
        run_of(results, RegionPolicy::Green.name()).map_or(0.0, |r| r.mean_wait_s),
        bounds.join(", ")
    )
}

/// The runs side by side, the comparison in words, and each run's regions.
pub(super) fn table(results: &[SimResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>6} {:>7} {:>10} {:>12} {:>11} {:>13} {:>5} {:>9} {:>10} {:>7} {:>7} {:>6}",
        "policy",
        "jobs",
        "placed",
        "GPU-hours",
        "facility kWh",
        "carbon kg",
        "energy CNY",
        "SLO✗",
        "resid.✗",
        "mean wait s",
        "waited",
        "max s",
        "west%"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<14} {:>6} {:>7} {:>10.0} {:>12.0} {:>11.0} {:>13.2} {:>5} {:>9} {:>11.2} {:>7} {:>7} {:>6.1}",
            r.policy,
            r.jobs,
            r.placed,
            r.gpu_hours,
            r.facility_kwh,
            r.carbon_kg,
            r.energy_cost_cny,
            r.slo_violations,
            r.residency_violations,
            r.mean_wait_s,
            r.jobs_waited,
            r.max_wait_s,
            r.west_gpu_hours_pct
        );
    }
    if let Some(c) = compare(results) {
        let _ = writeln!(s, "\n{}", comparison_line(&c));
        if let Some(space) = c.space_only_carbon_reduction_vs_nearest_pct {
            let misses: usize = results
                .iter()
                .filter(|r| r.policy == RegionPolicy::Green.name())
                .map(|r| r.deadline_misses)
                .sum();
            let _ = writeln!(
                s,
                "carbon below nearest: space only {space:.1}%, space + time {:.1}% ({misses} jobs started after their latest start)",
                c.carbon_reduction_vs_nearest_pct
            );
        }
        let others: Vec<&str> = results
            .iter()
            .map(|r| r.policy.as_str())
            .filter(|p| *p != RegionPolicy::Green.name() && *p != SPACE_ONLY)
            .collect();
        let _ = writeln!(
            s,
            "{}",
            match c.green_dominated_by.as_slice() {
                [] => format!(
                    "green is dominated by none of {} on (carbon, energy cost, mean wait)",
                    others.join(", ")
                ),
                by => format!(
                    "green is DOMINATED on (carbon, energy cost, mean wait) by {}",
                    by.join(", ")
                ),
            }
        );
        let _ = writeln!(s, "{}", wait_bound_line(results, &c));
    }
    for r in results {
        let _ = writeln!(s, "\n{} — per region:", r.policy);
        let _ = writeln!(
            s,
            "  {:<14} {:<5} {:>5} {:>6} {:>10} {:>10} {:>11}",
            "region", "side", "GPUs", "jobs", "util %", "carbon kg", "energy CNY"
        );
        for g in &r.regions {
            let side = if g.side == Side::West { "west" } else { "east" };
            let _ = writeln!(
                s,
                "  {:<14} {:<5} {:>5} {:>6} {:>10.1} {:>10.0} {:>11.2}",
                g.name, side, g.gpus, g.jobs, g.utilisation_pct, g.carbon_kg, g.energy_cost_cny
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(policy: RegionPolicy, placed: usize, carbon: f64, fen: i64, hours: f64) -> SimResult {
        SimResult {
            policy: policy.name().to_string(),
            placement_policy: "default".into(),
            jobs: 10,
            placed,
            never_placed: 10 - placed,
            gpu_hours: hours,
            facility_kwh: 0.0,
            carbon_kg: carbon,
            energy_cost_cny: 0.0,
            energy_cost_milli_fen: fen,
            slo_violations: 0,
            residency_violations: 0,
            mean_wait_s: 10.0,
            max_wait_s: 10,
            jobs_waited: 1,
            deadline_jobs: 0,
            deadline_misses: 0,
            fallbacks: 0,
            west_gpu_hours_pct: 0.0,
            span_s: 1,
            regions: vec![],
        }
    }

    #[test]
    fn a_policy_dominates_green_only_materially_better_and_nowhere_worse() {
        let green = result(RegionPolicy::Green, 10, 100.0, 1000, 50.0);
        let with = |policy, carbon, fen, wait| {
            let mut r = result(policy, 10, carbon, fen, 50.0);
            r.mean_wait_s = wait;
            r
        };
        let c = |others: Vec<SimResult>| {
            let mut all = others;
            all.push(green.clone());
            all.insert(0, result(RegionPolicy::Nearest, 10, 200.0, 2000, 50.0));
            compare(&all).unwrap().green_dominated_by
        };
        // 5% less carbon, the rest equal: dominates.
        assert_eq!(
            c(vec![with(RegionPolicy::Cheapest, 95.0, 1000, 10.0)]),
            ["cheapest"]
        );
        // Better on two, worse on wait: does not.
        assert!(c(vec![with(RegionPolicy::Cheapest, 90.0, 900, 11.0)]).is_empty());
        // Better by less than 1%: a tie.
        assert!(c(vec![with(RegionPolicy::Greenest, 99.5, 1000, 10.0)]).is_empty());
        // Fewer jobs placed: not comparable.
        let mut fewer = with(RegionPolicy::Greenest, 50.0, 500, 1.0);
        fewer.placed = 9;
        assert!(c(vec![fewer]).is_empty());
    }

    #[test]
    fn the_wait_bound_is_judged_against_nearest_and_nearest_strict_alike() {
        let waiting = |policy, wait| {
            let mut r = result(policy, 10, 100.0, 1000, 50.0);
            r.mean_wait_s = wait;
            r
        };
        let green = waiting(RegionPolicy::Green, 12.0);
        // Within 1.10 × 10 + 1 = 12 s of nearest's; not of a strict 9 s.
        let all = [
            waiting(RegionPolicy::Nearest, 10.0),
            waiting(RegionPolicy::NearestStrict, 9.0),
            green.clone(),
        ];
        let c = compare(&all).unwrap();
        assert!(c.within_wait_bound);
        assert_eq!(c.within_wait_bound_of_strict, Some(false));
        let line = wait_bound_line(&all, &c);
        assert!(
            line.contains("nearest 12.00 s (within), nearest-strict 10.90 s (NOT within)"),
            "{line}"
        );
        // The other way round; and no strict run, no strict verdict.
        let all = [
            waiting(RegionPolicy::Nearest, 0.0),
            waiting(RegionPolicy::NearestStrict, 20.0),
            green.clone(),
        ];
        let c = compare(&all).unwrap();
        assert!(!c.within_wait_bound);
        assert_eq!(c.within_wait_bound_of_strict, Some(true));
        let c = compare(&[waiting(RegionPolicy::Nearest, 20.0), green]).unwrap();
        assert_eq!(c.within_wait_bound_of_strict, None);
    }

    #[test]
    fn the_comparison_says_higher_for_an_increase_and_flags_different_placed_counts() {
        let near = result(RegionPolicy::Nearest, 10, 100.0, 1000, 50.0);
        let green = result(RegionPolicy::Green, 10, 80.0, 1025, 50.0);
        let line = comparison_line(&compare(&[near.clone(), green]).unwrap());
        assert!(
            line.contains("carbon 20.0% lower") && line.contains("energy cost 2.5% higher"),
            "{line}"
        );
        assert!(!line.contains('-'), "no negative 'lower': {line}");
        // Green skipped a job nearest ran: its totals are lower for doing less.
        let green = result(RegionPolicy::Green, 9, 20.0, 200, 10.0);
        let c = compare(&[near, green]).unwrap();
        assert!(!c.same_jobs_placed);
        let line = comparison_line(&c);
        assert!(
            line.contains("green placed 9 jobs, nearest 10")
                && line.contains("per GPU-hour: carbon unchanged, energy cost unchanged"),
            "{line}"
        );
    }
}
