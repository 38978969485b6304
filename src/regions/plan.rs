//! Region choice, the first level of two-level placement (pure: no clock, no I/O).
//!
//! Hard filters (inventory / model, residency, latency SLO, cost budget,
//! quota), then a score per policy, give an ordered list of regions; the
//! second level ([`super::engines`]) tries the placement engine of each in
//! that order. Every step is written into the job's [`Explanation`].

use super::catalog::Catalog;
use super::cost::{estimate, CostEstimate, Site, Usage};
use crate::error::InputError;
use crate::placement::Score;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Most regions a catalog may hold for placement (residency is a `u64` mask).
pub const MAX_REGIONS: usize = 64;
/// Runtime assumed for scoring when a job declares none: a day for training
/// and services (so an hour-of-day green profile counts by its daily mean),
/// an hour for batch inference (which can catch the sunny hours).
pub fn default_expected_runtime_s(kind: JobKind) -> i64 {
    match kind {
        JobKind::Training | JobKind::OnlineInference => 24 * 3600,
        JobKind::BatchInference => 3600,
    }
}
/// Latency normaliser for jobs with users but no SLO, ms.
const LATENCY_REF_MS: f64 = 20.0;

/// What a job is (decides which policy rules apply to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Training,
    BatchInference,
    OnlineInference,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Training => "training",
            JobKind::BatchInference => "batch-inference",
            JobKind::OnlineInference => "online-inference",
        }
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "training" => Ok(JobKind::Training),
            "batch-inference" | "batch" => Ok(JobKind::BatchInference),
            "online-inference" | "online" | "inference" => Ok(JobKind::OnlineInference),
            other => Err(format!(
                "unknown job kind {other:?}; use training, batch-inference or online-inference"
            )),
        }
    }
}

/// A job as submitted: plain data, names not yet resolved against a catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub tenant: String,
    pub name: String,
    pub kind: JobKind,
    /// Gang size: all replicas start together in ONE region, or none does.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Whole GPUs per replica (0 when `gpu_milli` is used).
    #[serde(default)]
    pub gpus_per_replica: u32,
    /// Share of one GPU per replica, 1..=999 thousandths (0 = whole GPUs).
    #[serde(default)]
    pub gpu_milli: u32,
    #[serde(default)]
    pub cpu_milli_per_replica: u32,
    #[serde(default)]
    pub memory_mib_per_replica: u64,
    /// Allowed accelerator models (empty = any model of its vendor).
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// The accelerator vendor or software stack it needs (nvidia / cuda,
    /// huawei / ascend / cann; empty = nvidia).
    #[serde(default)]
    pub accelerator_vendor: Option<String>,
    /// The gang's replicas may run on different models (default: one model).
    #[serde(default)]
    pub mixed_models: bool,
    /// The network domain the gang must or should fit in:
    /// `{required: rack}` or `{preferred: rack}` (nvlink, rack or block).
    #[serde(default)]
    pub topology: Option<crate::placement::TopologySpec>,
    /// Where the job's users sit (a user region or region name).
    #[serde(default)]
    pub user_region: Option<String>,
    /// Where the job's data sits, when it has no users (latency to data).
    #[serde(default)]
    pub data_region: Option<String>,
    /// Round-trip latency SLO from `user_region`, ms.
    #[serde(default)]
    pub latency_slo_ms: Option<f64>,
    /// Data residency: the only regions the job may run in (empty = any).
    #[serde(default)]
    pub residency: Vec<String>,
    /// Most energy cost the job may incur over its expected runtime, fen.
    #[serde(default)]
    pub cost_budget_fen: Option<i64>,
    /// Wait for the best region instead of falling back to the next one.
    #[serde(default)]
    pub wait_for_best: bool,
    /// Scheduling priority: a higher one is admitted first and may preempt
    /// lower ones (as a TrainingJob's `spec.priority`).
    #[serde(default)]
    pub priority: i32,
    /// Declared upper bound on runtime; used as the expected runtime when scoring.
    #[serde(default)]
    pub max_runtime_s: Option<i64>,
    /// The job may start this many seconds after submission at the latest:
    /// under the green policy it waits for greener hours within that
    /// window (time shifting, `regions::shift`), never past it.
    #[serde(default)]
    pub max_delay_s: Option<i64>,
    /// How long the job actually runs once started (simulation input);
    /// `None` = until cancelled or `max_runtime_s`.
    #[serde(default)]
    pub duration_s: Option<i64>,
}

fn one() -> u32 {
    1
}

/// A [`JobSpec`] checked against a catalog, with names turned into indices.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedJob {
    pub kind: JobKind,
    pub replicas: u32,
    /// Milli-GPU per replica (1000 × whole GPUs, or the share).
    pub milli_per_replica: u32,
    /// Whole GPUs per replica (0 for a shared replica).
    pub gpus_per_replica: u32,
    /// Allowed models, by index into `catalog.accelerators` (empty = any).
    pub models: Vec<usize>,
    /// Place whose latency matters (user region, else data region).
    pub latency_place: Option<usize>,
    pub latency_slo_ms: Option<f64>,
    /// Bit r set = region r allowed; `u64::MAX` = anywhere.
    pub residency_mask: u64,
    /// Bit r set = region r has nodes open to the job's tenant (dedicated
    /// zones; the scheduler sets it); `u64::MAX` = every region.
    pub open_mask: u64,
    pub cost_budget_milli_fen: Option<i64>,
    pub wait_for_best: bool,
    pub expected_runtime_s: i64,
}

impl ResolvedJob {
    pub fn total_milli(&self) -> u64 {
        self.replicas as u64 * self.milli_per_replica as u64
    }
    pub fn allows_region(&self, region: usize) -> bool {
        self.residency_mask & (1u64 << region) != 0
    }
}

/// A job spec the catalog cannot serve: the field and what to fix (the API
/// maps it to a 422 naming the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

impl From<SpecError> for InputError {
    fn from(e: SpecError) -> Self {
        InputError::new(e.to_string())
    }
}

fn field_err(field: &'static str, msg: impl fmt::Display) -> SpecError {
    SpecError {
        field,
        message: msg.to_string(),
    }
}

impl JobSpec {
    /// A job of one replica with one whole GPU and nothing else asked;
    /// callers change the rest with struct update (`..JobSpec::new(..)`).
    pub fn new(tenant: &str, name: &str, kind: JobKind) -> Self {
        JobSpec {
            tenant: tenant.into(),
            name: name.into(),
            kind,
            replicas: 1,
            gpus_per_replica: 1,
            gpu_milli: 0,
            cpu_milli_per_replica: 0,
            memory_mib_per_replica: 0,
            gpu_models: Vec::new(),
            accelerator_vendor: None,
            mixed_models: false,
            topology: None,
            user_region: None,
            data_region: None,
            latency_slo_ms: None,
            residency: Vec::new(),
            cost_budget_fen: None,
            wait_for_best: false,
            priority: 0,
            max_runtime_s: None,
            max_delay_s: None,
            duration_s: None,
        }
    }

    /// Checks the spec against the catalog. Errors name the field and the fix.
    pub fn resolve(&self, catalog: &Catalog) -> Result<ResolvedJob, SpecError> {
        self.check_owner_and_size()?;
        let (milli, gpus) = self.gpu_ask()?;
        self.check_vendor_delay_and_topology()?;
        let models = self.model_indices(catalog)?;
        let latency_place = self.latency_place(catalog)?;
        let residency_mask = self.residency_mask(catalog)?;
        self.check_budget_and_runtimes()?;
        Ok(ResolvedJob {
            kind: self.kind,
            replicas: self.replicas,
            milli_per_replica: milli,
            gpus_per_replica: gpus,
            models,
            latency_place,
            latency_slo_ms: self.latency_slo_ms,
            residency_mask,
            open_mask: u64::MAX,
            cost_budget_milli_fen: self.cost_budget_fen.map(|f| f.saturating_mul(1000)),
            wait_for_best: self.wait_for_best,
            expected_runtime_s: self
                .max_runtime_s
                .unwrap_or_else(|| default_expected_runtime_s(self.kind)),
        })
    }

    fn check_owner_and_size(&self) -> Result<(), SpecError> {
        if self.tenant.trim().is_empty() {
            return Err(field_err(
                "tenant",
                "is empty; name the tenant that owns the job",
            ));
        }
        if self.replicas == 0 {
            return Err(field_err(
                "replicas",
                "is 0; a job needs at least one replica",
            ));
        }
        Ok(())
    }

    /// Milli-GPU and whole GPUs a replica asks for.
    fn gpu_ask(&self) -> Result<(u32, u32), SpecError> {
        match (self.gpus_per_replica, self.gpu_milli) {
            (0, 0) => Err(field_err(
                "gpus_per_replica",
                "is 0 and gpu_milli is 0; ask for whole GPUs or a share (gpu_milli 1..=999)",
            )),
            (g, 0) if g > 64 => Err(field_err(
                "gpus_per_replica",
                format!("{g} exceeds 64 GPUs on one node"),
            )),
            (g, 0) => Ok((g * 1000, g)),
            (0, m) if m < 1000 => Ok((m, 0)),
            (0, 1000) => Ok((1000, 1)),
            (0, m) => Err(field_err(
                "gpu_milli",
                format!("{m} is more than one GPU; use gpus_per_replica for whole GPUs"),
            )),
            _ => Err(field_err(
                "gpu_milli",
                "set either gpus_per_replica or gpu_milli, not both",
            )),
        }
    }

    fn check_vendor_delay_and_topology(&self) -> Result<(), SpecError> {
        if let Some(v) = self.accelerator_vendor.as_deref().filter(|v| !v.is_empty()) {
            crate::jobs::accelerator_vendor(v).map_err(|m| field_err("accelerator_vendor", m))?;
        }
        if let Some(d) = self.max_delay_s {
            if d <= 0 {
                return Err(field_err(
                    "max_delay_s",
                    format!("{d} must be a positive number of seconds (or left out)"),
                ));
            }
        }
        if let Some(t) = &self.topology {
            t.ask().map_err(|m| field_err("topology", m))?;
        }
        Ok(())
    }

    /// The catalog's indices of the models the job names.
    fn model_indices(&self, catalog: &Catalog) -> Result<Vec<usize>, SpecError> {
        let mut models = Vec::with_capacity(self.gpu_models.len());
        for m in &self.gpu_models {
            match catalog.accelerators.iter().position(|a| &a.model == m) {
                Some(i) => models.push(i),
                None => {
                    let known: Vec<&str> = catalog
                        .accelerators
                        .iter()
                        .map(|a| a.model.as_str())
                        .collect();
                    return Err(field_err(
                        "gpu_models",
                        format!("unknown model {m:?}; known: {}", known.join(", ")),
                    ));
                }
            }
        }
        Ok(models)
    }

    /// Where latency is measured from (the user region, else the data
    /// region), with the SLO checked against it.
    fn latency_place(&self, catalog: &Catalog) -> Result<Option<usize>, SpecError> {
        let place = |field: &'static str,
                     name: &Option<String>|
         -> Result<Option<usize>, SpecError> {
            match name {
                None => Ok(None),
                Some(n) => catalog.place_index(n).map(Some).ok_or_else(|| {
                    field_err(
                        field,
                        format!("unknown region {n:?}; see the catalog's regions and user_regions"),
                    )
                }),
            }
        };
        let user = place("user_region", &self.user_region)?;
        let data = place("data_region", &self.data_region)?;
        if let Some(slo) = self.latency_slo_ms {
            if !(slo.is_finite() && slo > 0.0) {
                return Err(field_err(
                    "latency_slo_ms",
                    format!("{slo} must be a positive number of ms"),
                ));
            }
            if user.is_none() && data.is_none() {
                return Err(field_err(
                    "latency_slo_ms",
                    "needs user_region (where the latency is measured from)",
                ));
            }
        }
        Ok(user.or(data))
    }

    /// The catalog regions the job may run in (bits; every bit without residency).
    fn residency_mask(&self, catalog: &Catalog) -> Result<u64, SpecError> {
        if self.residency.is_empty() {
            return Ok(u64::MAX);
        }
        let mut mask = 0;
        for r in &self.residency {
            match catalog.region_index(r) {
                Some(i) if i < MAX_REGIONS => mask |= 1u64 << i,
                _ => {
                    return Err(field_err(
                        "residency",
                        format!("unknown region {r:?}; list region names from the catalog"),
                    ))
                }
            }
        }
        Ok(mask)
    }

    fn check_budget_and_runtimes(&self) -> Result<(), SpecError> {
        if let Some(b) = self.cost_budget_fen {
            if b < 0 {
                return Err(field_err("cost_budget_fen", format!("{b} is negative")));
            }
        }
        for (field, v) in [
            ("max_runtime_s", self.max_runtime_s),
            ("duration_s", self.duration_s),
        ] {
            if let Some(v) = v {
                if v <= 0 {
                    return Err(field_err(field, format!("{v} must be > 0 seconds")));
                }
            }
        }
        Ok(())
    }
}

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
    pub const ALL: [RegionPolicy; 5] = [
        RegionPolicy::Nearest,
        RegionPolicy::RoundRobin,
        RegionPolicy::Cheapest,
        RegionPolicy::Greenest,
        RegionPolicy::Green,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegionPolicy::Green => "green",
            RegionPolicy::Nearest => "nearest",
            RegionPolicy::RoundRobin => "round-robin",
            RegionPolicy::Cheapest => "cheapest",
            RegionPolicy::Greenest => "greenest",
        }
    }

    /// Whether the policy enforces residency, SLO and budget (nearest and
    /// round-robin model naive dispatchers that do not, so the simulation
    /// counts their violations; cheapest and greenest are green's own
    /// filters with one objective).
    pub fn enforces_constraints(self) -> bool {
        matches!(
            self,
            RegionPolicy::Green | RegionPolicy::Cheapest | RegionPolicy::Greenest
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
            "round-robin" | "roundrobin" | "rr" => Ok(RegionPolicy::RoundRobin),
            "cheapest" => Ok(RegionPolicy::Cheapest),
            "greenest" => Ok(RegionPolicy::Greenest),
            other => Err(format!(
                "unknown region policy {other:?}; choose nearest, round-robin, cheapest, greenest or green (default)"
            )),
        }
    }
}

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
    /// better), for regions in the packing band ([`order_band_by_fit`]).
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
            RegionPolicy::Nearest => set_scores(cands, order, |_, t| t.latency_ms.unwrap_or(0.0)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
