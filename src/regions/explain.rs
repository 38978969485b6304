//! Why a job went where it did: each region's [`Candidate`] (the
//! [`Filter`] that removed it, or its rank and [`ScoreTerms`]) in an
//! [`Explanation`], and its rendering for people (`summary`, `render`) and
//! JSON ([`ExplanationView`]).

use super::catalog::Catalog;
use super::cost::CostEstimate;
use super::plan::RegionPolicy;
use crate::placement::Score;
use serde::Serialize;
/// The filter that removed a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    /// No node with enough GPUs of an allowed model (static inventory).
    Inventory,
    /// Not among the job's allowed regions.
    Residency,
    /// Round trip from the job's users exceeds the SLO.
    LatencySlo,
    /// Expected energy cost exceeds the job's budget.
    Budget,
    /// Every node is reserved to another tenant subtree, or the job's
    /// tenant is confined to dedicated zones and none is here.
    Dedicated,
}

impl Filter {
    pub fn name(self) -> &'static str {
        match self {
            Filter::Inventory => "inventory",
            Filter::Residency => "residency",
            Filter::LatencySlo => "latency-slo",
            Filter::Budget => "budget",
            Filter::Dedicated => "dedicated",
        }
    }
}

/// The score terms of a candidate region.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreTerms {
    pub estimate: CostEstimate,
    pub latency_ms: Option<f64>,
    /// The policy's score (lower wins).
    pub score: f64,
}

/// What happened to one candidate region in one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Removed {
        filter: Filter,
        value: f64,
        limit: f64,
    },
    /// Passed the filters; its rank in the policy's order (0 = best).
    Ranked {
        rank: u32,
    },
    /// Ranked, tried, and the engine found no room.
    Full {
        rank: u32,
        free_milli: u64,
    },
    /// Ranked below a region the job waits for (`wait_for_best`).
    NotTried {
        rank: u32,
    },
    Chosen {
        rank: u32,
    },
}

/// One row of an explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub region: u16,
    pub verdict: Verdict,
    pub terms: Option<ScoreTerms>,
    /// How well the job packs here (the placement engine's score, higher is
    /// better), for regions in the packing band ([`order_band_by_fit`](super::plan::order_band_by_fit)).
    pub fit: Option<Score>,
    /// Why a region of the packing band was tried after the others there,
    /// whatever its fit (the scheduler's sparing).
    pub left_for: Option<LeftFor>,
}

/// Whom the scheduler leaves a region of the packing band for: a flexible
/// job tries it after the band's other regions, which are as good on
/// carbon, cost and latency. Ordered as tried: regions left for no one
/// (`None`) first, then `Bound`, then `Waiting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeftFor {
    /// Unfinished jobs are bound to it by residency.
    Bound,
    /// Jobs that can run in few regions (residency, latency SLO, budget,
    /// dedicated zones) found no room there in this pass or the last.
    Waiting,
}

impl LeftFor {
    fn says(self) -> &'static str {
        match self {
            LeftFor::Waiting => "left for the jobs limited to it that wait",
            LeftFor::Bound => "left to the jobs bound to it by residency",
        }
    }
}

/// Why a job is where it is, or why it waits. Compact (indices, numbers);
/// [`Explanation::render`] turns it into names and sentences.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Explanation {
    pub policy: RegionPolicy,
    pub at_s: i64,
    pub candidates: Vec<Candidate>,
    pub chosen: Option<u16>,
    /// How many of the best-ranked regions lie within the catalog's
    /// `pack_band` of the best score (1 under the baselines, or when the job
    /// waits for its best region): they are tried in order of fit.
    pub band: u32,
}

// ---------------------------------------------------------------------------
// Rendering for people and JSON.

/// One candidate, with names and units, for the API and the CLI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CandidateView {
    pub region: String,
    pub display: String,
    /// removed | ranked | full | not-tried | chosen
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms: Option<TermsView>,
}

/// Score terms in display units.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TermsView {
    pub facility_kwh: f64,
    pub energy_cost_cny: f64,
    pub carbon_kg: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    pub green_share: f64,
    pub pue: f64,
    pub score: f64,
}

/// An explanation with names and sentences.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExplanationView {
    pub policy: &'static str,
    pub at_s: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// One sentence: "why here" or "why pending".
    pub summary: String,
    pub candidates: Vec<CandidateView>,
}

fn cny(milli_fen: i64) -> f64 {
    milli_fen as f64 / super::catalog::MILLI_FEN_PER_CNY as f64
}

impl Explanation {
    /// Names and sentences for people (API, CLI).
    pub fn render(&self, catalog: &Catalog) -> ExplanationView {
        let mut candidates = Vec::with_capacity(self.candidates.len());
        for c in &self.candidates {
            let region = &catalog.regions[c.region as usize];
            let (verdict, filter, rank, reason) = match &c.verdict {
                Verdict::Removed {
                    filter,
                    value,
                    limit,
                } => {
                    let reason = match filter {
                        Filter::Inventory => format!(
                            "no node with {value} GPUs of an allowed model for {limit} replica(s)"
                        ),
                        Filter::Residency => "outside the job's data residency".to_string(),
                        Filter::Dedicated => "no node here is open to the tenant (reserved to another tenant subtree, or outside the dedicated zones the tenant is confined to)".to_string(),
                        Filter::LatencySlo => {
                            format!("round trip {value:.1} ms exceeds the SLO of {limit} ms")
                        }
                        Filter::Budget => format!(
                            "expected energy cost {value:.2} fen exceeds the budget {limit:.2} fen"
                        ),
                    };
                    ("removed", Some(filter.name()), None, reason)
                }
                Verdict::Ranked { rank } => {
                    let chosen_rank =
                        self.chosen
                            .and_then(|r| match self.candidates[r as usize].verdict {
                                Verdict::Chosen { rank } => Some((r, rank)),
                                _ => None,
                            });
                    let reason = match (c.fit, c.left_for, chosen_rank) {
                        // Better ranked, in the band, left for other jobs.
                        (_, Some(left), Some((_, chosen_rank))) if *rank < chosen_rank => format!(
                            "ranked {}; within the packing band, {}",
                            rank + 1,
                            left.says()
                        ),
                        // Better ranked, in the band, left for a better fit.
                        (Some(_), None, Some((chosen, chosen_rank))) if *rank < chosen_rank => {
                            format!(
                                "ranked {}; within the packing band, the job packs better in {}",
                                rank + 1,
                                catalog.regions[chosen as usize].name
                            )
                        }
                        (Some(_), _, _) => format!("ranked {}; in the packing band", rank + 1),
                        _ => format!("ranked {}", rank + 1),
                    };
                    ("ranked", None, Some(*rank), reason)
                }
                Verdict::Full { rank, free_milli } => (
                    "full",
                    None,
                    Some(*rank),
                    format!(
                        "ranked {} but full now ({:.1} GPUs free, not in the shape needed)",
                        rank + 1,
                        *free_milli as f64 / 1000.0
                    ),
                ),
                Verdict::NotTried { rank } => (
                    "not-tried",
                    None,
                    Some(*rank),
                    format!("ranked {}; the job waits for a better region", rank + 1),
                ),
                Verdict::Chosen { rank } => (
                    "chosen",
                    None,
                    Some(*rank),
                    format!("chosen (ranked {})", rank + 1),
                ),
            };
            candidates.push(CandidateView {
                region: region.name.clone(),
                display: region.display.clone(),
                verdict,
                filter,
                rank,
                reason,
                terms: c.terms.map(|t| TermsView {
                    facility_kwh: t.estimate.facility_kwh,
                    energy_cost_cny: cny(t.estimate.energy_cost_milli_fen),
                    carbon_kg: t.estimate.carbon_kg,
                    latency_ms: t.latency_ms,
                    green_share: t.estimate.green_share,
                    pue: region.pue,
                    score: t.score,
                }),
            });
        }
        ExplanationView {
            policy: self.policy.name(),
            at_s: self.at_s,
            chosen: self
                .chosen
                .map(|r| catalog.regions[r as usize].name.clone()),
            summary: self.summary(catalog),
            candidates,
        }
    }

    /// One sentence answering "why here" / "why pending".
    pub fn summary(&self, catalog: &Catalog) -> String {
        let name = |r: u16| {
            let reg = &catalog.regions[r as usize];
            if reg.display.is_empty() {
                reg.name.clone()
            } else {
                format!("{} ({})", reg.name, reg.display)
            }
        };
        let removed: Vec<String> = self
            .candidates
            .iter()
            .filter_map(|c| match &c.verdict {
                Verdict::Removed { filter, .. } => Some(format!(
                    "{}: {}",
                    catalog.regions[c.region as usize].name,
                    filter.name()
                )),
                _ => None,
            })
            .collect();
        let n_ranked = self.candidates.len() - removed.len();
        if let Some(r) = self.chosen {
            let c = &self.candidates[r as usize];
            let t = c.terms.expect("a chosen region has terms");
            let rank = match c.verdict {
                Verdict::Chosen { rank } => rank,
                _ => 0,
            };
            let why = match self.policy {
                RegionPolicy::Green => "lowest carbon + energy cost + latency score",
                RegionPolicy::Nearest => "closest to the job's users",
                RegionPolicy::NearestStrict => {
                    "closest to the job's users of the regions its residency, SLO and budget allow"
                }
                RegionPolicy::RoundRobin => "next in turn",
                RegionPolicy::Cheapest => "lowest energy cost",
                RegionPolicy::Greenest => "lowest carbon",
            };
            let lat = t
                .latency_ms
                .map(|l| format!(", {l:.1} ms from users"))
                .unwrap_or_default();
            // Better-ranked regions were either tried and full, or in the
            // packing band and left for this better fit or for other jobs.
            let (mut full, mut packed, mut left) = (0, 0, 0);
            for b in &self.candidates {
                match b.verdict {
                    Verdict::Full { rank: br, .. } if br < rank => full += 1,
                    Verdict::Ranked { rank: br } if br < rank && b.left_for.is_some() => left += 1,
                    Verdict::Ranked { rank: br } if br < rank => packed += 1,
                    _ => {}
                }
            }
            let mut fallback = String::new();
            if full > 0 {
                fallback += &format!(" (the {full} better-ranked region(s) were full)");
            }
            if left > 0 {
                fallback += &format!(
                    " (the {left} better-ranked region(s) of the packing band left for jobs limited to them)"
                );
            }
            if packed > 0 {
                fallback += &format!(
                    " (ranked {}: the job packs best here among the {} regions within {:.0}% of the best score)",
                    rank + 1,
                    self.band,
                    catalog.weights.pack_band * 100.0
                );
            }
            format!(
                "placed in {} by policy {}: {why} among {n_ranked} eligible region(s){fallback}; expected {:.2} kWh, {:.2} CNY, {:.2} kg CO2, green share {:.0}%{lat}",
                name(r),
                self.policy,
                t.estimate.facility_kwh,
                cny(t.estimate.energy_cost_milli_fen),
                t.estimate.carbon_kg,
                t.estimate.green_share * 100.0,
            )
        } else if n_ranked == 0 {
            let mut slo_best: Option<(f64, f64, u16)> = None;
            for c in &self.candidates {
                if let Verdict::Removed {
                    filter: Filter::LatencySlo,
                    value,
                    limit,
                    ..
                } = c.verdict
                {
                    if slo_best.is_none_or(|(v, _, _)| value < v) {
                        slo_best = Some((value, limit, c.region));
                    }
                }
            }
            let slo = slo_best
                .map(|(v, l, r)| {
                    format!(
                        " No region meets the latency SLO of {l} ms (closest: {} at {v:.1} ms).",
                        name(r)
                    )
                })
                .unwrap_or_default();
            format!(
                "pending: every region was removed by a hard filter ({}).{slo}",
                removed.join(", ")
            )
        } else if self
            .candidates
            .iter()
            .any(|c| matches!(c.verdict, Verdict::NotTried { .. }))
        {
            let best = self
                .candidates
                .iter()
                .find(|c| matches!(c.verdict, Verdict::Full { rank: 0, .. }));
            format!(
                "pending: waiting for the best region{} to have room (the job asked not to fall back)",
                best.map(|c| format!(" {}", name(c.region))).unwrap_or_default()
            )
        } else {
            format!("pending: all {n_ranked} eligible region(s) are full; it starts when capacity frees")
        }
    }
}
