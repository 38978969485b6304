//! `zhisuan sim --sweep A..B`: every region policy on each seeded generated
//! catalog and workload (`sim::generate`) of a range, and how the default
//! policy fares across them: the pairs where its mean wait is within the
//! bound of nearest's, the pairs a baseline dominates it on (and which),
//! the pairs where it broke an SLO or residency or left a job unplaced.
//! The figures docs/regions.md publishes for generalisation come from here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::compare::{compare, run_of, Comparison};
use super::regions::{generated_workload, simulate};
use crate::error::InputError;
use crate::placement::Policy;
use crate::regions::plan::RegionPolicy;

/// The most pairs one sweep runs.
pub const MAX_PAIRS: u64 = 10_000;

/// The seeds of `A..B` (both included) or of one `N`.
pub fn parse_range(text: &str) -> Result<std::ops::RangeInclusive<u64>, InputError> {
    let bad = |why: &str| {
        InputError::new(format!(
            "--sweep {text:?}: {why} (e.g. --sweep 1..40, both seeds included)"
        ))
    };
    let seed = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| bad(&format!("{s:?} is not a seed (a whole number ≥ 0)")))
    };
    let (a, b) = match text.split_once("..") {
        Some((a, b)) => (seed(a)?, seed(b)?),
        None => {
            let n = seed(text)?;
            (n, n)
        }
    };
    if a > b {
        return Err(bad("the first seed is above the last"));
    }
    if b - a >= MAX_PAIRS {
        return Err(bad(&format!("at most {MAX_PAIRS} pairs a sweep")));
    }
    Ok(a..=b)
}

/// One policy's figures on a pair.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub policy: String,
    pub carbon_kg: f64,
    pub energy_cost_cny: f64,
    pub mean_wait_s: f64,
}

/// One seeded pair.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub seed: u64,
    /// Offered GPU load as a share of the installed GPUs.
    pub load: f64,
    /// The load level it was drawn around (0.3, 0.6, 0.9 or 1.2).
    pub load_level: f64,
    pub comparison: Comparison,
    /// The default policy's SLO and residency violations and jobs it never
    /// placed (each should be 0).
    pub green_slo_violations: usize,
    pub green_residency_violations: usize,
    pub green_never_placed: usize,
    pub runs: Vec<RunFigures>,
}

impl Pair {
    /// A policy's mean wait on this pair (0 when it did not run).
    pub fn mean_wait_s(&self, policy: RegionPolicy) -> f64 {
        self.runs
            .iter()
            .find(|r| r.policy == policy.name())
            .map_or(0.0, |r| r.mean_wait_s)
    }
}

/// The tally over a sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Over every pair (`pairs`, `within_wait_bound`, `dominated` in the JSON).
    #[serde(flatten)]
    pub total: Tally,
    /// Pairs each baseline dominates the default policy on.
    pub dominated_by: std::collections::BTreeMap<String, usize>,
    /// Pairs where the default policy broke an SLO or residency or left a
    /// job unplaced.
    pub with_violations: usize,
    pub green_mean_wait_sum_s: f64,
    pub nearest_mean_wait_sum_s: f64,
    pub nearest_strict_mean_wait_sum_s: f64,
    /// The same counts for each load level (`"0.3"` … `"1.2"`): light and
    /// saturated pairs fare differently, and a change may trade one for the
    /// other.
    pub by_load: std::collections::BTreeMap<String, Tally>,
}

/// Pairs counted: how many, how many within the wait bound, how many
/// dominated (over a sweep, or one load level of it).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub pairs: usize,
    pub within_wait_bound: usize,
    /// Within the same bound of nearest-strict's mean wait.
    pub within_wait_bound_of_strict: usize,
    pub dominated: usize,
}

impl Tally {
    fn count(&mut self, c: &Comparison) {
        self.pairs += 1;
        self.within_wait_bound += usize::from(c.within_wait_bound);
        self.within_wait_bound_of_strict +=
            usize::from(c.within_wait_bound_of_strict == Some(true));
        self.dominated += usize::from(!c.green_dominated_by.is_empty());
    }
}

impl Summary {
    pub fn of(pairs: &[Pair]) -> Summary {
        let mut s = Summary::default();
        for p in pairs {
            let c = &p.comparison;
            s.total.count(c);
            s.by_load
                .entry(format!("{:.1}", p.load_level))
                .or_default()
                .count(c);
            for by in &c.green_dominated_by {
                *s.dominated_by.entry(by.clone()).or_default() += 1;
            }
            let violated =
                p.green_slo_violations + p.green_residency_violations + p.green_never_placed;
            s.with_violations += usize::from(violated > 0);
            s.green_mean_wait_sum_s += p.mean_wait_s(RegionPolicy::Green);
            s.nearest_mean_wait_sum_s += p.mean_wait_s(RegionPolicy::Nearest);
            s.nearest_strict_mean_wait_sum_s += p.mean_wait_s(RegionPolicy::NearestStrict);
        }
        s
    }
}

/// Runs every policy on one generated pair.
fn pair(seed: u64, placement: Policy, tie_seed: u64) -> Result<Pair, InputError> {
    let (generated, workload) = generated_workload(seed)?;
    let hidden = indicatif::ProgressBar::hidden();
    let mut results = Vec::with_capacity(RegionPolicy::ALL.len());
    for &p in RegionPolicy::ALL.iter() {
        let (result, _) = simulate(
            &generated.catalog,
            &workload,
            p,
            placement,
            tie_seed,
            &hidden,
        )?;
        results.push(result);
    }
    let comparison = compare(&results).expect("green and nearest ran");
    let green = run_of(&results, RegionPolicy::Green.name()).expect("green ran");
    Ok(Pair {
        seed,
        load: generated.load,
        load_level: generated.load_level,
        green_slo_violations: green.slo_violations,
        green_residency_violations: green.residency_violations,
        green_never_placed: green.never_placed,
        runs: results
            .iter()
            .map(|r| RunFigures {
                policy: r.policy.clone(),
                carbon_kg: r.carbon_kg,
                energy_cost_cny: r.energy_cost_cny,
                mean_wait_s: r.mean_wait_s,
            })
            .collect(),
        comparison,
    })
}

/// Runs the pairs of `seeds` on the machine's cores, in seed order
/// (`tie_seed`: the engines' tie-break seed, `--seed`).
pub fn sweep(
    seeds: std::ops::RangeInclusive<u64>,
    placement: Policy,
    tie_seed: u64,
    quiet: bool,
) -> Result<Vec<Pair>, InputError> {
    let (first, last) = (*seeds.start(), *seeds.end());
    let progress = crate::progress::bar(last - first + 1, "pairs", quiet);
    progress.set_message("sim sweep");
    let next = AtomicU64::new(first);
    let done = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed > last || seed < first {
                    break;
                }
                let result = pair(seed, placement, tie_seed);
                progress.inc(1);
                done.lock()
                    .expect("no worker panicked")
                    .push((seed, result));
            });
        }
    });
    progress.finish_and_clear();
    let mut done = done.into_inner().expect("no worker panicked");
    done.sort_by_key(|(seed, _)| *seed);
    done.into_iter().map(|(_, r)| r).collect()
}

/// The sweep as a table, one pair a row, and the tally.
pub fn table(pairs: &[Pair], s: &Summary) -> String {
    let mut out = String::from(
        "seed  load  carbon vs nearest  cost vs nearest  wait green / nearest / strict, s  within bound / of strict  dominated by\n",
    );
    for p in pairs {
        let c = &p.comparison;
        let by = if c.green_dominated_by.is_empty() {
            "-".to_string()
        } else {
            c.green_dominated_by.join(", ")
        };
        out.push_str(&format!(
            "{:>4}  {:>4.2}  {:>+16.1}%  {:>+14.1}%  {:>13.1} / {:>7.1} / {:>6.1}  {:>12} / {:<9}  {}\n",
            p.seed,
            p.load,
            -c.carbon_reduction_vs_nearest_pct,
            -c.energy_cost_reduction_vs_nearest_pct,
            p.mean_wait_s(RegionPolicy::Green),
            p.mean_wait_s(RegionPolicy::Nearest),
            p.mean_wait_s(RegionPolicy::NearestStrict),
            yes_no(c.within_wait_bound),
            yes_no(c.within_wait_bound_of_strict == Some(true)),
            by
        ));
    }
    let by: Vec<String> = s
        .dominated_by
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    out.push_str(&format!(
        "\n{} pairs: mean wait within {:.2}× nearest's (+{} s) on {} (of nearest-strict's on {}); dominated on {}{}; \
         SLO/residency violations or unplaced jobs on {}; summed mean waits green {:.1} s, nearest {:.1} s, nearest-strict {:.1} s\n",
        s.total.pairs,
        super::compare::WAIT_BOUND_RATIO,
        super::compare::WAIT_BOUND_SLACK_S,
        s.total.within_wait_bound,
        s.total.within_wait_bound_of_strict,
        s.total.dominated,
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        },
        s.with_violations,
        s.green_mean_wait_sum_s,
        s.nearest_mean_wait_sum_s,
        s.nearest_strict_mean_wait_sum_s,
    ));
    let levels: Vec<String> = s
        .by_load
        .iter()
        .map(|(l, t)| {
            format!(
                "{l}× {} pairs, within {} (of strict {}), dominated {}",
                t.pairs, t.within_wait_bound, t.within_wait_bound_of_strict, t.dominated
            )
        })
        .collect();
    out.push_str(&format!("by offered load: {}\n", levels.join("; ")));
    out
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_range_is_parsed_or_refused_naming_the_flag() {
        assert_eq!(parse_range("1..40").unwrap(), 1..=40);
        assert_eq!(parse_range("7").unwrap(), 7..=7);
        assert_eq!(parse_range(" 3 .. 5").unwrap(), 3..=5);
        for (bad, says) in [
            ("5..2", "above the last"),
            ("a..3", "not a seed"),
            ("1..", "not a seed"),
            ("-1", "not a seed"),
            ("0..10000", "at most 10000"),
        ] {
            let e = parse_range(bad).unwrap_err().to_string();
            assert!(e.contains("--sweep") && e.contains(says), "{bad}: {e}");
        }
        assert!(parse_range("0..9999").is_ok());
    }

    #[test]
    fn the_tally_counts_each_pair_once_and_each_dominating_policy() {
        let pairs = sweep(1..=2, Policy::default(), 1, true).unwrap();
        assert_eq!(pairs.iter().map(|p| p.seed).collect::<Vec<_>>(), [1, 2]);
        let mut twice = pairs.clone();
        twice[1].comparison.green_dominated_by = vec!["cheapest".into(), "greenest".into()];
        twice[1].comparison.within_wait_bound = false;
        twice[1].comparison.within_wait_bound_of_strict = Some(true);
        twice[0].comparison.within_wait_bound = true;
        twice[0].comparison.within_wait_bound_of_strict = Some(false);
        twice[0].comparison.green_dominated_by = vec!["cheapest".into()];
        twice[0].green_never_placed = 1;
        twice[0].load_level = 0.3;
        twice[1].load_level = 0.3;
        let mut three = twice.clone();
        three.push(Pair {
            load_level: 1.2,
            ..pairs[0].clone()
        });
        three[2].comparison.green_dominated_by.clear();
        three[2].comparison.within_wait_bound = true;
        three[2].comparison.within_wait_bound_of_strict = None;
        let by_load = &Summary::of(&three).by_load;
        let tally = |pairs, within_wait_bound, within_wait_bound_of_strict, dominated| Tally {
            pairs,
            within_wait_bound,
            within_wait_bound_of_strict,
            dominated,
        };
        assert_eq!(by_load["0.3"], tally(2, 1, 1, 2));
        assert_eq!(by_load["1.2"], tally(1, 1, 0, 0));
        assert_eq!(by_load.len(), 2);
        let s = Summary::of(&twice);
        assert_eq!(s.total, tally(2, 1, 1, 2));
        assert_eq!(s.dominated_by["cheapest"], 2);
        assert_eq!(s.dominated_by["greenest"], 1);
        assert_eq!(s.with_violations, 1);
        let text = table(&twice, &s);
        assert!(
            text.contains("dominated on 2 (cheapest 2, greenest 1)"),
            "{text}"
        );
        assert!(
            text.contains("by offered load: 0.3× 2 pairs, within 1 (of strict 1), dominated 2\n"),
            "{text}"
        );
    }
}
