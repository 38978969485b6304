//! Step 2: the lifecycle of admitted and running workloads. What needs the
//! cluster (a node gone, a launch a previous leader did not finish) is
//! [`Pass::lifecycle`]; what follows from a workload's own pods alone
//! (completion, failure, runtime limit, a broken gang) is [`pod_lifecycle`],
//! which the controller's workload reconciler runs per object.

use std::collections::{BTreeMap, BTreeSet};

use crate::jobs::{
    describe, parse_rfc3339, set_condition, PodView, Text, WorkloadStatus, WorkloadView,
};

use super::{Action, Pass, PlanConfig};

/// A pending status with a reason and the "why pending" explanation.
pub(super) fn pending_status(
    w: &WorkloadView,
    phase: &'static str,
    reason: &'static str,
    message: impl Into<Text>,
    now: i64,
) -> WorkloadStatus {
    let message = message.into();
    let mut s = w.status.clone();
    s.phase = Some(phase.into());
    s.reason = Some(reason.into());
    s.placement = None;
    s.started_at = None;
    s.observed_generation = Some(w.generation);
    s.conditions.reserve_exact(2);
    let valid = reason != "InvalidSpec";
    set_condition(
        &mut s,
        "Valid",
        valid,
        if valid { "Valid" } else { "InvalidSpec" },
        if valid {
            "spec is valid".into()
        } else {
            message.clone()
        },
        now,
        w.generation,
    );
    set_condition(
        &mut s,
        "Scheduled",
        false,
        reason,
        message,
        now,
        w.generation,
    );
    s
}

/// Whether `w`'s status already is what [`pending_status`] would make of it
/// (a pending workload looked at again, pass after pass): checked without
/// building the new status, so waiting costs no allocation.
pub(super) fn already_pending(w: &WorkloadView, phase: &str, reason: &str, message: &str) -> bool {
    let s = &w.status;
    let condition = |type_: &str, value: &str, reason: &str, message: &str| {
        s.conditions.iter().any(|c| {
            c.type_ == type_
                && c.status == value
                && c.reason == reason
                && c.message == message
                && c.observed_generation == Some(w.generation)
                && c.last_transition_time.is_some()
        })
    };
    let valid = reason != "InvalidSpec";
    s.phase.as_deref() == Some(phase)
        && s.reason.as_deref() == Some(reason)
        && s.placement.is_none()
        && s.started_at.is_none()
        && s.observed_generation == Some(w.generation)
        && if valid {
            condition("Valid", "True", "Valid", "spec is valid")
        } else {
            condition("Valid", "False", "InvalidSpec", message)
        }
        && condition("Scheduled", "False", reason, message)
}

impl<'a> Pass<'a> {
    /// Step 2: invalid specs get their condition, finished ones are left
    /// alone, a gang on a vanished node is rolled back, a half-launched gang
    /// is resumed. Returns the workloads waiting for admission.
    pub(super) fn lifecycle(&mut self) -> Vec<&'a WorkloadView> {
        let snapshot = self.snapshot;
        let now = self.now;
        let mut queue: Vec<&WorkloadView> = Vec::new();
        for w in &snapshot.workloads {
            // The workload reconciler puts the finalizer on and cleans up
            // deleted workloads; pods are only ever created for a workload
            // whose deletion will wait for their cleanup.
            if w.deleting || !w.has_finalizer {
                continue;
            }
            // A tenant the namespace does not admit is never admitted (a
            // workload already running keeps its pods; its namespace was
            // checked when it was admitted).
            let waiting = matches!(w.phase(), "Pending" | "Preempted");
            let refusal = if let Some(m) = w.tenant_mismatch.as_ref().filter(|_| waiting) {
                Some(("TenantMismatch", m.clone()))
            } else if !w.errors.is_empty() {
                Some(("InvalidSpec", describe(&w.errors)))
            } else {
                None
            };
            if let Some((reason, message)) = refusal {
                let status = pending_status(w, "Pending", reason, message, now);
                *self.out.pending.entry(reason.into()).or_default() += 1;
                if status != w.status {
                    self.out.actions.push(Action::SetStatus {
                        key: w.key.clone(),
                        status,
                    });
                }
                continue;
            }
            match w.phase() {
                "Succeeded" | "Failed" => continue,
                "Pending" | "Preempted" => queue.push(w),
                "Admitted" | "Running" if w.status.placement.is_none() => queue.push(w),
                phase => self.check_placed(w, phase),
            }
        }
        queue
    }

    /// A placed gang: rolled back when a node of its placement is gone,
    /// resumed when still Admitted (a launch a previous leader did not finish).
    fn check_placed(&mut self, w: &WorkloadView, phase: &str) {
        let placement = w.status.placement.as_ref().expect("placed");
        let nodes_ok = placement
            .replicas
            .iter()
            .all(|r| self.node_model.contains_key(r.node.as_str()));
        if !nodes_ok {
            let message = "a node of the placement is gone; the gang was rolled back and requeued";
            self.out.actions.push(Action::Stop {
                key: w.key.clone(),
                pods: self.live_pods(w),
                region: placement.region.clone(),
                status: pending_status(w, "Pending", "NodeLost", message, self.now),
            });
        } else if phase == "Admitted" {
            self.out.actions.push(Action::Launch {
                key: w.key.clone(),
                tenant: w.tenant.clone(),
                status: w.status.clone(),
                write_status: false,
            });
        }
    }

    /// A workload's pods that are not being deleted, plus its placement's
    /// names (the pod store may lag a launch).
    pub(super) fn live_pods(&self, w: &WorkloadView) -> Vec<String> {
        let mut live: BTreeSet<String> = self
            .pods_of(w)
            .map(|ps| {
                ps.iter()
                    .filter(|p| !p.deleting)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = &w.status.placement {
            live.extend(p.replicas.iter().map(|r| r.pod.clone()));
        }
        live.into_iter().collect()
    }
}

/// What a Running workload's own pods imply (the workload reconciler's
/// part of the lifecycle; pure): every pod Succeeded → Succeeded; a pod
/// Failed → stop, Failed; past `maxRuntimeSeconds` → stop, Failed; pods
/// missing `gang_grace_s` after the start → stop, requeued (Pending).
/// Also returns when to look again (unix seconds) if nothing changes: the
/// runtime limit or the end of the grace period.
pub fn pod_lifecycle(
    w: &WorkloadView,
    own_pods: &[&PodView],
    now: i64,
    config: &PlanConfig,
) -> (Option<Action>, Option<i64>) {
    let Some(placement) = w
        .status
        .placement
        .as_ref()
        .filter(|_| w.phase() == "Running")
    else {
        return (None, None);
    };
    let started = w.status.started_at.as_deref().and_then(parse_rfc3339);
    let by_name: BTreeMap<&str, &PodView> =
        own_pods.iter().map(|p| (p.name.as_str(), *p)).collect();
    let expected: Vec<&str> = placement.replicas.iter().map(|r| r.pod.as_str()).collect();
    let failed = expected
        .iter()
        .any(|p| by_name.get(p).is_some_and(|p| p.phase == "Failed"));
    let succeeded = !expected.is_empty()
        && expected
            .iter()
            .all(|p| by_name.get(p).is_some_and(|p| p.phase == "Succeeded"));
    let missing = expected
        .iter()
        .filter(|p| !by_name.contains_key(**p))
        .count();
    let mut live: BTreeSet<String> = own_pods
        .iter()
        .filter(|p| !p.deleting)
        .map(|p| p.name.clone())
        .collect();
    live.extend(expected.iter().map(|p| p.to_string()));
    let stop = |phase: &'static str, reason: &'static str, message: String| {
        let mut s = pending_status(w, phase, reason, message.clone(), now);
        if phase == "Failed" {
            set_condition(
                &mut s,
                "Scheduled",
                true,
                reason,
                message,
                now,
                w.generation,
            );
        }
        Action::Stop {
            key: w.key.clone(),
            pods: live.iter().cloned().collect(),
            region: placement.region.clone(),
            status: s,
        }
    };
    if succeeded {
        let mut s = w.status.clone();
        s.phase = Some("Succeeded".into());
        s.reason = Some("Completed".into());
        let action = Action::SetStatus {
            key: w.key.clone(),
            status: s,
        };
        return (Some(action), None);
    }
    if failed {
        let message = "a replica's pod failed; the gang is stopped".into();
        return (Some(stop("Failed", "PodFailed", message)), None);
    }
    let deadline = w.max_runtime_s.zip(started).map(|(max, t0)| t0 + max);
    if let (Some(max), Some(t0), Some(end)) = (w.max_runtime_s, started, deadline) {
        if now >= end {
            let message = format!("ran {}s, spec.maxRuntimeSeconds is {max}", now - t0);
            return (Some(stop("Failed", "MaxRuntimeExceeded", message)), None);
        }
    }
    let mut recheck = deadline;
    if missing > 0 {
        let grace_end = started.map(|t0| t0 + config.gang_grace_s);
        if grace_end.is_some_and(|g| now >= g) {
            let message = format!(
                "{missing} of {} pods disappeared; the gang was rolled back and requeued",
                expected.len()
            );
            return (Some(stop("Pending", "GangBroken", message)), None);
        }
        recheck = match (recheck, grace_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    (None, recheck)
}
