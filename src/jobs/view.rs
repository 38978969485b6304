//! The job contract as plain data: what a job asks for ([`WorkloadView`]),
//! the nodes and pods it runs on, the quotas that bound it. The operator
//! fills these from Kubernetes objects, the simulated cluster from its own
//! state; the scheduler ([`crate::schedule`]) reads nothing else.

use std::collections::BTreeMap;

use super::status::{TenantQuotaStatus, WorkloadStatus};
pub use crate::ledger::Quota;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.gpuMilli`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins errors into one condition message.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The two workload kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Training,
    Inference,
}

impl Kind {
    /// Value of the `zhisuan.io/workload-kind` pod label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Training => "trainingjob",
            Kind::Inference => "inferenceservice",
        }
    }
    pub fn from_label(s: &str) -> Option<Kind> {
        match s {
            "trainingjob" => Some(Kind::Training),
            "inferenceservice" => Some(Kind::Inference),
            _ => None,
        }
    }
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Training => "TrainingJob",
            Kind::Inference => "InferenceService",
        }
    }
}

/// Each workload's pods (by its key; in no order).
pub(crate) type PodsByOwner<'a> =
    std::collections::HashMap<&'a WorkloadKey, Vec<&'a PodView>, crate::placement::FxBuild>;

/// Identity of a workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl WorkloadKey {
    /// Name of replica `i`'s pod: deterministic, so a restarted controller
    /// finds (and never duplicates) the pods it created before, and unique
    /// across kinds — a training pod ends in `-<digits>`, a serving pod in
    /// `serve<digits>`, so TrainingJob `x-serve` (`x-serve-0`) and
    /// InferenceService `x` (`x-serve0`) never share a pod.
    pub fn pod_name(&self, replica: u32) -> String {
        match self.kind {
            Kind::Training => format!("{}-{replica}", self.name),
            Kind::Inference => format!("{}-serve{replica}", self.name),
        }
    }
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A node as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Its name; a member cluster's node is [`member_node_key`]`(region, name)`.
    pub name: String,
    /// `zhisuan.io/region` label ("" when absent).
    pub region: String,
    pub model: String,
    pub vendor: String,
    pub gpus: u8,
    pub unhealthy: Vec<u8>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub labels: Vec<(String, String)>,
    /// Ready and not cordoned.
    pub schedulable: bool,
    /// The tenant subtree the node is reserved to (a dedicated zone,
    /// 政务算力专区), from its labels; a dedicated region's reservation
    /// applies to its nodes without one (`schedule::zones`).
    pub dedicated: Option<Dedication>,
}

/// Nodes reserved to a tenant subtree: only workloads of `tenant` or of a
/// tenant below it in the quota tree run there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dedication {
    /// The tenant whose subtree the nodes are reserved to.
    pub tenant: String,
    /// The zone as people name it in statuses: `node group "gov-zone"`,
    /// `region "fuzhou-gov"`, `node "n7"`.
    pub zone: String,
}

/// A pod as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// The workload that owns it (from its labels).
    pub owner: Option<WorkloadKey>,
    /// The node it is bound to, named as in [`NodeView::name`].
    pub node: Option<String>,
    pub devices: Vec<u8>,
    /// Share of its one device, when shared.
    pub milli: Option<u16>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
    pub deleting: bool,
}

impl PodView {
    /// Finished pods hold no resources.
    pub fn terminal(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }
}

/// A TrainingJob or InferenceService as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadView {
    pub key: WorkloadKey,
    pub uid: String,
    pub generation: i64,
    /// Creation time, unix seconds.
    pub created: i64,
    pub tenant: String,
    pub replicas: u32,
    /// Whole GPUs per replica (0 when shared).
    pub gpus_per_replica: u8,
    /// Share per replica when shared (`None` = whole GPUs).
    pub gpu_milli: Option<u16>,
    pub models: Vec<String>,
    /// The vendor it needs (`None`: the one its models are of, else its
    /// tenant's default, else NVIDIA).
    pub vendor: Option<String>,
    /// Its tenant's default vendor (TenantQuota `defaultAcceleratorVendor`,
    /// inherited down the tree); None where the tenant has none.
    pub default_vendor: Option<String>,
    /// The gang's replicas may run on different models (default: one).
    pub mixed_models: bool,
    /// The network domain the gang must or should fit in (`None`: anywhere
    /// in its region).
    pub topology: Option<crate::placement::TopologyAsk>,
    pub priority: i32,
    pub residency: Vec<String>,
    pub preferred: Vec<String>,
    pub max_runtime_s: Option<i64>,
    /// The latest start, seconds after creation (TrainingJob
    /// `maxDelaySeconds`): the green policy may hold it for greener hours
    /// until then (`regions::shift`).
    pub max_delay_s: Option<i64>,
    /// Round-trip SLO to the users, ms (InferenceService).
    pub latency_slo_ms: Option<f64>,
    /// Where the users sit (InferenceService).
    pub user_region: Option<String>,
    /// Token price tier (InferenceService).
    pub token_tier: Option<crate::ledger::Tier>,
    /// A batch job (offline inference, no latency term, 1 h expected
    /// runtime in region choice); the simulated cluster's only.
    pub batch: bool,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub status: WorkloadStatus,
    pub deleting: bool,
    pub has_finalizer: bool,
    /// Why the spec cannot be scheduled (unparseable or invalid); empty = valid.
    pub errors: Vec<FieldError>,
    /// Why its namespace does not admit its `tenant` (a namespace of
    /// another tenant, or one bound to none); None = it does.
    pub tenant_mismatch: Option<String>,
}

impl WorkloadView {
    /// Milli-GPU of one replica.
    pub fn milli_per_replica(&self) -> u64 {
        match self.gpu_milli {
            Some(m) => m as u64,
            None => self.gpus_per_replica as u64 * 1000,
        }
    }
    pub fn total_milli(&self) -> u64 {
        self.milli_per_replica() * self.replicas as u64
    }
    pub fn phase(&self) -> &str {
        self.status.phase.as_deref().unwrap_or("Pending")
    }

    /// One replica as a placement request: whole GPUs or a share of one
    /// (the one rule), restricted to `models`.
    pub fn replica_request(&self, models: crate::placement::ModelSet) -> crate::placement::Request {
        use crate::placement::Request;
        match self.gpu_milli {
            Some(m) => Request::shared(self.cpu_milli, self.memory_mib, m),
            None => Request::whole(self.cpu_milli, self.memory_mib, self.gpus_per_replica),
        }
        .with_models(models)
    }
}

/// One node of the quota tree: a tenant's limits ([`Quota`], the one quota
/// type) under its parent's. A TenantQuota on a cluster; the ledger's quota
/// set through the API on the simulated cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuotaNode {
    /// Tenant name (unique across the tree).
    pub tenant: String,
    /// Parent tenant; its limits also bound this tenant's use.
    pub parent: Option<String>,
    pub quota: Quota,
    /// Its workloads (and those of every tenant below it) run only on nodes
    /// dedicated to its subtree or to a tenant above it (TenantQuota
    /// `spec.dedicatedOnly`).
    pub dedicated_only: bool,
}

impl QuotaNode {
    pub fn new(tenant: &str, parent: Option<&str>, quota: Quota) -> Self {
        QuotaNode {
            tenant: tenant.to_string(),
            parent: parent.map(str::to_string),
            quota,
            dedicated_only: false,
        }
    }
}

/// Milli-GPU of a whole-GPU limit: negative is 0, and a limit too large
/// to count in milli saturates instead of wrapping around (2^64 / 1000
/// GPUs once wrapped to a 0.384-GPU limit).
pub fn gpus_to_milli(gpus: i64) -> u64 {
    (gpus.max(0) as u64).saturating_mul(1000)
}

/// A TenantQuota as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaView {
    /// Object name.
    pub name: String,
    pub spec: QuotaNode,
    pub status: TenantQuotaStatus,
    pub errors: Vec<FieldError>,
}

/// A tenant's own use so far this calendar month (from the ledger), for
/// the monthly limits of TenantQuotas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonthToDate {
    /// Milli-GPU-seconds per accelerator model.
    pub milli_gpu_s: BTreeMap<String, i64>,
    /// Tokens (prompt + completion) per tier.
    pub tokens: BTreeMap<String, i64>,
}

/// Milli-GPU-seconds in one GPU-hour.
pub const MILLI_GPU_S_PER_GPU_HOUR: i64 = 3_600_000;

/// Pods grouped by owning workload.
pub(crate) fn pods_by_owner(pods: &[PodView]) -> PodsByOwner<'_> {
    let mut out = PodsByOwner::with_capacity_and_hasher(pods.len(), Default::default());
    for p in pods {
        if let Some(o) = &p.owner {
            out.entry(o).or_default().push(p);
        }
    }
    out
}
