//! Step 2 of a pass: the snapshot. What the reflectors and the member
//! clusters hold ([`Seen`], step 1) becomes the scheduler's plain data
//! ([`Snapshot`]): nodes, pods, workloads (validated, their namespace's
//! tenancy checked), quotas and the region catalog. A pass converts only
//! what changed since the last one ([`super::kept`]). Needs no client:
//! tests build snapshots from objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::DynamicObject;

use super::kept::Kept;
use super::members::{member_node_view, member_pod_view, MemberObjects};
use super::metering;
use super::regions::region_catalog;
use super::sentences::Sentences;
use super::snapshot::{self, Kind, NodeView, PodView, RegionView, WorkloadView};
use super::tenancy::{self, NamespaceTenancy};
use super::tokens::{self, ServingService};
use crate::ledger::EnergyReport;
use crate::regions::catalog::ScoreWeights;
use crate::schedule::Snapshot;

/// Step 1's result: the objects one pass sees.
#[derive(Default)]
pub(super) struct Seen {
    /// Unix seconds the pass started (the snapshot's clock).
    pub now: i64,
    pub namespaces: Vec<Arc<Namespace>>,
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub training: Vec<Arc<DynamicObject>>,
    pub inference: Vec<Arc<DynamicObject>>,
    pub quotas: Vec<Arc<DynamicObject>>,
    pub regions: Vec<Arc<DynamicObject>>,
    /// The ComputeRegions as views, with their member clusters' problems.
    pub region_views: Vec<RegionView>,
    /// The member clusters' nodes and pods.
    pub members: Vec<MemberObjects>,
}

impl Seen {
    /// The workload objects in the snapshot's order (training, then inference).
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<DynamicObject>> {
        self.training.iter().chain(self.inference.iter())
    }
}

/// What the snapshot step reads besides the objects.
#[derive(Clone, Copy)]
pub(super) struct SnapshotOptions {
    pub region_scoring: ScoreWeights,
    pub namespace_tenancy: NamespaceTenancy,
    /// Parse the InferenceServices' token endpoints (token counting on).
    pub services: bool,
    /// Parse the nodes' energy reports (GPU metering on).
    pub energy: bool,
}

/// Step 2's result: the scheduler's snapshot (month-to-date use not yet
/// read) and what the meters watch.
pub(super) struct Step {
    pub snap: Snapshot,
    pub services: Vec<ServingService>,
    pub node_energy: BTreeMap<String, Arc<EnergyReport>>,
    /// How many of the snapshot's nodes, pods and workloads are the home
    /// cluster's nodes and pods and the TrainingJobs (the views lent).
    lent: (usize, usize, usize),
}

/// Builds snapshots, keeping the views of unchanged objects between passes.
#[derive(Default)]
pub(super) struct Snapshotter {
    cache: ViewCache,
}

impl Snapshotter {
    pub fn snapshot(&mut self, seen: &Seen, opts: &SnapshotOptions) -> Step {
        let cache = &mut self.cache;
        let mut nodes = cache.nodes.lend(&seen.nodes, snapshot::node_view);
        let mut pods = cache.pods.lend(&seen.pods, snapshot::pod_view);
        let lent = (nodes.len(), pods.len(), seen.training.len());
        let (member_nodes, member_pods) = cache.member_views(&seen.members);
        nodes.extend(member_nodes);
        pods.extend(member_pods);
        let services = if opts.services {
            cache.serving_services(&seen.inference)
        } else {
            Vec::new()
        };
        let node_energy = if opts.energy {
            cache.node_energy(&seen.nodes, &seen.members)
        } else {
            BTreeMap::new()
        };
        let regions = region_catalog(&seen.region_views, &nodes, opts.region_scoring);
        let mut snap = Snapshot {
            now: seen.now,
            pods,
            nodes,
            workloads: Vec::new(),
            quotas: seen
                .quotas
                .iter()
                .map(|q| snapshot::quota_view(q))
                .collect(),
            month_use: BTreeMap::new(),
            regions,
        };
        snap.workloads = cache.workload_views(seen, &snap);
        snapshot::key_legacy_member_placements(&mut snap.workloads, &seen.region_views);
        tenancy_of(&mut snap.workloads, seen, opts.namespace_tenancy);
        Step {
            snap,
            services,
            node_energy,
            lent,
        }
    }

    /// Takes back the views a pass's snapshot borrowed, so the next pass
    /// moves them again instead of converting or copying; `overlaid`: the
    /// workloads whose status the pass replaced (those are made again).
    pub fn give_back(&mut self, step: Step, overlaid: &[usize]) {
        let (home_nodes, home_pods, training) = step.lent;
        let Snapshot {
            mut nodes,
            mut pods,
            mut workloads,
            ..
        } = step.snap;
        let cache = &mut self.cache;
        nodes.truncate(home_nodes);
        cache.nodes.give_back(nodes, &[]);
        pods.truncate(home_pods);
        cache.pods.give_back(pods, &[]);
        if workloads.len() < training {
            return;
        }
        let inference = workloads.split_off(training);
        let overlaid_inference: Vec<usize> = overlaid
            .iter()
            .filter_map(|&i| i.checked_sub(training))
            .collect();
        cache.training.give_back(workloads, overlaid);
        cache.inference.give_back(inference, &overlaid_inference);
    }
}

/// Each workload's tenant default vendor, and whether its namespace is
/// bound to another tenant.
fn tenancy_of(workloads: &mut [WorkloadView], seen: &Seen, rule: NamespaceTenancy) {
    let ns_labels: HashMap<&str, &BTreeMap<String, String>> = seen
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
        .collect();
    let known_ns: HashSet<&str> = seen
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let empty = BTreeMap::new();
    let default_vendors = snapshot::default_vendors(&seen.quotas);
    for w in workloads.iter_mut() {
        w.default_vendor = default_vendors.get(&w.tenant).cloned();
        let ns = w.key.namespace.as_str();
        let labels = ns_labels
            .get(ns)
            .copied()
            .or(known_ns.contains(ns).then_some(&empty));
        w.tenant_mismatch = tenancy::tenant_mismatch(ns, labels, &w.tenant, rule);
    }
}

/// Views of unchanged objects, reused across passes ([`Kept`]).
#[derive(Default)]
struct ViewCache {
    /// What the cached workload views were validated against.
    rules: snapshot::ValidationRules,
    /// The member-cluster regions the kept workload views' placements were
    /// keyed for (`key_legacy_member_placements` rewrites them in place).
    member_regions: Vec<String>,
    nodes: Kept<Node, NodeView>,
    pods: Kept<Pod, PodView>,
    training: Kept<DynamicObject, WorkloadView>,
    inference: Kept<DynamicObject, WorkloadView>,
    /// Member clusters' views, per region (uids are unique per cluster only).
    members: HashMap<String, MemberViewCache>,
    /// InferenceServices' token endpoints (each spec parsed once per version).
    services: Kept<DynamicObject, Option<ServingService>>,
    /// Nodes' energy reports (each annotation parsed once per version).
    energy: Kept<Node, Option<NodeEnergy>>,
    /// One copy of each sentence the workload views' statuses tell.
    sentences: Sentences,
}

/// A node's key and its agent's energy report.
type NodeEnergy = (String, Arc<EnergyReport>);

/// One member cluster's cached views.
#[derive(Default)]
struct MemberViewCache {
    nodes: Kept<Node, NodeView>,
    pods: Kept<Pod, PodView>,
    energy: Kept<Node, Option<NodeEnergy>>,
}

impl ViewCache {
    /// Views of the listed member clusters' nodes and pods, converted only
    /// where they changed; a region no longer listed loses its cache.
    fn member_views(&mut self, members: &[MemberObjects]) -> (Vec<NodeView>, Vec<PodView>) {
        let mut next = HashMap::with_capacity(members.len());
        let (mut nodes, mut pods) = (Vec::new(), Vec::new());
        for m in members {
            let mut c = self.members.remove(&m.region).unwrap_or_default();
            nodes.extend(c.nodes.copies(&m.nodes, |n| member_node_view(&m.region, n)));
            pods.extend(c.pods.copies(&m.pods, |p| member_pod_view(&m.region, p)));
            next.insert(m.region.clone(), c);
        }
        self.members = next;
        (nodes, pods)
    }

    /// The energy reports of the home cluster's and the member clusters'
    /// nodes (call after [`Self::member_views`], which keeps the member caches).
    fn node_energy(
        &mut self,
        nodes: &[Arc<Node>],
        members: &[MemberObjects],
    ) -> BTreeMap<String, Arc<EnergyReport>> {
        let mut out: BTreeMap<_, _> = self
            .energy
            .copies(nodes, |n| metering::node_energy(None, n))
            .into_iter()
            .flatten()
            .collect();
        for m in members {
            let c = self.members.entry(m.region.clone()).or_default();
            out.extend(
                c.energy
                    .copies(&m.nodes, |n| metering::node_energy(Some(&m.region), n))
                    .into_iter()
                    .flatten(),
            );
        }
        out
    }

    /// The token endpoints of the InferenceServices that have one.
    fn serving_services(&mut self, inference: &[Arc<DynamicObject>]) -> Vec<ServingService> {
        self.services
            .copies(inference, tokens::serving_service)
            .into_iter()
            .flatten()
            .collect()
    }

    /// The workloads' views, validated against the snapshot's models and
    /// the tenants' Pod Security levels and service accounts (a change of any, or of the
    /// member-cluster regions their placements are keyed for, converts
    /// every workload again).
    fn workload_views(&mut self, seen: &Seen, snap: &Snapshot) -> Vec<WorkloadView> {
        let rules = snapshot::ValidationRules {
            known_models: snap.known_models(),
            pod_security: snapshot::pod_security_levels(&seen.quotas),
            service_accounts: snapshot::service_accounts(&seen.quotas),
        };
        let member_regions: Vec<String> = seen
            .region_views
            .iter()
            .filter(|r| r.spec.kubeconfig_secret_ref.is_some())
            .map(|r| r.name.clone())
            .collect();
        if rules != self.rules || member_regions != self.member_regions {
            self.training = Kept::default();
            self.inference = Kept::default();
            self.rules = rules;
            self.member_regions = member_regions;
        }
        let (rules, sentences) = (&self.rules, &mut self.sentences);
        let mut view = |kind: Kind, o: &DynamicObject| {
            let mut v = snapshot::workload_view(kind, o, rules);
            sentences.share(&mut v.status);
            v
        };
        let mut out = self
            .training
            .lend(&seen.training, |o| view(Kind::Training, o));
        out.extend(
            self.inference
                .lend(&seen.inference, |o| view(Kind::Inference, o)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn object<K: serde::de::DeserializeOwned>(v: Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str, uid: &str, rv: &str, gpus: u32) -> Arc<Node> {
        object(json!({
            "metadata": {"name": name, "uid": uid, "resourceVersion": rv,
                         "labels": {"zhisuan.io/gpu-count": gpus.to_string()}}
        }))
    }

    fn opts() -> SnapshotOptions {
        SnapshotOptions {
            region_scoring: ScoreWeights::default(),
            namespace_tenancy: NamespaceTenancy::Required,
            services: false,
            energy: false,
        }
    }

    fn job(namespace: &str, name: &str, tenant: &str, rv: &str, gpus: u32) -> Arc<DynamicObject> {
        object(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("{namespace}/{name}"),
                         "resourceVersion": rv},
            "spec": {"tenant": tenant, "replicas": 1, "gpusPerReplica": gpus,
                     "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
    }

    /// The snapshot step on plain objects, no client: workloads validated
    /// against the nodes' models, each namespace's tenant checked, the
    /// tenant's default vendor and quota taken from its TenantQuota, the
    /// clock from the observation; an unchanged object keeps its view.
    #[test]
    fn a_snapshot_is_built_from_objects_without_a_client() {
        let ns = |name: &str, tenant: &str| -> Arc<Namespace> {
            object(json!({"metadata": {"name": name, "labels": {tenancy::LABEL_TENANT: tenant}}}))
        };
        let quota: Arc<DynamicObject> = object(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": "acme", "uid": "q1", "resourceVersion": "1"},
            "spec": {"tenant": "acme", "gpus": {"*": 4}, "defaultAcceleratorVendor": "cuda"}
        }));
        let mut seen = Seen {
            now: 1_800_000_000,
            namespaces: vec![ns("acme-ml", "acme"), ns("beta-ml", "beta")],
            nodes: vec![node("n1", "u-n1", "1", 8)],
            training: vec![
                job("acme-ml", "ok", "acme", "1", 2),
                job("beta-ml", "sneaky", "acme", "1", 2),
                job("acme-ml", "huge", "acme", "1", 99),
            ],
            quotas: vec![quota],
            ..Seen::default()
        };
        let mut s = Snapshotter::default();
        let step = s.snapshot(&seen, &opts());
        let snap = &step.snap;
        assert_eq!(snap.now, 1_800_000_000);
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.quotas[0].spec.quota.gpus.get("*"), Some(&4));
        let w = |name: &str| snap.workloads.iter().find(|w| w.key.name == name).unwrap();
        assert_eq!(w("ok").tenant_mismatch, None);
        assert_eq!(w("ok").default_vendor.as_deref(), Some("nvidia"));
        assert!(
            w("sneaky")
                .tenant_mismatch
                .as_deref()
                .unwrap_or("")
                .contains("belongs to tenant \"beta\""),
            "{:?}",
            w("sneaky").tenant_mismatch
        );
        assert!(
            w("huge")
                .errors
                .iter()
                .any(|e| e.field == "spec.gpusPerReplica"),
            "{:?}",
            w("huge").errors
        );
        // Handed back, the same version is not converted again (a changed
        // object that kept its resourceVersion shows the kept view); a new
        // one is.
        s.give_back(step, &[]);
        seen.training[0] = job("acme-ml", "ok", "acme", "1", 3);
        let again = s.snapshot(&seen, &opts());
        let ok = |snap: &Snapshot| {
            snap.workloads
                .iter()
                .find(|w| w.key.name == "ok")
                .unwrap()
                .gpus_per_replica
        };
        assert_eq!(ok(&again.snap), 2);
        seen.training[0] = job("acme-ml", "ok", "acme", "2", 3);
        assert_eq!(ok(&s.snapshot(&seen, &opts()).snap), 3);
    }

    #[test]
    fn member_views_are_converted_once_per_version_and_kept_apart_per_cluster() {
        let pod: Arc<Pod> = object(json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "1", "resourceVersion": "3"},
            "spec": {"nodeName": "kind-control-plane", "containers": []}
        }));
        // The same uid and node name in two clusters (each has its own uids).
        let listed = |far_node: Arc<Node>| {
            vec![
                MemberObjects {
                    region: "far".into(),
                    nodes: vec![far_node],
                    pods: vec![pod.clone()],
                },
                MemberObjects {
                    region: "near".into(),
                    nodes: vec![node("kind-control-plane", "1", "5", 4)],
                    pods: Vec::new(),
                },
            ]
        };
        let mut cache = ViewCache::default();
        let (nodes, pods) = cache.member_views(&listed(node("kind-control-plane", "1", "5", 8)));
        let seen: Vec<(&str, u8)> = nodes.iter().map(|n| (n.name.as_str(), n.gpus)).collect();
        assert_eq!(
            seen,
            [
                ("far/kind-control-plane", 8),
                ("near/kind-control-plane", 4)
            ]
        );
        assert_eq!(pods[0].node.as_deref(), Some("far/kind-control-plane"));
        // Same resourceVersion: the cached view (no conversion), even though
        // this object (which a real server would version anew) differs.
        let (nodes, _) = cache.member_views(&listed(node("kind-control-plane", "1", "5", 2)));
        assert_eq!(nodes[0].gpus, 8);
        // A new version is converted again.
        let (nodes, _) = cache.member_views(&listed(node("kind-control-plane", "1", "6", 2)));
        assert_eq!(nodes[0].gpus, 2);
        // A region no longer listed leaves the cache.
        cache.member_views(&listed(node("kind-control-plane", "1", "6", 2))[..1]);
        assert_eq!(cache.members.keys().collect::<Vec<_>>(), ["far"]);
    }

    #[test]
    fn token_endpoints_are_parsed_once_per_version() {
        let service = |rv: &str, port: u16| -> Arc<DynamicObject> {
            object(json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": "chat", "namespace": "ai", "uid": "u1", "resourceVersion": rv},
                "spec": {"tenant": "acme", "modelName": "qwen-72b", "tokenTier": "basic",
                         "replicas": 1, "gpusPerReplica": 1, "metrics": {"port": port},
                         "template": {"spec": {"containers": []}}}
            }))
        };
        let without_metrics: Arc<DynamicObject> = object(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "quiet", "namespace": "ai", "uid": "u2", "resourceVersion": "1"},
            "spec": {"tenant": "acme", "modelName": "m", "replicas": 1, "gpusPerReplica": 1,
                     "template": {"spec": {"containers": []}}}
        }));
        let mut cache = ViewCache::default();
        let ports = |cache: &mut ViewCache, objs: &[Arc<DynamicObject>]| -> Vec<u16> {
            cache
                .serving_services(objs)
                .iter()
                .map(|s| s.port)
                .collect()
        };
        assert_eq!(
            ports(&mut cache, &[service("1", 8000), without_metrics.clone()]),
            [8000]
        );
        // Unchanged version: not parsed again.
        assert_eq!(
            ports(&mut cache, &[service("1", 9000), without_metrics.clone()]),
            [8000]
        );
        assert_eq!(
            ports(&mut cache, &[service("2", 9000), without_metrics]),
            [9000]
        );
    }

    /// Kept workload views have their member placements keyed in place; when
    /// the member regions change, every view is made again from its object
    /// (a region that stopped being a member shows its nodes' own names).
    #[test]
    fn kept_workload_views_follow_the_member_regions() {
        let region = |member: bool| {
            let mut spec = json!({"hub": "far", "side": "west", "pue": 1.2, "greenShare": 0.5,
                "electricityFenPerKwh": 30, "gridKgCo2PerKwh": 0.6});
            if member {
                spec["kubeconfigSecretRef"] = json!({"name": "k", "namespace": "ns"});
            }
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "ComputeRegion",
                "metadata": {"name": "far"}, "spec": spec}))
            .unwrap();
            snapshot::region_view(&obj)
        };
        let placed: Arc<DynamicObject> = object(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "j", "namespace": "ml", "uid": "u-j", "resourceVersion": "5"},
            "spec": {"tenant": "t", "replicas": 1, "gpusPerReplica": 1,
                     "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"phase": "Running", "placement": {"region": "far",
                       "replicas": [{"pod": "j-0", "node": "n1", "devices": [0]}]}}
        }));
        let mut seen = Seen {
            training: vec![placed],
            region_views: vec![region(true)],
            ..Seen::default()
        };
        let node_of = |step: &Step| {
            step.snap.workloads[0]
                .status
                .placement
                .as_ref()
                .unwrap()
                .replicas[0]
                .node
                .clone()
        };
        let mut s = Snapshotter::default();
        let step = s.snapshot(&seen, &opts());
        assert_eq!(node_of(&step), "far/n1");
        s.give_back(step, &[]);
        let step = s.snapshot(&seen, &opts());
        assert_eq!(node_of(&step), "far/n1", "keyed once, kept");
        s.give_back(step, &[]);
        seen.region_views = vec![region(false)];
        let step = s.snapshot(&seen, &opts());
        assert_eq!(node_of(&step), "n1");
    }
}
