//! Building a replica's pod: the workload's template with zhisuan's labels,
//! annotations and scheduler, and its devices asked for through the node
//! agent's device plugin, so the container gets exactly the placed devices.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::crd::ReplicaPlacement;
use super::snapshot::{self, keys, WorkloadKey};
pub use crate::telemetry::deviceplugin::plan::VENDOR_RESOURCES;
use crate::telemetry::deviceplugin::plan::{share_slots, RESOURCE_GPU, RESOURCE_SHARE};

/// How a replica's pod asks the kubelet for its devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceResources {
    /// `zhisuan.io/gpu` / `zhisuan.io/gpu-share` from the zhisuan agent's device
    /// plugin: the container gets exactly the placed devices. Vendor requests
    /// in the template are removed, so two plugins never allocate one device.
    #[default]
    Zhisuan,
    /// The template's own requests (`nvidia.com/gpu`, ...) go to the vendor's
    /// plugin, which picks devices itself: the placement is not enforced.
    Vendor,
}

/// Replaces every device request in the containers with zhisuan's: whole
/// devices as `zhisuan.io/gpu`, a share as `zhisuan.io/gpu-share` slots, on
/// the first container that asked for a device (else the first container).
fn claim_devices(containers: &mut Value, r: &ReplicaPlacement) {
    let Some(list) = containers.as_array_mut() else {
        return;
    };
    let mut target = None;
    for (i, c) in list.iter_mut().enumerate() {
        for part in ["limits", "requests"] {
            let Some(map) = c
                .pointer_mut(&format!("/resources/{part}"))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for name in VENDOR_RESOURCES
                .iter()
                .chain(&[RESOURCE_GPU, RESOURCE_SHARE])
            {
                if map.remove(*name).is_some() {
                    target.get_or_insert(i);
                }
            }
        }
    }
    if r.devices.is_empty() || list.is_empty() {
        return;
    }
    let (name, amount) = match r.gpu_milli {
        Some(milli) => (RESOURCE_SHARE, share_slots(milli)),
        None => (RESOURCE_GPU, r.devices.len() as u32),
    };
    let c = &mut list[target.unwrap_or(0)];
    if !c.get("resources").is_some_and(Value::is_object) {
        c["resources"] = json!({});
    }
    if !c["resources"].get("limits").is_some_and(Value::is_object) {
        c["resources"]["limits"] = json!({});
    }
    c["resources"]["limits"][name] = json!(amount.to_string());
}

pub(super) fn replica_annotations(
    key: &WorkloadKey,
    tenant: &str,
    r: &ReplicaPlacement,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        keys::GPU_DEVICES.to_string(),
        r.devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if let Some(m) = r.gpu_milli {
        a.insert(keys::GPU_MILLI.to_string(), m.to_string());
    }
    a.insert(keys::TENANT.to_string(), tenant.to_string());
    a.insert(
        keys::JOB.to_string(),
        format!("{}/{}", key.namespace, key.name),
    );
    a
}

/// A replica's pod from the workload's template: deterministic name, owner
/// labels, device annotations, `schedulerName: zhisuan`, created on its
/// placed node (`spec.nodeName`: the scheduler already chose it, so no
/// binding is needed; the template's own node is never taken), and its
/// devices asked for as [`DeviceResources`] says.
pub(super) fn replica_pod(
    key: &WorkloadKey,
    replica: u32,
    r: &ReplicaPlacement,
    template: &Value,
    annotations: &BTreeMap<String, String>,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    devices: DeviceResources,
) -> Result<Pod, String> {
    let name = r.pod.as_str();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({"containers": []})),
    });
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(key.namespace);
    if !pod["metadata"].get("labels").is_some_and(Value::is_object) {
        pod["metadata"]["labels"] = json!({});
    }
    pod["metadata"]["labels"][keys::WORKLOAD_KIND] = json!(key.kind.label());
    pod["metadata"]["labels"][keys::WORKLOAD_NAME] = json!(key.name);
    pod["metadata"]["labels"][keys::REPLICA] = json!(replica.to_string());
    if !pod["metadata"]
        .get("annotations")
        .is_some_and(Value::is_object)
    {
        pod["metadata"]["annotations"] = json!({});
    }
    for (k, v) in annotations {
        pod["metadata"]["annotations"][k] = json!(v);
    }
    if let Some(o) = owner {
        pod["metadata"]["ownerReferences"] = json!([o]);
    }
    pod["spec"]["schedulerName"] = json!(keys::SCHEDULER_NAME);
    pod["spec"]["nodeName"] = json!(snapshot::name_in_cluster(&r.node));
    if !pod["spec"].get("containers").is_some_and(Value::is_array) {
        pod["spec"]["containers"] = json!([]);
    }
    if devices == DeviceResources::Zhisuan {
        claim_devices(&mut pod["spec"]["containers"], r);
    }
    serde_json::from_value(pod).map_err(|e| format!("spec.template does not make a valid pod: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::snapshot::Kind;

    fn key() -> WorkloadKey {
        WorkloadKey {
            kind: Kind::Training,
            namespace: "t1".into(),
            name: "train".into(),
        }
    }

    fn placed(devices: &[u32], milli: Option<u32>) -> ReplicaPlacement {
        ReplicaPlacement {
            pod: "train-0".into(),
            node: "gpu-1".into(),
            devices: devices.to_vec(),
            gpu_milli: milli,
        }
    }

    fn template() -> Value {
        json!({"spec": {"containers": [
            {"name": "sidecar", "image": "s"},
            {"name": "main", "image": "m", "resources": {
                "limits": {"nvidia.com/gpu": "4", "memory": "8Gi"},
                "requests": {"nvidia.com/gpu": "4", "cpu": "2"}}}
        ]}})
    }

    fn limits(pod: &Pod, container: usize) -> BTreeMap<String, String> {
        pod.spec.as_ref().unwrap().containers[container]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default()
    }

    fn build(r: &ReplicaPlacement, t: &Value, mode: DeviceResources) -> Pod {
        let a = replica_annotations(&key(), "t1", r);
        replica_pod(&key(), 0, r, t, &a, None, mode).unwrap()
    }

    #[test]
    fn vendor_requests_become_the_placed_zhisuan_devices_on_the_asking_container() {
        let pod = build(
            &placed(&[3, 5], None),
            &template(),
            DeviceResources::Zhisuan,
        );
        let main = limits(&pod, 1);
        assert_eq!(main.get(RESOURCE_GPU).map(String::as_str), Some("2"));
        assert!(!main.contains_key("nvidia.com/gpu"), "{main:?}");
        assert_eq!(main["memory"], "8Gi");
        let requests = pod.spec.as_ref().unwrap().containers[1]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone()
            .unwrap();
        assert!(!requests.contains_key("nvidia.com/gpu"));
        assert!(limits(&pod, 0).is_empty());
        let ann = pod.metadata.annotations.clone().unwrap();
        assert_eq!(ann["zhisuan.io/gpu-devices"], "3,5");
    }

    #[test]
    fn a_share_asks_for_its_slots_and_a_bare_template_gets_them_on_its_first_container() {
        let bare = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        let pod = build(&placed(&[2], Some(365)), &bare, DeviceResources::Zhisuan);
        assert_eq!(limits(&pod, 0)[RESOURCE_SHARE], "37");
        assert!(!limits(&pod, 0).contains_key(RESOURCE_GPU));
        // A replica without devices asks for none, and asks the vendor for none.
        let pod = build(&placed(&[], None), &template(), DeviceResources::Zhisuan);
        assert!(!limits(&pod, 1).contains_key("nvidia.com/gpu"));
        assert!(!limits(&pod, 1).contains_key(RESOURCE_GPU));
    }

    #[test]
    fn vendor_mode_keeps_the_template_requests() {
        let pod = build(&placed(&[3, 5], None), &template(), DeviceResources::Vendor);
        assert_eq!(limits(&pod, 1)["nvidia.com/gpu"], "4");
        assert!(!limits(&pod, 1).contains_key(RESOURCE_GPU));
    }

    #[test]
    fn a_pod_is_made_on_its_placed_node_never_the_templates() {
        let mut t = template();
        t["spec"]["nodeName"] = json!("somewhere-else");
        let pod = build(&placed(&[0], None), &t, DeviceResources::Zhisuan);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("gpu-1"));
        assert_eq!(spec.scheduler_name.as_deref(), Some(keys::SCHEDULER_NAME));
        // A member cluster's node is placed as `<region>/<node>`; the pod,
        // made in that cluster, names the node as the cluster knows it.
        let mut member = placed(&[0], None);
        member.node = "west/gpu-7".into();
        let pod = build(&member, &template(), DeviceResources::Zhisuan);
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("gpu-7"));
    }
}
