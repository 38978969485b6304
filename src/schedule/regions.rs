//! The regions as the scheduler sees them: a region catalog (the region
//! planner's [`Catalog`] and inventory) with each region's member nodes, and
//! a workload as the region planner's [`JobSpec`]. The operator builds the
//! catalog from ComputeRegions, the simulated cluster from its catalog file.

use std::collections::BTreeMap;

use crate::jobs::{Kind, WorkloadView};
use crate::regions::job::{JobKind, JobSpec};
use crate::regions::plan::InventoryIndex;
use crate::regions::Catalog;

/// A region catalog with the nodes of each region.
#[derive(Debug, Clone)]
pub struct RegionCatalog {
    pub catalog: Catalog,
    pub inventory: InventoryIndex,
    /// Indices into the snapshot's nodes, per catalog region.
    pub members: Vec<Vec<usize>>,
    /// Region name → why it is left out of placement (reason, message).
    pub excluded: BTreeMap<String, (String, String)>,
}

/// The region planner's job for a workload. `models` are the accelerator
/// models admission still allows (quota), restricted to the catalog's.
pub fn job_spec(w: &WorkloadView, models: &[String]) -> JobSpec {
    JobSpec {
        tenant: w.tenant.clone(),
        name: w.key.to_string(),
        kind: match w.key.kind {
            Kind::Training if w.batch => JobKind::BatchInference,
            Kind::Training => JobKind::Training,
            Kind::Inference => JobKind::OnlineInference,
        },
        replicas: w.replicas,
        gpus_per_replica: if w.gpu_milli.is_some() {
            0
        } else {
            w.gpus_per_replica as u32
        },
        gpu_milli: w.gpu_milli.map_or(0, u32::from),
        cpu_milli_per_replica: w.cpu_milli,
        memory_mib_per_replica: w.memory_mib,
        gpu_models: models.to_vec(),
        accelerator_vendor: w.vendor.clone(),
        mixed_models: w.mixed_models,
        topology: w.topology.map(Into::into),
        user_region: w.user_region.clone(),
        data_region: None,
        latency_slo_ms: w.latency_slo_ms,
        residency: w.residency.clone(),
        cost_budget_fen: None,
        wait_for_best: false,
        priority: w.priority,
        max_runtime_s: w.max_runtime_s,
        max_delay_s: w.max_delay_s,
        duration_s: None,
    }
}
