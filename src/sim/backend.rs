//! The in-process [`JobBackend`]: jobs go to the simulated multi-region
//! [`World`] (standalone `zhisuan api` and the embedded demo). The world sits
//! behind one `std::sync::Mutex`, taken for a few microseconds per call and
//! never held across an `.await`.

use crate::ledger::Tier;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{TimeZone, Utc};
use futures::future::{ready, BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};

use crate::api::jobs::{
    BackendError, BackendResult, Explanation, GpuUse, JobBackend, JobKind, JobPage, JobSpec,
    JobView, RegionView, ReplicaPlacement,
};
use crate::jobs::QuotaNode;
use crate::ledger::journal::JournalEntry;
use crate::ledger::Holder;
use crate::ledger::{Ledger, UsageRecord};
use crate::regions::catalog::Catalog;
use crate::regions::job::{JobKind as WorldKind, JobSpec as WorldSpec, SpecError};
use crate::sim::world::{JobId, Phase, UsageInterval, World, WorldConfig};

/// An input to the world from outside (the API), journalled in the ledger
/// before it is applied so a restart replays it ([`WorldBackend::replay`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorldEvent {
    /// The world's start time (first in a journal).
    Start {
        start_s: i64,
    },
    Submit {
        spec: WorldSpec,
        image: String,
        token_tier: Option<Tier>,
    },
    Cancel {
        job: JobId,
    },
    Quota {
        tenant: String,
        parent: Option<String>,
        quota: crate::ledger::Quota,
    },
}

impl WorldEvent {
    fn kind(&self) -> &'static str {
        match self {
            WorldEvent::Start { .. } => "start",
            WorldEvent::Submit { .. } => "submit",
            WorldEvent::Cancel { .. } => "cancel",
            WorldEvent::Quota { .. } => "quota",
        }
    }
}

/// Applies an input to the world, live or replayed: the one way the API's
/// inputs change it. A submission returns its job id.
fn apply(
    world: &mut World,
    index: &mut Index,
    event: WorldEvent,
) -> Result<Option<JobId>, SpecError> {
    match event {
        WorldEvent::Start { .. } => Ok(None),
        WorldEvent::Submit {
            spec,
            image,
            token_tier,
        } => {
            let id = world.submit(spec)?;
            index.extra.insert(id, JobExtra { image, token_tier });
            Ok(Some(id))
        }
        WorldEvent::Cancel { job } => {
            world.cancel(job);
            Ok(None)
        }
        WorldEvent::Quota {
            tenant,
            parent,
            quota,
        } => {
            world.set_quota(QuotaNode::new(&tenant, parent.as_deref(), quota));
            Ok(None)
        }
    }
}

/// What the API keeps beside the world for a job it submitted.
struct JobExtra {
    image: String,
    token_tier: Option<Tier>,
}

/// One tenant's jobs: all of them, the live ones, and what the live ones hold.
#[derive(Default)]
struct TenantJobs {
    all: Vec<JobId>,
    live: Vec<JobId>,
    live_names: HashMap<String, JobId>,
    held: GpuUse,
}

/// The API's index over the world's jobs, kept in step lazily: jobs are
/// appended to the world with ids 1, 2, …, so new ones are indexed from
/// `synced`; live sets are recounted when the world's clock moved.
#[derive(Default)]
struct Index {
    synced: usize,
    seen_now_s: i64,
    /// The world's oldest kept id at the last recount.
    kept_from: JobId,
    tenants: HashMap<String, TenantJobs>,
    extra: HashMap<JobId, JobExtra>,
}

/// The world shared with whoever advances its clock (the demo, or
/// [`WorldBackend::advance_to`]), plus the API's index of it. Lock order:
/// world, then index.
#[derive(Clone)]
pub struct WorldBackend {
    world: Arc<Mutex<World>>,
    index: Arc<Mutex<Index>>,
    /// Where inputs are journalled (`None`: nothing survives a restart).
    journal: Option<Ledger>,
    /// The world's clock (unix seconds) as last seen, read without the lock.
    clock_s: Arc<std::sync::atomic::AtomicI64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A spec the world refused → the API field at fault.
fn world_error(e: SpecError) -> BackendError {
    match e.field {
        // The API calls the residency list `region` (one pinned region).
        "residency" => BackendError::Invalid {
            field: "region".into(),
            message: format!("region: {}", e.message),
        },
        field => BackendError::Invalid {
            field: field.into(),
            message: format!("{field}: {}", e.message),
        },
    }
}

fn rfc3339(s: i64) -> String {
    Utc.timestamp_opt(s, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn is_live(phase: Phase) -> bool {
    matches!(phase, Phase::Pending | Phase::Running)
}

fn add_model(held: &mut GpuUse, model: &str, milli: u64) {
    match held.by_model_milli.get_mut(model) {
        Some(m) => *m += milli,
        None => {
            held.by_model_milli.insert(model.to_string(), milli);
        }
    }
}

/// Milli-GPU a live job holds, by the model it runs on (placed) or may run
/// on (pending). Reads the placement decisions directly: no rendering.
fn add_held(world: &World, id: JobId, held: &mut GpuUse) {
    let Some(j) = world.job(id) else { return };
    let milli = j.resolved.total_milli();
    held.total_milli += milli;
    held.pending_jobs += u64::from(j.phase == Phase::Pending);
    match &j.placement {
        Some(p) if j.phase == Phase::Running => {
            for r in &p.replicas {
                add_model(held, &r.model, u64::from(r.gpu_milli()));
            }
        }
        _ => {
            for model in &j.spec.gpu_models {
                add_model(held, model, milli);
            }
        }
    }
}

fn view(world: &World, index: &Index, id: JobId) -> Option<JobView> {
    let w = world.job_view(id)?;
    let state = world.job(id)?;
    let extra = index.extra.get(&id);
    let phase = w.phase;
    let region = w.region.clone();
    let placement = w
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| ReplicaPlacement {
            replica: i as u32,
            region: region.clone().unwrap_or_default(),
            node: r.node.clone(),
            gpu_model: Some(r.model.clone()),
            devices: r.devices.iter().map(|&d| d as u32).collect(),
            gpu_milli: u32::from(r.milli_per_device),
        })
        .collect();
    let mut summary = w.explanation.summary.clone();
    if summary.is_empty() || (phase == Phase::Pending && state.message.is_some()) {
        summary = match (phase, w.pending_reason, &state.message) {
            (Phase::Pending, _, Some(m)) => format!("pending: {m}"),
            (Phase::Pending, Some(r), None) => format!("pending: {r}"),
            (p, _, _) => format!("{p:?}").to_lowercase(),
        };
    }
    let mut detail = serde_json::to_value(&w.explanation).unwrap_or_default();
    if let (Some(obj), Some(reason)) = (detail.as_object_mut(), w.pending_reason) {
        obj.insert("pending_reason".into(), reason.into());
    }
    Some(JobView {
        id: id.to_string(),
        name: w.name.clone(),
        kind: match state.spec.kind {
            WorldKind::Training => JobKind::Training,
            WorldKind::BatchInference | WorldKind::OnlineInference => JobKind::Inference,
        },
        phase,
        replicas: state.spec.replicas,
        gpu_milli_per_replica: state.resolved.milli_per_replica,
        gpu_models: state.spec.gpu_models.clone(),
        image: extra.map(|e| e.image.clone()),
        region,
        placement,
        explanation: Explanation { summary, detail },
        submitted_at: rfc3339(w.submitted_s),
    })
}

impl Index {
    /// Indexes jobs the world got since the last call and, when its clock
    /// moved, recounts every tenant's live jobs.
    fn sync(&mut self, world: &World) {
        let submitted = world.submitted() as usize;
        if self.synced < submitted {
            for j in world.jobs_from(self.synced as JobId + 1) {
                let t = self.tenants.entry(j.spec.tenant.clone()).or_default();
                t.all.push(j.id);
                if is_live(j.phase) {
                    t.live.push(j.id);
                    t.live_names.insert(j.spec.name.clone(), j.id);
                    add_held(world, j.id, &mut t.held);
                }
            }
            self.synced = submitted;
        }
        if world.now_s() != self.seen_now_s {
            self.recount(world);
        }
    }

    /// Drops finished jobs from the live sets and recounts what the rest
    /// hold (pending + running).
    fn recount(&mut self, world: &World) {
        // Jobs the world dropped (finished past its retention) leave the index.
        let first = world.first_kept_id();
        if first > self.kept_from {
            self.kept_from = first;
            self.extra.retain(|&id, _| id >= first);
        }
        for t in self.tenants.values_mut() {
            let gone = t.all.partition_point(|&id| id < first);
            t.all.drain(..gone);
            t.live
                .retain(|&id| world.job(id).is_some_and(|j| is_live(j.phase)));
            let live = &t.live;
            t.live_names.retain(|_, id| live.binary_search(id).is_ok());
            let mut held = GpuUse::default();
            for &id in &t.live {
                add_held(world, id, &mut held);
            }
            t.held = held;
        }
        self.seen_now_s = world.now_s();
    }

    fn owned(&self, world: &World, tenant: &str, id: &str) -> BackendResult<JobId> {
        let not_found = || BackendError::NotFound(id.to_string());
        let n: JobId = id.parse().map_err(|_| not_found())?;
        match world.job(n) {
            Some(j) if j.spec.tenant == tenant => Ok(n),
            _ => Err(not_found()),
        }
    }
}

impl WorldBackend {
    /// Serves jobs from `world`, which others may advance and submit to as
    /// well.
    pub fn new(world: Arc<Mutex<World>>) -> Self {
        let now = lock(&world).now_s();
        WorldBackend {
            world,
            index: Arc::new(Mutex::new(Index::default())),
            journal: None,
            clock_s: Arc::new(std::sync::atomic::AtomicI64::new(now)),
        }
    }

    /// A journalled world over `catalog`, resumed from `ledger`'s journal:
    /// it starts when it first started on this ledger (a new journal starts
    /// at `config.start_s`, journalled first), its inputs are replayed, and
    /// what the replay metered again is written to the ledger (the same ids:
    /// what the ledger holds already is skipped, what a crash lost is
    /// written). The caller holds the ledger's [`Ledger::claim`].
    pub fn resume(
        ledger: &Ledger,
        catalog: Catalog,
        mut config: WorldConfig,
    ) -> anyhow::Result<WorldBackend> {
        let journal = ledger.journal().map_err(|e| e.into_anyhow())?;
        config.start_s = match journal.first() {
            Some(first) if first.kind == "start" => first.at_s,
            Some(first) => anyhow::bail!(
                "the ledger's world journal starts with {:?} (entry {}), not its start; the ledger was written by something else",
                first.kind,
                first.seq
            ),
            None => {
                let start = serde_json::to_string(&WorldEvent::Start {
                    start_s: config.start_s,
                })?;
                ledger
                    .append_journal(config.start_s, "start", &start)
                    .map_err(|e| e.into_anyhow())?;
                config.start_s
            }
        };
        let world = World::new(catalog, config)?;
        let backend = WorldBackend::new(Arc::new(Mutex::new(world))).with_journal(ledger.clone());
        backend.replay(&journal, |_| Ok(()))?;
        let replayed = backend.advance_to(backend.with_world(|w| w.now_s()));
        let records = backend.with_world(|w| usage_records(w.catalog(), &replayed));
        ledger.ingest(&records, &[]).map_err(|e| e.into_anyhow())?;
        Ok(backend)
    }

    /// Journals every input from the API in `ledger` before applying it.
    pub fn with_journal(mut self, ledger: Ledger) -> Self {
        self.journal = Some(ledger);
        self
    }

    /// Journals an input at the world's current time (a no-op without a journal).
    fn record(&self, world: &World, event: &WorldEvent) -> BackendResult<()> {
        let Some(ledger) = &self.journal else {
            return Ok(());
        };
        let body = serde_json::to_string(event)
            .map_err(|e| BackendError::Internal(format!("journal: {e}")))?;
        ledger
            .append_journal(world.now_s(), event.kind(), &body)
            .map(|_| ())
            .map_err(|e| BackendError::Internal(format!("journal: {e}")))
    }

    /// Applies journalled inputs again, in order, each at its own time;
    /// `before(world, at_s)` runs first for each (the demo submits its own
    /// workload's arrivals up to then, as it did the first time). The world
    /// then holds the same jobs, with the same ids, as before the restart.
    pub fn replay(
        &self,
        entries: &[JournalEntry],
        mut before: impl FnMut(i64) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for e in entries {
            let event: WorldEvent = serde_json::from_str(&e.body)
                .map_err(|err| anyhow::anyhow!("world journal entry {}: {err}", e.seq))?;
            before(e.at_s)?;
            let (mut world, mut index) = self.locked();
            world.advance_to(e.at_s);
            // A spec refused the first time is refused again.
            let _ = apply(&mut world, &mut index, event);
            index.sync(&world);
        }
        Ok(())
    }

    /// Runs `f` off the async workers (on tokio's blocking pool): it waits
    /// for the world's lock, which whoever advances the clock holds for a
    /// step, and may write the journal. Inline without a runtime.
    fn off_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(WorldBackend) -> BackendResult<T> + Send + 'static,
    ) -> BoxFuture<'static, BackendResult<T>> {
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => async move {
                handle
                    .spawn_blocking(move || f(this))
                    .await
                    .unwrap_or_else(|e| Err(BackendError::Internal(format!("world task: {e}"))))
            }
            .boxed(),
            _ => ready(f(this)).boxed(),
        }
    }

    /// The shared world.
    pub fn world(&self) -> &Arc<Mutex<World>> {
        &self.world
    }

    /// Locks world then index, with the index in step.
    fn locked(&self) -> (MutexGuard<'_, World>, MutexGuard<'_, Index>) {
        let world = lock(&self.world);
        let mut index = lock(&self.index);
        index.sync(&world);
        self.clock_s
            .store(world.now_s(), std::sync::atomic::Ordering::Relaxed);
        (world, index)
    }

    /// Moves the world's clock to `now_s` (unix seconds) and returns the
    /// usage metered since the last call.
    pub fn advance_to(&self, now_s: i64) -> Vec<UsageInterval> {
        let (mut world, mut index) = self.locked();
        world.advance_to(now_s);
        index.sync(&world);
        self.clock_s
            .store(world.now_s(), std::sync::atomic::Ordering::Relaxed);
        world.take_usage()
    }

    /// Runs `f` on the world (for summaries and metrics).
    /// The live jobs waiting now, by reason, and the world's time: the
    /// pending sample the ledger keeps for the operator page (blocking).
    pub fn pending_by_reason(&self) -> (i64, std::collections::BTreeMap<String, u64>) {
        let (world, index) = self.locked();
        let live = index.tenants.values().flat_map(|t| t.live.iter().copied());
        let by_reason = crate::sim::world::pending_by_reason(&world, live);
        (world.now_s(), by_reason)
    }

    pub fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&lock(&self.world))
    }

    /// Token tier of a job submitted through the API (for token metering).
    pub fn token_tier(&self, id: JobId) -> Option<Tier> {
        lock(&self.index).extra.get(&id).and_then(|e| e.token_tier)
    }

    fn submit_now(&self, spec: JobSpec) -> BackendResult<JobView> {
        let (mut world, mut index) = self.locked();
        if let Some(id) = index
            .tenants
            .get(&spec.tenant)
            .and_then(|t| t.live_names.get(&spec.name))
        {
            return Err(BackendError::Conflict(format!(
                "name: job {:?} is still live (id {id}); pick another name or delete it first",
                spec.name
            )));
        }
        let (gpus_per_replica, gpu_milli) = if spec.milli_per_replica >= 1000 {
            (spec.milli_per_replica / 1000, 0)
        } else {
            (0, spec.milli_per_replica)
        };
        let wspec = WorldSpec {
            tenant: spec.tenant.clone(),
            name: spec.name.clone(),
            kind: match spec.kind {
                JobKind::Training => WorldKind::Training,
                JobKind::Inference => WorldKind::OnlineInference,
            },
            replicas: spec.replicas,
            gpus_per_replica,
            gpu_milli,
            cpu_milli_per_replica: 0,
            memory_mib_per_replica: 0,
            gpu_models: spec.gpu_models.clone(),
            accelerator_vendor: spec.vendor.clone(),
            mixed_models: spec.mixed_models,
            topology: spec.topology,
            user_region: spec.user_region.clone(),
            data_region: None,
            latency_slo_ms: spec.latency_slo_ms.map(f64::from),
            residency: spec.region.clone().into_iter().collect(),
            cost_budget_fen: None,
            wait_for_best: false,
            priority: 0,
            max_runtime_s: spec.max_runtime_s.map(|s| s as i64),
            max_delay_s: spec.max_delay_s.map(|s| s as i64),
            duration_s: None,
        };
        let event = WorldEvent::Submit {
            spec: wspec,
            image: spec.image,
            token_tier: spec.token_tier,
        };
        self.record(&world, &event)?;
        let id = apply(&mut world, &mut index, event)
            .map_err(world_error)?
            .ok_or_else(|| BackendError::Internal("a submission without a job id".into()))?;
        index.sync(&world);
        view(&world, &index, id)
            .ok_or_else(|| BackendError::Internal(format!("job {id} vanished after submit")))
    }

    fn cancel_now(&self, tenant: &str, id: &str) -> BackendResult<JobView> {
        let (mut world, mut index) = self.locked();
        let n = index.owned(&world, tenant, id)?;
        let event = WorldEvent::Cancel { job: n };
        self.record(&world, &event)?;
        apply(&mut world, &mut index, event).map_err(world_error)?;
        // Cancelling frees capacity other jobs may have started on.
        index.recount(&world);
        view(&world, &index, n).ok_or_else(|| BackendError::NotFound(id.to_string()))
    }

    fn regions_now(&self) -> Vec<RegionView> {
        let world = lock(&self.world);
        let catalog = world.catalog();
        let stats = world.region_stats();
        catalog
            .regions
            .iter()
            .enumerate()
            .map(|(r, region)| {
                let st = stats.iter().find(|x| x.name == region.name);
                let latency_ms: BTreeMap<String, f64> = catalog
                    .user_regions
                    .iter()
                    .filter_map(|u| {
                        let place = catalog.place_index(&u.name)?;
                        let rtt = catalog.rtt_ms(place, r);
                        rtt.is_finite().then(|| (u.name.clone(), rtt))
                    })
                    .collect();
                let gpus = st.map_or(0, |x| x.gpus);
                let allocated = st.map_or(0.0, |x| x.gpus_allocated);
                RegionView {
                    name: region.name.clone(),
                    latency_ms,
                    green_share: st.map_or(region.green_share, |x| x.green_share),
                    pue: region.pue,
                    price_milli_fen_per_kwh: catalog.price_milli_fen_per_kwh[r],
                    gpus,
                    gpus_free: (gpus as f64 - allocated).max(0.0),
                    detail: serde_json::json!({
                        "display": region.display,
                        "hub": region.hub,
                        "side": region.side,
                        "grid_factor_kg_per_kwh": region.grid_factor_kg_per_kwh,
                    }),
                }
            })
            .collect()
    }
}

impl JobBackend for WorldBackend {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, BackendResult<JobView>> {
        self.off_async(move |b| b.submit_now(spec))
    }

    fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, BackendResult<JobPage>> {
        let after: JobId = match after.map(str::parse).transpose() {
            Ok(a) => a.unwrap_or(0),
            Err(_) => {
                return ready(Err(BackendError::Invalid {
                    field: "after".into(),
                    message: "is not a job id; pass the `next` of the previous page".into(),
                }))
                .boxed()
            }
        };
        let tenant = tenant.to_string();
        self.off_async(move |b| {
            let (world, index) = b.locked();
            // Ids only grow: the tenant's list is in id order.
            let jobs = index.tenants.get(&tenant).map_or_else(Vec::new, |t| {
                let from = t.all.partition_point(|&id| id <= after);
                t.all[from..]
                    .iter()
                    .filter_map(|&id| view(&world, &index, id))
                    .take(limit + 1)
                    .collect()
            });
            Ok(JobPage::of(jobs, limit))
        })
    }

    fn get(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.off_async(move |b| {
            let (world, index) = b.locked();
            index.owned(&world, &tenant, &id).and_then(|n| {
                view(&world, &index, n).ok_or_else(|| BackendError::NotFound(id.clone()))
            })
        })
    }

    fn cancel(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.off_async(move |b| b.cancel_now(&tenant, &id))
    }

    fn gpu_use(&self, tenant: &str) -> BoxFuture<'_, BackendResult<GpuUse>> {
        let tenant = tenant.to_string();
        self.off_async(move |b| {
            let (_world, index) = b.locked();
            Ok(index
                .tenants
                .get(&tenant)
                .map(|t| t.held.clone())
                .unwrap_or_default())
        })
    }

    fn regions(&self) -> BoxFuture<'_, BackendResult<Vec<RegionView>>> {
        self.off_async(|b| Ok(b.regions_now()))
    }

    fn waiting(&self, limit: usize) -> BoxFuture<'_, BackendResult<Vec<(String, JobView)>>> {
        self.off_async(move |b| {
            let (world, index) = b.locked();
            let mut out = Vec::new();
            for (tenant, jobs) in &index.tenants {
                for &id in &jobs.live {
                    if let Some(v) = view(&world, &index, id).filter(|v| v.phase == Phase::Pending)
                    {
                        out.push((tenant.clone(), v));
                    }
                }
            }
            Ok(crate::api::jobs::oldest_first(out, limit))
        })
    }

    /// Simulated time: statements, month-to-date use and vouchers follow
    /// the simulated clock, as the usage they count does.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let s = self.clock_s.load(std::sync::atomic::Ordering::Relaxed);
        chrono::DateTime::from_timestamp(s, 0).unwrap_or_default()
    }

    /// The ledger's quota becomes the simulated cluster's, which its
    /// scheduler enforces at every pass (as the controller enforces the
    /// TenantQuota on a cluster).
    fn project_quota<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
        quota: &'a crate::ledger::Quota,
    ) -> BoxFuture<'a, BackendResult<()>> {
        let event = WorldEvent::Quota {
            tenant: tenant.to_string(),
            parent: parent.map(str::to_string),
            quota: quota.clone(),
        };
        self.off_async(move |b| {
            let (mut world, mut index) = b.locked();
            b.record(&world, &event)?;
            apply(&mut world, &mut index, event).map_err(world_error)?;
            Ok(())
        })
    }
}

/// Ledger records for the world's metered intervals (zero-length ones dropped).
/// Energy comes from the world's power model; ids are the world's, so
/// re-ingesting the same intervals changes nothing.
pub fn usage_records(catalog: &Catalog, intervals: &[UsageInterval]) -> Vec<UsageRecord> {
    intervals
        .iter()
        .filter(|u| u.end_s > u.start_s && u.milli_gpu > 0)
        .map(|u| {
            let grid = catalog
                .region_index(&u.region)
                .map_or(0.0, |r| catalog.regions[r].grid_factor_kg_per_kwh);
            Holder {
                source: u.id.clone(),
                tenant: u.tenant.clone(),
                job: format!("{}/{}", u.tenant, u.job_name),
                region: u.region.clone(),
                node: u.node.clone(),
                model: u.model.clone(),
                gpu_milli: i64::from(u.milli_gpu),
                pue: u.pue,
                green_share: u.green_share,
                grid_kg_per_kwh: grid,
            }
            .record(u.start_s, u.end_s, (u.it_kwh * 3.6e6).round() as i64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::catalog::Catalog;
    use crate::sim::world::WorldConfig;

    fn backend() -> WorldBackend {
        let world = World::new(
            Catalog::default_catalog(),
            WorldConfig {
                start_s: 1_790_000_000,
                ..WorldConfig::default()
            },
        )
        .unwrap();
        WorldBackend::new(Arc::new(Mutex::new(world)))
    }

    /// A training job through the API.
    pub(super) fn job(
        tenant: &str,
        name: &str,
        replicas: u32,
        milli: u32,
        runtime_s: u64,
    ) -> JobSpec {
        JobSpec {
            max_runtime_s: Some(runtime_s),
            ..JobSpec::new(tenant, JobKind::Training, name, replicas, milli, "img:1")
        }
    }

    fn spec(tenant: &str, name: &str, gpus: u32) -> JobSpec {
        job(tenant, name, 1, gpus * 1000, 600)
    }

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        futures::executor::block_on(f)
    }

    /// A training job's start delay reaches the simulated cluster's job
    /// (its time-shifting window).
    #[test]
    fn a_start_delay_reaches_the_world() {
        let b = backend();
        let patient = JobSpec {
            max_delay_s: Some(7200),
            ..spec("acme", "patient", 1)
        };
        let view = block(b.submit(patient)).unwrap();
        let id: JobId = view.id.parse().unwrap();
        let delay = b.with_world(|w| w.job(id).map(|j| j.spec.max_delay_s));
        assert_eq!(delay, Some(Some(7200)));
    }

    /// A call that waits for the world's lock (held by a clock step) parks
    /// a blocking-pool thread, never the async worker: on a one-thread
    /// runtime a timer still fires while the call waits.
    #[test]
    fn calls_waiting_for_the_world_leave_the_async_worker_free() {
        let b = backend();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = std::sync::mpsc::channel::<()>();
        let world = Arc::clone(b.world());
        let holder = std::thread::spawn(move || {
            let _step = lock(&world);
            held_tx.send(()).unwrap();
            // Released by the test; the bound only keeps a broken build from hanging.
            let _ = released.recv_timeout(std::time::Duration::from_secs(30));
        });
        held.recv().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let calls = [
                b.gpu_use("acme").map(|r| r.map(drop)).boxed(),
                b.list("acme", None, 10).map(|r| r.map(drop)).boxed(),
                b.regions().map(|r| r.map(drop)).boxed(),
            ];
            for mut call in calls {
                let waited =
                    tokio::time::timeout(std::time::Duration::from_millis(50), &mut call).await;
                assert!(
                    waited.is_err(),
                    "the call did not wait on the blocking pool"
                );
            }
        });
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(runtime.block_on(b.gpu_use("acme")).is_ok());
    }

    #[test]
    fn jobs_the_world_dropped_leave_the_lists_and_answer_not_found() {
        let world = World::new(
            Catalog::default_catalog(),
            WorldConfig {
                start_s: 1_790_000_000,
                keep_finished_s: Some(3600),
                ..WorldConfig::default()
            },
        )
        .unwrap();
        let b = WorldBackend::new(Arc::new(Mutex::new(world)));
        let done = block(b.submit(spec("acme", "done", 1))).unwrap();
        let live = block(b.submit(job("acme", "live", 1, 1000, 100_000))).unwrap();
        block(b.cancel("acme", &done.id)).unwrap();
        b.advance_to(1_790_000_000 + 7200);
        b.advance_to(1_790_000_000 + 7201);
        assert_eq!(b.now().timestamp(), 1_790_000_000 + 7201, "simulated clock");
        let page = block(b.list("acme", None, 10)).unwrap();
        let ids: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, [live.id.as_str()]);
        assert!(matches!(
            block(b.get("acme", &done.id)),
            Err(BackendError::NotFound(_))
        ));
        let index = lock(&b.index);
        assert_eq!(index.tenants["acme"].all.len(), 1, "the index let go of it");
    }

    #[test]
    fn jobs_are_scoped_to_their_tenant_and_names_are_unique_while_live() {
        let b = backend();
        let job = block(b.submit(spec("acme", "a", 2))).unwrap();
        assert_eq!(job.phase, Phase::Running);
        assert_eq!(job.placement.len(), 1);
        assert_eq!(job.placement[0].devices.len(), 2);
        assert!(!job.explanation.summary.is_empty());
        assert!(matches!(
            block(b.get("other", &job.id)),
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            block(b.cancel("other", &job.id)),
            Err(BackendError::NotFound(_))
        ));
        assert!(block(b.list("other", None, 10)).unwrap().jobs.is_empty());
        assert!(matches!(
            block(b.submit(spec("acme", "a", 1))),
            Err(BackendError::Conflict(_))
        ));
        // Another tenant may use the same name.
        assert!(block(b.submit(spec("other", "a", 1))).is_ok());
        let held = block(b.gpu_use("acme")).unwrap();
        assert_eq!(held.total_milli, 2000);
        let done = block(b.cancel("acme", &job.id)).unwrap();
        assert_eq!(done.phase, Phase::Cancelled);
        assert_eq!(block(b.gpu_use("acme")).unwrap().total_milli, 0);
        // The name is free again once the job is over.
        assert!(block(b.submit(spec("acme", "a", 1))).is_ok());
    }

    #[test]
    fn admission_keeps_a_job_pending_over_a_lowered_limit() {
        let b = backend();
        let quota = crate::ledger::Quota {
            gpus: [("*".to_string(), 4)].into(),
            ..Default::default()
        };
        block(b.project_quota("acme", None, &quota)).unwrap();
        let first = block(b.submit(spec("acme", "first", 4))).unwrap();
        assert_eq!(first.phase, Phase::Running);
        // The API would refuse this at submission; the world refuses it at admission.
        let second = block(b.submit(spec("acme", "second", 2))).unwrap();
        assert_eq!(second.phase, Phase::Pending, "{second:?}");
        assert_eq!(block(b.gpu_use("acme")).unwrap().pending_jobs, 1);
        assert!(
            second.explanation.detail.to_string().contains("quota"),
            "{:?}",
            second.explanation
        );
        assert!(
            second.explanation.summary.contains("spec.gpus[*]=4"),
            "the scheduler's own words: {:?}",
            second.explanation
        );
        // Capacity under the limit frees when the first job ends; the second starts.
        block(b.cancel("acme", &first.id)).unwrap();
        let second = block(b.get("acme", &second.id)).unwrap();
        assert_eq!(second.phase, Phase::Running, "{second:?}");
    }

    #[test]
    fn world_errors_name_the_api_field() {
        let b = backend();
        let mut s = spec("acme", "x", 1);
        s.region = Some("atlantis".into());
        match block(b.submit(s)) {
            Err(BackendError::Invalid { field, .. }) => assert_eq!(field, "region"),
            other => panic!("{other:?}"),
        }
        let mut s = spec("acme", "y", 1);
        s.gpu_models = vec!["no-such-gpu".into()];
        match block(b.submit(s)) {
            Err(BackendError::Invalid { field, .. }) => assert_eq!(field, "gpu_models"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metered_intervals_become_ledger_records() {
        let b = backend();
        let job = block(b.submit(spec("acme", "m", 2))).unwrap();
        assert_eq!(job.phase, Phase::Running);
        let usage = b.advance_to(1_790_000_000 + 600 + 1);
        assert!(!usage.is_empty());
        let records = b.with_world(|w| super::usage_records(w.catalog(), &usage));
        let milli_s: i64 = records
            .iter()
            .map(|r| r.gpu_milli * (r.end - r.start).num_seconds())
            .sum();
        // 2 GPUs for the 600 s max runtime.
        assert_eq!(milli_s, 2000 * 600);
        assert!(records
            .iter()
            .all(|r| r.tenant == "acme" && r.it_energy_j > 0));
        // The job ended at its max runtime and holds nothing.
        assert_eq!(block(b.gpu_use("acme")).unwrap().total_milli, 0);
    }
}

#[cfg(test)]
mod journal_tests {
    use super::tests::job;
    use super::*;
    use crate::ledger::types::Month;
    use crate::regions::catalog::Catalog;
    use crate::sim::world::WorldConfig;

    const START: i64 = 1_790_000_000;

    /// What `zhisuan api --backend world` does on start: claim the ledger,
    /// resume the journalled world (or start one).
    fn open(db: &str) -> (WorldBackend, Ledger, crate::ledger::journal::Claim) {
        let ledger = Ledger::open(db).unwrap();
        ledger.ensure_rate_card("test").unwrap();
        let claim = ledger.claim("the test").unwrap();
        let config = WorldConfig {
            start_s: START,
            metering_period_s: Some(600),
            ..WorldConfig::default()
        };
        let backend = WorldBackend::resume(&ledger, Catalog::default_catalog(), config).unwrap();
        (backend, ledger, claim)
    }

    /// Advances the clock and writes what was metered (the clock loop).
    fn write(backend: &WorldBackend, ledger: &Ledger, t: i64) {
        let iv = backend.advance_to(t);
        let records = backend.with_world(|w| usage_records(w.catalog(), &iv));
        ledger.ingest(&records, &[]).unwrap();
    }

    /// The API's inputs at world times, with the clock loop between them;
    /// `crash_after` steps, the process dies between advancing the clock and
    /// writing what it metered, and a new one resumes from the ledger.
    fn run(db: &str, crash_after: Option<usize>) -> Vec<(i64, i64, usize)> {
        let (mut b, mut ledger, mut claim) = open(db);
        for tenant in ["acme", "bolt"] {
            ledger.create_tenant("test", tenant, None).unwrap();
        }
        let block = |f: BoxFuture<'_, BackendResult<JobView>>| futures::executor::block_on(f);
        for step in 0..8usize {
            let t = START + step as i64 * 1800;
            match step {
                0 => {
                    block(b.submit(job("acme", "a", 2, 8000, 7200))).unwrap();
                    block(b.submit(job("bolt", "b", 1, 500, 3000))).unwrap();
                }
                2 => {
                    block(b.submit(job("acme", "c", 1, 1000, 20_000))).unwrap();
                    let quota = crate::ledger::Quota {
                        gpus: [("*".to_string(), 2)].into(),
                        ..Default::default()
                    };
                    futures::executor::block_on(b.project_quota("bolt", None, &quota)).unwrap();
                }
                3 => {
                    let d = block(b.submit(job("bolt", "d", 1, 2000, 9000))).unwrap();
                    block(b.submit(job("bolt", "e", 1, 1000, 9000))).unwrap();
                    block(b.cancel("bolt", &d.id)).unwrap();
                }
                _ => {}
            }
            if crash_after == Some(step) {
                // Killed after advancing, before writing: those records are lost here.
                let _lost = b.advance_to(t + 1800);
                drop((b, ledger, claim));
                (b, ledger, claim) = open(db);
                continue;
            }
            write(&b, &ledger, t + 1800);
        }
        write(&b, &ledger, START + 20 * 3600);
        let month = Month::of_s(START);
        ["acme", "bolt"]
            .iter()
            .map(|t| {
                let s = ledger.statement(t, month).unwrap();
                let gpu_milli_s: i64 = s.gpu.iter().map(|l| l.milli_gpu_seconds).sum();
                (gpu_milli_s, s.totals.gross_fen, s.usage_records as usize)
            })
            .collect()
    }

    /// A process killed mid-run and restarted on the same ledger bills
    /// exactly what an uninterrupted run bills: same GPU-seconds, same fen,
    /// same number of records (the journal replays the API's inputs with
    /// the same ids).
    #[test]
    fn a_restart_bills_exactly_what_an_uninterrupted_run_bills() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let whole = run(&path("whole.db"), None);
        assert!(whole.iter().all(|(gpu, _, _)| *gpu > 0), "{whole:?}");
        for crash in [1, 3, 5] {
            let db = path(&format!("crash{crash}.db"));
            assert_eq!(run(&db, Some(crash)), whole, "crash after step {crash}");
        }
    }
}
