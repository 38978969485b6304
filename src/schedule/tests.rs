//! The scheduler's unit tests: one pass at a time on hand-built snapshots.

use super::*;
use crate::jobs::{rfc3339, Kind, Placement, Quota, QuotaNode, ReplicaPlacement};

pub(super) fn node(name: &str, region: &str, gpus: u8) -> NodeView {
    NodeView {
        name: name.into(),
        region: region.into(),
        model: "H100".into(),
        vendor: "nvidia".into(),
        gpus,
        unhealthy: Vec::new(),
        cpu_milli: 64_000,
        memory_mib: 512 * 1024,
        labels: Vec::new(),
        schedulable: true,
        dedicated: None,
    }
}

pub(crate) fn workload(
    name: &str,
    tenant: &str,
    replicas: u32,
    gpus: u8,
    priority: i32,
    created: i64,
) -> WorkloadView {
    WorkloadView {
        key: WorkloadKey {
            kind: Kind::Training,
            namespace: "ml".into(),
            name: name.into(),
        },
        uid: format!("uid-{name}"),
        generation: 1,
        created,
        tenant: tenant.into(),
        replicas,
        gpus_per_replica: gpus,
        gpu_milli: None,
        models: Vec::new(),
        vendor: None,
        mixed_models: false,
        topology: None,
        default_vendor: None,
        priority,
        residency: Vec::new(),
        preferred: Vec::new(),
        max_runtime_s: None,
        max_delay_s: None,
        latency_slo_ms: None,
        user_region: None,
        token_tier: None,
        batch: false,
        cpu_milli: 1000,
        memory_mib: 1024,
        status: WorkloadStatus::default(),
        deleting: false,
        has_finalizer: true,
        errors: Vec::new(),
        tenant_mismatch: None,
    }
}

pub(super) fn quota(
    tenant: &str,
    parent: Option<&str>,
    gpus: &[(&str, i64)],
    guaranteed: i64,
) -> QuotaView {
    QuotaView {
        name: tenant.into(),
        spec: QuotaNode::new(
            tenant,
            parent,
            Quota {
                gpus: gpus.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                guaranteed_gpus: guaranteed,
                ..Quota::default()
            },
        ),
        status: Default::default(),
        errors: Vec::new(),
    }
}

pub(super) fn launches(p: &Plan) -> Vec<(&str, &WorkloadStatus)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch { key, status, .. } => Some((key.name.as_str(), status)),
            _ => None,
        })
        .collect()
}

/// Marks a planned launch as running (what the controller would write).
pub(super) fn run_it(w: &mut WorkloadView, status: &WorkloadStatus) {
    w.status = status.clone();
    w.status.phase = Some("Running".into());
    w.status.started_at = Some(rfc3339(0));
}

#[test]
fn a_gang_is_placed_whole_inside_one_region_or_not_at_all() {
    let snap = Snapshot {
        now: 100,
        nodes: vec![
            node("e1", "east", 8),
            node("w1", "west", 8),
            node("w2", "west", 8),
        ],
        workloads: vec![
            workload("g", "t", 3, 8, 0, 1),
            workload("h", "t", 2, 8, 0, 2),
        ],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let l = launches(&p);
    // "g" needs 3 whole nodes: no region has 3, so it waits; "h" takes the west.
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0, "h");
    let placement = l[0].1.placement.as_ref().unwrap();
    assert_eq!(placement.region.as_deref(), Some("west"));
    let nodes: BTreeSet<&str> = placement.replicas.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["w1", "w2"]));
    assert_eq!(p.pending.get("Unschedulable"), Some(&1));
    assert_eq!(p.decisions, 2);
}

#[test]
fn unhealthy_devices_are_never_given_out() {
    let mut n = node("n", "r", 4);
    n.unhealthy = vec![0, 2];
    let snap = Snapshot {
        nodes: vec![n],
        workloads: vec![
            workload("a", "t", 1, 2, 0, 1),
            workload("b", "t", 1, 1, 0, 2),
        ],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 1, "only two healthy devices exist");
    assert_eq!(
        l[0].1.placement.as_ref().unwrap().replicas[0].devices,
        vec![1, 3]
    );
}

#[test]
fn running_placements_hold_their_devices_and_a_half_launch_resumes() {
    let mut snap = Snapshot {
        nodes: vec![node("n", "r", 8)],
        workloads: vec![workload("a", "t", 1, 6, 0, 1)],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let status = launches(&p)[0].1.clone();
    // A leader died after writing Admitted: the next pass resumes, not replans.
    snap.workloads[0].status = status.clone();
    snap.workloads.push(workload("b", "t", 1, 4, 0, 2));
    let p = plan(&snap, &PlanConfig::default());
    assert!(p
        .actions
        .iter()
        .any(|a| matches!(a, Action::Launch { key, write_status: false, .. } if key.name == "a")));
    assert!(
        launches(&p).iter().all(|(n, _)| *n != "b"),
        "b would overlap a's devices"
    );
    assert_eq!(p.pending.get("Unschedulable"), Some(&1));
}

#[test]
fn hierarchical_quota_binds_at_the_parent() {
    let mut snap = Snapshot {
        nodes: vec![node("n1", "r", 8), node("n2", "r", 8)],
        workloads: vec![
            workload("a", "dept", 1, 8, 0, 1),
            workload("b", "dept", 1, 8, 0, 2),
        ],
        quotas: vec![
            quota("city", None, &[("*", 12)], 0),
            quota("dept", Some("city"), &[("H100", 16)], 0),
        ],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 1);
    let status = l[0].1.clone();
    let name = l[0].0.to_string();
    let refused = p.actions.iter().find_map(|a| match a {
        Action::SetStatus { status, .. } => Some(status.clone()),
        _ => None,
    });
    let refused = refused.unwrap();
    assert_eq!(refused.reason.as_deref(), Some("QuotaExceeded"));
    assert!(refused
        .conditions
        .iter()
        .any(|c| c.message.contains("spec.gpus[*]=12")));
    // Usage is counted up the tree.
    let idx = snap
        .workloads
        .iter()
        .position(|w| w.key.name == name)
        .unwrap();
    run_it(&mut snap.workloads[idx], &status);
    let p = plan(&snap, &PlanConfig::default());
    let quota_status = |tenant: &str| {
        p.actions.iter().find_map(|a| match a {
            Action::QuotaStatus { name, status } if name == tenant => {
                Some((status.used_milli_gpus, status.admitted_workloads))
            }
            _ => None,
        })
    };
    // The parent holds no workload of its own; dept's running one is
    // counted where it belongs (the waiting one is not).
    assert_eq!(quota_status("city"), Some((8000, 0)));
    assert_eq!(quota_status("dept"), Some((8000, 1)));
}

#[test]
fn quota_cycles_and_missing_quotas_block_with_reasons() {
    let snap = Snapshot {
        nodes: vec![node("n", "r", 8)],
        workloads: vec![
            workload("a", "x", 1, 1, 0, 1),
            workload("b", "nobody", 1, 1, 0, 2),
        ],
        quotas: vec![quota("x", Some("y"), &[], 0), quota("y", Some("x"), &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    assert!(launches(&p).is_empty());
    assert_eq!(p.pending.get("QuotaInvalid"), Some(&1));
    assert_eq!(p.pending.get("NoQuota"), Some(&1));
}

#[test]
fn fair_share_prefers_the_tenant_furthest_below_its_guarantee() {
    let mut snap = Snapshot {
        nodes: vec![node("n1", "r", 8), node("n2", "r", 4)],
        workloads: vec![workload("big-user", "a", 1, 8, 0, 1)],
        quotas: vec![quota("a", None, &[], 4), quota("b", None, &[], 4)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let status = launches(&p)[0].1.clone();
    run_it(&mut snap.workloads[0], &status);
    // Tenant a already holds 8 GPUs; both want the last 4: b (using 0) goes first.
    snap.workloads.push(workload("a-more", "a", 1, 4, 0, 2));
    snap.workloads.push(workload("b-first", "b", 1, 4, 0, 3));
    let p = plan(&snap, &PlanConfig::default());
    let names: Vec<&str> = launches(&p).iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["b-first"]);
}

#[test]
fn preemption_evicts_only_lower_priority_and_is_bounded() {
    let mut snap = Snapshot {
        nodes: vec![node("n", "r", 8)],
        workloads: vec![workload("low", "t", 1, 8, 0, 1)],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let status = launches(&p)[0].1.clone();
    run_it(&mut snap.workloads[0], &status);
    // Same priority: no preemption, it waits.
    snap.workloads.push(workload("peer", "t", 1, 8, 0, 2));
    let p = plan(&snap, &PlanConfig::default());
    assert_eq!(p.preemptions, 0);
    assert!(launches(&p).is_empty());
    // Higher priority: "low" is stopped as Preempted, nothing launches this pass.
    snap.workloads.push(workload("urgent", "t", 1, 8, 10, 3));
    let p = plan(&snap, &PlanConfig::default());
    assert_eq!(p.preemptions, 1);
    assert!(launches(&p).is_empty());
    let stopped: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop {
                key,
                status,
                pods,
                region,
            } => {
                assert_eq!(status.phase.as_deref(), Some("Preempted"));
                assert_eq!(pods, &vec!["low-0".to_string()]);
                // Its pods are deleted in the cluster of its region only.
                assert_eq!(region.as_deref(), Some("r"));
                Some(key.name.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(stopped, ["low"]);
    assert_eq!(p.pending.get("Preempting"), Some(&1));
    // Next pass: low is requeued (Preempted), urgent lands; low cannot evict urgent back.
    snap.workloads[0].status.phase = Some("Preempted".into());
    snap.workloads[0].status.placement = None;
    let p = plan(&snap, &PlanConfig::default());
    assert_eq!(
        launches(&p).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["urgent"]
    );
    let status = launches(&p)[0].1.clone();
    let i = snap
        .workloads
        .iter()
        .position(|w| w.key.name == "urgent")
        .unwrap();
    run_it(&mut snap.workloads[i], &status);
    let p = plan(&snap, &PlanConfig::default());
    assert_eq!(p.preemptions, 0, "a lower priority never preempts back");
}

#[test]
fn residency_is_a_hard_filter_and_preferred_comes_first() {
    let mut w = workload("a", "t", 1, 1, 0, 1);
    w.residency = vec!["west".into(), "north".into()];
    w.preferred = vec!["north".into()];
    let mut v = workload("b", "t", 1, 1, 0, 2);
    v.residency = vec!["south".into()];
    let snap = Snapshot {
        nodes: vec![
            node("e", "east", 8),
            node("w", "west", 8),
            node("n", "north", 8),
        ],
        workloads: vec![w, v],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 1);
    assert_eq!(
        l[0].1.placement.as_ref().unwrap().region.as_deref(),
        Some("north")
    );
    assert_eq!(p.pending.get("Unschedulable"), Some(&1));
}

fn used(gpu: &[(&str, i64)], tokens: &[(&str, i64)]) -> MonthToDate {
    MonthToDate {
        milli_gpu_s: gpu.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        tokens: tokens.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// Asserts that `name` did not launch and waits for `reason`, its
/// Scheduled condition saying every one of `says`.
fn assert_waits(p: &Plan, name: &str, reason: &str, says: &[&str]) {
    assert!(launches(p).iter().all(|l| l.0 != name));
    let status = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::SetStatus { key, status } if key.name == name => Some(status),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name} got no status"));
    assert_eq!(status.reason.as_deref(), Some(reason));
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap()
        .message;
    for s in says {
        assert!(message.contains(s), "{message:?} lacks {s:?}");
    }
}

#[test]
fn a_parents_monthly_gpu_hours_count_the_whole_subtree() {
    // city may use 100 H100-hours a month; dept used 60 h, lab 40 h.
    let mut city = quota("city", None, &[], 0);
    city.spec.quota.gpu_hours_per_month = [("H100".to_string(), 100)].into();
    let snap = |lab_milli_s: i64| Snapshot {
        nodes: vec![node("n", "r", 8)],
        workloads: vec![workload("j", "dept", 1, 1, 0, 1)],
        quotas: vec![
            city.clone(),
            quota("dept", Some("city"), &[], 0),
            quota("lab", Some("city"), &[], 0),
        ],
        month_use: [
            // 60 GPU-hours = 60 × 3,600,000 milli-GPU-seconds.
            ("dept".to_string(), used(&[("H100", 216_000_000)], &[])),
            ("lab".to_string(), used(&[("H100", lab_milli_s)], &[])),
        ]
        .into(),
        ..Default::default()
    };
    // 60 h + 40 h = 100 h: the limit is reached, the job waits.
    let p = plan(&snap(144_000_000), &PlanConfig::default());
    assert_waits(
        &p,
        "j",
        "MonthlyGpuHoursExceeded",
        &[
            "tenant \"city\" used 100.00 GPU-hours of H100",
            "spec.gpuHoursPerMonth[H100]=100",
        ],
    );
    // 60 h + 39.99 h = 99.99 h: still under, the job runs.
    let p = plan(&snap(143_964_000), &PlanConfig::default());
    assert_eq!(launches(&p).len(), 1);
}

#[test]
fn a_used_up_model_leaves_the_others_and_star_limits_all() {
    let mut a100 = node("a", "r", 8);
    a100.model = "A100".into();
    let mut t = quota("t", None, &[], 0);
    t.spec.quota.gpu_hours_per_month = [("H100".to_string(), 10)].into();
    let mut snap = Snapshot {
        nodes: vec![node("h", "r", 8), a100],
        workloads: vec![workload("j", "t", 1, 8, 0, 1)],
        quotas: vec![t],
        // 10 H100-hours used: H100 is closed for the month, A100 is not.
        month_use: [("t".to_string(), used(&[("H100", 36_000_000)], &[]))].into(),
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1.placement.as_ref().unwrap().replicas[0].node, "a");
    // A `*` limit of 12 h counts every model: 10 h H100 + 2 h A100 = 12 h.
    snap.quotas[0].spec.quota.gpu_hours_per_month = [("*".to_string(), 12)].into();
    snap.month_use = [(
        "t".to_string(),
        used(&[("H100", 36_000_000), ("A100", 7_200_000)], &[]),
    )]
    .into();
    let p = plan(&snap, &PlanConfig::default());
    assert_waits(
        &p,
        "j",
        "MonthlyGpuHoursExceeded",
        &[
            "used 12.00 GPU-hours this month",
            "spec.gpuHoursPerMonth[*]=12",
        ],
    );
}

#[test]
fn monthly_tokens_block_new_services_of_the_tier() {
    let mut parent = quota("prov", None, &[], 0);
    parent.spec.quota.tokens_per_month = [("basic".to_string(), 1_000_000)].into();
    let mut svc = workload("svc", "city", 1, 1, 0, 1);
    svc.key.kind = Kind::Inference;
    svc.token_tier = Some(crate::ledger::Tier::Basic);
    let snap = |basic: i64| Snapshot {
        nodes: vec![node("n", "r", 8)],
        workloads: vec![svc.clone(), workload("train", "city", 1, 1, 0, 2)],
        quotas: vec![parent.clone(), quota("city", Some("prov"), &[], 0)],
        // Industry tokens do not count against the basic limit.
        month_use: [(
            "city".to_string(),
            used(&[], &[("basic", basic), ("industry", 5_000_000)]),
        )]
        .into(),
        ..Default::default()
    };
    let p = plan(&snap(1_000_000), &PlanConfig::default());
    assert_waits(
        &p,
        "svc",
        "MonthlyTokensExceeded",
        &["used 1000000 tokens", "spec.tokensPerMonth[basic]=1000000"],
    );
    // The training job of the same tenant is not held back by tokens.
    assert_eq!(
        launches(&p).iter().map(|l| l.0).collect::<Vec<_>>(),
        ["train"]
    );
    let p = plan(&snap(999_999), &PlanConfig::default());
    assert_eq!(launches(&p).len(), 2);
}

/// A running gang of two started at t=1000, with its pods in `phases`
/// (`None` = pod gone).
fn running_pair(phases: [Option<&str>; 2]) -> (WorkloadView, Vec<PodView>) {
    let mut w = workload("pair", "acme", 2, 1, 0, 0);
    w.max_runtime_s = Some(500);
    w.status = WorkloadStatus {
        phase: Some("Running".into()),
        started_at: Some(rfc3339(1000)),
        placement: Some(Placement {
            region: Some("east".into()),
            replicas: (0..2)
                .map(|i| ReplicaPlacement {
                    pod: format!("pair-{i}"),
                    node: "e1".into(),
                    devices: vec![i],
                    gpu_milli: None,
                })
                .collect(),
            topology: None,
        }),
        ..Default::default()
    };
    let pods = phases
        .iter()
        .enumerate()
        .filter_map(|(i, ph)| {
            ph.map(|ph| PodView {
                namespace: "ml".into(),
                name: format!("pair-{i}"),
                owner: Some(w.key.clone()),
                node: Some("e1".into()),
                devices: vec![i as u8],
                milli: None,
                cpu_milli: 1000,
                memory_mib: 1024,
                phase: ph.into(),
                deleting: false,
            })
        })
        .collect();
    (w, pods)
}

fn lifecycle_at(phases: [Option<&str>; 2], now: i64) -> (Option<(String, String)>, Option<i64>) {
    let (w, pods) = running_pair(phases);
    let refs: Vec<&PodView> = pods.iter().collect();
    let (action, recheck) = pod_lifecycle(&w, &refs, now, &PlanConfig::default());
    let summary = action.map(|a| match a {
        Action::SetStatus { status, .. } => (
            format!("set {}", status.phase.unwrap_or_default()),
            status.reason.unwrap_or_default().to_string(),
        ),
        Action::Stop { status, pods, .. } => (
            format!(
                "stop {} {}",
                status.phase.unwrap_or_default(),
                pods.join(",")
            ),
            status.reason.unwrap_or_default().to_string(),
        ),
        other => panic!("unexpected {other:?}"),
    });
    (summary, recheck)
}

#[test]
fn the_pods_of_a_running_gang_decide_its_phase() {
    let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
    // Both running: nothing to do; look again at the runtime limit.
    assert_eq!(
        lifecycle_at([Some("Running"), Some("Running")], 1100),
        (None, Some(1500))
    );
    assert_eq!(
        lifecycle_at([Some("Succeeded"), Some("Succeeded")], 1100),
        (s("set Succeeded", "Completed"), None)
    );
    // One done, one still running: not finished.
    assert_eq!(
        lifecycle_at([Some("Succeeded"), Some("Running")], 1100).0,
        None
    );
    assert_eq!(
        lifecycle_at([Some("Failed"), Some("Running")], 1100),
        (s("stop Failed pair-0,pair-1", "PodFailed"), None)
    );
    assert_eq!(
        lifecycle_at([Some("Running"), Some("Running")], 1500),
        (s("stop Failed pair-0,pair-1", "MaxRuntimeExceeded"), None)
    );
    // A vanished pod: wait out the grace (60 s after the start), then requeue.
    assert_eq!(
        lifecycle_at([Some("Running"), None], 1030),
        (None, Some(1060))
    );
    assert_eq!(
        lifecycle_at([Some("Running"), None], 1060),
        (s("stop Pending pair-0,pair-1", "GangBroken"), None)
    );
    // Only Running workloads: an Admitted one is the scheduling loop's to resume.
    let (mut w, pods) = running_pair([Some("Failed"), Some("Failed")]);
    w.status.phase = Some("Admitted".into());
    let refs: Vec<&PodView> = pods.iter().collect();
    assert_eq!(
        pod_lifecycle(&w, &refs, 1100, &PlanConfig::default()),
        (None, None)
    );
}

/// Applies a plan as the controller would (statuses written, launches
/// running).
pub(super) fn act_on(snap: &mut Snapshot, p: &Plan) {
    for a in &p.actions {
        let (key, status, running) = match a {
            Action::Launch { key, status, .. } => (key, status, true),
            Action::SetStatus { key, status } | Action::Stop { key, status, .. } => {
                (key, status, false)
            }
            _ => continue,
        };
        let w = snap.workloads.iter_mut().find(|w| &w.key == key).unwrap();
        if running {
            run_it(w, status);
        } else {
            w.status = status.clone();
        }
    }
}

/// Rewrites where a running workload's only replica is recorded.
fn moved(s: &mut Snapshot, name: &str, node: Option<&str>, devices: Vec<u32>) {
    let w = s.workloads.iter_mut().find(|w| w.key.name == name).unwrap();
    let r = &mut w.status.placement.as_mut().expect("running").replicas[0];
    if let Some(n) = node {
        r.node = n.into();
    }
    r.devices = devices;
}

/// A scheduler kept between passes (its engine brought in step with each
/// snapshot, not rebuilt) plans exactly what a fresh one plans, through
/// arrivals, departures, a device turning unhealthy and healthy again, a
/// foreign pod, a preemption and a node leaving. (A policy without learned
/// shapes: with shapes, a kept scheduler remembers arrivals a fresh one
/// never saw.)
#[test]
fn a_kept_scheduler_plans_what_a_fresh_one_plans() {
    let config = PlanConfig {
        policy: "bestfit".parse().unwrap(),
        ..PlanConfig::default()
    };
    let mut kept = Scheduler::new(config.clone());
    let mut snap = Snapshot {
        now: 10,
        nodes: vec![node("n1", "r", 4), node("n2", "r", 4), node("n3", "r", 4)],
        workloads: vec![
            workload("a", "t", 1, 2, 0, 1),
            workload("b", "t", 2, 4, 0, 2),
        ],
        quotas: vec![quota("t", None, &[], 0), quota("u", None, &[], 0)],
        ..Default::default()
    };
    type Step = Box<dyn Fn(&mut Snapshot)>;
    let steps: Vec<Step> = vec![
        Box::new(|_| {}),
        Box::new(|s| s.workloads.push(workload("c", "u", 1, 1, 0, 3))),
        // `c`'s recorded placement moves (a new leader recorded another):
        // to another device, then to another node.
        Box::new(|s| moved(s, "c", None, vec![3])),
        Box::new(|s| {
            let c = s.workloads.iter().find(|w| w.key.name == "c").unwrap();
            let on = &c.status.placement.as_ref().expect("c runs").replicas[0].node;
            let other = if on == "n3" { "n1" } else { "n3" };
            moved(s, "c", Some(other), vec![3]);
        }),
        // `a` finished (gone from the snapshot): its devices are free again.
        Box::new(|s| s.workloads.retain(|w| w.key.name != "a")),
        Box::new(|s| s.workloads.push(workload("d", "u", 1, 2, 0, 4))),
        // `c` (before `d` in the snapshot) is recorded on a device `d`
        // holds: a fresh engine gives it to `c`, the first to claim it.
        Box::new(|s| {
            let d = s.workloads.iter().find(|w| w.key.name == "d").unwrap();
            let r = &d.status.placement.as_ref().expect("d runs").replicas[0];
            let (node, device) = (r.node.clone(), r.devices[0]);
            moved(s, "c", Some(&node), vec![device]);
        }),
        Box::new(|s| s.nodes[2].unhealthy = vec![1, 2]),
        Box::new(|s| s.workloads.push(workload("e", "u", 1, 2, 0, 5))),
        Box::new(|s| s.nodes[2].unhealthy.clear()),
        Box::new(|s| {
            s.pods.push(PodView {
                namespace: "other".into(),
                name: "foreign".into(),
                owner: None,
                node: Some("n3".into()),
                devices: vec![3],
                milli: None,
                cpu_milli: 100,
                memory_mib: 100,
                phase: "Running".into(),
                deleting: false,
            })
        }),
        // Needs a whole node: only preemption makes room.
        Box::new(|s| s.workloads.push(workload("urgent", "u", 1, 4, 9, 6))),
        Box::new(|s| s.pods.clear()),
        Box::new(|s| {
            s.nodes.remove(1);
        }),
        Box::new(|s| s.workloads.push(workload("f", "t", 1, 1, 0, 7))),
    ];
    let mut launched = 0;
    for (i, step) in steps.iter().enumerate() {
        step(&mut snap);
        snap.now += 10;
        let fresh = plan(&snap, &config);
        let p = kept.plan(&snap);
        assert_eq!(
            p, fresh,
            "step {i}: the kept scheduler differs from a fresh one"
        );
        launched += launches(&p).len();
        act_on(&mut snap, &p);
    }
    assert!(
        launched >= 6,
        "the sequence placed work ({launched} launches)"
    );
}

/// A TenantQuota limit too large to count in milli-GPU saturates: it limits
/// nothing (it once wrapped around to a 0.384-GPU limit).
#[test]
fn a_huge_gpu_limit_saturates_instead_of_wrapping() {
    let snap = Snapshot {
        now: 10,
        nodes: vec![node("n", "r", 8)],
        workloads: vec![workload("w", "t", 1, 2, 0, 1)],
        quotas: vec![quota("t", None, &[("*", 18_446_744_073_709_552)], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    assert_eq!(launches(&p).len(), 1, "{:?}", p.pending);
    assert_eq!(crate::jobs::gpus_to_milli(i64::MAX), u64::MAX);
    assert_eq!(crate::jobs::gpus_to_milli(-3), 0);
}

pub(super) fn node_of(name: &str, model: &str, vendor: &str, gpus: u8) -> NodeView {
    let mut n = node(name, "r", gpus);
    n.model = model.into();
    n.vendor = vendor.into();
    n
}

/// A gang's replicas all get one GPU model: a 4-node gang does not spread
/// over 2 V100 and 3 T4 nodes (it waits), a 3-node one goes to the T4s.
#[test]
fn a_gang_gets_one_gpu_model() {
    let nodes = vec![
        node_of("v1", "V100", "nvidia", 4),
        node_of("v2", "V100", "nvidia", 4),
        node_of("t1", "T4", "nvidia", 4),
        node_of("t2", "T4", "nvidia", 4),
        node_of("t3", "T4", "nvidia", 4),
    ];
    let snap = |replicas| Snapshot {
        now: 10,
        nodes: nodes.clone(),
        workloads: vec![workload("g", "t", replicas, 4, 0, 1)],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap(4), &PlanConfig::default());
    assert!(
        launches(&p).is_empty(),
        "no model has 4 free nodes: {:?}",
        p.actions
    );
    assert_eq!(p.pending.get("Unschedulable"), Some(&1));
    let p = plan(&snap(3), &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 1);
    let placed: BTreeSet<&str> = l[0]
        .1
        .placement
        .as_ref()
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(placed, BTreeSet::from(["t1", "t2", "t3"]));
}

/// A job that names no vendor goes to NVIDIA nodes only (a CUDA image on an
/// NPU would fail); one that names `huawei` goes to the Ascend node.
#[test]
fn a_job_without_a_vendor_goes_to_nvidia_only() {
    let mut npu = workload("npu", "t", 1, 2, 0, 3);
    npu.vendor = Some("huawei".into());
    let snap = Snapshot {
        now: 10,
        nodes: vec![
            node_of("ascend", "Ascend910B", "huawei", 8),
            node_of("a100", "A100", "nvidia", 8),
        ],
        workloads: vec![
            workload("fill", "t", 1, 8, 0, 1),
            workload("cuda", "t", 1, 2, 0, 2),
            npu,
        ],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let on: BTreeMap<&str, &str> = launches(&p)
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                s.placement.as_ref().unwrap().replicas[0].node.as_str(),
            )
        })
        .collect();
    assert_eq!(on.get("fill"), Some(&"a100"));
    assert_eq!(on.get("npu"), Some(&"ascend"));
    assert!(
        !on.contains_key("cuda"),
        "the A100 is full and the NPU is not for it: {on:?}"
    );
}

/// A tenant whose default is Ascend: its jobs that name no vendor go to the
/// NPUs, unless their models say otherwise; a job naming a vendor keeps it.
#[test]
fn a_tenants_default_vendor_applies_when_the_job_names_none() {
    let mut plain = workload("plain", "t", 1, 2, 0, 1);
    plain.default_vendor = Some("huawei".into());
    let mut cuda_models = workload("models", "t", 1, 2, 0, 2);
    cuda_models.default_vendor = Some("huawei".into());
    cuda_models.models = vec!["A100".into()];
    let mut named = workload("named", "t", 1, 2, 0, 3);
    named.default_vendor = Some("huawei".into());
    named.vendor = Some("nvidia".into());
    let snap = Snapshot {
        now: 10,
        nodes: vec![
            node_of("ascend", "Ascend910B", "huawei", 8),
            node_of("a100", "A100", "nvidia", 8),
        ],
        workloads: vec![plain, cuda_models, named],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let on: BTreeMap<&str, &str> = launches(&p)
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                s.placement.as_ref().unwrap().replicas[0].node.as_str(),
            )
        })
        .collect();
    assert_eq!(on.get("plain"), Some(&"ascend"), "{on:?}");
    assert_eq!(on.get("models"), Some(&"a100"), "{on:?}");
    assert_eq!(on.get("named"), Some(&"a100"), "{on:?}");
}

/// The scheduling message of each workload a pass left pending.
pub(super) fn pending_messages(p: &Plan) -> BTreeMap<&str, &str> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetStatus { key, status } => Some((
                key.name.as_str(),
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Scheduled")?
                    .message
                    .as_ref(),
            )),
            _ => None,
        })
        .collect()
}

/// Two empty 8-GPU nodes in region "east", at time 100.
fn two_east_nodes(workloads: Vec<WorkloadView>, quotas: Vec<QuotaView>) -> Snapshot {
    Snapshot {
        now: 100,
        nodes: vec![node("e1", "east", 8), node("e2", "east", 8)],
        workloads,
        quotas,
        ..Default::default()
    }
}

/// Jobs of one gang shape are tried once a pass (`infeasible`): every
/// later one is refused with the first one's words; a different shape is
/// still tried on the capacity as it stands.
#[test]
fn a_gang_shape_that_fits_nowhere_is_tried_once_a_pass() {
    let a = workload("a", "t1", 3, 8, 5, 1);
    let b = workload("b", "t2", 1, 4, 5, 2);
    let c = workload("c", "t1", 3, 8, 5, 3);
    let quotas = vec![quota("t1", None, &[], 0), quota("t2", None, &[], 0)];
    let p = plan(
        &two_east_nodes(vec![a, b, c], quotas),
        &PlanConfig::default(),
    );
    assert_eq!(launches(&p).len(), 1, "only b fits");
    assert_eq!(launches(&p)[0].0, "b");
    let m = pending_messages(&p);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m["a"], m["c"], "{m:?}");
    assert!(m["a"].contains("gang member 2 fits nowhere"), "{m:?}");
}

/// A preemption frees more than the preemptor takes, so what fitted
/// nowhere before it is tried again after it (forgetting nothing would
/// leave `r` waiting beside a free node: this test fails without it).
#[test]
fn after_a_preemption_a_refused_shape_is_tried_again() {
    let mut low = workload("low", "t", 2, 8, 0, 1);
    low.status = WorkloadStatus {
        phase: Some("Running".into()),
        placement: Some(Placement {
            region: Some("east".into()),
            replicas: ["e1", "e2"]
                .iter()
                .enumerate()
                .map(|(i, n)| ReplicaPlacement {
                    pod: format!("low-{i}"),
                    node: n.to_string(),
                    devices: (0..8).collect(),
                    gpu_milli: None,
                })
                .collect(),
            topology: None,
        }),
        started_at: Some(rfc3339(0)),
        ..WorkloadStatus::default()
    };
    let s = workload("s", "t", 1, 8, 6, 2);
    let r = workload("r", "t", 1, 8, 5, 3);
    let quotas = vec![quota("t", None, &[], 0)];
    let p = plan(
        &two_east_nodes(vec![low, s, r], quotas),
        &PlanConfig::default(),
    );
    assert_eq!(p.preemptions, 1, "{:?}", p.actions);
    let launched: Vec<&str> = launches(&p).iter().map(|l| l.0).collect();
    assert_eq!(launched, ["r"], "{:?}", p.actions);
}

/// `racks` racks of two 8-GPU nodes in region "east", two racks a block.
fn racked(racks: usize) -> Vec<NodeView> {
    use crate::placement::topology::{BLOCK_LABEL, RACK_LABEL};
    (0..racks * 2)
        .map(|i| {
            let mut n = node(&format!("r{}-n{}", i / 2, i % 2), "east", 8);
            n.labels = vec![
                (BLOCK_LABEL.into(), format!("b{}", i / 4)),
                (RACK_LABEL.into(), format!("r{}", i / 2)),
            ];
            n
        })
        .collect()
}

fn topology_of(s: &WorkloadStatus) -> &crate::jobs::TopologyPlacement {
    let p = s.placement.as_ref().expect("placed");
    p.topology.as_ref().expect("a topology-aware placement")
}

fn nodes_of(s: &WorkloadStatus) -> BTreeSet<&str> {
    let p = s.placement.as_ref().unwrap();
    p.replicas.iter().map(|r| r.node.as_str()).collect()
}

#[test]
fn a_gang_that_asks_for_one_rack_gets_one_and_its_status_says_which() {
    use crate::placement::{Level, TopologyAsk};
    // Asking for a rack, a 2-node gang goes whole into one rack, and its
    // status and Scheduled condition name it.
    let small = workload("small", "t", 1, 4, 0, 1);
    let mut gang = workload("gang", "t", 2, 8, 0, 2);
    gang.topology = Some(TopologyAsk {
        level: Level::Rack,
        required: true,
    });
    let snap = |small: &WorkloadView, gang: &WorkloadView| Snapshot {
        now: 100,
        nodes: racked(4),
        workloads: vec![small.clone(), gang.clone()],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap(&small, &gang), &PlanConfig::default());
    let l = launches(&p);
    assert_eq!(l.len(), 2);
    let (_, status) = l.iter().find(|(n, _)| *n == "gang").unwrap();
    let nodes = nodes_of(status);
    let racks: BTreeSet<&str> = nodes.iter().map(|n| &n[..2]).collect();
    assert_eq!(racks.len(), 1, "{nodes:?}");
    let topo = topology_of(status);
    assert_eq!(topo.level, "rack");
    assert!(topo.domain.ends_with(racks.first().unwrap()), "{topo:?}");
    let scheduled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap();
    assert!(scheduled
        .message
        .contains(&format!("within rack {:?}", topo.domain)));

    // Both racks of a 2-rack block half taken: the required gang waits and
    // says why; one that only prefers a rack spans the block.
    let running = |name: &str, on: &str| {
        let mut w = workload(name, "t", 1, 4, 0, 1);
        w.status = WorkloadStatus {
            phase: Some("Running".into()),
            started_at: Some(rfc3339(0)),
            placement: Some(Placement {
                region: Some("east".into()),
                replicas: vec![ReplicaPlacement {
                    pod: format!("{name}-0"),
                    node: on.into(),
                    devices: (0..4).collect(),
                    gpu_milli: None,
                }],
                topology: None,
            }),
            ..WorkloadStatus::default()
        };
        w
    };
    let mut ws = vec![running("a", "r0-n0"), running("b", "r1-n0"), gang];
    let snap2 = |ws: &[WorkloadView]| Snapshot {
        now: 100,
        nodes: racked(2),
        workloads: ws.to_vec(),
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap2(&ws), &PlanConfig::default());
    assert!(launches(&p).is_empty());
    let msg = pending_messages(&p)["gang"];
    assert!(msg.contains("no rack of 2 holds the whole gang"), "{msg}");
    ws[2].topology = Some(TopologyAsk {
        level: Level::Rack,
        required: false,
    });
    let p = plan(&snap2(&ws), &PlanConfig::default());
    let l = launches(&p);
    let (_, status) = l.iter().find(|(n, _)| *n == "gang").unwrap();
    assert_eq!(nodes_of(status), BTreeSet::from(["r0-n1", "r1-n1"]));
    let topo = topology_of(status);
    assert_eq!((topo.level.as_str(), topo.domain.as_str()), ("block", "b0"));
    let scheduled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap();
    assert!(
        scheduled.message.contains("no rack had room"),
        "{}",
        scheduled.message
    );
}

/// A region that refused a gang shape is not tried again for that shape in
/// the pass (its words are repeated), but is for any other shape: a
/// smaller job still lands where the larger one could not.
#[test]
fn a_region_that_refused_a_shape_is_skipped_for_that_shape_only() {
    let snap = Snapshot {
        now: 100,
        nodes: vec![node("e1", "east", 4), node("w1", "west", 8)],
        workloads: vec![
            workload("big", "t", 1, 8, 0, 1),
            workload("small", "t", 1, 4, 0, 2),
            workload("big2", "t", 1, 8, 0, 3),
        ],
        quotas: vec![quota("t", None, &[], 0)],
        ..Default::default()
    };
    let p = plan(&snap, &PlanConfig::default());
    let placed: BTreeMap<&str, String> = launches(&p)
        .iter()
        .map(|(n, s)| (*n, s.placement.as_ref().unwrap().replicas[0].node.clone()))
        .collect();
    assert_eq!(
        placed.get("big").map(String::as_str),
        Some("w1"),
        "{placed:?}"
    );
    assert_eq!(
        placed.get("small").map(String::as_str),
        Some("e1"),
        "{placed:?}"
    );
    let m = pending_messages(&p);
    assert!(m["big2"].contains("region \"east\": "), "{m:?}");
    assert!(m["big2"].contains("region \"west\": "), "{m:?}");
}
