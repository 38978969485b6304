//! Region choice, the first level of two-level placement (pure: no clock, no I/O).
//!
//! Hard filters (inventory / model, residency, latency SLO, cost budget,
//! quota), then a score per policy, give an ordered list of regions; the
//! second level ([`crate::schedule`]) tries the placement engine of each in
//! that order. Every step is written into the job's [`Explanation`].

use super::catalog::Catalog;
use super::cost::{estimate, Site, Usage};
use super::explain::{Candidate, Explanation, Filter, ScoreTerms, Verdict};
use super::job::{JobKind, ResolvedJob, MAX_REGIONS};
use crate::placement::Score;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Latency normaliser for jobs with users but no SLO, ms.
const LATENCY_REF_MS: f64 = 20.0;

/// How regions are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionPolicy {
    /// zhisuan's default: every hard filter, then lowest weighted carbon +
    /// energy cost + latency (East Data, West Computing).
    #[default]
    Green,
    /// Baseline: the region closest to the user; checks inventory and quota only.
    Nearest,
    /// Baseline: the region closest to the user after the same hard filters
    /// as green (residency, latency SLO, budget): what a dispatcher that
    /// keeps the law and the SLOs but knows nothing of carbon or prices does.
    NearestStrict,
    /// Baseline: regions in turn; checks inventory and quota only.
    RoundRobin,
    /// Baseline: the lowest expected energy cost first, after the same hard
    /// filters as green (residency, latency SLO, budget).
    Cheapest,
    /// Baseline: the lowest expected carbon first, after the same hard
    /// filters as green.
    Greenest,
}

impl RegionPolicy {
    pub const ALL: [RegionPolicy; 6] = [
        RegionPolicy::Nearest,
        RegionPolicy::NearestStrict,
        RegionPolicy::RoundRobin,
        RegionPolicy::Cheapest,
        RegionPolicy::Greenest,
        RegionPolicy::Green,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegionPolicy::Green => "green",
            RegionPolicy::Nearest => "nearest",
            RegionPolicy::NearestStrict => "nearest-strict",
            RegionPolicy::RoundRobin => "round-robin",
            RegionPolicy::Cheapest => "cheapest",
            RegionPolicy::Greenest => "greenest",
        }
    }

    /// Whether the policy enforces residency, SLO and budget (nearest and
    /// round-robin model naive dispatchers that do not, so the simulation
    /// counts their violations; nearest-strict, cheapest and greenest are
    /// green's own filters with one objective).
    pub fn enforces_constraints(self) -> bool {
        matches!(
            self,
            RegionPolicy::Green
                | RegionPolicy::NearestStrict
                | RegionPolicy::Cheapest
                | RegionPolicy::Greenest
        )
    }
}

impl fmt::Display for RegionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RegionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "green" | "default" => Ok(RegionPolicy::Green),
            "nearest" => Ok(RegionPolicy::Nearest),
            "nearest-strict" => Ok(RegionPolicy::NearestStrict),
            "round-robin" | "roundrobin" | "rr" => Ok(RegionPolicy::RoundRobin),
            "cheapest" => Ok(RegionPolicy::Cheapest),
            "greenest" => Ok(RegionPolicy::Greenest),
            other => Err(format!(
                "unknown region policy {other:?}; choose nearest, nearest-strict, round-robin, cheapest, greenest or green (default)"
            )),
        }
    }
}

/// Static per-region inventory facts for the inventory filter, precomputed
/// from the catalog: for each region and accelerator model, the largest node
/// (GPUs) and the total GPUs installed.
#[derive(Debug, Clone)]
pub struct InventoryIndex {
    n_models: usize,
    max_node_gpus: Vec<u32>,
    total_gpus: Vec<u64>,
    /// GPU-weighted mean board power of each region, W (for "any model" jobs).
    mean_power_w: Vec<f64>,
    /// For "any model" jobs: GPUs in models whose largest node has at least
    /// k GPUs, per region × k (0 when no node has k).
    any_ok_gpus: Vec<u64>,
}

/// Most GPUs on one node (as in the placement engine's device masks).
const MAX_NODE_GPUS: usize = 64;

impl InventoryIndex {
    pub fn new(catalog: &Catalog) -> Self {
        let n_models = catalog.accelerators.len();
        let n = catalog.regions.len();
        let mut max_node_gpus = vec![0u32; n * n_models];
        let mut total_gpus = vec![0u64; n * n_models];
        let mut mean_power_w = vec![0.0; n];
        for (r, region) in catalog.regions.iter().enumerate() {
            let (mut watts, mut gpus) = (0.0, 0u64);
            for inv in &region.inventory {
                let m = catalog
                    .accelerators
                    .iter()
                    .position(|a| a.model == inv.model)
                    .expect("catalog validated inventory models");
                let k = r * n_models + m;
                max_node_gpus[k] = max_node_gpus[k].max(inv.gpus_per_node);
                let g = inv.nodes as u64 * inv.gpus_per_node as u64;
                total_gpus[k] += g;
                watts += g as f64 * catalog.accelerators[m].power_w;
                gpus += g;
            }
            mean_power_w[r] = if gpus > 0 { watts / gpus as f64 } else { 0.0 };
        }
        let mut any_ok_gpus = vec![0u64; n * (MAX_NODE_GPUS + 1)];
        for r in 0..n {
            for k in 1..=MAX_NODE_GPUS {
                any_ok_gpus[r * (MAX_NODE_GPUS + 1) + k] = (0..n_models)
                    .filter(|&m| max_node_gpus[r * n_models + m] as usize >= k)
                    .map(|m| total_gpus[r * n_models + m])
                    .sum();
            }
        }
        InventoryIndex {
            n_models,
            max_node_gpus,
            total_gpus,
            mean_power_w,
            any_ok_gpus,
        }
    }

    /// Whether the region could ever host the job (empty cluster), and the
    /// expected board power per GPU there (mean over the allowed models).
    fn fit(&self, catalog: &Catalog, region: usize, job: &ResolvedJob) -> (bool, f64) {
        let per_node = job.gpus_per_replica.max(1);
        let needed = if job.gpus_per_replica == 0 {
            1
        } else {
            job.replicas as u64 * job.gpus_per_replica as u64
        };
        if job.models.is_empty() && per_node as usize <= MAX_NODE_GPUS {
            // Any model (most jobs): precomputed, O(1).
            let ok = self.any_ok_gpus[region * (MAX_NODE_GPUS + 1) + per_node as usize];
            return (ok >= needed, self.mean_power_w[region]);
        }
        let (mut ok_gpus, mut watts, mut gpus) = (0u64, 0.0, 0u64);
        let mut largest = 0;
        for m in 0..self.n_models {
            if !job.models.is_empty() && !job.models.contains(&m) {
                continue;
            }
            let k = region * self.n_models + m;
            largest = largest.max(self.max_node_gpus[k]);
            if self.max_node_gpus[k] >= per_node {
                ok_gpus += self.total_gpus[k];
            }
            watts += self.total_gpus[k] as f64 * catalog.accelerators[m].power_w;
            gpus += self.total_gpus[k];
        }
        let power = if gpus > 0 {
            watts / gpus as f64
        } else {
            self.mean_power_w[region]
        };
        (largest >= per_node && ok_gpus >= needed, power)
    }
}

/// Region choice state that persists across decisions (the round-robin cursor).
#[derive(Debug, Clone, Default)]
pub struct RegionChooser {
    pub policy: RegionPolicy,
    rr_cursor: usize,
}

impl RegionChooser {
    pub fn new(policy: RegionPolicy) -> Self {
        RegionChooser {
            policy,
            rr_cursor: 0,
        }
    }

    /// First level: filters and ranks the regions for `job` at `now_s`
    /// (quota is the scheduler's, before region choice),
    /// writing every candidate into `out` (cleared first; reused to avoid
    /// allocating per decision). Returns the number of ranked regions; their
    /// indices in rank order are written to `order`.
    pub fn rank(
        &mut self,
        catalog: &Catalog,
        inventory: &InventoryIndex,
        job: &ResolvedJob,
        now_s: i64,
        out: &mut Explanation,
        order: &mut Vec<u16>,
    ) -> usize {
        out.policy = self.policy;
        out.at_s = now_s;
        out.chosen = None;
        out.band = 0;
        out.candidates.clear();
        order.clear();
        let strict = self.policy.enforces_constraints();
        for r in 0..catalog.regions.len() {
            let (fits, power_w) = inventory.fit(catalog, r, job);
            let latency = job.latency_place.map(|p| catalog.rtt_ms(p, r));
            let site = Site::of(catalog, r);
            let est = estimate(
                Usage {
                    milli_gpus: job.total_milli(),
                    power_w,
                    start_s: now_s,
                    duration_s: job.expected_runtime_s,
                },
                site,
            );
            let removed = if !fits {
                Some((
                    Filter::Inventory,
                    job.gpus_per_replica as f64,
                    job.replicas as f64,
                ))
            } else if job.open_mask & (1u64 << r) == 0 {
                // A hard filter under every policy: placement's own.
                Some((Filter::Dedicated, 0.0, 0.0))
            } else if strict && !job.allows_region(r) {
                Some((Filter::Residency, 0.0, 0.0))
            } else if let (true, Some(slo), Some(l)) = (strict, job.latency_slo_ms, latency) {
                (l > slo).then_some((Filter::LatencySlo, l, slo))
            } else {
                None
            };
            let removed = removed.or_else(|| match job.cost_budget_milli_fen {
                Some(b) if strict && est.energy_cost_milli_fen > b => Some((
                    Filter::Budget,
                    est.energy_cost_milli_fen as f64 / 1000.0,
                    b as f64 / 1000.0,
                )),
                _ => None,
            });
            let terms = ScoreTerms {
                estimate: est,
                latency_ms: latency,
                score: 0.0,
            };
            let verdict = match removed {
                Some((filter, value, limit)) => Verdict::Removed {
                    filter,
                    value,
                    limit,
                },
                None => {
                    order.push(r as u16);
                    Verdict::Ranked { rank: 0 }
                }
            };
            out.candidates.push(Candidate {
                region: r as u16,
                verdict,
                terms: Some(terms),
                fit: None,
                left_for: None,
            });
        }
        self.score(catalog, job, out, order);
        order.len()
    }

    /// Scores the regions of `order` under the policy, ranks them, and
    /// marks the packing band.
    fn score(
        &mut self,
        catalog: &Catalog,
        job: &ResolvedJob,
        out: &mut Explanation,
        order: &mut [u16],
    ) {
        if order.is_empty() {
            return;
        }
        let cands = &mut out.candidates;
        match self.policy {
            RegionPolicy::Green => score_green(catalog, job, cands, order),
            RegionPolicy::Nearest | RegionPolicy::NearestStrict => {
                set_scores(cands, order, |_, t| t.latency_ms.unwrap_or(0.0))
            }
            RegionPolicy::Cheapest => {
                set_scores(cands, order, |_, t| t.estimate.energy_cost_milli_fen as f64)
            }
            RegionPolicy::Greenest => set_scores(cands, order, |_, t| t.estimate.carbon_kg),
            RegionPolicy::RoundRobin => {
                let n = catalog.regions.len();
                let start = self.rr_cursor % n;
                self.rr_cursor = self.rr_cursor.wrapping_add(1);
                set_scores(cands, order, |r, _| ((r as usize + n - start) % n) as f64);
            }
        }
        rank(cands, order);
        out.band = self.band(catalog, job, cands, order);
    }

    /// How many regions of the ranked `order` form the packing band: the
    /// first, and those after it within the catalog's `pack_band` of its
    /// score (green only, and not for a job that waits for the best region).
    fn band(
        &self,
        catalog: &Catalog,
        job: &ResolvedJob,
        cands: &[Candidate],
        order: &[u16],
    ) -> u32 {
        let band_limit = match self.policy {
            RegionPolicy::Green if !job.wait_for_best && catalog.weights.pack_band > 0.0 => {
                let best = cands[order[0] as usize].terms.map_or(0.0, |t| t.score);
                best * (1.0 + catalog.weights.pack_band)
            }
            // Baselines (and pack_band 0) keep the plain score order.
            _ => f64::NEG_INFINITY,
        };
        1 + order[1..]
            .iter()
            .take_while(|&&r| {
                cands[r as usize]
                    .terms
                    .is_some_and(|t| t.score <= band_limit)
            })
            .count() as u32
    }
}

/// The terms of a ranked region.
fn terms_of(cands: &mut [Candidate], r: u16) -> &mut ScoreTerms {
    cands[r as usize]
        .terms
        .as_mut()
        .expect("ranked regions have terms")
}

/// Sets each region's score from its index and terms (lower is better).
fn set_scores(cands: &mut [Candidate], order: &[u16], score: impl Fn(u16, &ScoreTerms) -> f64) {
    for &r in order {
        let t = terms_of(cands, r);
        t.score = score(r, t);
    }
}

/// Green's score: the catalog's weighted sum of carbon and energy cost,
/// each relative to the highest among the regions, and (for online
/// inference) latency relative to the job's SLO.
fn score_green(catalog: &Catalog, job: &ResolvedJob, cands: &mut [Candidate], order: &[u16]) {
    let w = catalog.weights;
    let (mut max_c, mut max_cost) = (0.0f64, 0.0f64);
    for &r in order {
        let t = terms_of(cands, r);
        max_c = max_c.max(t.estimate.carbon_kg);
        max_cost = max_cost.max(t.estimate.energy_cost_milli_fen as f64);
    }
    let lat_ref = job.latency_slo_ms.unwrap_or(LATENCY_REF_MS);
    set_scores(cands, order, |_, t| {
        let carbon = if max_c > 0.0 {
            t.estimate.carbon_kg / max_c
        } else {
            0.0
        };
        let cost = if max_cost > 0.0 {
            t.estimate.energy_cost_milli_fen as f64 / max_cost
        } else {
            0.0
        };
        // Latency only matters to interactive work; the rest goes where power is green.
        let lat = match job.kind {
            JobKind::OnlineInference => t.latency_ms.map_or(0.0, |l| l / lat_ref),
            JobKind::Training | JobKind::BatchInference => 0.0,
        };
        w.carbon * carbon + w.cost * cost + w.latency * lat
    });
}

/// Orders the regions by score (ties by index) and records each one's rank.
fn rank(cands: &mut [Candidate], order: &mut [u16]) {
    // Sort on a dense copy of the scores: region choice runs for every
    // decision, and comparisons reaching into the candidates took a fifth
    // of its time (perf, `cargo bench --bench regions -- rank_only`).
    let mut keys = [f64::INFINITY; MAX_REGIONS];
    for &r in order.iter() {
        keys[r as usize] = cands[r as usize].terms.map_or(f64::INFINITY, |t| t.score);
    }
    order.sort_by(|&a, &b| {
        keys[a as usize]
            .total_cmp(&keys[b as usize])
            .then(a.cmp(&b))
    });
    for (rank, &r) in order.iter().enumerate() {
        cands[r as usize].verdict = Verdict::Ranked { rank: rank as u32 };
    }
}

/// Second level, before the engines try the regions: the first `expl.band`
/// regions of `order` (those within the catalog's `pack_band` of the best
/// score, equally good on carbon, cost and latency) are reordered by how well
/// the job packs in each (`fit`: the region engine's best score for one
/// replica, higher is better, `None` = no room), best fit first, score order
/// among equal fits. Each fit is recorded in the explanation. Without this,
/// every job's first choice is the same greenest region, which fills and
/// fragments first while its near-equals wait; at the peak that waste is
/// what makes jobs queue (docs/regions.md).
pub fn order_band_by_fit(
    expl: &mut Explanation,
    order: &mut [u16],
    mut fit: impl FnMut(u16) -> Option<Score>,
) {
    let band = (expl.band as usize).min(order.len());
    if band < 2 {
        return;
    }
    for &r in &order[..band] {
        expl.candidates[r as usize].fit = fit(r);
    }
    let cands = &expl.candidates;
    // Stable: equal fits keep the score order.
    order[..band].sort_by(|&a, &b| cands[b as usize].fit.cmp(&cands[a as usize].fit));
}

/// Whether running `job` in `region` breaks its SLO or residency (used to
/// count baseline violations and by the property tests).
pub fn violations(catalog: &Catalog, job: &ResolvedJob, region: usize) -> (bool, bool) {
    let slo = match (job.latency_slo_ms, job.latency_place) {
        (Some(slo), Some(p)) => catalog.rtt_ms(p, region) > slo,
        _ => false,
    };
    (slo, !job.allows_region(region))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::job::JobSpec;

    fn job() -> JobSpec {
        JobSpec {
            cpu_milli_per_replica: 1000,
            memory_mib_per_replica: 1024,
            user_region: Some("beijing".into()),
            ..JobSpec::new("acme", "j", JobKind::Training)
        }
    }

    fn rank(policy: RegionPolicy, spec: &JobSpec) -> (Explanation, Vec<u16>) {
        let c = Catalog::default_catalog();
        let inv = InventoryIndex::new(&c);
        let j = spec.resolve(&c).unwrap();
        let mut chooser = RegionChooser::new(policy);
        let (mut e, mut order) = (Explanation::default(), Vec::new());
        chooser.rank(&c, &inv, &j, 0, &mut e, &mut order);
        (e, order)
    }

    #[test]
    fn green_sends_training_west_and_nearest_keeps_it_near_users() {
        let c = Catalog::default_catalog();
        let (_, green) = rank(RegionPolicy::Green, &job());
        let first = &c.regions[green[0] as usize];
        assert_eq!(
            first.side,
            super::super::catalog::Side::West,
            "green chose {}",
            first.name
        );
        let (_, near) = rank(RegionPolicy::Nearest, &job());
        assert_eq!(c.regions[near[0] as usize].name, "zhangjiakou");
    }

    #[test]
    fn nearest_strict_ranks_by_distance_among_the_regions_residency_and_slo_allow() {
        let c = Catalog::default_catalog();
        let bj = c.place_index("beijing").unwrap();
        let names = |order: &[u16]| -> Vec<String> {
            order
                .iter()
                .map(|&r| c.regions[r as usize].name.clone())
                .collect()
        };
        let (_, near) = rank(RegionPolicy::Nearest, &job());
        let (_, strict) = rank(RegionPolicy::NearestStrict, &job());
        assert_eq!(
            names(&strict),
            names(&near),
            "no constraint: the same order"
        );
        assert!(strict
            .windows(2)
            .all(|w| c.rtt_ms(bj, w[0] as usize) <= c.rtt_ms(bj, w[1] as usize)));
        let mut bound = job();
        bound.residency = vec!["wuhu".into(), "qingyang".into()];
        let (e, strict) = rank(RegionPolicy::NearestStrict, &bound);
        let mut allowed = names(&strict);
        allowed.sort();
        assert_eq!(allowed, ["qingyang", "wuhu"]);
        assert!(c.rtt_ms(bj, strict[0] as usize) <= c.rtt_ms(bj, strict[1] as usize));
        let left_out = e
            .render(&c)
            .candidates
            .iter()
            .filter(|v| v.filter == Some("residency"))
            .count();
        assert_eq!(left_out, c.regions.len() - 2);
        // Nearest ranks every region that fits, residency or not.
        assert_eq!(rank(RegionPolicy::Nearest, &bound).1.len(), near.len());
        let mut online = job();
        online.kind = JobKind::OnlineInference;
        online.latency_slo_ms = Some(8.0);
        let (_, strict) = rank(RegionPolicy::NearestStrict, &online);
        assert!(!strict.is_empty() && strict.len() < near.len());
        assert!(strict.iter().all(|&r| c.rtt_ms(bj, r as usize) <= 8.0));
        assert_eq!(
            "nearest-strict".parse::<RegionPolicy>().unwrap(),
            RegionPolicy::NearestStrict
        );
    }

    #[test]
    fn slo_removes_far_regions_and_an_impossible_slo_explains_itself() {
        let c = Catalog::default_catalog();
        let mut spec = job();
        spec.kind = JobKind::OnlineInference;
        spec.latency_slo_ms = Some(8.0);
        let (e, order) = rank(RegionPolicy::Green, &spec);
        let bj = c.place_index("beijing").unwrap();
        assert!(!order.is_empty());
        for &r in &order {
            assert!(c.rtt_ms(bj, r as usize) <= 8.0);
        }
        spec.latency_slo_ms = Some(0.5);
        let (e2, order2) = rank(RegionPolicy::Green, &spec);
        assert!(order2.is_empty());
        let s = e2.summary(&c);
        assert!(
            s.contains("No region meets the latency SLO of 0.5 ms"),
            "{s}"
        );
        assert!(s.contains("zhangjiakou"), "closest region named: {s}");
        assert!(e
            .render(&c)
            .candidates
            .iter()
            .any(|v| v.filter == Some("latency-slo")));
    }

    #[test]
    fn residency_and_bad_fields() {
        let c = Catalog::default_catalog();
        let mut spec = job();
        spec.residency = vec!["wuhu".into()];
        let (_, order) = rank(RegionPolicy::Green, &spec);
        assert_eq!(order.len(), 1);
        assert_eq!(c.regions[order[0] as usize].name, "wuhu");
        spec.residency = vec!["atlantis".into()];
        let err = spec.resolve(&c).unwrap_err().to_string();
        assert!(
            err.contains("residency") && err.contains("atlantis"),
            "{err}"
        );
        let mut s2 = job();
        s2.replicas = 0;
        assert!(s2
            .resolve(&c)
            .unwrap_err()
            .to_string()
            .contains("`replicas`"));
        let mut s3 = job();
        s3.gpu_milli = 1500;
        s3.gpus_per_replica = 0;
        assert!(s3
            .resolve(&c)
            .unwrap_err()
            .to_string()
            .contains("`gpu_milli`"));
        let mut s4 = job();
        s4.user_region = None;
        s4.latency_slo_ms = Some(10.0);
        assert!(s4
            .resolve(&c)
            .unwrap_err()
            .to_string()
            .contains("latency_slo_ms"));
    }

    #[test]
    fn round_robin_rotates() {
        let c = Catalog::default_catalog();
        let inv = InventoryIndex::new(&c);
        let j = job().resolve(&c).unwrap();
        let mut chooser = RegionChooser::new(RegionPolicy::RoundRobin);
        let (mut e, mut order) = (Explanation::default(), Vec::new());
        let mut firsts = Vec::new();
        for _ in 0..3 {
            chooser.rank(&c, &inv, &j, 0, &mut e, &mut order);
            firsts.push(order[0]);
        }
        assert_eq!(firsts, vec![0, 1, 2]);
    }

    #[test]
    fn the_packing_band_holds_the_regions_within_pack_band_of_the_best_score() {
        let c = Catalog::default_catalog();
        let score = |e: &Explanation, r: u16| e.candidates[r as usize].terms.unwrap().score;
        let (e, order) = rank(RegionPolicy::Green, &job());
        let band = e.band as usize;
        let limit = score(&e, order[0]) * (1.0 + c.weights.pack_band);
        assert!(
            band >= 2 && band < order.len(),
            "band {band} of {}",
            order.len()
        );
        assert!(order[..band].iter().all(|&r| score(&e, r) <= limit));
        assert!(score(&e, order[band]) > limit);
        // The baselines, and a job that waits for its best region, keep the plain order.
        assert_eq!(rank(RegionPolicy::Nearest, &job()).0.band, 1);
        assert_eq!(rank(RegionPolicy::RoundRobin, &job()).0.band, 1);
        let waits = JobSpec {
            wait_for_best: true,
            priority: 0,
            ..job()
        };
        assert_eq!(rank(RegionPolicy::Green, &waits).0.band, 1);
        // pack_band 0 turns it off.
        let mut strict = c.clone();
        strict.weights.pack_band = 0.0;
        let j = job().resolve(&strict).unwrap();
        let (mut e0, mut o0) = (Explanation::default(), Vec::new());
        RegionChooser::new(RegionPolicy::Green).rank(
            &strict,
            &InventoryIndex::new(&strict),
            &j,
            0,
            &mut e0,
            &mut o0,
        );
        assert_eq!(e0.band, 1);
        assert_eq!(o0, order, "the band does not change the ranking itself");
    }

    #[test]
    fn the_band_is_tried_best_fit_first_and_the_rest_keeps_its_rank() {
        let mut e = Explanation {
            band: 4,
            ..Default::default()
        };
        for r in 0..6u16 {
            e.candidates.push(Candidate {
                region: r,
                verdict: Verdict::Ranked { rank: r as u32 },
                terms: None,
                fit: None,
                left_for: None,
            });
        }
        let mut order = [0u16, 1, 2, 3, 4, 5];
        // Region 1 has no room; 2 and 3 fit equally well, better than 0;
        // 4 and 5 lie outside the band, whatever their fit.
        let fits = [
            Some((10, 0)),
            None,
            Some((30, 0)),
            Some((30, 0)),
            Some((99, 0)),
            Some((99, 0)),
        ];
        let mut asked = Vec::new();
        order_band_by_fit(&mut e, &mut order, |r| {
            asked.push(r);
            fits[r as usize]
        });
        assert_eq!(order, [2, 3, 0, 1, 4, 5]);
        assert_eq!(asked, vec![0, 1, 2, 3], "only the band is evaluated");
        assert_eq!(e.candidates[3].fit, Some((30, 0)));
        assert_eq!(e.candidates[4].fit, None);
        // A band of one evaluates nothing.
        e.band = 1;
        let mut order = [0u16, 1];
        order_band_by_fit(&mut e, &mut order, |_| panic!("not asked"));
        assert_eq!(order, [0, 1]);
    }
}
