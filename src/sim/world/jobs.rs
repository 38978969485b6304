//! A simulated job's state as the world keeps it ([`JobState`]), its
//! placement, why it waits, and the view the API and the demo read
//! ([`JobView`]).

use serde::Serialize;

use super::{JobId, Phase, World};
use crate::regions::explain::{Explanation, ExplanationView, Filter, Verdict};
use crate::regions::job::{JobSpec, ResolvedJob};

/// One replica's place: node name and device indices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaPlacement {
    pub node: String,
    pub model: String,
    pub devices: Vec<usize>,
    /// Milli-share on each device (1000 = whole GPUs).
    pub milli_per_device: u16,
}

impl ReplicaPlacement {
    /// Milli-GPU the replica holds.
    pub fn gpu_milli(&self) -> u32 {
        self.devices.len() as u32 * u32::from(self.milli_per_device)
    }
}

/// A running gang: its region (catalog index) and one place per replica.
#[derive(Debug, Clone, PartialEq)]
pub struct GangPlacement {
    pub region: usize,
    pub replicas: Vec<ReplicaPlacement>,
}

/// A job's state.
#[derive(Debug, Clone)]
pub struct JobState {
    pub id: JobId,
    pub spec: JobSpec,
    pub resolved: ResolvedJob,
    pub phase: Phase,
    pub submitted_s: i64,
    pub started_s: Option<i64>,
    pub finished_s: Option<i64>,
    pub placement: Option<GangPlacement>,
    /// The latest region choice ("why here" / "why pending").
    pub explanation: Explanation,
    /// The scheduler's reason while pending (`QuotaExceeded`, `Unschedulable`, …).
    pub reason: Option<String>,
    /// The scheduler's message while pending when region choice did not
    /// explain it (quota, monthly limits): what the limit is and how to lift it.
    pub message: Option<String>,
    /// Times the job was preempted (stopped and requeued).
    pub preemptions: u32,
    /// Start of the part of the run not yet metered.
    pub(super) metered_until_s: i64,
    /// Departure time while running, if the job has a known runtime.
    pub(super) ends_s: Option<i64>,
    /// Position of its workload in the scheduler's snapshot (`usize::MAX`
    /// once it left the scheduler's view).
    pub(super) workload_slot: usize,
}

impl JobState {
    /// Seconds from submission to start (to now while pending).
    pub fn wait_s(&self, now_s: i64) -> i64 {
        self.started_s.unwrap_or(now_s) - self.submitted_s
    }

    /// Why a pending job waits, as a short label (for `zhisuan_pending_jobs{reason}`).
    pub fn pending_reason(&self) -> Option<&'static str> {
        if self.phase != Phase::Pending {
            return None;
        }
        match self.reason.as_deref() {
            Some("QuotaExceeded" | "MonthlyGpuHoursExceeded" | "MonthlyTokensExceeded") => {
                return Some("quota")
            }
            Some("Preempting") => return Some("preempting"),
            _ => {}
        }
        let cands = &self.explanation.candidates;
        let removed = |f: Filter| {
            cands
                .iter()
                .any(|c| matches!(c.verdict, Verdict::Removed { filter, .. } if filter == f))
        };
        let any_ranked = cands
            .iter()
            .any(|c| !matches!(c.verdict, Verdict::Removed { .. }));
        Some(if any_ranked {
            "capacity"
        } else if removed(Filter::LatencySlo) {
            "latency-slo"
        } else if removed(Filter::Residency) {
            "residency"
        } else if removed(Filter::Budget) {
            "budget"
        } else if removed(Filter::Dedicated) {
            "dedicated"
        } else {
            "inventory"
        })
    }
}

/// Why a job may wait ([`JobState::pending_reason`]); each is counted,
/// zero included, so a dashboard shows the full breakdown.
pub const PENDING_REASONS: &[&str] = &[
    "capacity",
    "preempting",
    "latency-slo",
    "quota",
    "residency",
    "budget",
    "dedicated",
    "inventory",
];

/// The jobs of `ids` waiting, by reason: every reason of
/// [`PENDING_REASONS`], zero included (an unknown one counts as the
/// first); what the demo's `/metrics` and the ledger's pending samples of
/// a simulated cluster show.
pub fn pending_by_reason(
    world: &World,
    ids: impl IntoIterator<Item = JobId>,
) -> std::collections::BTreeMap<String, u64> {
    let mut pending: std::collections::BTreeMap<String, u64> =
        PENDING_REASONS.iter().map(|r| (r.to_string(), 0)).collect();
    for job in ids.into_iter().filter_map(|id| world.job(id)) {
        if let Some(reason) = job.pending_reason() {
            let known = PENDING_REASONS.iter().find(|r| **r == reason);
            *pending
                .entry(known.unwrap_or(&PENDING_REASONS[0]).to_string())
                .or_default() += 1;
        }
    }
    pending
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub tenant: String,
    pub name: String,
    pub kind: &'static str,
    pub phase: Phase,
    pub submitted_s: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub replicas: Vec<ReplicaPlacement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<&'static str>,
    pub explanation: ExplanationView,
}
