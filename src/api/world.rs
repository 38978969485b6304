//! The in-process [`JobBackend`]: jobs go to the simulated multi-region
//! [`World`] (standalone `zhisuan api` and the embedded demo). The world sits
//! behind one `std::sync::Mutex`, taken for a few microseconds per call and
//! never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{TimeZone, Utc};
use futures::future::{ready, BoxFuture, FutureExt};

use super::jobs::{
    BackendError, BackendResult, Explanation, GpuUse, JobBackend, JobKind, JobPhase, JobSpec,
    JobView, RegionView, ReplicaPlacement, TokenTier,
};
use crate::regions::plan::{JobKind as WorldKind, JobSpec as WorldSpec};
use crate::sim::world::{JobId, Phase, UsageInterval, World};

/// What the API keeps beside the world for each job.
struct JobExtra {
    kind: JobKind,
    image: String,
    token_tier: Option<TokenTier>,
}

/// One tenant's jobs: all of them, the live ones, and what the live ones hold.
#[derive(Default)]
struct TenantJobs {
    all: Vec<JobId>,
    live: Vec<JobId>,
    live_names: HashMap<String, JobId>,
    held: GpuUse,
}

struct Shared {
    world: World,
    tenants: HashMap<String, TenantJobs>,
    extra: HashMap<JobId, JobExtra>,
}

/// A [`World`] shared between the API and whatever advances its clock.
#[derive(Clone)]
pub struct WorldBackend {
    shared: Arc<Mutex<Shared>>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `job field `x`: message` (the world's error format) → field and message.
fn world_error(e: crate::error::InputError) -> BackendError {
    let text = e.to_string();
    let parsed = text.strip_prefix("job field `").and_then(|rest| {
        let (field, msg) = rest.split_once("`: ")?;
        Some((field.to_string(), format!("{field}: {msg}")))
    });
    match parsed {
        // The API calls the residency list `region` (one pinned region).
        Some((f, m)) if f == "residency" => BackendError::Invalid {
            field: "region".into(),
            message: m.replacen("residency", "region", 1),
        },
        Some((field, message)) => BackendError::Invalid { field, message },
        None => BackendError::Invalid {
            field: "job".into(),
            message: text,
        },
    }
}

fn rfc3339(s: i64) -> String {
    Utc.timestamp_opt(s, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl Shared {
    fn view(&self, id: JobId) -> Option<JobView> {
        let w = self.world.job_view(id)?;
        let state = self.world.job(id)?;
        let extra = self.extra.get(&id)?;
        let phase = match w.phase {
            Phase::Pending => JobPhase::Pending,
            Phase::Running => JobPhase::Running,
            Phase::Succeeded => JobPhase::Succeeded,
            Phase::Cancelled => JobPhase::Cancelled,
        };
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
        if summary.is_empty() {
            summary = match (phase, w.pending_reason) {
                (JobPhase::Pending, Some(r)) => format!("pending: {r}"),
                (p, _) => format!("{p:?}").to_lowercase(),
            };
        }
        let mut detail = serde_json::to_value(&w.explanation).unwrap_or_default();
        if let (Some(obj), Some(reason)) = (detail.as_object_mut(), w.pending_reason) {
            obj.insert("pending_reason".into(), reason.into());
        }
        Some(JobView {
            id: id.to_string(),
            name: w.name.clone(),
            kind: extra.kind,
            phase,
            replicas: state.spec.replicas,
            gpu_milli_per_replica: state.resolved.milli_per_replica,
            gpu_models: state.spec.gpu_models.clone(),
            image: extra.image.clone(),
            region,
            placement,
            explanation: Explanation { summary, detail },
            submitted_at: rfc3339(w.submitted_s),
        })
    }

    /// Milli-GPU a live job holds, by the model it runs on (placed) or may run on (pending).
    fn add_held(&self, id: JobId, held: &mut GpuUse) {
        let Some(j) = self.world.job(id) else { return };
        let milli = j.resolved.total_milli();
        held.total_milli += milli;
        match self.world.job_view(id) {
            Some(v) if !v.replicas.is_empty() => {
                for r in &v.replicas {
                    let m = u64::from(r.milli_per_device) * r.devices.len() as u64;
                    *held.by_model_milli.entry(r.model.clone()).or_default() += m;
                }
            }
            _ => {
                for model in &j.spec.gpu_models {
                    *held.by_model_milli.entry(model.clone()).or_default() += milli;
                }
            }
        }
    }

    /// Drops finished jobs from every tenant's live set and recounts what the rest hold.
    fn refresh_live(&mut self) {
        let mut tenants = std::mem::take(&mut self.tenants);
        for t in tenants.values_mut() {
            t.live.retain(|&id| {
                self.world
                    .job(id)
                    .is_some_and(|j| matches!(j.phase, Phase::Pending | Phase::Running))
            });
            t.live_names
                .retain(|_, id| t.live.binary_search(id).is_ok());
            let mut held = GpuUse::default();
            for &id in &t.live {
                self.add_held(id, &mut held);
            }
            t.held = held;
        }
        self.tenants = tenants;
    }

    fn owned(&self, tenant: &str, id: &str) -> BackendResult<JobId> {
        let not_found = || BackendError::NotFound(id.to_string());
        let n: JobId = id.parse().map_err(|_| not_found())?;
        let owner = self.world.job(n).ok_or_else(not_found)?;
        if owner.spec.tenant != tenant || !self.extra.contains_key(&n) {
            return Err(not_found());
        }
        Ok(n)
    }
}

impl WorldBackend {
    pub fn new(world: World) -> Self {
        WorldBackend {
            shared: Arc::new(Mutex::new(Shared {
                world,
                tenants: HashMap::new(),
                extra: HashMap::new(),
            })),
        }
    }

    /// Moves the world's clock to `now_s` (unix seconds), updates what
    /// tenants hold, and returns the usage metered since the last call.
    pub fn advance_to(&self, now_s: i64) -> Vec<UsageInterval> {
        let mut s = lock(&self.shared);
        s.world.advance_to(now_s);
        s.refresh_live();
        s.world.take_usage()
    }

    /// Runs `f` on the world (for the demo's summaries and metrics).
    pub fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&lock(&self.shared).world)
    }

    fn submit_now(&self, spec: JobSpec) -> BackendResult<JobView> {
        let mut s = lock(&self.shared);
        if let Some(t) = s.tenants.get(&spec.tenant) {
            if let Some(id) = t.live_names.get(&spec.name) {
                return Err(BackendError::Conflict(format!(
                    "name: job {:?} is still live (id {id}); pick another name or delete it first",
                    spec.name
                )));
            }
        }
        let (gpus_per_replica, gpu_milli) = if spec.milli_per_replica >= 1000 {
            (spec.milli_per_replica / 1000, 0)
        } else {
            (0, spec.milli_per_replica)
        };
        let kind = match spec.kind {
            JobKind::Training => WorldKind::Training,
            JobKind::Inference => WorldKind::OnlineInference,
        };
        let wspec = WorldSpec {
            tenant: spec.tenant.clone(),
            name: spec.name.clone(),
            kind,
            replicas: spec.replicas,
            gpus_per_replica,
            gpu_milli,
            cpu_milli_per_replica: 0,
            memory_mib_per_replica: 0,
            gpu_models: spec.gpu_models.clone(),
            user_region: spec.user_region.clone(),
            data_region: None,
            latency_slo_ms: spec.latency_slo_ms.map(f64::from),
            residency: spec.region.clone().into_iter().collect(),
            cost_budget_fen: None,
            wait_for_best: false,
            max_runtime_s: spec.max_runtime_s.map(|s| s as i64),
            duration_s: None,
        };
        let id = s.world.submit(wspec).map_err(world_error)?;
        s.extra.insert(
            id,
            JobExtra {
                kind: spec.kind,
                image: spec.image,
                token_tier: spec.token_tier,
            },
        );
        let mut held = std::mem::take(&mut s.tenants.entry(spec.tenant.clone()).or_default().held);
        s.add_held(id, &mut held);
        let t = s.tenants.entry(spec.tenant).or_default();
        t.held = held;
        t.all.push(id);
        t.live.push(id);
        t.live_names.insert(spec.name, id);
        s.view(id)
            .ok_or_else(|| BackendError::Internal(format!("job {id} vanished after submit")))
    }

    fn cancel_now(&self, tenant: &str, id: &str) -> BackendResult<JobView> {
        let mut s = lock(&self.shared);
        let n = s.owned(tenant, id)?;
        s.world
            .cancel(n)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        s.refresh_live();
        s.view(n)
            .ok_or_else(|| BackendError::NotFound(id.to_string()))
    }

    /// Token tier of a job (the demo meters tokens per tier).
    pub fn token_tier(&self, id: JobId) -> Option<TokenTier> {
        lock(&self.shared).extra.get(&id).and_then(|e| e.token_tier)
    }

    fn regions_now(&self) -> Vec<RegionView> {
        let s = lock(&self.shared);
        let catalog = s.world.catalog();
        let stats = s.world.region_stats();
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
        ready(self.submit_now(spec)).boxed()
    }

    fn list(&self, tenant: &str) -> BoxFuture<'_, BackendResult<Vec<JobView>>> {
        let s = lock(&self.shared);
        let jobs = s
            .tenants
            .get(tenant)
            .map(|t| t.all.iter().filter_map(|&id| s.view(id)).collect())
            .unwrap_or_default();
        ready(Ok(jobs)).boxed()
    }

    fn get(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        let s = lock(&self.shared);
        let r = s.owned(tenant, id).and_then(|n| {
            s.view(n)
                .ok_or_else(|| BackendError::NotFound(id.to_string()))
        });
        ready(r).boxed()
    }

    fn cancel(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        ready(self.cancel_now(tenant, id)).boxed()
    }

    fn gpu_use(&self, tenant: &str) -> BoxFuture<'_, BackendResult<GpuUse>> {
        let held = lock(&self.shared)
            .tenants
            .get(tenant)
            .map(|t| t.held.clone())
            .unwrap_or_default();
        ready(Ok(held)).boxed()
    }

    fn regions(&self) -> BoxFuture<'_, BackendResult<Vec<RegionView>>> {
        ready(Ok(self.regions_now())).boxed()
    }
}
