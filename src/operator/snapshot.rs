//! Snapshot: the cluster as plain data for the planner. Converting kube
//! objects into these views is the only place that knows their shapes; the
//! planner ([`crate::schedule`]) sees nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DynamicObject;
use kube::ResourceExt;

use super::crd::{
    ComputeRegionSpec, ComputeRegionStatus, InferenceServiceSpec, TenantQuotaSpec, TrainingJobSpec,
    WorkloadCommon, WorkloadSpec, WorkloadStatus, FINALIZER,
};
use super::podsecurity::{self, PodSecurityLevel};
use super::validate::{self, FieldError};

pub use crate::jobs::{
    Dedication, Kind, MonthToDate, NodeView, PodView, Quota, QuotaNode, QuotaView, WorkloadKey,
    WorkloadView, MILLI_GPU_S_PER_GPU_HOUR,
};

/// Annotation keys and labels of the operator ↔ agent ↔ placement contract.
pub mod keys {
    pub const GPU_DEVICES: &str = "zhisuan.io/gpu-devices";
    pub const GPU_MILLI: &str = "zhisuan.io/gpu-milli";
    pub const TENANT: &str = "zhisuan.io/tenant";
    pub const JOB: &str = "zhisuan.io/job";
    pub const UNHEALTHY_GPUS: &str = "zhisuan.io/unhealthy-gpus";
    pub const GPU_MODEL: &str = "zhisuan.io/gpu-model";
    pub const GPU_COUNT: &str = "zhisuan.io/gpu-count";
    pub const VENDOR: &str = "zhisuan.io/accelerator-vendor";
    pub const REGION: &str = "zhisuan.io/region";
    /// Node label: the tenant subtree the node is reserved to.
    pub const DEDICATED_TO: &str = "zhisuan.io/dedicated-to";
    /// Node label: the name of the node group (dedicated zone) it is in.
    pub const NODE_GROUP: &str = "zhisuan.io/node-group";
    /// Synthetic label on the views of a member cluster's nodes: the
    /// ComputeRegion (member) they belong to. Never written to a Node.
    pub const MEMBER_CLUSTER: &str = "zhisuan.io/member-cluster";
    /// Pod labels the controller sets on the pods it creates.
    pub const WORKLOAD_KIND: &str = "zhisuan.io/workload-kind";
    pub const WORKLOAD_NAME: &str = "zhisuan.io/workload";
    pub const REPLICA: &str = "zhisuan.io/replica";
    /// Scheduler name on the pods the controller creates (kube-scheduler leaves them alone).
    pub const SCHEDULER_NAME: &str = "zhisuan";
}

/// The planner's name of a member cluster's node: `<region>/<node>`. Node
/// names are unique within one cluster only (`kind-control-plane` is in
/// many); a Node name never contains `/`, so this cannot collide with a home
/// node's name. Placements record it; the pods are bound in the member
/// cluster with [`name_in_cluster`].
pub fn member_node_key(region: &str, node: &str) -> String {
    format!("{region}/{node}")
}

/// A node's name in its own cluster: the planner's name without the
/// `<region>/` of a member cluster's node.
pub fn name_in_cluster(node: &str) -> &str {
    node.rsplit_once('/').map_or(node, |(_, name)| name)
}

/// Placements recorded before member nodes were keyed `<region>/<node>`
/// name a member cluster's node by its bare name; read as they are, the node
/// would look gone and a running gang would be stopped and requeued
/// (NodeLost) on the upgrade. Keys them as the planner does now. Idempotent.
pub fn key_legacy_member_placements(workloads: &mut [WorkloadView], regions: &[RegionView]) {
    let members: BTreeSet<&str> = regions
        .iter()
        .filter(|r| r.spec.kubeconfig_secret_ref.is_some())
        .map(|r| r.name.as_str())
        .collect();
    if members.is_empty() {
        return;
    }
    for w in workloads.iter_mut() {
        let Some(p) = &mut w.status.placement else {
            continue;
        };
        let Some(region) = p.region.as_deref().filter(|r| members.contains(r)) else {
            continue;
        };
        for r in p.replicas.iter_mut().filter(|r| !r.node.contains('/')) {
            r.node = member_node_key(region, &r.node);
        }
    }
}

/// A ComputeRegion as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionView {
    /// Object name: the region's id in placements and residency lists.
    pub name: String,
    pub spec: ComputeRegionSpec,
    pub status: ComputeRegionStatus,
    pub errors: Vec<FieldError>,
    /// For a member-cluster region (`spec.kubeconfigSecretRef`): why it
    /// cannot be used now (reason, message); `None` once its cluster is
    /// connected and listed (the controller fills this in).
    pub member_problem: Option<(String, String)>,
}

/// Parses `"0,1"` device lists (the `zhisuan.io/gpu-devices` / `unhealthy-gpus` form).
pub fn parse_devices(s: &str) -> Vec<u8> {
    s.split(',')
        .filter_map(|p| p.trim().parse::<u8>().ok())
        .collect()
}

/// Kubernetes CPU quantity → millicores ("2", "500m", "1.5").
pub fn cpu_milli(q: &str) -> Option<u32> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u32>().ok();
    }
    q.parse::<f64>().ok().map(|c| (c * 1000.0).round() as u32)
}

/// Kubernetes memory quantity → MiB ("16Gi", "512Mi", "1G", bytes).
pub fn memory_mib(q: &str) -> Option<u64> {
    let q = q.trim();
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| (v * mult / 1048576.0) as u64);
        }
    }
    q.parse::<f64>().ok().map(|v| (v / 1048576.0) as u64)
}

/// Node → view. Capacity from `status.allocatable`, GPUs from the agent's labels.
pub fn node_view(node: &Node) -> NodeView {
    let labels = node.labels();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let quantity = |k: &str| alloc.and_then(|a| a.get(k)).map(|q| q.0.clone());
    let gpus = label(keys::GPU_COUNT)
        .parse::<u8>()
        .ok()
        .or_else(|| quantity("nvidia.com/gpu").and_then(|q| q.parse().ok()))
        .unwrap_or(0);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    NodeView {
        name: node.name_any(),
        region: label(keys::REGION),
        model: label(keys::GPU_MODEL),
        vendor: label(keys::VENDOR),
        gpus,
        unhealthy: node
            .annotations()
            .get(keys::UNHEALTHY_GPUS)
            .map(|s| parse_devices(s))
            .unwrap_or_default(),
        cpu_milli: quantity("cpu")
            .and_then(|q| cpu_milli(&q))
            .unwrap_or(u32::MAX / 2),
        memory_mib: quantity("memory")
            .and_then(|q| memory_mib(&q))
            .unwrap_or(u64::MAX / 2),
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        schedulable: ready && !cordoned,
        dedicated: dedication(&node.name_any(), labels),
    }
}

/// A node's reservation from its labels: `zhisuan.io/dedicated-to` names
/// the tenant subtree, `zhisuan.io/node-group` the zone (else the node).
fn dedication(name: &str, labels: &BTreeMap<String, String>) -> Option<Dedication> {
    let tenant = labels.get(keys::DEDICATED_TO).filter(|t| !t.is_empty())?;
    let zone = match labels.get(keys::NODE_GROUP).filter(|g| !g.is_empty()) {
        Some(group) => format!("node group {group:?}"),
        None => format!("node {name:?}"),
    };
    Some(Dedication {
        tenant: tenant.clone(),
        zone,
    })
}

/// CPU and memory requested by a pod spec's containers.
fn requests(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> (u32, u64) {
    let mut cpu = 0u32;
    let mut mem = 0u64;
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        cpu += req
            .and_then(|r| r.get("cpu"))
            .and_then(|q| cpu_milli(&q.0))
            .unwrap_or(0);
        mem += req
            .and_then(|r| r.get("memory"))
            .and_then(|q| memory_mib(&q.0))
            .unwrap_or(0);
    }
    (cpu, mem)
}

/// The workload a pod's labels name as its owner (same namespace).
pub fn pod_owner(pod: &Pod) -> Option<WorkloadKey> {
    let labels = pod.labels();
    labels
        .get(keys::WORKLOAD_KIND)
        .and_then(|k| Kind::from_label(k))
        .zip(labels.get(keys::WORKLOAD_NAME))
        .map(|(kind, name)| WorkloadKey {
            kind,
            namespace: pod.namespace().unwrap_or_default(),
            name: name.clone(),
        })
}

/// Pod → view.
pub fn pod_view(pod: &Pod) -> PodView {
    let ann = pod.annotations();
    let owner = pod_owner(pod);
    let (cpu, mem) = requests(pod.spec.as_ref());
    PodView {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        owner,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        devices: ann
            .get(keys::GPU_DEVICES)
            .map(|s| parse_devices(s))
            .unwrap_or_default(),
        milli: ann.get(keys::GPU_MILLI).and_then(|s| s.parse().ok()),
        cpu_milli: cpu,
        memory_mib: mem,
        phase: pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".into()),
        deleting: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// A workload object → view. A spec that does not even parse (a string where
/// a number belongs) becomes a view with an error naming the field, so one
/// bad object never stalls the others.
/// What a workload spec is validated against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationRules {
    /// Accelerator models the cluster has.
    pub known_models: BTreeSet<String>,
    /// Each tenant's Pod Security level (absent: baseline).
    pub pod_security: BTreeMap<String, PodSecurityLevel>,
    /// The service accounts each tenant's pod templates may name besides
    /// `default` (TenantQuota `spec.serviceAccounts`, inherited).
    pub service_accounts: BTreeMap<String, Vec<String>>,
}

impl ValidationRules {
    pub fn level(&self, tenant: &str) -> PodSecurityLevel {
        self.pod_security.get(tenant).copied().unwrap_or_default()
    }

    pub fn service_accounts(&self, tenant: &str) -> &[String] {
        self.service_accounts
            .get(tenant)
            .map_or(&[], |v| v.as_slice())
    }
}

/// `(tenant, parent, setting)` of every TenantQuota object, the setting read
/// from its spec by `read` (the input of the tenant-tree inheritance).
fn tenant_settings<T>(
    quotas: &[Arc<DynamicObject>],
    read: impl Fn(&serde_json::Value) -> Option<T>,
) -> Vec<(String, Option<String>, Option<T>)> {
    quotas
        .iter()
        .filter_map(|q| {
            let spec = q.data.get("spec")?;
            let tenant = spec.get("tenant")?.as_str()?.to_string();
            let parent = spec
                .get("parent")
                .and_then(|p| p.as_str())
                .map(String::from);
            Some((tenant, parent, read(spec)))
        })
        .collect()
}

/// Each tenant's default accelerator vendor from the TenantQuota objects
/// (normalised; inherited down the tree; invalid values are the quota's
/// own `Valid=False` and ignored here).
pub fn default_vendors(quotas: &[Arc<DynamicObject>]) -> BTreeMap<String, String> {
    let entries = tenant_settings(quotas, |spec| {
        spec.get("defaultAcceleratorVendor")
            .and_then(|v| v.as_str())
            .and_then(|v| crate::jobs::accelerator_vendor(v).ok())
            .map(String::from)
    });
    super::tenancy::inherited(&entries)
}

/// Each tenant's Pod Security level from the TenantQuota objects.
pub fn pod_security_levels(quotas: &[Arc<DynamicObject>]) -> BTreeMap<String, PodSecurityLevel> {
    let entries = tenant_settings(quotas, |spec| {
        spec.get("podSecurity")
            .and_then(|l| serde::Deserialize::deserialize(l).ok())
    });
    podsecurity::tenant_levels(&entries)
}

/// The service accounts each tenant's templates may name, from the
/// TenantQuota objects (`spec.serviceAccounts`; inherited down the tree).
pub fn service_accounts(quotas: &[Arc<DynamicObject>]) -> BTreeMap<String, Vec<String>> {
    let entries = tenant_settings(quotas, |spec| {
        spec.get("serviceAccounts")
            .and_then(|l| serde::Deserialize::deserialize(l).ok())
    });
    super::tenancy::inherited(&entries)
}

pub fn workload_view(kind: Kind, obj: &DynamicObject, rules: &ValidationRules) -> WorkloadView {
    let known_models = &rules.known_models;
    let key = workload_key(kind, obj);
    let status: WorkloadStatus = obj
        .data
        .get("status")
        .and_then(|s| <WorkloadStatus as serde::Deserialize>::deserialize(s).ok())
        .unwrap_or_default();
    let null = serde_json::Value::Null;
    let spec_value = obj.data.get("spec").unwrap_or(&null);
    let mut view = WorkloadView {
        key,
        uid: obj.uid().unwrap_or_default(),
        generation: obj.metadata.generation.unwrap_or(0),
        created: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0),
        tenant: String::new(),
        replicas: 0,
        gpus_per_replica: 0,
        gpu_milli: None,
        models: Vec::new(),
        vendor: None,
        mixed_models: false,
        topology: None,
        default_vendor: None,
        priority: 0,
        residency: Vec::new(),
        preferred: Vec::new(),
        max_runtime_s: None,
        max_delay_s: None,
        latency_slo_ms: None,
        user_region: None,
        token_tier: None,
        batch: false,
        cpu_milli: 0,
        memory_mib: 0,
        status,
        deleting: obj.metadata.deletion_timestamp.is_some(),
        has_finalizer: obj.finalizers().iter().any(|f| f == FINALIZER),
        errors: Vec::new(),
        tenant_mismatch: None,
    };
    let parsed = match kind {
        Kind::Training => parse_spec::<TrainingJobSpec>(spec_value).map(|s| {
            view.errors = validate::validate_training(&s, known_models);
            view.errors.extend(podsecurity::check_template(
                &s.template,
                rules.level(&s.tenant),
                rules.service_accounts(&s.tenant),
            ));
            fill(&mut view, &s.common(), s.max_runtime_seconds);
            view.max_delay_s = s.max_delay_seconds.filter(|&d| d > 0);
        }),
        Kind::Inference => parse_spec::<InferenceServiceSpec>(spec_value).map(|s| {
            view.errors = validate::validate_inference(&s, known_models);
            view.errors.extend(podsecurity::check_template(
                &s.template,
                rules.level(&s.tenant),
                rules.service_accounts(&s.tenant),
            ));
            fill(&mut view, &s.common(), None);
            view.latency_slo_ms = s.latency_slo_ms.map(f64::from);
            view.user_region = s.user_region.clone();
            view.token_tier = Some(super::tokens::tier_of(&s.token_tier));
        }),
    };
    if let Err(e) = parsed {
        view.errors.push(e);
    }
    view
}

/// Deserialises a spec; on failure names the top-level field at fault (serde
/// errors do not), found as the one whose removal cures or changes the error.
/// Read in place: the spec (with its pod template) is not copied.
pub fn parse_spec<T: serde::de::DeserializeOwned>(
    spec: &serde_json::Value,
) -> Result<T, FieldError> {
    let err = match T::deserialize(spec) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    // A required field that is absent is named by the error itself.
    let missing = err
        .split_once("missing field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    if let Some(field) = missing {
        return Err(FieldError {
            field: format!("spec.{field}"),
            message: format!("is required: {err}"),
        });
    }
    let culprit = spec.as_object().and_then(|map| {
        map.keys().find(|k| {
            let mut without = map.clone();
            without.remove(*k);
            match serde_json::from_value::<T>(serde_json::Value::Object(without)) {
                Ok(_) => true,
                Err(e) => e.to_string().contains(&format!("missing field `{k}`")),
            }
        })
    });
    Err(FieldError {
        field: culprit
            .map(|k| format!("spec.{k}"))
            .unwrap_or_else(|| "spec".into()),
        message: format!("does not parse: {err}"),
    })
}

fn fill(view: &mut WorkloadView, c: &WorkloadCommon, max_runtime_s: Option<i64>) {
    view.tenant = c.tenant.to_string();
    view.replicas = c.replicas.clamp(0, 10_000) as u32;
    view.gpus_per_replica = c.gpus_per_replica.unwrap_or(0).clamp(0, 64) as u8;
    view.gpu_milli = c.gpu_milli.map(|m| m.clamp(0, 1000) as u16);
    if view.gpu_milli == Some(1000) {
        view.gpu_milli = None;
        view.gpus_per_replica = 1;
    }
    view.models = c.gpu_models.to_vec();
    view.vendor = c
        .accelerator_vendor
        .as_deref()
        .and_then(|v| crate::jobs::accelerator_vendor(v).ok())
        .map(String::from);
    view.mixed_models = c.mixed_models;
    view.topology = c.topology.and_then(|t| t.ask().ok());
    view.priority = c.priority;
    view.residency = c.regions.residency.clone();
    view.preferred = c.regions.preferred.clone();
    view.max_runtime_s = max_runtime_s;
    let (cpu, mem) = requests(c.template.spec.as_ref());
    view.cpu_milli = cpu;
    view.memory_mib = mem;
}

/// An object's spec (validated) and status; a spec that does not parse
/// becomes the default spec with the error naming the field.
fn spec_and_status<S, T>(
    obj: &DynamicObject,
    validate: impl Fn(&S) -> Vec<FieldError>,
) -> (S, T, Vec<FieldError>)
where
    S: serde::de::DeserializeOwned + Default,
    T: serde::de::DeserializeOwned + Default,
{
    let status = obj
        .data
        .get("status")
        .and_then(|s| T::deserialize(s).ok())
        .unwrap_or_default();
    match parse_spec::<S>(obj.data.get("spec").unwrap_or(&serde_json::Value::Null)) {
        Ok(spec) => {
            let errors = validate(&spec);
            (spec, status, errors)
        }
        Err(e) => (S::default(), status, vec![e]),
    }
}

/// A workload object's key.
pub fn workload_key(kind: Kind, obj: &DynamicObject) -> WorkloadKey {
    WorkloadKey {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// A TenantQuota object → view (parse errors become field errors).
pub fn quota_view(obj: &DynamicObject) -> QuotaView {
    let (spec, status, errors) = spec_and_status(obj, validate::validate_quota);
    QuotaView {
        name: obj.name_any(),
        spec: quota_spec(spec),
        status,
        errors,
    }
}

/// A TenantQuota's spec as the quota tree's node.
pub fn quota_spec(spec: TenantQuotaSpec) -> QuotaNode {
    let quota = quota_limits(&spec);
    QuotaNode {
        tenant: spec.tenant,
        parent: spec.parent,
        quota,
        dedicated_only: spec.dedicated_only,
    }
}

/// A TenantQuota's limits: the one quota type, field by field; a tier
/// spelt as in CRDs (`high-value`) is keyed as the ledger's (`high_value`).
pub fn quota_limits(spec: &TenantQuotaSpec) -> Quota {
    let tier_key = |k: &String| match crate::ledger::Tier::parse(&k.replace('-', "_")) {
        Some(t) => t.as_str().to_string(),
        None => k.clone(),
    };
    Quota {
        gpus: spec.gpus.clone(),
        gpu_hours_per_month: spec.gpu_hours_per_month.clone(),
        tokens_per_month: spec
            .tokens_per_month
            .iter()
            .map(|(k, v)| (tier_key(k), *v))
            .collect(),
        guaranteed_gpus: spec.guaranteed_gpus,
        borrowable: spec.borrowable,
    }
}

/// A ComputeRegion object → view (parse errors become field errors).
pub fn region_view(obj: &DynamicObject) -> RegionView {
    let (spec, status, errors) = spec_and_status(obj, validate::validate_region);
    let member_problem = spec.kubeconfig_secret_ref.as_ref().map(|_| {
        (
            "MemberClusterSyncing".to_string(),
            "the member cluster is not connected yet".to_string(),
        )
    });
    RegionView {
        name: obj.name_any(),
        spec,
        status,
        errors,
        member_problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_milli("500m"), Some(500));
        assert_eq!(cpu_milli("2"), Some(2000));
        assert_eq!(cpu_milli("1.5"), Some(1500));
        assert_eq!(memory_mib("16Gi"), Some(16384));
        assert_eq!(memory_mib("512Mi"), Some(512));
        assert_eq!(memory_mib("1048576"), Some(1));
        assert_eq!(parse_devices("0, 2,x,5"), vec![0, 2, 5]);
    }

    #[test]
    fn placements_from_before_member_keys_are_keyed_on_read() {
        let region = |name: &str, member: bool| {
            let mut spec = serde_json::json!({"hub": name, "side": "west", "pue": 1.2,
                "greenShare": 0.5, "electricityFenPerKwh": 30, "gridKgCo2PerKwh": 0.6});
            if member {
                spec["kubeconfigSecretRef"] = serde_json::json!({"name": "k", "namespace": "ns"});
            }
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "ComputeRegion",
                "metadata": {"name": name}, "spec": spec}))
            .unwrap();
            region_view(&obj)
        };
        let job = |name: &str, region: &str, nodes: &[&str]| {
            let replicas: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| serde_json::json!({"pod": format!("{name}-{i}"), "node": n, "devices": [0]}))
                .collect();
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"tenant": "a", "replicas": nodes.len(), "gpusPerReplica": 1,
                         "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
                "status": {"phase": "Running",
                           "placement": {"region": region, "replicas": replicas}}}))
            .unwrap();
            workload_view(Kind::Training, &obj, &ValidationRules::default())
        };
        let mut workloads = vec![
            job("old", "far", &["kind-control-plane", "far/far-2"]),
            job("home", "home", &["kind-control-plane"]),
        ];
        let regions = vec![region("far", true), region("home", false)];
        let nodes = |workloads: &[WorkloadView], i: usize| -> Vec<String> {
            let p = workloads[i].status.placement.as_ref().unwrap();
            p.replicas.iter().map(|r| r.node.clone()).collect()
        };
        key_legacy_member_placements(&mut workloads, &regions);
        assert_eq!(
            nodes(&workloads, 0),
            ["far/kind-control-plane", "far/far-2"]
        );
        assert_eq!(
            nodes(&workloads, 1),
            ["kind-control-plane"],
            "home nodes keep their names"
        );
        key_legacy_member_placements(&mut workloads, &regions);
        assert_eq!(
            nodes(&workloads, 0),
            ["far/kind-control-plane", "far/far-2"],
            "idempotent"
        );
    }

    #[test]
    fn a_spec_that_does_not_parse_names_the_field() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"tenant": "a", "replicas": "many", "template": {}}
        }))
        .unwrap();
        let v = workload_view(Kind::Training, &obj, &ValidationRules::default());
        assert_eq!(v.errors.len(), 1);
        assert_eq!(v.errors[0].field, "spec.replicas", "{:?}", v.errors);
        // A missing required field is named, not a present one.
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"tenant": "a", "modelName": "m", "replicas": 1, "gpusPerReplica": 1,
                     "template": {}}
        }))
        .unwrap();
        let v = workload_view(Kind::Inference, &obj, &ValidationRules::default());
        assert_eq!(v.errors[0].field, "spec.tokenTier", "{:?}", v.errors);
        // A topology level that does not exist is named; a good one reaches
        // the planner's view.
        let job = |topology: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "t", "namespace": "ns"},
                "spec": {"tenant": "a", "replicas": 2, "gpusPerReplica": 8,
                         "topology": topology, "template": {}}
            }))
            .unwrap()
        };
        let rules = ValidationRules::default();
        let v = workload_view(
            Kind::Training,
            &job(serde_json::json!({"required": "row"})),
            &rules,
        );
        assert_eq!(v.errors[0].field, "spec.topology", "{:?}", v.errors);
        let v = workload_view(
            Kind::Training,
            &job(serde_json::json!({"required": "rack"})),
            &rules,
        );
        assert!(v.errors.is_empty(), "{:?}", v.errors);
        let want = crate::placement::TopologyAsk {
            level: crate::placement::Level::Rack,
            required: true,
        };
        assert_eq!(v.topology, Some(want));
    }

    /// A tier spelt as in CRDs (`high-value`) keys the quota and the
    /// service as the ledger keys month-to-date tokens (`high_value`), so a
    /// TenantQuota's high-value limit meets the tokens it limits.
    #[test]
    fn crd_tiers_key_limits_and_services_as_the_ledger_does() {
        let q: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": "a"},
            "spec": {"tenant": "a", "tokensPerMonth": {"high-value": 10, "*": 20}}
        }))
        .unwrap();
        let q = quota_view(&q);
        assert!(q.errors.is_empty(), "{:?}", q.errors);
        assert_eq!(
            q.spec.quota.tokens_per_month,
            BTreeMap::from([("*".to_string(), 20), ("high_value".to_string(), 10)])
        );
        let svc: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"tenant": "a", "modelName": "m", "replicas": 1, "gpusPerReplica": 1,
                     "tokenTier": "high-value", "template": {}}
        }))
        .unwrap();
        let v = workload_view(Kind::Inference, &svc, &ValidationRules::default());
        assert_eq!(v.token_tier, Some(crate::ledger::Tier::HighValue));
        assert_eq!(v.token_tier.map(|t| t.as_str()), Some("high_value"));
    }

    #[test]
    fn tenants_default_vendors_come_from_their_quotas_and_parents() {
        let q = |tenant: &str, parent: Option<&str>, vendor: Option<&str>| {
            let mut spec = serde_json::json!({"tenant": tenant, "parent": parent});
            if let Some(v) = vendor {
                spec["defaultAcceleratorVendor"] = serde_json::json!(v);
            }
            Arc::new(
                serde_json::from_value::<DynamicObject>(serde_json::json!({
                    "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
                    "metadata": {"name": tenant}, "spec": spec
                }))
                .unwrap(),
            )
        };
        let got = default_vendors(&[
            q("gov", None, Some("CANN")),
            q("gov-fj", Some("gov"), None),
            q("sme", None, Some("nvida")),
        ]);
        assert_eq!(got.get("gov").map(String::as_str), Some("huawei"));
        assert_eq!(got.get("gov-fj").map(String::as_str), Some("huawei"));
        assert_eq!(
            got.get("sme"),
            None,
            "a typo is the quota's error, not a vendor"
        );
    }
}
