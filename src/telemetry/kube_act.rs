//! The agent's control-plane edge: watch the pods bound to this node (for
//! their `zhisuan.io/gpu-devices` annotations) and patch the Node with the
//! publication built by [`super::publish`].

use super::attribution::{devices_from_annotations, PodDevices, PodRef};
use super::deviceplugin::plan::{RESOURCE_GPU, RESOURCE_SHARE, VENDOR_RESOURCES};
use super::publish::{metadata_patch, NodePublication};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::ledger::{EnergyReport, ANNOTATION_POD_ENERGY};

/// Patches the Node's labels and annotations (a merge patch: an empty
/// `zhisuan.io/unhealthy-gpus` clears an earlier list).
pub async fn publish(client: &Client, node: &str, p: &NodePublication) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::default();
    nodes
        .patch(node, &params, &Patch::Merge(&metadata_patch(p)))
        .await
        .map_err(|e| anyhow::anyhow!("patch node {node} metadata: {e}"))?;
    Ok(())
}

/// The energy report this node's agent published last (an earlier run),
/// if the Node carries a readable one.
pub async fn published_energy(client: &Client, node: &str) -> Option<EnergyReport> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get_opt(node).await.ok().flatten()?;
    let text = n.metadata.annotations?.remove(ANNOTATION_POD_ENERGY)?;
    match EnergyReport::parse(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(node, error = %e, "ignoring the energy report on the Node");
            None
        }
    }
}

/// Starts a reflector over the pods scheduled on `node`; the returned store
/// is always the latest view. The watch runs until the runtime stops.
pub fn watch_node_pods(client: &Client, node: &str) -> Store<Pod> {
    let pods: Api<Pod> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = reflector::reflector(writer, watcher(pods, cfg))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "pod watch");
            }
        }
    });
    reader
}

/// The devices a running pod holds, from its annotations (pure). Pods that
/// finished, carry no device annotation, or carry a malformed one (logged) are
/// skipped.
pub fn pod_devices(pod: &Pod) -> Option<PodDevices> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let meta = &pod.metadata;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let pod_ref = PodRef {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
    };
    let container = device_container(pod);
    match devices_from_annotations(&annotations) {
        Ok(Some((devices, milli))) => Some(PodDevices {
            pod: pod_ref,
            container,
            devices,
            milli,
        }),
        // Known to the agent by uid, so processes found through cgroups carry its name.
        Ok(None) => Some(PodDevices {
            pod: pod_ref,
            container,
            devices: Vec::new(),
            milli: None,
        }),
        Err(msg) => {
            tracing::warn!(pod = %pod_ref.name, namespace = %pod_ref.namespace, "{msg}");
            None
        }
    }
}

/// The container that asks for the devices (zhisuan's or a vendor's device
/// resource in its limits or requests), else the pod's first container.
fn device_container(pod: &Pod) -> String {
    let Some(spec) = &pod.spec else {
        return String::new();
    };
    let asks = |c: &&k8s_openapi::api::core::v1::Container| {
        c.resources.as_ref().is_some_and(|r| {
            [&r.limits, &r.requests].into_iter().flatten().any(|m| {
                m.keys().any(|k| {
                    k == RESOURCE_GPU
                        || k == RESOURCE_SHARE
                        || VENDOR_RESOURCES.contains(&k.as_str())
                })
            })
        })
    };
    spec.containers
        .iter()
        .find(asks)
        .or(spec.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// Every pod in the store, as [`PodDevices`].
pub fn pods_from_store(store: &Store<Pod>) -> Vec<PodDevices> {
    store
        .state()
        .iter()
        .filter_map(|p| pod_devices(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(ann: &[(&str, &str)], phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("t1".into()),
                uid: Some("u1".into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn running_pods_yield_their_annotated_devices() {
        let p = pod(
            &[
                ("zhisuan.io/gpu-devices", "3"),
                ("zhisuan.io/gpu-milli", "500"),
            ],
            "Running",
        );
        let d = pod_devices(&p).unwrap();
        assert_eq!(d.devices, [3]);
        assert_eq!(d.milli, Some(500));
        assert_eq!((d.pod.namespace.as_str(), d.pod.uid.as_str()), ("t1", "u1"));
        assert!(pod_devices(&pod(&[("zhisuan.io/gpu-devices", "3")], "Succeeded")).is_none());
        assert!(pod_devices(&pod(&[("zhisuan.io/gpu-devices", "x")], "Running")).is_none());
        assert!(pod_devices(&pod(&[], "Running"))
            .unwrap()
            .devices
            .is_empty());
    }

    #[test]
    fn the_holder_is_the_container_asking_for_devices_else_the_first() {
        let mut p = pod(&[("zhisuan.io/gpu-devices", "0")], "Running");
        let c = |name: &str, resource: Option<&str>| k8s_openapi::api::core::v1::Container {
            name: name.into(),
            resources: resource.map(|r| k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(
                    [(
                        r.to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![c("sidecar", None), c("trainer", Some(RESOURCE_GPU))],
            ..Default::default()
        });
        assert_eq!(pod_devices(&p).unwrap().container, "trainer");
        p.spec.as_mut().unwrap().containers[1] = c("trainer", Some("cpu"));
        assert_eq!(pod_devices(&p).unwrap().container, "sidecar");
    }
}
