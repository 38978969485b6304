//! The simulated cluster: the region catalog's nodes, a clock passed in
//! ([`World::advance_to`]), never read), arrivals and departures, and usage
//! metering, around the controller's scheduler ([`crate::schedule::plan`]).
//! Every event (a submission, a cancellation, departures) runs one planning
//! pass over the live jobs, and the world acts on its actions as the
//! controller does on a cluster: a launch starts the gang on the nodes and
//! devices the plan chose, a stop (preemption) ends it and requeues it. So
//! `zhisuan sim`, the demo and `zhisuan api --backend world` run priority,
//! fair share, hierarchical and monthly quota, preemption and region choice
//! exactly as the controller does.
//!
//! Usage is metered into [`UsageInterval`]s (one per replica and interval,
//! with a deterministic id) that [`World::take_usage`] hands to the ledger.

use crate::sim::jobtable::JobTable;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Serialize;

use crate::error::InputError;
use crate::jobs::{rfc3339, NodeView, QuotaNode, QuotaView, WorkloadKey, WorkloadStatus};
use crate::placement::Policy;
use crate::regions::catalog::{Catalog, Side};
use crate::regions::cost::{estimate, hour_of_day, Site, Usage};
use crate::regions::explain::Explanation;
use crate::regions::job::{JobSpec, SpecError};
use crate::regions::plan::RegionPolicy;
use crate::schedule::{Action, PlanConfig, Scheduler, Snapshot};

/// Job id, unique within a world, starting at 1.
pub type JobId = u64;

/// How a world is set up.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub region_policy: RegionPolicy,
    /// Node placement policy inside each region.
    pub placement_policy: Policy,
    /// Seed of the tie-break order among equal-power nodes.
    pub seed: u64,
    /// Unix seconds the world starts at.
    pub start_s: i64,
    /// Cut running jobs' usage at multiples of this period (seconds), so a
    /// long job is metered while it runs. `None`: one interval per run.
    pub metering_period_s: Option<i64>,
    /// Seconds a finished job stays visible before the world drops it
    /// (flat memory for a world that runs for months). `None`: kept forever
    /// (`zhisuan sim` reads every job at the end).
    pub keep_finished_s: Option<i64>,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            region_policy: RegionPolicy::Green,
            placement_policy: Policy::default(),
            seed: 1,
            start_s: 0,
            metering_period_s: None,
            keep_finished_s: None,
        }
    }
}

/// How long the long-running simulated clusters (the demo, `zhisuan api
/// --backend world`) keep a finished job visible: one simulated day. After
/// that it is dropped (the API answers 404 for it); its usage is in the ledger.
pub const KEEP_FINISHED_S: i64 = 24 * 3600;

/// Where a job is in its life (the job contract's one phase type).
pub use crate::jobs::Phase;

mod contract;
mod jobs;
use contract::{cluster_of, id_of, open_quota, unsupported, workload_of};
pub use jobs::{
    pending_by_reason, GangPlacement, JobState, JobView, ReplicaPlacement, PENDING_REASONS,
};

/// Metered usage of one replica over `[start_s, end_s)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageInterval {
    /// Deterministic: `<job>/<replica>/<start_s>`; replays never double-count.
    pub id: String,
    pub tenant: String,
    pub job_id: JobId,
    pub job_name: String,
    pub region: String,
    pub node: String,
    pub model: String,
    pub milli_gpu: u32,
    pub start_s: i64,
    pub end_s: i64,
    pub gpu_seconds: f64,
    pub it_kwh: f64,
    pub facility_kwh: f64,
    pub energy_cost_milli_fen: i64,
    pub pue: f64,
    pub green_share: f64,
    pub carbon_kg: f64,
}

/// A region's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RegionStats {
    pub name: String,
    pub display: String,
    pub hub: String,
    pub side: Side,
    pub gpus: u64,
    /// GPUs allocated (fractional: milli / 1000).
    pub gpus_allocated: f64,
    /// Allocated / installed, 0..1.
    pub utilisation: f64,
    pub pue: f64,
    /// Green share at the world's current hour.
    pub green_share: f64,
    pub running_jobs: u32,
    /// Totals over metered usage.
    pub gpu_seconds: f64,
    pub facility_kwh: f64,
    pub energy_cost_milli_fen: i64,
    pub carbon_kg: f64,
}

#[derive(Debug, Clone, Default)]
struct RegionTotals {
    gpus: u64,
    allocated_milli: u64,
    gpu_seconds: f64,
    facility_kwh: f64,
    energy_cost_milli_fen: i64,
    carbon_kg: f64,
    running: u32,
}

/// A node's model and device count.
struct NodeAt {
    model: String,
    gpus: u8,
}

/// The simulated multi-region cluster.
pub struct World {
    catalog: Catalog,
    config: WorldConfig,
    scheduler: Scheduler,
    /// The scheduler's input, kept between passes: the nodes, the region
    /// catalog, the quotas and the live (pending or running) jobs.
    snap: Snapshot,
    jobs: JobTable,
    departures: BinaryHeap<Reverse<(i64, JobId)>>,
    running: Vec<JobId>,
    usage: Vec<UsageInterval>,
    totals: Vec<RegionTotals>,
    /// Node name → what the world needs of it.
    node_at: HashMap<String, NodeAt>,
    /// Jobs waiting (pending) now.
    waiting: usize,
    /// When a job held for greener hours wants the next pass (the last
    /// plan's `wake_at`).
    wake_s: Option<i64>,
    /// Tests: every pass is also planned by a fresh scheduler, which must
    /// plan the same.
    #[cfg(test)]
    check_fresh: bool,
}

impl World {
    /// A world over a catalog, with no jobs, at `config.start_s`.
    pub fn new(catalog: Catalog, config: WorldConfig) -> Result<World, InputError> {
        if let Some(p) = config.metering_period_s {
            if p <= 0 {
                return Err(InputError::new(format!(
                    "metering period {p} s must be > 0"
                )));
            }
        }
        let (nodes, rc) = cluster_of(&catalog)?;
        let mut totals = vec![RegionTotals::default(); catalog.regions.len()];
        let mut node_at = HashMap::with_capacity(nodes.len());
        for (r, members) in rc.members.iter().enumerate() {
            for &n in members {
                totals[r].gpus += nodes[n].gpus as u64;
                let at = NodeAt {
                    model: nodes[n].model.clone(),
                    gpus: nodes[n].gpus,
                };
                node_at.insert(nodes[n].name.clone(), at);
            }
        }
        let scheduler = Scheduler::new(PlanConfig {
            policy: config.placement_policy,
            region_policy: config.region_policy,
            region_scoring: catalog.weights,
            seed: config.seed,
            keep_explanations: true,
            ..PlanConfig::default()
        });
        Ok(World {
            snap: Snapshot {
                now: config.start_s,
                nodes,
                regions: Some(rc),
                ..Snapshot::default()
            },
            catalog,
            config,
            scheduler,
            jobs: JobTable::default(),
            departures: BinaryHeap::new(),
            running: Vec::new(),
            usage: Vec::new(),
            totals,
            node_at,
            waiting: 0,
            wake_s: None,
            #[cfg(test)]
            check_fresh: false,
        })
    }

    /// Sets a tenant's quota (hierarchical, monthly limits and all, as a
    /// TenantQuota on a cluster) and tries the pending jobs again. A tenant
    /// without one may use any free capacity.
    pub fn set_quota(&mut self, spec: QuotaNode) {
        let view = QuotaView {
            name: spec.tenant.clone(),
            spec,
            status: Default::default(),
            errors: Vec::new(),
        };
        match self.snap.quotas.iter_mut().find(|q| q.name == view.name) {
            Some(q) => *q = view,
            None => self.snap.quotas.push(view),
        }
        self.schedule();
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn now_s(&self) -> i64 {
        self.snap.now
    }
    pub fn region_policy(&self) -> RegionPolicy {
        self.config.region_policy
    }

    /// Submits a job at the current time; a planning pass places it at once
    /// if it may and fits, queues it otherwise. Bad specs are rejected
    /// naming the field.
    pub fn submit(&mut self, spec: JobSpec) -> Result<JobId, SpecError> {
        unsupported(&spec)?;
        let resolved = spec.resolve(&self.catalog)?;
        let now = self.snap.now;
        let id = self.jobs.next_id();
        let workload_slot = self.snap.workloads.len();
        self.snap.workloads.push(workload_of(id, &spec, now));
        self.waiting += 1;
        if !self
            .snap
            .quotas
            .iter()
            .any(|q| q.spec.tenant == spec.tenant)
        {
            self.snap.quotas.push(open_quota(&spec.tenant));
        }
        self.jobs.push(JobState {
            id,
            spec,
            resolved,
            phase: Phase::Pending,
            submitted_s: now,
            started_s: None,
            finished_s: None,
            placement: None,
            explanation: Explanation::default(),
            reason: None,
            message: None,
            preemptions: 0,
            metered_until_s: now,
            ends_s: None,
            workload_slot,
        });
        self.schedule();
        Ok(id)
    }

    /// Cancels a pending or running job (running: usage is metered up to now
    /// and its resources are freed). Finished jobs are left as they are.
    /// Returns the job's phase afterwards, `None` if there is no such job.
    pub fn cancel(&mut self, id: JobId) -> Option<Phase> {
        let now = self.snap.now;
        match self.job(id)?.phase {
            Phase::Pending => {
                self.forget(id);
                self.waiting -= 1;
                let j = &mut self.jobs[id];
                j.phase = Phase::Cancelled;
                j.finished_s = Some(now);
                self.jobs.finished(id, now);
            }
            Phase::Running => {
                self.finish(id, now, Phase::Cancelled);
                self.schedule();
            }
            Phase::Succeeded | Phase::Failed | Phase::Cancelled => {}
        }
        Some(self.jobs[id].phase)
    }

    /// Moves the clock to `t_s`, processing departures (and metering cuts) in
    /// time order; a planning pass at each departure time gives freed
    /// capacity to the queue when it frees. A time in the past is ignored.
    pub fn advance_to(&mut self, t_s: i64) {
        if t_s <= self.snap.now {
            return;
        }
        // Retention is measured from the clock before this step, so a job
        // that finishes during a step stays visible after it, however long
        // the step (whoever advances the world reads what happened first).
        if let Some(keep) = self.config.keep_finished_s {
            self.jobs.drop_finished(self.snap.now.saturating_sub(keep));
        }
        loop {
            let dep = self
                .departures
                .peek()
                .map(|Reverse((t, _))| *t)
                .filter(|&t| t <= t_s);
            let cut = self
                .config
                .metering_period_s
                .map(|p| (self.snap.now.div_euclid(p) + 1) * p)
                .filter(|&c| c <= t_s && !self.running.is_empty());
            let wake = self.wake_s.filter(|&w| w <= t_s);
            if let Some(w) =
                wake.filter(|&w| dep.is_none_or(|d| w < d) && cut.is_none_or(|c| w < c))
            {
                // A job held for greener hours: plan again then.
                self.snap.now = self.snap.now.max(w);
                self.wake_s = None;
                self.schedule();
                continue;
            }
            match (dep, cut) {
                (Some(d), c) if c.is_none_or(|c| d <= c) => {
                    self.snap.now = self.snap.now.max(d);
                    while let Some(&Reverse((t, id))) = self.departures.peek() {
                        if t != d {
                            break;
                        }
                        self.departures.pop();
                        let j = &self.jobs[id];
                        if j.phase == Phase::Running && j.ends_s == Some(t) {
                            self.finish(id, t, Phase::Succeeded);
                        }
                    }
                    self.schedule();
                }
                (_, Some(c)) => {
                    self.snap.now = c;
                    for i in 0..self.running.len() {
                        let id = self.running[i];
                        self.meter(id, c);
                    }
                }
                _ => break,
            }
        }
        self.snap.now = t_s;
    }

    /// Tries the pending jobs again now.
    pub fn reconsider_pending(&mut self) {
        self.schedule();
    }

    /// The next time something happens on its own (a departure, or a job
    /// held for greener hours wanting a pass), if any.
    pub fn next_event_s(&self) -> Option<i64> {
        let dep = self.departures.peek().map(|Reverse((t, _))| *t);
        dep.into_iter().chain(self.wake_s).min()
    }

    /// A job, while kept (finished jobs are dropped after the world's
    /// `keep_finished_s`).
    pub fn job(&self, id: JobId) -> Option<&JobState> {
        self.jobs.get(id)
    }

    /// The jobs kept, in submission order.
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &JobState> + '_ {
        self.jobs.iter()
    }

    /// The jobs kept with an id ≥ `from`, in submission order.
    pub fn jobs_from(&self, from: JobId) -> impl Iterator<Item = &JobState> + '_ {
        self.jobs.iter_from(from)
    }

    /// Jobs ever submitted (the last id given).
    pub fn submitted(&self) -> u64 {
        self.jobs.next_id() - 1
    }

    /// The oldest id still kept; every smaller one was dropped.
    pub fn first_kept_id(&self) -> JobId {
        self.jobs.first_id()
    }

    /// Jobs kept now (live and recently finished).
    pub fn jobs_kept(&self) -> usize {
        self.jobs.kept()
    }

    /// A job with names, placement and explanation, for the API.
    pub fn job_view(&self, id: JobId) -> Option<JobView> {
        let j = self.job(id)?;
        Some(JobView {
            id,
            tenant: j.spec.tenant.clone(),
            name: j.spec.name.clone(),
            kind: j.spec.kind.name(),
            phase: j.phase,
            submitted_s: j.submitted_s,
            started_s: j.started_s,
            finished_s: j.finished_s,
            region: j
                .placement
                .as_ref()
                .map(|p| self.catalog.regions[p.region].name.clone()),
            replicas: j
                .placement
                .as_ref()
                .map(|p| p.replicas.clone())
                .unwrap_or_default(),
            pending_reason: j.pending_reason(),
            explanation: j.explanation.render(&self.catalog),
        })
    }

    /// Hands over the usage metered since the last call (oldest first).
    pub fn take_usage(&mut self) -> Vec<UsageInterval> {
        std::mem::take(&mut self.usage)
    }

    /// The cluster's nodes (their `region` is the catalog region's name).
    pub fn nodes(&self) -> &[NodeView] {
        &self.snap.nodes
    }

    /// Milli-GPU in use on each device of each node that runs something.
    pub fn device_use(&self) -> HashMap<&str, Vec<u32>> {
        let mut out: HashMap<&str, Vec<u32>> = HashMap::new();
        for &id in &self.running {
            let Some(p) = &self.jobs[id].placement else {
                continue;
            };
            for r in &p.replicas {
                let Some(at) = self.node_at.get(&r.node) else {
                    continue;
                };
                let used = out
                    .entry(r.node.as_str())
                    .or_insert_with(|| vec![0; at.gpus as usize]);
                for &d in &r.devices {
                    if let Some(u) = used.get_mut(d) {
                        *u += u32::from(r.milli_per_device);
                    }
                }
            }
        }
        out
    }

    /// Milli-GPU allocated in a region now.
    pub fn allocated_milli(&self, region: usize) -> u64 {
        self.totals[region].allocated_milli
    }

    /// Per-region figures now.
    pub fn region_stats(&self) -> Vec<RegionStats> {
        let hour = hour_of_day(self.snap.now);
        self.catalog
            .regions
            .iter()
            .zip(&self.totals)
            .map(|(region, t)| {
                let alloc = t.allocated_milli as f64 / 1000.0;
                RegionStats {
                    name: region.name.clone(),
                    display: region.display.clone(),
                    hub: region.hub.clone(),
                    side: region.side,
                    gpus: t.gpus,
                    gpus_allocated: alloc,
                    utilisation: if t.gpus > 0 {
                        alloc / t.gpus as f64
                    } else {
                        0.0
                    },
                    pue: region.pue,
                    green_share: region.green_share_at_hour(hour),
                    running_jobs: t.running,
                    gpu_seconds: t.gpu_seconds,
                    facility_kwh: t.facility_kwh,
                    energy_cost_milli_fen: t.energy_cost_milli_fen,
                    carbon_kg: t.carbon_kg,
                }
            })
            .collect()
    }

    // -- the pass and its actions --------------------------------------------

    /// One planning pass over the live jobs, acted on at once. Skipped when
    /// nothing waits (a pass could only repeat the running placements).
    fn schedule(&mut self) {
        if self.waiting == 0 {
            self.wake_s = None;
            return;
        }
        let plan = self.scheduler.plan(&self.snap);
        #[cfg(test)]
        if self.check_fresh {
            let fresh = crate::schedule::plan(&self.snap, self.scheduler.config());
            assert_eq!(
                plan, fresh,
                "at {}: the kept scheduler differs from a fresh one",
                self.snap.now
            );
        }
        self.wake_s = plan.wake_at;
        for (key, expl) in plan.explanations {
            if let Some(j) = id_of(&key).and_then(|id| self.jobs.get_mut(id)) {
                j.explanation = expl;
            }
        }
        for action in plan.actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::SetStatus { key, status } => {
                if let Some(id) = id_of(&key) {
                    self.note_pending(id, &status);
                    self.set_status(&key, status);
                }
            }
            Action::Launch { key, status, .. } => {
                if let Some(id) = id_of(&key) {
                    self.start(id, &key, status);
                }
            }
            Action::Stop { key, status, .. } => {
                if let Some(id) = id_of(&key) {
                    self.requeue(id, &key, status);
                }
            }
            Action::QuotaStatus { name, status } => {
                if let Some(q) = self.snap.quotas.iter_mut().find(|q| q.name == name) {
                    q.status = status;
                }
            }
            Action::RegionStatus { .. } => {}
        }
    }

    fn set_status(&mut self, key: &WorkloadKey, status: WorkloadStatus) {
        let slot = id_of(key).map_or(usize::MAX, |id| self.jobs[id].workload_slot);
        if let Some(w) = self.snap.workloads.get_mut(slot) {
            w.status = status;
        }
    }

    /// Starts a gang where the plan put it (the controller's launch: pods
    /// bound, Running).
    fn start(&mut self, id: JobId, key: &WorkloadKey, mut status: WorkloadStatus) {
        let now = self.snap.now;
        let Some(p) = &status.placement else { return };
        let Some(region) = p
            .region
            .as_deref()
            .and_then(|r| self.catalog.region_index(r))
        else {
            return;
        };
        let replicas: Vec<ReplicaPlacement> = p
            .replicas
            .iter()
            .map(|r| ReplicaPlacement {
                node: r.node.clone(),
                model: self
                    .node_at
                    .get(&r.node)
                    .map(|at| at.model.clone())
                    .unwrap_or_default(),
                devices: r.devices.iter().map(|&d| d as usize).collect(),
                milli_per_device: r.gpu_milli.map_or(1000, |m| m as u16),
            })
            .collect();
        status.phase = Some("Running".into());
        status.started_at = Some(rfc3339(now));
        self.set_status(key, status);
        let milli: u64 = replicas.iter().map(|r| u64::from(r.gpu_milli())).sum();
        let t = &mut self.totals[region];
        t.running += 1;
        t.allocated_milli += milli;
        let job = &mut self.jobs[id];
        if job.phase == Phase::Pending {
            self.waiting -= 1;
        }
        job.phase = Phase::Running;
        job.reason = None;
        job.message = None;
        job.started_s = Some(now);
        job.metered_until_s = now;
        job.placement = Some(GangPlacement { region, replicas });
        let runtime = match (job.spec.duration_s, job.spec.max_runtime_s) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (d, m) => d.or(m),
        };
        job.ends_s = runtime.map(|r| now + r);
        if let Some(end) = job.ends_s {
            self.departures.push(Reverse((end, id)));
        }
        self.running.push(id);
    }

    /// Stops a running gang the plan evicted (preempted, or rolled back) and
    /// puts it back in the queue with the plan's status.
    fn requeue(&mut self, id: JobId, key: &WorkloadKey, status: WorkloadStatus) {
        let now = self.snap.now;
        if self.jobs[id].phase == Phase::Running {
            self.release(id, now);
            self.waiting += 1;
            let job = &mut self.jobs[id];
            job.phase = Phase::Pending;
            job.placement = None;
            job.started_s = None;
            job.preemptions += 1;
        }
        self.note_pending(id, &status);
        self.set_status(key, status);
    }

    /// Keeps why a job waits: the reason, and the message unless region
    /// choice explains it (then the explanation does).
    fn note_pending(&mut self, id: JobId, status: &WorkloadStatus) {
        let job = &mut self.jobs[id];
        job.reason = status.reason.as_deref().map(str::to_string);
        job.message = match status.reason.as_deref() {
            Some("Unschedulable") | None => None,
            Some(_) => status
                .conditions
                .iter()
                .find(|c| c.type_ == "Scheduled")
                .map(|c| c.message.to_string()),
        };
    }

    /// Meters a running job up to `at_s` and frees what it holds.
    fn release(&mut self, id: JobId, at_s: i64) {
        self.meter(id, at_s);
        let job = &mut self.jobs[id];
        job.ends_s = None;
        if let Some(p) = &job.placement {
            let milli: u64 = p.replicas.iter().map(|r| u64::from(r.gpu_milli())).sum();
            let t = &mut self.totals[p.region];
            t.running -= 1;
            t.allocated_milli -= milli;
        }
        if let Some(i) = self.running.iter().position(|&r| r == id) {
            self.running.swap_remove(i);
        }
    }

    /// Ends a running job at `at_s`: meters it, frees its resources, drops
    /// it from the scheduler's view.
    fn finish(&mut self, id: JobId, at_s: i64, phase: Phase) {
        self.release(id, at_s);
        self.forget(id);
        let job = &mut self.jobs[id];
        job.phase = phase;
        job.finished_s = Some(at_s);
        self.jobs.finished(id, at_s);
    }

    /// Removes a job from the scheduler's view.
    fn forget(&mut self, id: JobId) {
        let i = std::mem::replace(&mut self.jobs[id].workload_slot, usize::MAX);
        if i < self.snap.workloads.len() {
            self.snap.workloads.swap_remove(i);
            if let Some(moved) = self.snap.workloads.get(i).and_then(|w| id_of(&w.key)) {
                self.jobs[moved].workload_slot = i;
            }
        }
    }

    /// Meters a running job's usage up to `until_s`.
    fn meter(&mut self, id: JobId, until_s: i64) {
        let job = &self.jobs[id];
        let Some(p) = &job.placement else { return };
        let start = job.metered_until_s;
        if until_s <= start || job.phase != Phase::Running {
            return;
        }
        let region = &self.catalog.regions[p.region];
        let site = Site::of(&self.catalog, p.region);
        for (k, rp) in p.replicas.iter().enumerate() {
            let power_w = self.catalog.power_w(&rp.model).unwrap_or(0.0);
            let milli = rp.gpu_milli();
            let e = estimate(
                Usage {
                    milli_gpus: milli as u64,
                    power_w,
                    start_s: start,
                    duration_s: until_s - start,
                },
                site,
            );
            let t = &mut self.totals[p.region];
            t.gpu_seconds += e.gpu_seconds;
            t.facility_kwh += e.facility_kwh;
            t.energy_cost_milli_fen += e.energy_cost_milli_fen;
            t.carbon_kg += e.carbon_kg;
            self.usage.push(UsageInterval {
                id: format!("{id}/{k}/{start}"),
                tenant: job.spec.tenant.clone(),
                job_id: id,
                job_name: job.spec.name.clone(),
                region: region.name.clone(),
                node: rp.node.clone(),
                model: rp.model.clone(),
                milli_gpu: milli,
                start_s: start,
                end_s: until_s,
                gpu_seconds: e.gpu_seconds,
                it_kwh: e.it_kwh,
                facility_kwh: e.facility_kwh,
                energy_cost_milli_fen: e.energy_cost_milli_fen,
                pue: region.pue,
                green_share: e.green_share,
                carbon_kg: e.carbon_kg,
            });
        }
        self.jobs[id].metered_until_s = until_s;
    }
}

#[cfg(test)]
mod tests;
