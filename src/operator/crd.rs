//! Custom resources of group `zhisuan.io/v1alpha1`.
//!
//! The schemas carry OpenAPI bounds and CEL rules (`x-kubernetes-validations`)
//! so a real API server rejects bad specs up front; [`super::validate`] repeats
//! the same checks in Rust for clusters without CEL and for the controller,
//! which must turn a bad spec into a status condition rather than crash.

// kube-derive repeats `type_ = "string"` across printcolumn attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

pub use crate::placement::TopologySpec;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::jobs::{
    ComputeRegionStatus, Condition, Placement, ReplicaPlacement, TenantQuotaStatus, WorkloadStatus,
    PHASES,
};

/// API group of every zhisuan resource.
pub const GROUP: &str = "zhisuan.io";
/// API version of every zhisuan resource.
pub const VERSION: &str = "v1alpha1";
/// Finalizer the controller puts on jobs so their pods are cleaned up first.
pub const FINALIZER: &str = "zhisuan.io/cleanup";

/// Any object: pod templates are passed through to the API server's own Pod
/// validation, so the CRD schema keeps them opaque instead of inlining the
/// 10,000-line Pod schema.
fn opaque_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Where a workload may and should run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionConstraints {
    /// Data residency: the workload may run only in these regions (empty = anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub residency: Vec<String>,
    /// Regions to try first, in order (soft).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred: Vec<String>,
}

/// A gang training job: `replicas` pods that start together or not at all.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "zhisuan.io",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    status = "WorkloadStatus",
    shortname = "tj",
    category = "zhisuan",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Region",
        type_ = "string",
        json_path = ".status.placement.region"
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!(has(self.gpusPerReplica) && has(self.gpuMilli))")
    .message("set either gpusPerReplica (whole GPUs) or gpuMilli (a share of one GPU), not both"))]
#[x_kube(validation = Rule::new("!has(self.topology) || (has(self.topology.required) != has(self.topology.preferred))")
    .message("topology: set exactly one of required or preferred (nvlink, rack or block)"))]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// Tenant that pays for and is limited by this job (a TenantQuota's tenant).
    #[x_kube(validation = Rule::new("self != ''").message("tenant must not be empty"))]
    pub tenant: String,
    /// Gang size: all replicas are placed together or none is.
    #[schemars(range(min = 1, max = 10000))]
    pub replicas: i32,
    /// Whole GPUs per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub gpus_per_replica: Option<i32>,
    /// A share of one GPU per replica, in thousandths (1..1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub gpu_milli: Option<i32>,
    /// Accelerator models the job accepts (empty = any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// Accelerator vendor or software stack the job needs: nvidia / cuda,
    /// huawei / ascend / cann (empty = NVIDIA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_vendor: Option<String>,
    /// Let the gang's replicas run on different GPU models (default: one
    /// model for the whole gang).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixed_models: bool,
    /// Network topology of the gang: `{required: rack}` runs it inside one
    /// rack or not at all; `{preferred: rack}` inside one rack when one has
    /// room, else the smallest block, else anywhere in the region. Levels:
    /// nvlink, rack, block (node labels `topology.zhisuan.io/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologySpec>,
    /// Higher runs first and may preempt lower (bounded, see docs/operator.md).
    #[serde(default)]
    pub priority: i32,
    /// Residency (hard) and preferred (soft) regions.
    #[serde(default)]
    pub regions: RegionConstraints,
    /// The controller fails the job after this many seconds of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_runtime_seconds: Option<i64>,
    /// The job may start this many seconds after creation at the latest;
    /// until then the scheduler may hold it for greener hours of the
    /// regions' green-power profiles (time shifting), never past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_delay_seconds: Option<i64>,
    /// Pod template for every replica.
    #[schemars(schema_with = "opaque_object")]
    pub template: PodTemplateSpec,
}

/// Price tier of the tokens an inference service produces.
pub const TOKEN_TIERS: [&str; 3] = ["basic", "industry", "high-value"];

/// Where the controller and the ledger scrape token counters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsEndpoint {
    /// Container port serving Prometheus text format.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path, `/metrics` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How the token gateway reaches a service's replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEndpoint {
    /// Container port serving the OpenAI API (`/v1/...`).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Offer the model to every tenant (MaaS, subject to each tenant's
    /// model grants); by default only the service's own tenant may call it.
    #[serde(default)]
    pub shared: bool,
}

/// A model served behind an API, billed per token.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "zhisuan.io",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "WorkloadStatus",
    shortname = "isvc",
    category = "zhisuan",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelName"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tokenTier"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Region",
        type_ = "string",
        json_path = ".status.placement.region"
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!(has(self.gpusPerReplica) && has(self.gpuMilli))")
    .message("set either gpusPerReplica (whole GPUs) or gpuMilli (a share of one GPU), not both"))]
#[x_kube(validation = Rule::new("!(has(self.gateway) && has(self.metrics))")
    .message("a service is metered either by scraping its counters (metrics) or per call through the token gateway (gateway), not both: one of them would count its tokens twice"))]
#[x_kube(validation = Rule::new("!has(self.topology) || (has(self.topology.required) != has(self.topology.preferred))")
    .message("topology: set exactly one of required or preferred (nvlink, rack or block)"))]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// Tenant that pays for and is limited by this service.
    #[x_kube(validation = Rule::new("self != ''").message("tenant must not be empty"))]
    pub tenant: String,
    /// Model served (used by the ledger and dashboards).
    pub model_name: String,
    /// Token price tier: basic, industry or high-value.
    #[x_kube(validation = Rule::new("self in ['basic', 'industry', 'high-value']")
        .message("tokenTier must be one of basic, industry, high-value"))]
    pub token_tier: String,
    /// Serving replicas (placed together).
    #[schemars(range(min = 1, max = 10000))]
    pub replicas: i32,
    /// Whole GPUs per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub gpus_per_replica: Option<i32>,
    /// A share of one GPU per replica, in thousandths (1..1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub gpu_milli: Option<i32>,
    /// Accelerator models accepted (empty = any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// Accelerator vendor or software stack needed: nvidia / cuda, huawei /
    /// ascend / cann (empty = NVIDIA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_vendor: Option<String>,
    /// Let the replicas run on different GPU models (default: one model).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixed_models: bool,
    /// Network topology of the gang: `{required: rack}` runs it inside one
    /// rack or not at all; `{preferred: rack}` inside one rack when one has
    /// room, else the smallest block, else anywhere in the region. Levels:
    /// nvlink, rack, block (node labels `topology.zhisuan.io/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologySpec>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Round-trip latency target to the users, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub latency_slo_ms: Option<i32>,
    /// Region the users are in (for the latency SLO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_region: Option<String>,
    /// Residency (hard) and preferred (soft) regions.
    #[serde(default)]
    pub regions: RegionConstraints,
    /// Token counters to scrape (vLLM-style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsEndpoint>,
    /// Serve `modelName` through the token gateway (docs/gateway.md): calls
    /// go to the running replicas on this port and are billed per call to
    /// the caller. Not together with `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayEndpoint>,
    /// Pod template for every replica.
    #[schemars(schema_with = "opaque_object")]
    pub template: PodTemplateSpec,
}

/// The fields TrainingJob and InferenceService share, borrowed from either
/// spec: one shape for validation and for the planner's view.
pub struct WorkloadCommon<'a> {
    pub tenant: &'a str,
    pub replicas: i32,
    pub gpus_per_replica: Option<i32>,
    pub gpu_milli: Option<i32>,
    pub gpu_models: &'a [String],
    pub accelerator_vendor: &'a Option<String>,
    pub mixed_models: bool,
    pub topology: Option<TopologySpec>,
    pub priority: i32,
    pub regions: &'a RegionConstraints,
    pub template: &'a PodTemplateSpec,
}

/// A workload spec (TrainingJob or InferenceService).
pub trait WorkloadSpec {
    fn common(&self) -> WorkloadCommon<'_>;
}

// Both specs name their shared fields alike.
macro_rules! workload_spec {
    ($($spec:ty),*) => {$(
        impl WorkloadSpec for $spec {
            fn common(&self) -> WorkloadCommon<'_> {
                WorkloadCommon {
                    tenant: &self.tenant,
                    replicas: self.replicas,
                    gpus_per_replica: self.gpus_per_replica,
                    gpu_milli: self.gpu_milli,
                    gpu_models: &self.gpu_models,
                    accelerator_vendor: &self.accelerator_vendor,
                    mixed_models: self.mixed_models,
                    topology: self.topology,
                    priority: self.priority,
                    regions: &self.regions,
                    template: &self.template,
                }
            }
        }
    )*};
}
workload_spec!(TrainingJobSpec, InferenceServiceSpec);

/// A kubeconfig in a Secret, for a region that is a separate member cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub namespace: String,
    /// Key inside the Secret's data, `kubeconfig` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One hub / data-centre cluster of the national compute network.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "zhisuan.io",
    version = "v1alpha1",
    kind = "ComputeRegion",
    status = "ComputeRegionStatus",
    shortname = "cr",
    category = "zhisuan",
    printcolumn(name = "Hub", type_ = "string", json_path = ".spec.hub"),
    printcolumn(name = "Side", type_ = "string", json_path = ".spec.side"),
    printcolumn(name = "PUE", type_ = "number", json_path = ".spec.pue"),
    printcolumn(name = "Green", type_ = "number", json_path = ".spec.greenShare"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpus"),
    printcolumn(
        name = "Allocated",
        type_ = "number",
        json_path = ".status.gpusAllocated"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ComputeRegionSpec {
    /// National hub (e.g. 宁夏 / ningxia).
    pub hub: String,
    /// Data-centre cluster inside the hub (e.g. 中卫 / zhongwei).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// east (demand side) or west (energy side).
    #[x_kube(validation = Rule::new("self in ['east', 'west']").message("side must be east or west"))]
    pub side: String,
    /// Power usage effectiveness (facility / IT energy).
    #[schemars(range(min = 1.0, max = 3.0))]
    pub pue: f64,
    /// Share of electricity from green contracts (0..1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub green_share: f64,
    /// Hour-of-day green share (China Standard Time, 24 values 0..1) that
    /// replaces `greenShare` when set: what time shifting waits for (a
    /// solar site's noon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 24, max = 24))]
    pub green_profile: Option<Vec<f64>>,
    /// Electricity price, fen per kWh (integer money): the flat price, or
    /// the flat-period price of a time-of-use tariff.
    #[schemars(range(min = 0))]
    pub electricity_fen_per_kwh: i64,
    /// Time-of-use tariff (峰谷分时电价): 24 multipliers of
    /// `electricityFenPerKwh`, one per hour of day (China Standard Time),
    /// e.g. 0.4 in valley hours and 1.6 at the peak; each in (0, 10].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 24, max = 24))]
    pub price_profile: Option<Vec<f64>>,
    /// Grid emission factor, kgCO2 per kWh.
    #[schemars(range(min = 0.0))]
    pub grid_kg_co2_per_kwh: f64,
    /// Nodes of this region in this cluster (label selector, equality only).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Round-trip time from the places users sit (a province / city name,
    /// or another ComputeRegion's name) to this region, ms: the latency the
    /// region planner checks an InferenceService's `latencySloMs` against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency_ms: BTreeMap<String, f64>,
    /// Set when the region is a separate member cluster: the Secret (in the
    /// controller's cluster) holding its kubeconfig. The region's nodes are
    /// then that cluster's (nodeSelector applied there) and its pods are
    /// created and bound there. A missing or unusable Secret leaves the region
    /// out (condition `Usable=False`, reason `KubeconfigSecretUnusable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// Reserves the whole region to a tenant subtree (a dedicated zone,
    /// 政务算力专区): only workloads of this tenant or of tenants below it
    /// run here. Single nodes are reserved with the node label
    /// `zhisuan.io/dedicated-to` (and named by `zhisuan.io/node-group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_to: Option<String>,
}

/// Limits of one tenant, nested in a tree (province → city → department).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "zhisuan.io",
    version = "v1alpha1",
    kind = "TenantQuota",
    status = "TenantQuotaStatus",
    shortname = "tq",
    category = "zhisuan",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parent"),
    printcolumn(
        name = "Used-milliGPU",
        type_ = "integer",
        json_path = ".status.usedMilliGpus"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    )
)]
#[x_kube(validation = Rule::new("!has(self.parent) || self.parent != self.tenant")
    .message("parent must differ from tenant"))]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaSpec {
    /// Tenant name (unique across TenantQuotas).
    #[x_kube(validation = Rule::new("self != ''").message("tenant must not be empty"))]
    pub tenant: String,
    /// Parent tenant; its limits also bound this tenant's use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// GPUs (whole, shares add up in milli) per accelerator model; `*` = any model.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0)").message("gpus limits must be >= 0"))]
    pub gpus: BTreeMap<String, i64>,
    /// GPU-hours per month per accelerator model; `*` = any model.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0)").message("gpuHoursPerMonth must be >= 0"))]
    pub gpu_hours_per_month: BTreeMap<String, i64>,
    /// GPUs guaranteed to this tenant under contention (its fair-share weight).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub guaranteed_gpus: i64,
    /// May use idle capacity beyond `guaranteedGpus` (up to `gpus`), subject to preemption.
    #[serde(default = "yes")]
    pub borrowable: bool,
    /// Tokens per month per tier (basic, industry, high-value; `*` = all tiers together).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0)").message("tokensPerMonth must be >= 0"))]
    pub tokens_per_month: BTreeMap<String, i64>,
    /// The accelerator vendor or stack of its workloads that name none (and
    /// whose models do not decide): nvidia / cuda, huawei / ascend / cann;
    /// absent = the parent's, else NVIDIA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_accelerator_vendor: Option<String>,
    /// Pod Security Standards level its workloads' pod templates must meet:
    /// privileged, baseline or restricted (absent: the parent's, else baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security: Option<super::podsecurity::PodSecurityLevel>,
    /// Service accounts (in the workload's namespace) its workloads' pod
    /// templates may name besides `default` (absent: the parent's, else
    /// none). Privileged tenants may name any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    /// Confines this tenant and every tenant below it to dedicated zones:
    /// nodes and regions reserved to its subtree or to a tenant above it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedicated_only: bool,
}

fn yes() -> bool {
    true
}

/// A government compute voucher (算力券), redeemed by the ledger.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "zhisuan.io",
    version = "v1alpha1",
    kind = "ComputeVoucher",
    status = "ComputeVoucherStatus",
    shortname = "cv",
    category = "zhisuan",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuer"),
    printcolumn(name = "Face-fen", type_ = "integer", json_path = ".spec.faceValueFen"),
    printcolumn(
        name = "Balance-fen",
        type_ = "integer",
        json_path = ".status.balanceFen"
    ),
    printcolumn(name = "Until", type_ = "string", json_path = ".spec.validUntil")
)]
#[x_kube(validation = Rule::new("self.validUntil > self.validFrom")
    .message("validUntil must be after validFrom"))]
#[serde(rename_all = "camelCase")]
pub struct ComputeVoucherSpec {
    /// Issuing authority (e.g. a city's data bureau).
    pub issuer: String,
    /// Tenant that may redeem it.
    pub tenant: String,
    /// Face value in fen (integer money).
    #[schemars(range(min = 1))]
    pub face_value_fen: i64,
    /// Largest share of each charge the voucher covers, in basis points (0..10000).
    #[schemars(range(min = 0, max = 10000))]
    pub copay_basis_points: i64,
    /// RFC 3339 start of validity.
    pub valid_from: String,
    /// RFC 3339 end of validity (exclusive).
    pub valid_until: String,
    /// Eligible regions (empty = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Eligible resource kinds: gpu, tokens, energy (empty = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_kinds: Vec<String>,
}

/// Redemption state, written by the ledger.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeVoucherStatus {
    #[serde(default)]
    pub balance_fen: i64,
    #[serde(default)]
    pub redeemed_fen: i64,
    /// The voucher's id in the ledger (`cv-<uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_id: Option<String>,
    /// Issued or Rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why it was not issued, or why an edit is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every CRD, in a stable order.
pub fn all_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        TrainingJob::crd(),
        InferenceService::crd(),
        ComputeRegion::crd(),
        TenantQuota::crd(),
        ComputeVoucher::crd(),
    ]
}

/// File name in `crds/` and YAML text of every CRD.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            Ok((name, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream (what `zhisuan crd` prints).
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for (_, text) in crd_files()? {
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is generated: regenerate with `cargo run -- crd --out-dir crds`.
    #[test]
    fn crds_directory_is_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (name, text) in crd_files().unwrap() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(
                on_disk == text,
                "crds/{name} is out of date: run `cargo run -- crd --out-dir crds`"
            );
        }
    }

    #[test]
    fn schemas_carry_cel_rules_and_bounds() {
        let yaml = crds_yaml().unwrap();
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("set either gpusPerReplica"));
        assert!(yaml.contains("gpus limits must be >= 0"));
        let tj = serde_json::to_value(TrainingJob::crd()).unwrap();
        let spec = &tj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["gpuMilli"]["maximum"], 1000.0);
        assert_eq!(spec["properties"]["replicas"]["minimum"], 1.0);
        assert_eq!(
            spec["properties"]["template"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        let versions = &tj["spec"]["versions"][0];
        assert_eq!(versions["subresources"]["status"], serde_json::json!({}));
        assert!(
            versions["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .len()
                >= 5
        );
    }
}
