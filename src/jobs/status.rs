//! The status every job carries, whoever runs it: phase, reason, placement
//! and conditions. The TrainingJob and InferenceService CRDs use it as their
//! `.status`; the scheduler ([`crate::schedule`]) writes it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::text::Text;

/// Lifecycle of a TrainingJob or InferenceService.
pub const PHASES: [&str; 6] = [
    "Pending",
    "Admitted",
    "Running",
    "Succeeded",
    "Failed",
    "Preempted",
];

/// One replica's place: node and device indices on it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPlacement {
    pub pod: String,
    pub node: String,
    pub devices: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_milli: Option<u32>,
}

/// Where a workload runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub replicas: Vec<ReplicaPlacement>,
    /// The network domain holding the whole gang (a job that asked for
    /// `topology` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyPlacement>,
}

/// The network domain a topology-aware gang was placed in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyPlacement {
    /// nvlink, rack or block; `region` when no domain of the preferred
    /// level or a coarser one had room.
    pub level: String,
    /// The domain: its labels' values from the block down, joined by `/`
    /// (empty for `region`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Admitted, Scheduled, Valid, ...
    #[serde(rename = "type")]
    pub type_: Text,
    /// "True", "False" or "Unknown".
    pub status: Text,
    /// CamelCase machine-readable reason.
    pub reason: Text,
    /// Human-readable explanation ("why pending").
    pub message: Text,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status shared by TrainingJob and InferenceService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Pending, Admitted, Running, Succeeded, Failed or Preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Text>,
    /// Short reason of the current phase (why pending / why failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// RFC 3339 time the gang was bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Current use against a quota.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaStatus {
    #[serde(default)]
    pub used_milli_gpus: i64,
    #[serde(default)]
    pub admitted_workloads: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Observed state of a region.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeRegionStatus {
    #[serde(default)]
    pub gpus: i64,
    #[serde(default)]
    pub gpus_allocated: f64,
    #[serde(default)]
    pub nodes: i64,
    /// `Usable`: whether the controller places workloads here, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// RFC 3339 of unix seconds.
pub fn rfc3339(unix_s: i64) -> String {
    // A pass stamps thousands of conditions with one time: the last one
    // formatted is kept (per thread) and copied.
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != unix_s || last.1.is_empty() {
            let text = chrono::DateTime::from_timestamp(unix_s, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            *last = (unix_s, text);
        }
        last.1.clone()
    })
}

/// Unix seconds of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp())
}

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    status: &mut WorkloadStatus,
    type_: &'static str,
    value: bool,
    reason: impl Into<Text>,
    message: impl Into<Text>,
    now: i64,
    generation: i64,
) {
    let value = if value { "True" } else { "False" };
    let old = status.conditions.iter().position(|c| c.type_ == type_);
    let since = match old {
        Some(i) if status.conditions[i].status == value => {
            status.conditions[i].last_transition_time.clone()
        }
        _ => Some(rfc3339(now)),
    };
    let c = Condition {
        type_: type_.into(),
        status: value.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: Some(generation),
    };
    match old {
        Some(i) => status.conditions[i] = c,
        None => status.conditions.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept last time never answers for another one.
    #[test]
    fn rfc3339_formats_each_time_and_keeps_only_the_last() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(86_461), "1970-01-02T00:01:01Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(1_767_196_800)), Some(1_767_196_800));
    }
}
