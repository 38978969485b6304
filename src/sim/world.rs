//! A steppable, in-process multi-region cluster: the region catalog, one
//! placement engine per region, a queue of pending jobs and the running jobs
//! with their departure times. The clock is passed in ([`World::advance_to`]),
//! never read. The API's in-process backend, the demo and `zhisuan sim` are
//! built on it.
//!
//! Usage is metered into [`UsageInterval`]s (one per replica and interval,
//! with a deterministic id) that [`World::take_usage`] hands to the ledger.

use crate::error::InputError;
use crate::placement::{Decision, Policy};
use crate::regions::catalog::{Catalog, Side};
use crate::regions::cost::{estimate, hour_of_day, Site, Usage};
use crate::regions::engines::{RegionEngines, RegionPlacement, ReplicaShape};
use crate::regions::plan::{
    Explanation, ExplanationView, Filter, InventoryIndex, JobSpec, NoQuota, QuotaHook,
    RegionChooser, RegionPolicy, ResolvedJob, SpecError, Verdict,
};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Job id, unique within a world, starting at 1.
pub type JobId = u64;

/// How a world is set up.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub region_policy: RegionPolicy,
    /// Node placement policy inside each region.
    pub placement_policy: Policy,
    /// Seed of the engines' tie-break orders.
    pub seed: u64,
    /// Unix seconds the world starts at.
    pub start_s: i64,
    /// Cut running jobs' usage at multiples of this period (seconds), so a
    /// long job is metered while it runs. `None`: one interval per run.
    pub metering_period_s: Option<i64>,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            region_policy: RegionPolicy::Green,
            placement_policy: Policy::default(),
            seed: 1,
            start_s: 0,
            metering_period_s: None,
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Cancelled,
}

/// One replica's place: node name and device indices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaPlacement {
    pub node: String,
    pub model: String,
    pub devices: Vec<usize>,
    /// Milli-share on each device (1000 = whole GPUs).
    pub milli_per_device: u16,
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
    pub placement: Option<RegionPlacement>,
    /// The latest decision's explanation ("why here" / "why pending").
    pub explanation: Explanation,
    /// Start of the part of the run not yet metered.
    metered_until_s: i64,
    /// Departure time while running, if the job has a known runtime.
    ends_s: Option<i64>,
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
            if cands
                .iter()
                .any(|c| matches!(c.verdict, Verdict::NotTried { .. }))
            {
                "waiting-for-best-region"
            } else {
                "capacity"
            }
        } else if removed(Filter::LatencySlo) {
            "latency-slo"
        } else if removed(Filter::Quota) {
            "quota"
        } else if removed(Filter::Residency) {
            "residency"
        } else if removed(Filter::Budget) {
            "budget"
        } else {
            "inventory"
        })
    }
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
    gpu_seconds: f64,
    facility_kwh: f64,
    energy_cost_milli_fen: i64,
    carbon_kg: f64,
    running: u32,
}

fn replica_shape(spec: &JobSpec) -> ReplicaShape {
    ReplicaShape {
        cpu_milli: spec.cpu_milli_per_replica,
        memory_mib: spec.memory_mib_per_replica,
    }
}

/// The multi-region cluster.
pub struct World {
    catalog: Catalog,
    inventory: InventoryIndex,
    engines: RegionEngines,
    chooser: RegionChooser,
    quota: Box<dyn QuotaHook + Send + Sync>,
    config: WorldConfig,
    now_s: i64,
    jobs: Vec<JobState>,
    queue: VecDeque<JobId>,
    departures: BinaryHeap<Reverse<(i64, JobId)>>,
    running: Vec<JobId>,
    usage: Vec<UsageInterval>,
    totals: Vec<RegionTotals>,
    order: Vec<u16>,
    /// Whether capacity freed since the queue was last tried.
    capacity_freed: bool,
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
        let engines = RegionEngines::from_catalog(&catalog, config.placement_policy, config.seed)?;
        Ok(World {
            inventory: InventoryIndex::new(&catalog),
            totals: vec![RegionTotals::default(); catalog.regions.len()],
            engines,
            chooser: RegionChooser::new(config.region_policy),
            quota: Box::new(NoQuota),
            now_s: config.start_s,
            config,
            catalog,
            jobs: Vec::new(),
            queue: VecDeque::new(),
            departures: BinaryHeap::new(),
            running: Vec::new(),
            usage: Vec::new(),
            order: Vec::new(),
            capacity_freed: false,
        })
    }

    /// Replaces the quota hook consulted at every region choice.
    pub fn set_quota(&mut self, quota: Box<dyn QuotaHook + Send + Sync>) {
        self.quota = quota;
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn now_s(&self) -> i64 {
        self.now_s
    }
    pub fn region_policy(&self) -> RegionPolicy {
        self.config.region_policy
    }
    /// The engines (one per region), for per-node figures.
    pub fn engines(&self) -> &RegionEngines {
        &self.engines
    }

    /// Submits a job at the current time; it is placed at once if it fits,
    /// queued otherwise. Bad specs are rejected naming the field.
    pub fn submit(&mut self, spec: JobSpec) -> Result<JobId, SpecError> {
        let resolved = spec.resolve(&self.catalog)?;
        let id = self.jobs.len() as JobId + 1;
        self.jobs.push(JobState {
            id,
            spec,
            resolved,
            phase: Phase::Pending,
            submitted_s: self.now_s,
            started_s: None,
            finished_s: None,
            placement: None,
            explanation: Explanation::default(),
            metered_until_s: self.now_s,
            ends_s: None,
        });
        let job = &self.jobs[id as usize - 1];
        self.engines
            .observe_arrival(&self.catalog, &job.resolved, replica_shape(&job.spec));
        if !self.try_start(id) {
            self.queue.push_back(id);
        }
        Ok(id)
    }

    /// Cancels a pending or running job (running: usage is metered up to now
    /// and its resources are freed). Finished jobs are left as they are.
    /// Returns the job's phase afterwards, `None` if there is no such job.
    pub fn cancel(&mut self, id: JobId) -> Option<Phase> {
        let phase = self.job(id)?.phase;
        match phase {
            Phase::Pending => {
                self.queue.retain(|&q| q != id);
                self.jobs[id as usize - 1].phase = Phase::Cancelled;
                self.jobs[id as usize - 1].finished_s = Some(self.now_s);
            }
            Phase::Running => {
                self.finish(id, self.now_s, Phase::Cancelled);
                self.retry_queue();
            }
            Phase::Succeeded | Phase::Cancelled => {}
        }
        Some(self.jobs[id as usize - 1].phase)
    }

    /// Moves the clock to `t_s`, processing departures (and metering cuts) in
    /// time order; freed capacity goes to the queue at the time it frees.
    /// A time in the past is ignored.
    pub fn advance_to(&mut self, t_s: i64) {
        if t_s <= self.now_s {
            return;
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
                .map(|p| (self.now_s.div_euclid(p) + 1) * p)
                .filter(|&c| c <= t_s && !self.running.is_empty());
            match (dep, cut) {
                (Some(d), c) if c.is_none_or(|c| d <= c) => {
                    self.now_s = self.now_s.max(d);
                    while let Some(&Reverse((t, id))) = self.departures.peek() {
                        if t != d {
                            break;
                        }
                        self.departures.pop();
                        if self.jobs[id as usize - 1].phase == Phase::Running
                            && self.jobs[id as usize - 1].ends_s == Some(t)
                        {
                            self.finish(id, t, Phase::Succeeded);
                        }
                    }
                    self.retry_queue();
                }
                (_, Some(c)) => {
                    self.now_s = c;
                    for i in 0..self.running.len() {
                        let id = self.running[i];
                        self.meter(id, c);
                    }
                }
                _ => break,
            }
        }
        self.now_s = t_s;
    }

    /// Tries the pending jobs again now (e.g. after a quota changed).
    pub fn reconsider_pending(&mut self) {
        self.capacity_freed = true;
        self.retry_queue();
    }

    /// The next time something happens on its own (a departure), if any.
    pub fn next_event_s(&self) -> Option<i64> {
        self.departures.peek().map(|Reverse((t, _))| *t)
    }

    pub fn job(&self, id: JobId) -> Option<&JobState> {
        id.checked_sub(1).and_then(|i| self.jobs.get(i as usize))
    }

    /// All jobs, in submission order.
    pub fn jobs(&self) -> &[JobState] {
        &self.jobs
    }

    /// Ids of the pending jobs, in queue order.
    pub fn pending(&self) -> impl Iterator<Item = JobId> + '_ {
        self.queue.iter().copied()
    }

    /// A job with names, placement and explanation, for the API.
    pub fn job_view(&self, id: JobId) -> Option<JobView> {
        let j = self.job(id)?;
        let replicas = j
            .placement
            .as_ref()
            .map(|p| {
                p.decisions
                    .iter()
                    .map(|d| self.replica(p.region as usize, d))
                    .collect()
            })
            .unwrap_or_default();
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
                .map(|p| self.catalog.regions[p.region as usize].name.clone()),
            replicas,
            pending_reason: j.pending_reason(),
            explanation: j.explanation.render(&self.catalog),
        })
    }

    /// Hands over the usage metered since the last call (oldest first).
    pub fn take_usage(&mut self) -> Vec<UsageInterval> {
        std::mem::take(&mut self.usage)
    }

    /// Per-region figures now.
    pub fn region_stats(&self) -> Vec<RegionStats> {
        let hour = hour_of_day(self.now_s);
        self.catalog
            .regions
            .iter()
            .enumerate()
            .map(|(r, region)| {
                let c = self.engines.engine(r).cluster();
                let gpus = c.total_gpus() as u64;
                let alloc = c.gpu_milli_allocated() as f64 / 1000.0;
                let t = &self.totals[r];
                RegionStats {
                    name: region.name.clone(),
                    display: region.display.clone(),
                    hub: region.hub.clone(),
                    side: region.side,
                    gpus,
                    gpus_allocated: alloc,
                    utilisation: if gpus > 0 { alloc / gpus as f64 } else { 0.0 },
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

    // -- internals ----------------------------------------------------------

    fn replica(&self, region: usize, d: &Decision) -> ReplicaPlacement {
        let c = self.engines.engine(region).cluster();
        ReplicaPlacement {
            node: c.name(d.node).to_string(),
            model: c.models().name(c.model(d.node)).to_string(),
            devices: d.devices.iter().collect(),
            milli_per_device: d.milli_per_device,
        }
    }

    /// Tries to place and start a pending job now. Returns whether it started.
    fn try_start(&mut self, id: JobId) -> bool {
        let now = self.now_s;
        let job = &mut self.jobs[id as usize - 1];
        let ranked = self.chooser.rank(
            &self.catalog,
            &self.inventory,
            &job.spec.tenant,
            &job.resolved,
            now,
            self.quota.as_ref(),
            &mut job.explanation,
            &mut self.order,
        );
        if ranked == 0 {
            return false;
        }
        let shape = replica_shape(&job.spec);
        let Some(placement) = self.engines.place(
            &self.catalog,
            &job.resolved,
            shape,
            &mut self.order,
            &mut job.explanation,
        ) else {
            return false;
        };
        job.phase = Phase::Running;
        job.started_s = Some(now);
        job.metered_until_s = now;
        let runtime = match (job.spec.duration_s, job.spec.max_runtime_s) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (d, m) => d.or(m),
        };
        job.ends_s = runtime.map(|r| now + r);
        if let Some(end) = job.ends_s {
            self.departures.push(Reverse((end, id)));
        }
        self.totals[placement.region as usize].running += 1;
        job.placement = Some(placement);
        self.running.push(id);
        true
    }

    /// Tries the queue in order (first come, first served, with backfill)
    /// when capacity has freed since the last try.
    fn retry_queue(&mut self) {
        if !std::mem::take(&mut self.capacity_freed) {
            return;
        }
        let mut i = 0;
        while i < self.queue.len() {
            let id = self.queue[i];
            if self.try_start(id) {
                self.queue.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Meters a running job's usage up to `until_s`.
    fn meter(&mut self, id: JobId, until_s: i64) {
        let job = &self.jobs[id as usize - 1];
        let Some(p) = &job.placement else { return };
        let start = job.metered_until_s;
        if until_s <= start {
            return;
        }
        let r = p.region as usize;
        let region = &self.catalog.regions[r];
        let site = Site::of(&self.catalog, r);
        let cluster = self.engines.engine(r).cluster();
        for (k, d) in p.decisions.iter().enumerate() {
            let model = cluster.models().name(cluster.model(d.node));
            let power_w = self.catalog.power_w(model).unwrap_or(0.0);
            let milli = d.gpu_milli();
            let e = estimate(
                Usage {
                    milli_gpus: milli as u64,
                    power_w,
                    start_s: start,
                    duration_s: until_s - start,
                },
                site,
            );
            let t = &mut self.totals[r];
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
                node: cluster.name(d.node).to_string(),
                model: model.to_string(),
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
        self.jobs[id as usize - 1].metered_until_s = until_s;
    }

    /// Ends a running job at `at_s`: meters it, frees its resources.
    fn finish(&mut self, id: JobId, at_s: i64, phase: Phase) {
        self.meter(id, at_s);
        let job = &mut self.jobs[id as usize - 1];
        job.phase = phase;
        job.finished_s = Some(at_s);
        job.ends_s = None;
        if let Some(p) = &job.placement {
            self.engines
                .release(p)
                .expect("a running job's resources are allocated");
            self.totals[p.region as usize].running -= 1;
        }
        if let Some(i) = self.running.iter().position(|&r| r == id) {
            self.running.swap_remove(i);
        }
        self.capacity_freed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::plan::JobKind;

    /// Two regions: `east` (near users, dirty, 3 nodes × 8 GPUs) and `west`
    /// (green, 4 nodes × 8 GPUs), 10 ms apart; users in `city`.
    const CATALOG: &str = r#"
accelerators:
  - {model: A10, vendor: nvidia, power_w: 150}
regions:
  - name: east
    hub: e
    side: east
    pue: 1.25
    green_share: 0.1
    price_cny_per_kwh: 0.7
    grid_factor_kg_per_kwh: 0.6
    inventory: [{model: A10, nodes: 3, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]
  - name: west
    hub: w
    side: west
    pue: 1.1
    green_share: 0.6
    price_cny_per_kwh: 0.3
    grid_factor_kg_per_kwh: 0.6
    inventory: [{model: A10, nodes: 4, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]
user_regions:
  - {name: city}
links:
  - {a: city, b: east, rtt_ms: 2, bandwidth_gbps: 100}
  - {a: east, b: west, rtt_ms: 10, bandwidth_gbps: 100}
"#;

    fn world(policy: RegionPolicy, period: Option<i64>) -> World {
        let catalog = Catalog::from_yaml(CATALOG, "test.yaml").unwrap();
        let config = WorldConfig {
            region_policy: policy,
            metering_period_s: period,
            start_s: 1000,
            ..Default::default()
        };
        World::new(catalog, config).unwrap()
    }

    fn spec(name: &str, replicas: u32, gpus: u32, duration: i64) -> JobSpec {
        JobSpec {
            tenant: "acme".into(),
            name: name.into(),
            kind: JobKind::Training,
            replicas,
            gpus_per_replica: gpus,
            gpu_milli: 0,
            cpu_milli_per_replica: 8000,
            memory_mib_per_replica: 16384,
            gpu_models: vec![],
            user_region: Some("city".into()),
            data_region: None,
            latency_slo_ms: None,
            residency: vec![],
            cost_budget_fen: None,
            wait_for_best: false,
            max_runtime_s: None,
            duration_s: Some(duration),
        }
    }

    fn region_of(w: &World, id: JobId) -> String {
        w.job_view(id).unwrap().region.unwrap()
    }

    #[test]
    fn a_job_runs_departs_and_is_metered_once() {
        let mut w = world(RegionPolicy::Green, None);
        let id = w.submit(spec("t", 1, 2, 7200)).unwrap();
        assert_eq!(w.job(id).unwrap().phase, Phase::Running);
        assert_eq!(
            region_of(&w, id),
            "west",
            "training goes to the green region"
        );
        let west = &w.region_stats()[1];
        assert_eq!(west.gpus_allocated, 2.0);
        w.advance_to(1000 + 7199);
        assert_eq!(w.job(id).unwrap().phase, Phase::Running);
        w.advance_to(1000 + 10_000);
        let j = w.job(id).unwrap();
        assert_eq!((j.phase, j.finished_s), (Phase::Succeeded, Some(8200)));
        let usage = w.take_usage();
        assert_eq!(usage.len(), 1);
        let u = &usage[0];
        assert_eq!(
            (u.id.as_str(), u.start_s, u.end_s, u.milli_gpu),
            ("1/0/1000", 1000, 8200, 2000)
        );
        // 2 GPUs × 2 h × 150 W = 0.6 kWh IT; × 1.1 = 0.66 kWh; × 0.3 CNY = 19 800 milli-fen.
        assert!((u.facility_kwh - 0.66).abs() < 1e-9);
        assert_eq!(u.energy_cost_milli_fen, 19_800);
        assert!((u.carbon_kg - 0.66 * 0.4 * 0.6).abs() < 1e-9);
        assert_eq!(w.region_stats()[1].gpus_allocated, 0.0);
        assert!(w.take_usage().is_empty(), "usage is handed over once");
    }

    #[test]
    fn gangs_stay_in_one_region_and_fall_back_when_the_best_is_full() {
        let mut w = world(RegionPolicy::Green, None);
        // Fill west with 3 × 8 GPUs; a gang of 2 × 8 no longer fits there.
        let fill = w.submit(spec("fill", 3, 8, 500)).unwrap();
        assert_eq!(region_of(&w, fill), "west");
        let gang = w.submit(spec("gang", 2, 8, 500)).unwrap();
        let v = w.job_view(gang).unwrap();
        assert_eq!(
            v.region.as_deref(),
            Some("east"),
            "falls back to the next region"
        );
        assert_eq!(v.replicas.len(), 2);
        assert!(
            v.replicas.iter().all(|r| r.node.starts_with("east-")),
            "{:?}",
            v.replicas
        );
        let west = v
            .explanation
            .candidates
            .iter()
            .find(|c| c.region == "west")
            .unwrap();
        assert_eq!(west.verdict, "full");
        assert!(
            v.explanation
                .summary
                .contains("better-ranked region(s) were full"),
            "{}",
            v.explanation.summary
        );
        // A gang bigger than any region stays pending (it never spans regions).
        let huge = w.submit(spec("huge", 5, 8, 500)).unwrap();
        assert_eq!(w.job(huge).unwrap().phase, Phase::Pending);
        assert_eq!(w.job(huge).unwrap().pending_reason(), Some("inventory"));
    }

    #[test]
    fn wait_for_best_waits_until_capacity_frees() {
        let mut w = world(RegionPolicy::Green, None);
        w.submit(spec("fill", 4, 8, 600)).unwrap();
        let mut s = spec("patient", 1, 8, 100);
        s.wait_for_best = true;
        let id = w.submit(s).unwrap();
        assert_eq!(
            w.job(id).unwrap().pending_reason(),
            Some("waiting-for-best-region")
        );
        w.advance_to(1500);
        assert_eq!(w.job(id).unwrap().phase, Phase::Pending);
        w.advance_to(5000);
        let j = w.job(id).unwrap();
        assert_eq!(
            (j.phase, j.started_s),
            (Phase::Succeeded, Some(1600)),
            "starts when the fill departs"
        );
        assert_eq!(j.wait_s(5000), 600);
        assert_eq!(region_of(&w, id), "west");
    }

    #[test]
    fn an_slo_no_region_meets_stays_pending_with_that_reason() {
        let mut w = world(RegionPolicy::Green, None);
        let mut s = spec("chat", 1, 1, 100);
        s.kind = JobKind::OnlineInference;
        s.latency_slo_ms = Some(1.0);
        let id = w.submit(s).unwrap();
        w.advance_to(100_000);
        let v = w.job_view(id).unwrap();
        assert_eq!(v.phase, Phase::Pending);
        assert_eq!(v.pending_reason, Some("latency-slo"));
        assert!(
            v.explanation
                .summary
                .contains("No region meets the latency SLO of 1 ms"),
            "{}",
            v.explanation.summary
        );
        // With a reachable SLO it goes east (the only region within 5 ms).
        let mut s = spec("chat2", 1, 1, 100);
        s.kind = JobKind::OnlineInference;
        s.latency_slo_ms = Some(5.0);
        let id2 = w.submit(s).unwrap();
        assert_eq!(region_of(&w, id2), "east");
    }

    #[test]
    fn cancel_frees_capacity_for_the_queue_and_meters_up_to_now() {
        let mut w = world(RegionPolicy::Nearest, None);
        let a = w.submit(spec("a", 7, 8, 10_000)).unwrap();
        assert_eq!(
            w.job(a).unwrap().phase,
            Phase::Pending,
            "7 × 8 GPUs fits no single region"
        );
        let b = w.submit(spec("b", 3, 8, 10_000)).unwrap();
        let c = w.submit(spec("c", 4, 8, 10_000)).unwrap();
        let d = w.submit(spec("d", 1, 8, 50)).unwrap();
        assert_eq!(
            (region_of(&w, b), region_of(&w, c)),
            ("east".into(), "west".into())
        );
        assert_eq!(w.job(d).unwrap().phase, Phase::Pending);
        w.advance_to(1300);
        assert_eq!(w.cancel(b), Some(Phase::Cancelled));
        assert_eq!(w.job(d).unwrap().started_s, Some(1300));
        let usage = w.take_usage();
        assert_eq!(usage.len(), 3, "three replicas of b metered");
        assert!(usage
            .iter()
            .all(|u| u.end_s == 1300 && u.gpu_seconds == 8.0 * 300.0));
        assert_eq!(w.cancel(a), Some(Phase::Cancelled));
        assert_eq!(w.cancel(999), None);
    }

    #[test]
    fn metering_period_cuts_long_runs_into_intervals_that_add_up() {
        let mut w = world(RegionPolicy::Green, Some(3600));
        let id = w.submit(spec("long", 1, 1, 10_000)).unwrap();
        w.advance_to(20_000);
        assert_eq!(w.job(id).unwrap().phase, Phase::Succeeded);
        let usage = w.take_usage();
        let bounds: Vec<(i64, i64)> = usage.iter().map(|u| (u.start_s, u.end_s)).collect();
        assert_eq!(
            bounds,
            vec![(1000, 3600), (3600, 7200), (7200, 10_800), (10_800, 11_000)]
        );
        let total: f64 = usage.iter().map(|u| u.gpu_seconds).sum();
        assert_eq!(total, 10_000.0);
        let ids: std::collections::BTreeSet<&str> = usage.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids.len(), 4, "ids are unique");
    }

    #[test]
    fn shapes_count_each_arrival_once_in_every_region() {
        let mut w = world(RegionPolicy::Green, None);
        // 64 arrivals (a relearn point): 40 whole GPUs, 24 half GPUs; 52 of 56 GPUs.
        for i in 0..64 {
            let mut s = spec(&format!("j{i}"), 1, 1, 600 + 60 * i);
            if i >= 40 {
                s.gpus_per_replica = 0;
                s.gpu_milli = 500;
            }
            w.submit(s).unwrap();
        }
        // A gang that must wait, retried at every departure until it starts.
        let gang = w.submit(spec("gang", 2, 8, 60)).unwrap();
        assert_eq!(w.job(gang).unwrap().phase, Phase::Pending);
        w.advance_to(1000 + 10_000);
        assert_eq!(w.job(gang).unwrap().phase, Phase::Succeeded);
        for r in 0..2 {
            let shapes: Vec<(u8, u16, f64)> = w
                .engines()
                .engine(r)
                .shapes()
                .shapes
                .iter()
                .map(|s| (s.gpus, s.milli_per_gpu, s.weight))
                .collect();
            assert_eq!(
                shapes,
                vec![(1, 1000, 40.0 / 64.0), (1, 500, 24.0 / 64.0)],
                "region {r}: shapes of the 64 arrivals, retries not counted"
            );
        }
    }

    /// Two copies of CATALOG's `west`, `a` and `b`, equal on every figure
    /// (`a` ranks first on ties), 5 ms from the users.
    fn twins(pack_band: &str) -> Catalog {
        let west = &CATALOG
            [CATALOG.find("  - name: west").unwrap()..CATALOG.find("user_regions:").unwrap()];
        let head = &CATALOG[..CATALOG.find("  - name: east").unwrap()];
        let yaml = format!(
            "scoring: {{carbon: 1, cost: 1, latency: 0.1, pack_band: {pack_band}}}\n{head}{}{}\
             user_regions:\n  - {{name: city}}\nlinks:\n\
             \x20 - {{a: city, b: a, rtt_ms: 5, bandwidth_gbps: 100}}\n\
             \x20 - {{a: city, b: b, rtt_ms: 5, bandwidth_gbps: 100}}\n",
            west.replace("name: west", "name: a"),
            west.replace("name: west", "name: b"),
        );
        Catalog::from_yaml(&yaml, "twins.yaml").unwrap()
    }

    #[test]
    fn equally_green_regions_take_the_job_where_it_packs_best() {
        let run = |pack_band: &str| {
            let catalog = twins(pack_band);
            let config = WorldConfig {
                start_s: 1000,
                ..Default::default()
            };
            let mut w = World::new(catalog, config).unwrap();
            // Typical shapes: whole GPUs and half GPUs. Region b holds a half-used GPU.
            w.submit(spec("whole", 1, 1, 600)).unwrap();
            let mut pinned = spec("pinned", 1, 0, 600);
            pinned.gpu_milli = 500;
            pinned.residency = vec!["b".into()];
            let pinned = w.submit(pinned).unwrap();
            assert_eq!(region_of(&w, pinned), "b");
            let mut half = spec("half", 1, 0, 600);
            half.gpu_milli = 500;
            let half = w.submit(half).unwrap();
            (w.job_view(half).unwrap(), w.job_view(pinned).unwrap())
        };
        // In band: b, where the half GPU fills the other half instead of
        // leaving a half GPU no whole-GPU job can use in a.
        let (half, pinned) = run("0.3");
        assert_eq!(half.region.as_deref(), Some("b"));
        assert_eq!(half.replicas[0].node, pinned.replicas[0].node);
        assert_eq!(half.replicas[0].devices, pinned.replicas[0].devices);
        assert!(
            half.explanation
                .summary
                .contains("packs best here among the 2 regions within 30%"),
            "{}",
            half.explanation.summary
        );
        let a = &half.explanation.candidates[0];
        assert_eq!((a.region.as_str(), a.verdict), ("a", "ranked"));
        assert!(a.reason.contains("packs better in b"), "{}", a.reason);
        // pack_band 0: strict score order, the first region.
        let (half, _) = run("0");
        assert_eq!(half.region.as_deref(), Some("a"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const USERS: [&str; 8] = [
            "beijing",
            "shanghai",
            "hangzhou",
            "guangzhou",
            "shenzhen",
            "chengdu",
            "wuhan",
            "xian",
        ];

        fn arb_job() -> impl Strategy<Value = (JobSpec, Vec<usize>, i64)> {
            (
                0usize..8,
                prop::sample::select(vec![None, Some(2.0), Some(5.0), Some(10.0), Some(25.0)]),
                prop::collection::vec(0usize..10, 0..3),
                prop_oneof![
                    (1u32..4, 1u32..9).prop_map(|(r, g)| (r, g, 0u32)),
                    (1u32..1000).prop_map(|m| (1, 0, m))
                ],
                0u8..3,
                60i64..20_000,
                0i64..3_000,
            )
                .prop_map(
                    |(user, slo, residency, (replicas, gpus, milli), kind, duration, gap)| {
                        let kind = [
                            JobKind::Training,
                            JobKind::BatchInference,
                            JobKind::OnlineInference,
                        ][kind as usize];
                        let spec = JobSpec {
                            tenant: "t".into(),
                            name: "p".into(),
                            kind,
                            replicas,
                            gpus_per_replica: gpus,
                            gpu_milli: milli,
                            cpu_milli_per_replica: 4000,
                            memory_mib_per_replica: 8192,
                            gpu_models: vec![],
                            user_region: Some(USERS[user].into()),
                            data_region: None,
                            latency_slo_ms: slo,
                            residency: vec![],
                            cost_budget_fen: None,
                            wait_for_best: false,
                            max_runtime_s: None,
                            duration_s: Some(duration),
                        };
                        (spec, residency, gap)
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            /// Under the default policy no placement ever breaks residency or
            /// the latency SLO, and a gang sits in exactly one region.
            #[test]
            fn green_never_violates_residency_or_slo(jobs in prop::collection::vec(arb_job(), 1..120)) {
                let catalog = Catalog::default_catalog();
                let mut w = World::new(catalog.clone(), WorldConfig::default()).unwrap();
                let mut t = 0;
                for (mut spec, residency, gap) in jobs {
                    spec.residency = residency.iter().map(|&r| catalog.regions[r].name.clone()).collect();
                    t += gap;
                    w.advance_to(t);
                    w.submit(spec).unwrap();
                }
                while let Some(t) = w.next_event_s() { w.advance_to(t); }
                for j in w.jobs() {
                    if let Some(p) = &j.placement {
                        let (slo, res) = crate::regions::plan::violations(&catalog, &j.resolved, p.region as usize);
                        prop_assert!(!slo, "job {} placed beyond its SLO", j.id);
                        prop_assert!(!res, "job {} placed outside its residency", j.id);
                        prop_assert_eq!(p.decisions.len(), j.resolved.replicas as usize);
                        let region = &catalog.regions[p.region as usize].name;
                        for r in w.job_view(j.id).unwrap().replicas {
                            prop_assert!(r.node.starts_with(region.as_str()), "replica on {} outside {}", r.node, region);
                        }
                    } else {
                        prop_assert_eq!(j.phase, Phase::Pending);
                        prop_assert!(j.pending_reason().is_some());
                    }
                }
                // Everything departed: every GPU is free again.
                for s in w.region_stats() { prop_assert_eq!(s.gpus_allocated, 0.0); }
            }
        }
    }
}
