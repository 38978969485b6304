//! One planning pass of the scheduler alone, at the scale: 5,000
//! nodes × 8 H100 in 4 ComputeRegions, a quota tree (`org` over four teams),
//! 15,000 running single-GPU workloads (with their bound pods) and 20,000
//! whole-node ones waiting
//! (the cluster holds none of them) — the state the operator bench's
//! `pass_ms.plan` is measured in, without the API server, the controller's
//! other steps or their noise. The statuses of the first pass are applied,
//! so later passes see what a settled controller sees (every waiting job
//! already told why), and the scheduler is kept between passes as the
//! controller keeps it. `arrival_pass_ms`: the pass in which the waiting
//! jobs arrive all at once (each gets its first status), the median of
//! `--arrivals` such passes (5), each with a fresh scheduler;
//! `arrival_pass_cpu_ms` the time it spent on a CPU and
//! `arrival_pass_runqueue_ms` waiting for one (`/proc/thread-self/schedstat`:
//! on a busy machine the wall time is their sum, and the CPU time is the
//! figure to compare across runs).
//!
//! Run: `cargo bench --bench plan` (flags `--nodes`, `--running`,
//! `--pending`, `--passes`, `--arrivals`); prints JSON: each pass's ms,
//! their median (wall and CPU) and minimum.

use std::time::Instant;

use serde_json::json;
use zhisuan::jobs::{
    Kind, NodeView, Placement, PodView, Quota, QuotaNode, QuotaView, ReplicaPlacement, WorkloadKey,
    WorkloadStatus, WorkloadView,
};
use zhisuan::operator::crd::{ComputeRegionSpec, ComputeRegionStatus};
use zhisuan::operator::regions::region_catalog;
use zhisuan::operator::snapshot::RegionView;
use zhisuan::regions::catalog::ScoreWeights;
use zhisuan::schedule::{Action, Plan, PlanConfig, Scheduler, Snapshot};

const REGIONS: [(&str, &str, f64); 4] = [
    ("beijing", "east", 0.2),
    ("shanghai", "east", 0.3),
    ("ningxia", "west", 0.7),
    ("guizhou", "west", 0.6),
];
const TENANTS: [&str; 4] = ["team-a", "team-b", "team-c", "team-d"];

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn node(i: usize) -> NodeView {
    let region = REGIONS[i % 4].0;
    let labels = [
        ("zhisuan.io/region", region),
        ("zhisuan.io/gpu-model", "H100"),
        ("zhisuan.io/gpu-count", "8"),
        ("zhisuan.io/accelerator-vendor", "nvidia"),
    ];
    NodeView {
        name: format!("node-{i:05}"),
        region: region.into(),
        model: "H100".into(),
        vendor: "nvidia".into(),
        gpus: 8,
        unhealthy: Vec::new(),
        cpu_milli: 128_000,
        memory_mib: 1024 * 1024,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        schedulable: true,
        dedicated: None,
    }
}

fn workload(name: &str, tenant: &str, gpus: u8, created: i64) -> WorkloadView {
    WorkloadView {
        key: WorkloadKey {
            kind: Kind::Training,
            namespace: "ml".into(),
            name: name.into(),
        },
        uid: format!("6f1c2a4e-0000-4000-8000-{name:0>12}"),
        generation: 1,
        created,
        tenant: tenant.into(),
        replicas: 1,
        gpus_per_replica: gpus,
        gpu_milli: None,
        models: Vec::new(),
        vendor: None,
        default_vendor: None,
        mixed_models: false,
        topology: None,
        priority: 0,
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

fn snapshot(nodes: usize, running: usize, pending: usize) -> Snapshot {
    let nodes: Vec<NodeView> = (0..nodes).map(node).collect();
    let regions: Vec<RegionView> = REGIONS
        .iter()
        .map(|(name, side, green)| RegionView {
            name: name.to_string(),
            spec: ComputeRegionSpec {
                hub: name.to_string(),
                side: side.to_string(),
                pue: 1.2,
                green_share: *green,
                electricity_fen_per_kwh: 40,
                grid_kg_co2_per_kwh: 0.6,
                node_selector: [("zhisuan.io/region".to_string(), name.to_string())].into(),
                ..Default::default()
            },
            status: ComputeRegionStatus::default(),
            errors: Vec::new(),
            member_problem: None,
        })
        .collect();
    let catalog = region_catalog(&regions, &nodes, ScoreWeights::default());
    let quarter = (nodes.len() * 8 / 4) as i64;
    let mut quotas = vec![QuotaView {
        name: "org".into(),
        spec: QuotaNode::new("org", None, Quota::default()),
        status: Default::default(),
        errors: Vec::new(),
    }];
    for t in TENANTS {
        let quota = Quota {
            guaranteed_gpus: quarter,
            ..Quota::default()
        };
        quotas.push(QuotaView {
            name: t.into(),
            spec: QuotaNode::new(t, Some("org"), quota),
            status: Default::default(),
            errors: Vec::new(),
        });
    }
    let mut workloads = Vec::with_capacity(running + pending);
    let mut pods = Vec::with_capacity(running);
    for i in 0..running {
        let mut w = workload(
            &format!("run-{i}"),
            TENANTS[i % 4],
            1,
            1_000 + i as i64 / 100,
        );
        let n = &nodes[i / 8];
        w.status.phase = Some("Running".into());
        w.status.placement = Some(Placement {
            region: Some(n.region.clone()),
            replicas: vec![ReplicaPlacement {
                pod: w.key.pod_name(0),
                node: n.name.clone(),
                devices: vec![(i % 8) as u32],
                gpu_milli: None,
            }],
            topology: None,
        });
        // Its pod, bound and running, as the controller's snapshot has it.
        let replica = &w.status.placement.as_ref().unwrap().replicas[0];
        pods.push(bound_pod(&w.key, replica));
        workloads.push(w);
    }
    // More whole-node jobs than the free nodes hold.
    let free_nodes = nodes.len() - running.div_ceil(8);
    for i in 0..pending + free_nodes {
        workloads.push(workload(
            &format!("wait-{i}"),
            TENANTS[i % 4],
            8,
            2_000 + i as i64 / 100,
        ));
    }
    Snapshot {
        now: 10_000,
        nodes,
        pods,
        workloads,
        quotas,
        regions: catalog,
        month_use: Default::default(),
    }
}

/// The running pod of one replica, bound where its placement says (each
/// workload of this bench asks 1 CPU and 1 GiB a replica).
fn bound_pod(key: &WorkloadKey, r: &ReplicaPlacement) -> PodView {
    PodView {
        namespace: key.namespace.clone(),
        name: r.pod.clone(),
        owner: Some(key.clone()),
        node: Some(r.node.clone()),
        devices: r.devices.iter().map(|&d| d as u8).collect(),
        milli: None,
        cpu_milli: 1000,
        memory_mib: 1024,
        phase: "Running".into(),
        deleting: false,
    }
}

/// What the controller writes back: statuses (launches run at once, their
/// pods bound).
fn apply(snap: &mut Snapshot, actions: &[Action]) {
    let at: std::collections::HashMap<WorkloadKey, usize> = snap
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (w.key.clone(), i))
        .collect();
    for a in actions {
        let (key, status) = match a {
            Action::SetStatus { key, status } => (key, status.clone()),
            Action::Launch { key, status, .. } => {
                let mut s = status.clone();
                s.phase = Some("Running".into());
                let replicas = status.placement.iter().flat_map(|p| &p.replicas);
                snap.pods.extend(replicas.map(|r| bound_pod(key, r)));
                (key, s)
            }
            _ => continue,
        };
        if let Some(&i) = at.get(key) {
            snap.workloads[i].status = status;
        }
    }
}

/// This thread's time on a CPU and waiting for one, in ns
/// (`/proc/thread-self/schedstat`; `None` where the kernel keeps none).
fn sched_ns() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// One timed pass: wall ms, and ms on a CPU and waiting for one.
fn timed(scheduler: &mut Scheduler, snap: &Snapshot) -> (Plan, f64, Option<(f64, f64)>) {
    let s0 = sched_ns();
    let t0 = Instant::now();
    let plan = scheduler.plan(snap);
    let wall = t0.elapsed().as_secs_f64() * 1000.0;
    let sched = s0
        .zip(sched_ns())
        .map(|((c0, w0), (c1, w1))| ((c1 - c0) as f64 / 1e6, (w1 - w0) as f64 / 1e6));
    (plan, wall, sched)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied()
}

fn main() {
    let (nodes, running, pending) = (
        arg("--nodes", 5000),
        arg("--running", 15_000),
        arg("--pending", 20_000),
    );
    let passes = arg("--passes", 10);
    let arrivals = arg("--arrivals", 5).max(1);
    let base = snapshot(nodes, running, pending);
    // The running ones first; then the waiting ones arrive at once: the
    // pass that first tells each why it waits (a status for every one).
    // Done `--arrivals` times over, each with a fresh scheduler.
    let (mut arrival_ms, mut arrival_cpu_ms, mut arrival_wait_ms) = (vec![], vec![], vec![]);
    let mut arrival_actions = 0;
    let mut kept = None;
    for _ in 0..arrivals {
        let mut snap = base.clone();
        let mut scheduler = Scheduler::new(PlanConfig::default());
        let waiting_jobs = snap.workloads.split_off(running);
        let plan = scheduler.plan(&snap);
        apply(&mut snap, &plan.actions);
        snap.workloads.extend(waiting_jobs);
        let (plan, wall, sched) = timed(&mut scheduler, &snap);
        arrival_ms.push(wall);
        if let Some((cpu, wait)) = sched {
            arrival_cpu_ms.push(cpu);
            arrival_wait_ms.push(wait);
        }
        arrival_actions = plan.actions.len();
        apply(&mut snap, &plan.actions);
        kept = Some((snap, scheduler));
    }
    let (mut snap, mut scheduler) = kept.expect("at least one arrival");
    // Settle: the free nodes are taken, every waiting job told why.
    for _ in 0..2.min(passes) {
        let plan = scheduler.plan(&snap);
        apply(&mut snap, &plan.actions);
    }
    let (mut ms, mut cpu_ms) = (Vec::with_capacity(passes), Vec::with_capacity(passes));
    let mut actions = 0;
    for _ in 0..passes {
        let (plan, wall, sched) = timed(&mut scheduler, &snap);
        ms.push(wall);
        cpu_ms.extend(sched.map(|(cpu, _)| cpu));
        actions = plan.actions.len();
        std::hint::black_box(&plan);
    }
    let waiting = snap
        .workloads
        .iter()
        .filter(|w| w.status.phase.as_deref().unwrap_or("Pending") == "Pending")
        .count();
    let out = json!({
        "nodes": nodes,
        "running": snap.workloads.len() - waiting,
        "waiting": waiting,
        "arrival_pass_ms": median(arrival_ms.clone()),
        "arrival_pass_cpu_ms": median(arrival_cpu_ms),
        "arrival_pass_runqueue_ms": median(arrival_wait_ms),
        "arrival_passes_ms": arrival_ms,
        "arrival_pass_actions": arrival_actions,
        "actions_per_settled_pass": actions,
        "pass_ms": ms.clone(),
        "median_ms": median(ms.clone()),
        "median_cpu_ms": median(cpu_ms),
        "min_ms": ms.iter().copied().min_by(f64::total_cmp),
        "target_ms": 100,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
