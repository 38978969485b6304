//! A job as region choice sees it: [`JobSpec`] (what was asked) and
//! [`JobSpec::resolve`]'s checks against a catalog, giving a
//! [`ResolvedJob`] (masks and numbers the chooser reads) or a
//! [`SpecError`] naming the field and the fix.

use super::catalog::Catalog;
use crate::error::InputError;
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
