//! Pods bound to this node → [`PodClaim`]s (the plugin's plain view).

use super::plan::{share_slots, PodClaim, RESOURCE_GPU, RESOURCE_SHARE};
use crate::telemetry::attribution::devices_from_annotations;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use std::sync::Arc;

/// Where the plugin reads the pods of its node from.
pub type PodSource = Arc<dyn Fn() -> Vec<PodClaim> + Send + Sync>;

/// A pod's claim on zhisuan devices. Pods asking for no zhisuan resource are
/// skipped; so are finished ones.
pub fn pod_claim(pod: &Pod) -> Option<PodClaim> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let spec = pod.spec.as_ref()?;
    let limit = |name: &str| -> u32 {
        spec.containers
            .iter()
            .filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(name))
            .filter_map(|q| q.0.trim().parse::<u32>().ok())
            .sum()
    };
    let (whole, slots) = (limit(RESOURCE_GPU), limit(RESOURCE_SHARE));
    if whole == 0 && slots == 0 {
        return None;
    }
    let meta = &pod.metadata;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let (devices, milli, annotation_error) = match devices_from_annotations(&annotations) {
        Ok(Some((d, m))) => (d, m, None),
        Ok(None) => (Vec::new(), None, None),
        Err(e) => (Vec::new(), None, Some(e)),
    };
    let annotation_error = annotation_error.or_else(|| {
        // A share's slots must be what its milli comes to.
        let m = milli?;
        (slots != 0 && share_slots(m) != slots).then(|| {
            format!(
                "asks for {slots} {RESOURCE_SHARE} but zhisuan.io/gpu-milli {m} comes to {}",
                share_slots(m)
            )
        })
    });
    Some(PodClaim {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        created: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0),
        devices,
        milli,
        whole,
        slots,
        waiting: matches!(phase, None | Some("Pending")),
        annotation_error,
    })
}

/// The claims of every pod in a node-scoped pod store.
pub fn store_source(store: Store<Pod>) -> PodSource {
    Arc::new(move || store.state().iter().filter_map(|p| pod_claim(p)).collect())
}
