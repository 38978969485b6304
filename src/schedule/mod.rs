//! The scheduler (domain core): one pure function from a [`Snapshot`] to the
//! actions that bring the cluster closer to what it should run. The
//! controller feeds it Kubernetes objects turned into plain data; the
//! simulated cluster (`zhisuan sim`, the demo, `zhisuan api --backend world`)
//! feeds it its own state. No kube, no I/O, no clock (time is `snapshot.now`).
//!
//! One pass, in numbered steps (Kueue's `schedule()` is the model):
//! 1. [`capacity`]: a placement [`crate::placement::Cluster`] of every node,
//!    unhealthy devices marked, every admitted/running workload's recorded
//!    placement and every other live pod's devices allocated;
//! 2. [`lifecycle`] of admitted/running workloads (resume a half-launched
//!    gang, roll back one whose nodes went away); what follows from a
//!    workload's own pods alone is [`pod_lifecycle`];
//! 3. [`admit`]: pending workloads in fair-share order (priority, then the
//!    tenant with the smallest share of its guarantee, then age);
//!    hierarchical and monthly [`quota`] decide which GPU models a job may
//!    still use; region choice ranks the regions; placement puts the whole
//!    gang inside ONE region or nothing; a gang shape that fits nowhere is
//!    tried once a pass ([`infeasible`]); nodes reserved to a tenant
//!    subtree, and tenants confined to such nodes, are hard filters
//!    ([`zones`]); models that waiting (or recent) jobs are limited to are
//!    offered to flexible jobs last, and under green so are the regions
//!    that jobs limited to a few regions wait for ([`spare`]);
//! 4. [`preempt`]: a job that fits nowhere may evict workloads of strictly
//!    lower priority (at most `max_victims`, one preemptor per pass; strict
//!    priority order means preemption can never loop);
//! 5. [`report`]: quota statuses and the capacity figures.

mod admit;
mod age;
mod capacity;
mod held;
mod infeasible;
mod lifecycle;
mod preempt;
pub mod quota;
pub mod regions;
mod report;
mod shapes;
mod spare;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod zone_tests;
mod zones;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::jobs::{
    ComputeRegionStatus, MonthToDate, NodeView, PodView, QuotaView, TenantQuotaStatus, WorkloadKey,
    WorkloadStatus, WorkloadView,
};
use crate::placement::Policy;
use crate::regions::catalog::ScoreWeights;
use crate::regions::plan::RegionPolicy;

pub use lifecycle::pod_lifecycle;
pub use quota::quota_cycles;
pub use regions::{job_spec, RegionCatalog};

use capacity::Capacity;
use quota::Usage;
use shapes::ShapeWindow;

/// Everything one planning pass needs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Unix seconds (the plan layer has no clock).
    pub now: i64,
    pub nodes: Vec<NodeView>,
    pub pods: Vec<PodView>,
    pub workloads: Vec<WorkloadView>,
    pub quotas: Vec<QuotaView>,
    /// The regions as the region planner sees them, with each region's
    /// member nodes; `None`: a node's region is its `zhisuan.io/region` label.
    pub regions: Option<RegionCatalog>,
    /// Month-to-date use per tenant (absent = none recorded).
    pub month_use: BTreeMap<String, MonthToDate>,
}

impl Snapshot {
    /// Accelerator models the cluster knows (a job naming another is invalid).
    pub fn known_models(&self) -> BTreeSet<String> {
        known_models(&self.nodes)
    }
}

/// Accelerator models of a set of nodes.
pub fn known_models(nodes: &[NodeView]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.gpus > 0)
        .map(|n| n.model.clone())
        .collect()
}

/// Tunables of the planner.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub policy: Policy,
    /// How regions are ranked (when there is a region catalog).
    pub region_policy: RegionPolicy,
    /// Score weights and packing band of region choice (`--pack-band`).
    pub region_scoring: ScoreWeights,
    pub seed: u64,
    /// Most workloads one preemption may evict.
    pub max_victims: usize,
    /// A running gang missing pods this long after start is rolled back.
    pub gang_grace_s: i64,
    /// Hand each placed or refused workload's region-choice explanation
    /// back in [`Plan::explanations`] (the simulated cluster shows them).
    pub keep_explanations: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            policy: Policy::default(),
            region_policy: RegionPolicy::default(),
            region_scoring: ScoreWeights::default(),
            seed: 1,
            max_victims: 8,
            gang_grace_s: 60,
            keep_explanations: false,
        }
    }
}

/// Something the actor (the controller, the simulated cluster) must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write a status (only emitted when it differs from the current one).
    SetStatus {
        key: WorkloadKey,
        status: WorkloadStatus,
    },
    /// Create and bind the gang's missing pods as recorded in `status`
    /// (written first when `write_status`: the commit point a new leader
    /// resumes from), then mark it Running.
    Launch {
        key: WorkloadKey,
        tenant: String,
        status: WorkloadStatus,
        write_status: bool,
    },
    /// Delete a workload's pods and write `status` (preempted, failed, rolled back).
    Stop {
        key: WorkloadKey,
        pods: Vec<String>,
        /// The region of the placement being stopped: its pods are in that
        /// region's cluster (`None`: a placement that recorded no region).
        region: Option<String>,
        status: WorkloadStatus,
    },
    /// Write a quota's status.
    QuotaStatus {
        name: String,
        status: TenantQuotaStatus,
    },
    /// Write a region's status (the operator adds these from
    /// [`Plan::regions`]; the plan itself knows no region objects).
    RegionStatus {
        name: String,
        status: ComputeRegionStatus,
    },
}

/// A region's capacity after a pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionFigures {
    pub name: String,
    pub nodes: u64,
    pub gpus: u64,
    /// Milli-GPU allocated.
    pub milli: u64,
}

/// Output of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Pending workloads by reason (for `zhisuan_pending_jobs{reason}`).
    pub pending: BTreeMap<String, u64>,
    /// Pods placed this pass.
    pub decisions: u64,
    /// Workloads evicted this pass.
    pub preemptions: u64,
    /// Admitted this pass, with seconds waited since creation.
    pub admitted: Vec<(WorkloadKey, i64)>,
    /// (region, node, milli-GPU allocated).
    pub nodes: Vec<(String, String, u64)>,
    /// Per region (every node's region, sorted by name).
    pub regions: Vec<RegionFigures>,
    /// Region choice of each workload it ran for this pass (with
    /// [`PlanConfig::keep_explanations`] and a region catalog).
    pub explanations: Vec<(WorkloadKey, crate::regions::explain::Explanation)>,
    /// The earliest time a workload held for greener hours wants another
    /// pass (`None`: none is held). The simulated cluster wakes itself
    /// then; the controller's resync tick (5 s) picks it up.
    pub wake_at: Option<i64>,
}

/// The state one pass shares between its steps.
struct Pass<'a> {
    snapshot: &'a Snapshot,
    config: &'a PlanConfig,
    now: i64,
    cap: Capacity,
    /// Schedulable nodes (engine indices) of each region.
    region_nodes: BTreeMap<String, Vec<u32>>,
    /// The vendor of every schedulable node of a region, for the regions
    /// whose nodes are all of one vendor.
    one_vendor: BTreeMap<String, String>,
    /// Node name → accelerator model.
    node_model: HashMap<&'a str, &'a str, crate::placement::FxBuild>,
    /// Each workload's pods, grouped when first asked for (a rollback or
    /// an eviction; most passes need none).
    pods: std::cell::OnceCell<crate::jobs::PodsByOwner<'a>>,
    /// Milli-GPU held per tenant and model.
    usage: Usage,
    /// Active (admitted or running) workloads per tenant, as the snapshot
    /// has them (counted with the usage: each tenant name read once).
    admitted: HashMap<&'a str, i64, crate::placement::FxBuild>,
    /// Nodes reserved to tenant subtrees, and who may use them.
    zones: zones::Zones,
    /// Time-shifted jobs' verdicts, kept between passes.
    held: held::HeldVerdicts,
    /// The region catalog's digest (worked out when first needed).
    catalog_digest: Option<u64>,
    /// Models waiting jobs are limited to ([`spare`]).
    spared: crate::placement::ModelSet,
    /// Catalog regions that jobs limited to a few regions waited for in
    /// the last pass or this one ([`spare`]), and those of this pass.
    spared_regions: u64,
    waited_regions: u64,
    /// Catalog regions that unfinished residency-bound jobs may use, under
    /// green ([`spare`]).
    bound_regions: u64,
    out: Plan,
}

impl<'a> Pass<'a> {
    /// The snapshot's pods that `w` owns.
    fn pods_of(&self, w: &WorkloadView) -> Option<&Vec<&'a crate::jobs::PodView>> {
        let snapshot = self.snapshot;
        self.pods
            .get_or_init(|| crate::jobs::pods_by_owner(&snapshot.pods))
            .get(&w.key)
    }

    /// A node's accelerator model (borrowed from the snapshot, so it stays
    /// usable while the pass is changed).
    fn model_of_node(&self, name: &str) -> &'a str {
        self.node_model.get(name).copied().unwrap_or_default()
    }
}

/// Whether a workload holds capacity: admitted or running with a placement.
fn is_active(w: &WorkloadView) -> bool {
    matches!(w.phase(), "Admitted" | "Running") && w.status.placement.is_some()
}

/// The scheduler: [`Scheduler::plan`] computes each pass from its snapshot
/// alone, and keeps between passes only what makes the next one cheaper
/// and steadier — the placement engine with its score caches (brought in
/// step with each snapshot, rebuilt when the nodes change), the typical
/// shapes learned from the workloads as they arrive (with the models that
/// jobs limited to a few of them asked for: [`spare`]), and time-shifted
/// jobs' verdicts for the rest of their hour ([`held`]).
pub struct Scheduler {
    config: PlanConfig,
    cap: Option<Capacity>,
    shapes: ShapeWindow,
    held: held::HeldVerdicts,
    /// Regions limited jobs waited for in the last pass.
    waited_regions: u64,
}

impl Scheduler {
    pub fn new(config: PlanConfig) -> Scheduler {
        Scheduler {
            config,
            cap: None,
            shapes: ShapeWindow::default(),
            held: held::HeldVerdicts::default(),
            waited_regions: 0,
        }
    }

    pub fn config(&self) -> &PlanConfig {
        &self.config
    }

    /// How many passes held a time-shifted job from its kept verdict.
    pub fn held_verdicts_reused(&self) -> u64 {
        self.held.reused
    }

    /// Computes everything the actor should do for this snapshot.
    pub fn plan(&mut self, snapshot: &Snapshot) -> Plan {
        let (mut cap, fresh) = match self.cap.take() {
            Some(cap) if cap.fits(snapshot) => (cap, false),
            _ => (Capacity::build(snapshot, &self.config), true),
        };
        let relearn = self.shapes.observe(snapshot);
        if self.config.policy.uses_shapes() && (relearn || fresh) {
            self.shapes.teach(&mut cap.engine);
        }
        let mut pass = Pass::new(snapshot, &self.config, cap); // 1. capacity
        pass.held = std::mem::take(&mut self.held);
        let queue = pass.lifecycle(); // 2. lifecycle
        let waiting = queue.iter().filter_map(|w| spare::Asked::of(w));
        pass.spared = spare::spared_models(
            waiting.chain(self.shapes.limited()),
            pass.cap.engine.cluster().models(),
            &pass.cap.model_vendors,
        );
        pass.spared_regions = self.waited_regions;
        if self.config.region_policy == RegionPolicy::Green {
            pass.bound_regions = spare::bound_regions(snapshot);
        }
        pass.admit(queue); // 3. admission (4. preemption inside)
        self.waited_regions = pass.waited_regions;
        pass.held.end_pass();
        self.held = std::mem::take(&mut pass.held);
        let (plan, cap) = pass.report(); // 5. statuses and figures
        self.cap = Some(cap);
        plan
    }
}

/// One pass with nothing carried over (a fresh [`Scheduler`]).
pub fn plan(snapshot: &Snapshot, config: &PlanConfig) -> Plan {
    Scheduler::new(config.clone()).plan(snapshot)
}
