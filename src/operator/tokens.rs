//! Token-counting targets: which inference pods the controller's token loop
//! (`zhisuan::telemetry::tokens::run_token_loop`) scrapes.
//!
//! One target per running pod of every InferenceService with
//! `spec.metrics`: `http://{podIP}:{port}{path}`, identified by the pod uid
//! (with the scrape window it forms the token record id, so a failover
//! cannot double-count). [`token_targets`] is pure; [`serving_service`] and
//! [`serving_pod`] read the plain data out of the API objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::ResourceExt;
use serde_json::Value;

use super::crd::InferenceServiceSpec;
use super::snapshot::{keys, Kind};
use crate::ledger::Tier;
use crate::telemetry::tokens::TokenTarget;

/// An InferenceService that exposes token counters.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingService {
    pub namespace: String,
    pub name: String,
    pub tenant: String,
    pub model: String,
    pub tier: Tier,
    pub port: u16,
    /// HTTP path, starting with `/`.
    pub path: String,
    /// Region recorded in the service's placement (status), if any.
    pub region: Option<String>,
}

/// A pod of an InferenceService, as far as token counting cares.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingPod {
    pub namespace: String,
    /// The InferenceService that owns it (label `zhisuan.io/workload`).
    pub service: String,
    pub uid: String,
    pub ip: Option<String>,
    pub node: Option<String>,
    /// Pod phase Running and not being deleted.
    pub running: bool,
}

/// The token tier of a CRD `tokenTier` (`high-value` is the ledger's
/// `high_value`); unknown tiers count as basic (validation flags them).
pub fn tier_of(token_tier: &str) -> Tier {
    Tier::parse(&token_tier.replace('-', "_")).unwrap_or(Tier::Basic)
}

/// The current scrape targets: one per running pod with an IP of every
/// service with metrics. Region: the service's placement region, else the
/// node's `zhisuan.io/region` label, else empty. Sorted by source (stable).
pub fn token_targets(
    services: &[ServingService],
    pods: &[ServingPod],
    node_regions: &BTreeMap<String, String>,
) -> Vec<TokenTarget> {
    let by_key: BTreeMap<(&str, &str), &ServingService> = services
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    let mut out: Vec<TokenTarget> = pods
        .iter()
        .filter(|p| p.running && !p.uid.is_empty())
        .filter_map(|p| {
            let ip = p.ip.as_deref().filter(|ip| !ip.is_empty())?;
            let s = by_key.get(&(p.namespace.as_str(), p.service.as_str()))?;
            let region = s
                .region
                .clone()
                .or_else(|| p.node.as_ref().and_then(|n| node_regions.get(n).cloned()))
                .unwrap_or_default();
            // An IPv6 pod IP needs brackets in a URL.
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            Some(TokenTarget {
                url: format!("http://{host}:{}{}", s.port, s.path),
                source: p.uid.clone(),
                tenant: s.tenant.clone(),
                service: format!("{}/{}", s.namespace, s.name),
                model: s.model.clone(),
                region,
                tier: s.tier,
            })
        })
        .collect();
    out.sort_by(|a, b| a.source.cmp(&b.source));
    out
}

/// An InferenceService object → its token endpoint, when it has a valid
/// spec with `spec.metrics` (others are not counted).
pub fn serving_service(obj: &DynamicObject) -> Option<ServingService> {
    let spec: InferenceServiceSpec = serde::Deserialize::deserialize(obj.data.get("spec")?).ok()?;
    let metrics = spec.metrics?;
    let port = u16::try_from(metrics.port).ok().filter(|p| *p > 0)?;
    let path = match metrics.path.as_deref() {
        None | Some("") => "/metrics".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    Some(ServingService {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        tenant: spec.tenant,
        model: spec.model_name,
        tier: tier_of(&spec.token_tier),
        port,
        path,
        region: placement_region(obj),
    })
}

/// The region a workload object's status records it placed in, if any.
pub fn placement_region(obj: &DynamicObject) -> Option<String> {
    obj.data
        .pointer("/status/placement/region")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// A pod → its serving view, when an InferenceService owns it.
pub fn serving_pod(pod: &Pod) -> Option<ServingPod> {
    let labels = pod.labels();
    if labels.get(keys::WORKLOAD_KIND).map(String::as_str) != Some(Kind::Inference.label()) {
        return None;
    }
    let status = pod.status.as_ref();
    Some(ServingPod {
        namespace: pod.namespace().unwrap_or_default(),
        service: labels.get(keys::WORKLOAD_NAME)?.clone(),
        uid: pod.uid().unwrap_or_default(),
        ip: status.and_then(|s| s.pod_ip.clone()),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        running: pod.metadata.deletion_timestamp.is_none()
            && status.and_then(|s| s.phase.as_deref()) == Some("Running"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, region: Option<&str>) -> ServingService {
        ServingService {
            namespace: "ai".into(),
            name: name.into(),
            tenant: "acme".into(),
            model: "qwen-72b".into(),
            tier: Tier::HighValue,
            port: 8000,
            path: "/metrics".into(),
            region: region.map(str::to_string),
        }
    }

    fn pod(service: &str, uid: &str, ip: Option<&str>, node: &str, running: bool) -> ServingPod {
        ServingPod {
            namespace: "ai".into(),
            service: service.into(),
            uid: uid.into(),
            ip: ip.map(str::to_string),
            node: Some(node.into()),
            running,
        }
    }

    #[test]
    fn one_target_per_running_pod_with_an_ip_of_a_service_with_metrics() {
        let services = [service("chat", None), service("embed", Some("guizhou"))];
        let pods = [
            pod("chat", "u2", Some("10.0.0.2"), "n2", true),
            pod("chat", "u1", Some("10.0.0.1"), "n1", true),
            pod("chat", "u3", None, "n1", true), // no IP yet
            pod("chat", "u4", Some("10.0.0.4"), "n1", false), // not running
            pod("other", "u5", Some("10.0.0.5"), "n1", true), // no metrics endpoint
            pod("embed", "u6", Some("fd00::6"), "n1", true),
        ];
        let regions: BTreeMap<String, String> = [
            ("n1".to_string(), "ningxia".to_string()),
            ("n2".to_string(), "beijing".to_string()),
        ]
        .into();
        let targets = token_targets(&services, &pods, &regions);
        let got: Vec<(&str, &str, &str)> = targets
            .iter()
            .map(|t| (t.source.as_str(), t.url.as_str(), t.region.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("u1", "http://10.0.0.1:8000/metrics", "ningxia"),
                ("u2", "http://10.0.0.2:8000/metrics", "beijing"),
                ("u6", "http://[fd00::6]:8000/metrics", "guizhou"),
            ]
        );
        assert_eq!(targets[0].service, "ai/chat");
        assert_eq!(targets[0].tenant, "acme");
        assert_eq!(targets[0].model, "qwen-72b");
        assert_eq!(targets[0].tier, Tier::HighValue);
    }

    #[test]
    fn services_and_pods_are_read_from_the_api_objects() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "ai"},
            "spec": {"tenant": "acme", "modelName": "qwen-72b", "tokenTier": "high-value",
                     "replicas": 1, "gpusPerReplica": 1,
                     "metrics": {"port": 9400, "path": "stats"},
                     "template": {"spec": {"containers": []}}},
            "status": {"placement": {"region": "ningxia", "replicas": []}}
        }))
        .unwrap();
        let s = serving_service(&obj).expect("has metrics");
        assert_eq!((s.port, s.path.as_str()), (9400, "/stats"));
        assert_eq!(s.tier, Tier::HighValue);
        assert_eq!(s.region.as_deref(), Some("ningxia"));

        let mut no_metrics = obj.clone();
        no_metrics.data["spec"]
            .as_object_mut()
            .unwrap()
            .remove("metrics");
        assert_eq!(serving_service(&no_metrics), None);

        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "chat-0", "namespace": "ai", "uid": "u1",
                         "labels": {keys::WORKLOAD_KIND: Kind::Inference.label(),
                                    keys::WORKLOAD_NAME: "chat"}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        assert_eq!(
            serving_pod(&p),
            Some(pod("chat", "u1", Some("10.0.0.1"), "n1", true))
        );
        let mut training = p.clone();
        training
            .labels_mut()
            .insert(keys::WORKLOAD_KIND.into(), Kind::Training.label().into());
        assert_eq!(serving_pod(&training), None);
    }

    #[test]
    fn crd_tiers_map_to_ledger_tiers() {
        assert_eq!(tier_of("basic"), Tier::Basic);
        assert_eq!(tier_of("industry"), Tier::Industry);
        assert_eq!(tier_of("high-value"), Tier::HighValue);
    }
}
