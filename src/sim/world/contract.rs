//! The world's jobs, tenants and nodes as the scheduler's snapshot sees
//! them: one [`WorkloadView`] per job (the same job contract the controller
//! fills from its custom resources), open quotas, the catalog's nodes.

use std::collections::BTreeMap;

use super::JobId;
use crate::error::InputError;
use crate::jobs::{
    Kind, NodeView, QuotaNode, QuotaView, WorkloadKey, WorkloadStatus, WorkloadView,
};
use crate::regions::catalog::Catalog;
use crate::regions::job::{JobKind, JobSpec, SpecError};
use crate::regions::nodes::node_specs;
use crate::regions::plan::InventoryIndex;
use crate::schedule::RegionCatalog;

/// The job id in a workload key's name ([`workload_of`]).
pub(super) fn id_of(key: &WorkloadKey) -> Option<JobId> {
    key.name.strip_prefix("job-")?.parse().ok()
}

/// A submitted job as the scheduler sees it.
pub(super) fn workload_of(id: JobId, spec: &JobSpec, now_s: i64) -> WorkloadView {
    let (kind, batch) = match spec.kind {
        JobKind::Training => (Kind::Training, false),
        JobKind::BatchInference => (Kind::Training, true),
        JobKind::OnlineInference => (Kind::Inference, false),
    };
    WorkloadView {
        // The namespace is the tenant; the name is the zero-padded job id
        // (so the scheduler's age order among jobs of one second is
        // submission order).
        key: WorkloadKey {
            kind,
            namespace: spec.tenant.clone(),
            name: format!("job-{id:010}"),
        },
        uid: format!("sim-{id}"),
        generation: 1,
        created: now_s,
        tenant: spec.tenant.clone(),
        replicas: spec.replicas,
        gpus_per_replica: spec.gpus_per_replica as u8,
        gpu_milli: (spec.gpu_milli > 0).then_some(spec.gpu_milli as u16),
        models: spec.gpu_models.clone(),
        vendor: spec
            .accelerator_vendor
            .as_deref()
            .and_then(|v| crate::jobs::accelerator_vendor(v).ok())
            .map(String::from),
        mixed_models: spec.mixed_models,
        topology: spec.topology.and_then(|t| t.ask().ok()),
        default_vendor: None,
        priority: spec.priority,
        residency: spec.residency.clone(),
        preferred: Vec::new(),
        max_runtime_s: spec.max_runtime_s,
        max_delay_s: spec.max_delay_s,
        latency_slo_ms: spec.latency_slo_ms,
        user_region: spec.user_region.clone(),
        token_tier: None,
        batch,
        cpu_milli: spec.cpu_milli_per_replica,
        memory_mib: spec.memory_mib_per_replica,
        status: WorkloadStatus::default(),
        deleting: false,
        has_finalizer: true,
        errors: Vec::new(),
        tenant_mismatch: None,
    }
}

/// What the shared scheduler does not model (yet): refused at submission
/// rather than silently ignored.
pub(super) fn unsupported(spec: &JobSpec) -> Result<(), SpecError> {
    let refuse = |field: &'static str| {
        Err(SpecError {
            field,
            message: format!("{field} is not supported by the scheduler; leave it unset"),
        })
    };
    if spec.wait_for_best {
        return refuse("wait_for_best");
    }
    if spec.cost_budget_fen.is_some() {
        return refuse("cost_budget_fen");
    }
    if spec.data_region.is_some() {
        return refuse("data_region");
    }
    if spec.gpus_per_replica > u8::MAX as u32 {
        return Err(SpecError {
            field: "gpus_per_replica",
            message: format!("{} is more than any node has", spec.gpus_per_replica),
        });
    }
    Ok(())
}

/// An unlimited quota for a tenant nobody set one for.
pub(super) fn open_quota(tenant: &str) -> QuotaView {
    QuotaView {
        name: tenant.to_string(),
        spec: QuotaNode::new(tenant, None, Default::default()),
        status: Default::default(),
        errors: Vec::new(),
    }
}

/// The catalog's nodes as the scheduler sees them, with each region's members.
pub(super) fn cluster_of(catalog: &Catalog) -> Result<(Vec<NodeView>, RegionCatalog), InputError> {
    let mut nodes = Vec::new();
    let mut members = Vec::with_capacity(catalog.regions.len());
    for r in 0..catalog.regions.len() {
        let mut list = Vec::new();
        for spec in node_specs(catalog, r)? {
            let vendor = catalog
                .accelerators
                .iter()
                .find(|a| a.model == spec.model)
                .map(|a| a.vendor.clone())
                .unwrap_or_default();
            list.push(nodes.len());
            nodes.push(NodeView {
                name: spec.name,
                region: catalog.regions[r].name.clone(),
                model: spec.model,
                vendor,
                gpus: spec.gpus,
                unhealthy: Vec::new(),
                cpu_milli: spec.cpu_milli,
                memory_mib: spec.memory_mib,
                labels: spec.labels,
                schedulable: true,
                dedicated: None,
            });
        }
        members.push(list);
    }
    let rc = RegionCatalog {
        inventory: InventoryIndex::new(catalog),
        catalog: catalog.clone(),
        members,
        excluded: BTreeMap::new(),
    };
    Ok((nodes, rc))
}
