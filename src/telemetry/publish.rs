//! What the agent publishes on its Node (plan layer: pure). The payload follows
//! the HELPERS.md contract that the controller and placement read:
//! labels `zhisuan.io/gpu-model`, `zhisuan.io/gpu-count`,
//! `zhisuan.io/accelerator-vendor`, `zhisuan.io/region`; annotations
//! `zhisuan.io/unhealthy-gpus`, `zhisuan.io/gpu-inventory`,
//! `zhisuan.io/agent-heartbeat`. Node capacity is not patched: the kubelet
//! publishes the device plugin's `zhisuan.io/gpu` and `zhisuan.io/gpu-share`
//! (healthy devices only), or the vendor plugin its own resource.

use super::health::{unhealthy_indices, Verdict};
use super::{DeviceInfo, Vendor};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

pub const LABEL_GPU_MODEL: &str = "zhisuan.io/gpu-model";
pub const LABEL_GPU_COUNT: &str = "zhisuan.io/gpu-count";
pub const LABEL_VENDOR: &str = "zhisuan.io/accelerator-vendor";
pub const LABEL_REGION: &str = "zhisuan.io/region";
pub const ANNOTATION_UNHEALTHY: &str = "zhisuan.io/unhealthy-gpus";
pub const ANNOTATION_INVENTORY: &str = "zhisuan.io/gpu-inventory";
pub const ANNOTATION_HEARTBEAT: &str = "zhisuan.io/agent-heartbeat";
/// Human-readable reasons per unhealthy device (`{"2":["XID 79"]}`), for `kubectl describe`.
pub const ANNOTATION_HEALTH_REASONS: &str = "zhisuan.io/gpu-health-reasons";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodePublication {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Builds the publication for one sample. `heartbeat` is passed in (no clock here).
pub fn node_publication(
    vendor: Vendor,
    region: Option<&str>,
    inventory: &[DeviceInfo],
    verdicts: &[Verdict],
    heartbeat: DateTime<Utc>,
) -> NodePublication {
    let unhealthy = unhealthy_indices(verdicts);

    let mut labels = BTreeMap::new();
    labels.insert(
        LABEL_GPU_MODEL.into(),
        label_value(&dominant_model(inventory)),
    );
    labels.insert(LABEL_GPU_COUNT.into(), inventory.len().to_string());
    labels.insert(LABEL_VENDOR.into(), vendor.as_str().into());
    if let Some(r) = region.filter(|r| !r.is_empty()) {
        labels.insert(LABEL_REGION.into(), label_value(r));
    }

    let mut annotations = BTreeMap::new();
    annotations.insert(
        ANNOTATION_UNHEALTHY.into(),
        unhealthy
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    let inventory_json: Vec<_> = inventory
        .iter()
        .map(|d| json!({"index": d.index, "model": d.model, "memory_mib": d.memory_mib, "uuid": d.uuid}))
        .collect();
    annotations.insert(
        ANNOTATION_INVENTORY.into(),
        serde_json::Value::Array(inventory_json).to_string(),
    );
    annotations.insert(
        ANNOTATION_HEARTBEAT.into(),
        heartbeat.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    let reasons: BTreeMap<String, Vec<String>> = verdicts
        .iter()
        .filter(|v| !v.healthy)
        .map(|v| {
            (
                v.index.to_string(),
                v.reasons.iter().map(|r| r.to_string()).collect(),
            )
        })
        .collect();
    annotations.insert(
        ANNOTATION_HEALTH_REASONS.into(),
        serde_json::to_string(&reasons).unwrap_or_default(),
    );

    NodePublication {
        labels,
        annotations,
    }
}

/// JSON merge patch for the Node's metadata.
pub fn metadata_patch(p: &NodePublication) -> serde_json::Value {
    json!({"metadata": {"labels": p.labels, "annotations": p.annotations}})
}

/// The most common model on the node (a node normally has one).
fn dominant_model(inventory: &[DeviceInfo]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in inventory {
        *counts.entry(d.model.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(m, _)| m.to_string())
        .unwrap_or_else(|| "none".into())
}

/// A valid Kubernetes label value: alphanumerics, `-`, `_`, `.`, at most 63
/// characters, starting and ending alphanumeric.
pub fn label_value(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::health::Reason;
    use chrono::TimeZone;

    fn inventory(n: u32) -> Vec<DeviceInfo> {
        (0..n)
            .map(|i| DeviceInfo {
                index: i,
                model: "H100".into(),
                memory_mib: 81_559,
                uuid: format!("GPU-{i}"),
                product_name: "NVIDIA H100 80GB HBM3".into(),
                minor: None,
            })
            .collect()
    }

    fn verdicts(n: u32, bad: &[u32]) -> Vec<Verdict> {
        (0..n)
            .map(|i| Verdict {
                index: i,
                healthy: !bad.contains(&i),
                reasons: if bad.contains(&i) {
                    vec![Reason::Xid { code: 79 }]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    #[test]
    fn publication_follows_the_contract() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 11, 30, 0).unwrap();
        let p = node_publication(
            Vendor::Nvidia,
            Some("qinghai"),
            &inventory(8),
            &verdicts(8, &[5, 2]),
            t,
        );
        assert_eq!(p.labels[LABEL_GPU_MODEL], "H100");
        assert_eq!(p.labels[LABEL_GPU_COUNT], "8");
        assert_eq!(p.labels[LABEL_VENDOR], "nvidia");
        assert_eq!(p.labels[LABEL_REGION], "qinghai");
        assert_eq!(p.annotations[ANNOTATION_UNHEALTHY], "2,5");
        assert_eq!(p.annotations[ANNOTATION_HEARTBEAT], "2026-11-22T11:30:00Z");
        assert_eq!(
            p.annotations[ANNOTATION_HEALTH_REASONS],
            r#"{"2":["XID 79"],"5":["XID 79"]}"#
        );
        let inv: serde_json::Value =
            serde_json::from_str(&p.annotations[ANNOTATION_INVENTORY]).unwrap();
        assert_eq!(
            inv[3],
            json!({"index":3,"model":"H100","memory_mib":81559,"uuid":"GPU-3"})
        );
        assert_eq!(
            metadata_patch(&p)["metadata"]["annotations"][ANNOTATION_UNHEALTHY],
            "2,5"
        );
    }

    #[test]
    fn all_healthy_publishes_an_empty_unhealthy_list_to_clear_the_old_one() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let p = node_publication(Vendor::Huawei, None, &inventory(2), &verdicts(2, &[]), t);
        assert_eq!(p.annotations[ANNOTATION_UNHEALTHY], "");
        assert_eq!(p.annotations[ANNOTATION_HEALTH_REASONS], "{}");
        assert_eq!(p.labels[LABEL_VENDOR], "huawei");
        assert!(!p.labels.contains_key(LABEL_REGION));
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(
            label_value("NVIDIA H100 80GB HBM3"),
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(label_value("(weird)"), "weird");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }
}
