//! The token gateway's models on a cluster: every InferenceService with
//! `spec.gateway` is a model named by its `modelName`, priced by its
//! `tokenTier`, reached at its running replicas (`http://{podIP}:{port}`),
//! owned by its tenant unless `shared`. [`gateway_models`] is pure; the
//! loop lists the objects every few seconds and hands the gateway plain
//! data ([`ModelSpec`]), so the API knows nothing of Kubernetes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, ResourceExt};

use super::crd::InferenceServiceSpec;
use super::snapshot::{keys, Kind};
use super::tokens::{placement_region, serving_pod, tier_of, ServingPod};
use crate::api::gateway::{Gateway, ModelSpec};
use crate::ledger::Tier;

/// Region of a replica whose service has no placement region yet.
const NO_REGION: &str = "local";

/// An InferenceService served through the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayService {
    pub namespace: String,
    pub name: String,
    pub tenant: String,
    pub model: String,
    pub tier: Tier,
    pub port: u16,
    pub shared: bool,
    pub region: Option<String>,
}

/// An InferenceService object → its gateway view, when its spec has `gateway`.
pub fn gateway_service(obj: &DynamicObject) -> Option<GatewayService> {
    let spec: InferenceServiceSpec = serde::Deserialize::deserialize(obj.data.get("spec")?).ok()?;
    let gw = spec.gateway?;
    Some(GatewayService {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        tenant: spec.tenant,
        model: spec.model_name,
        tier: tier_of(&spec.token_tier),
        port: u16::try_from(gw.port).ok().filter(|p| *p > 0)?,
        shared: gw.shared,
        region: placement_region(obj),
    })
}

/// The gateway's models: one per model name, its upstreams the running
/// replicas with an IP of the services that serve it. Two services of one
/// name join when both are shared or both belong to one tenant; otherwise
/// the first (by namespace/name) keeps the name and the other is left out.
pub fn gateway_models(services: &[GatewayService], pods: &[ServingPod]) -> Vec<ModelSpec> {
    let mut sorted: Vec<&GatewayService> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut models: BTreeMap<String, ModelSpec> = BTreeMap::new();
    for s in sorted {
        let owner = (!s.shared).then(|| s.tenant.clone());
        let model = models.entry(s.model.clone()).or_insert_with(|| ModelSpec {
            name: s.model.clone(),
            tier: s.tier,
            owner: owner.clone(),
            upstreams: Vec::new(),
        });
        if model.owner != owner || model.tier != s.tier {
            tracing::warn!(service = %format!("{}/{}", s.namespace, s.name), model = %s.model,
                "another InferenceService serves this model name for another owner or tier; this one is not served");
            continue;
        }
        for p in pods
            .iter()
            .filter(|p| p.running && p.namespace == s.namespace && p.service == s.name)
        {
            let Some(ip) = p.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            let region = s.region.clone().unwrap_or_else(|| NO_REGION.to_string());
            model
                .upstreams
                .push((format!("http://{host}:{}", s.port), region));
        }
    }
    models
        .into_values()
        .filter(|m| !m.upstreams.is_empty())
        .collect()
}

/// Lists the namespace's InferenceServices and their pods once.
pub async fn discover(client: &kube::Client, namespace: &str) -> kube::Result<Vec<ModelSpec>> {
    let gvk = GroupVersionKind::gvk(super::crd::GROUP, "v1alpha1", "InferenceService");
    let resource = ApiResource::from_gvk(&gvk);
    let services: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let services: Vec<GatewayService> = services
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(gateway_service)
        .collect();
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let selector = format!("{}={}", keys::WORKLOAD_KIND, Kind::Inference.label());
    let pods: Vec<ServingPod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(serving_pod)
        .collect();
    Ok(gateway_models(&services, &pods))
}

/// Keeps the gateway's cluster models current: a listing every `every`
/// (a failed one keeps the models served so far).
pub async fn run(client: kube::Client, namespace: String, gateway: Arc<Gateway>, every: Duration) {
    loop {
        match discover(&client, &namespace).await {
            Ok(models) => gateway.set_discovered(models),
            Err(e) => tracing::warn!(error = %e, namespace = %namespace,
                "listing InferenceServices for the token gateway failed; serving the models found before"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, model: &str, tenant: &str, shared: bool) -> GatewayService {
        GatewayService {
            namespace: "ai".into(),
            name: name.into(),
            tenant: tenant.into(),
            model: model.into(),
            tier: Tier::Industry,
            port: 8000,
            shared,
            region: Some("gansu".into()),
        }
    }

    fn pod(service: &str, ip: Option<&str>, running: bool) -> ServingPod {
        ServingPod {
            namespace: "ai".into(),
            service: service.into(),
            uid: format!("uid-{service}-{}", ip.unwrap_or("none")),
            ip: ip.map(str::to_string),
            node: None,
            running,
        }
    }

    #[test]
    fn running_replicas_with_an_ip_are_the_upstreams_and_owners_do_not_mix() {
        let services = [
            service("chat-a", "qwen", "acme", false),
            service("chat-b", "qwen", "beta", false), // same name, other owner: left out
            service("maas", "glm", "platform", true),
            service("idle", "llama", "acme", false), // no running replica
        ];
        let pods = [
            pod("chat-a", Some("10.0.0.1"), true),
            pod("chat-a", Some("10.0.0.2"), false),
            pod("chat-a", None, true),
            pod("chat-b", Some("10.0.0.9"), true),
            pod("maas", Some("fd00::5"), true),
            pod("idle", Some("10.0.0.3"), false),
        ];
        let models = gateway_models(&services, &pods);
        let got: Vec<(&str, Option<&str>, Vec<&str>)> = models
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.owner.as_deref(),
                    m.upstreams.iter().map(|u| u.0.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("glm", None, vec!["http://[fd00::5]:8000"]),
                ("qwen", Some("acme"), vec!["http://10.0.0.1:8000"]),
            ]
        );
    }
}
