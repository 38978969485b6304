//! Where submitted jobs go: the [`JobBackend`] trait. The in-process
//! implementation drives the simulated multi-region `World` (standalone
//! `zhisuan api` and the demo); the Kubernetes one, creating `TrainingJob` /
//! `InferenceService` resources, lives in `operator/`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::jobs::Phase;
use crate::ledger::Tier;

/// Training (batch, latency-tolerant) or inference (a long-running service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Training,
    Inference,
}

/// A validated job submission (see the API's `JobRequest` for the rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub tenant: String,
    pub kind: JobKind,
    pub name: String,
    pub replicas: u32,
    /// GPU share per replica in milli-GPU: whole GPUs are multiples of 1000
    /// (`gpus_per_replica` × 1000), a shared GPU is 1..=999.
    pub milli_per_replica: u32,
    /// Allowed accelerator models; empty = any model of its vendor.
    pub gpu_models: Vec<String>,
    /// The accelerator vendor it needs (`nvidia`, `huawei`); None = nvidia.
    pub vendor: Option<String>,
    /// The gang's replicas may run on different models (default: one).
    pub mixed_models: bool,
    /// The network domain the gang must or should fit in.
    pub topology: Option<crate::placement::TopologySpec>,
    pub image: String,
    pub region: Option<String>,
    pub latency_slo_ms: Option<u32>,
    pub user_region: Option<String>,
    pub token_tier: Option<Tier>,
    pub max_runtime_s: Option<u64>,
    /// Training only: the latest start, seconds after submission (time
    /// shifting may hold it until then).
    pub max_delay_s: Option<u64>,
}

impl JobSpec {
    /// A job of `replicas` × `milli_per_replica` running `image`, with
    /// every choice left open (any model of the default vendor, any region,
    /// no SLO, no tier, no runtime limit); set fields to narrow it.
    pub fn new(
        tenant: &str,
        kind: JobKind,
        name: &str,
        replicas: u32,
        milli_per_replica: u32,
        image: &str,
    ) -> Self {
        JobSpec {
            tenant: tenant.into(),
            kind,
            name: name.into(),
            replicas,
            milli_per_replica,
            gpu_models: Vec::new(),
            vendor: None,
            mixed_models: false,
            topology: None,
            image: image.into(),
            region: None,
            latency_slo_ms: None,
            user_region: None,
            token_tier: None,
            max_runtime_s: None,
            max_delay_s: None,
        }
    }

    /// GPUs the whole job holds, in milli-GPU.
    pub fn total_milli(&self) -> u64 {
        u64::from(self.replicas) * u64::from(self.milli_per_replica)
    }
}

/// Where one replica runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaPlacement {
    pub replica: u32,
    pub region: String,
    pub node: String,
    pub gpu_model: Option<String>,
    /// Device indices on the node.
    pub devices: Vec<u32>,
    /// Milli-GPU per device (1000 for whole GPUs).
    pub gpu_milli: u32,
}

/// Why a job is pending, or why it went where it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Explanation {
    /// One human sentence.
    pub summary: String,
    /// The structured record (candidates, the filter that removed each, score terms).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A job as a tenant sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub kind: JobKind,
    pub phase: Phase,
    pub replicas: u32,
    pub gpu_milli_per_replica: u32,
    pub gpu_models: Vec<String>,
    /// Absent for jobs that did not come through the API (e.g. the demo's workload).
    pub image: Option<String>,
    pub region: Option<String>,
    pub placement: Vec<ReplicaPlacement>,
    pub explanation: Explanation,
    /// RFC 3339.
    pub submitted_at: String,
}

/// GPUs a tenant holds (pending + running), for quota checks at submission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuUse {
    pub total_milli: u64,
    /// The tenant's jobs waiting to start (bounded per tenant by the API).
    pub pending_jobs: u64,
    /// By accelerator model: placed replicas count under their model, a
    /// pending job under each model it allows.
    pub by_model_milli: BTreeMap<String, u64>,
}

/// A region as tenants choose between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionView {
    pub name: String,
    /// Round-trip time from each user region, ms.
    pub latency_ms: BTreeMap<String, f64>,
    pub green_share: f64,
    pub pue: f64,
    /// Electricity price, milli-fen per kWh (exact; 1 CNY = 100,000 milli-fen).
    pub price_milli_fen_per_kwh: i64,
    pub gpus: u64,
    pub gpus_free: f64,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// No job with this id for this tenant (another tenant's job is "not found" too).
    #[error("no job {0}")]
    NotFound(String),
    /// A live job of this tenant already has this name.
    #[error("{0}")]
    Conflict(String),
    /// The spec cannot be satisfied (unknown region or model, ...).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Internal(String),
}

impl From<BackendError> for super::error::ApiError {
    fn from(e: BackendError) -> Self {
        use super::error::ApiError;
        match e {
            BackendError::NotFound(id) => ApiError::not_found(format!("no job {id}")),
            BackendError::Conflict(m) => ApiError::conflict(m),
            BackendError::Invalid { field, message } => ApiError::invalid(field, message),
            BackendError::Internal(m) => ApiError::internal(m),
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// One page of a tenant's jobs, in id order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// The id to pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Longest waiting first (then by id), the first `limit`.
pub fn oldest_first(mut jobs: Vec<(String, JobView)>, limit: usize) -> Vec<(String, JobView)> {
    jobs.sort_by(|a, b| {
        (a.1.submitted_at.as_str(), a.1.id.as_str())
            .cmp(&(b.1.submitted_at.as_str(), b.1.id.as_str()))
    });
    jobs.truncate(limit);
    jobs
}

/// The first `limit` of `items` (in cursor order, those after the cursor,
/// fetched as `limit + 1`) and the cursor of the rest: the key of the last
/// item shown, when more remain. Every paged list of the API cuts this way.
pub fn page_of<T>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let next = (items.len() > limit).then(|| key(&items[limit - 1]));
    items.truncate(limit);
    (items, next)
}

impl JobPage {
    /// The page of `jobs` (already in id order, those after the cursor):
    /// the first `limit`, and the cursor for the rest if any remain.
    pub fn of(jobs: Vec<JobView>, limit: usize) -> JobPage {
        let (jobs, next) = page_of(jobs, limit, |j| j.id.clone());
        JobPage { jobs, next }
    }
}

/// Most jobs in one page of `GET /v1/jobs`.
pub const MAX_PAGE: usize = 1000;

/// Jobs and regions behind the API. Every call is scoped to one tenant: an
/// implementation must never return another tenant's job — except
/// [`JobBackend::waiting`], which the API serves to the admin only. Futures
/// must not hold a lock across an `.await`.
pub trait JobBackend: Send + Sync + 'static {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, BackendResult<JobView>>;
    /// One page of the tenant's jobs in id order: at most `limit`, those
    /// after the id `after` (a page's `next`).
    fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, BackendResult<JobPage>>;
    fn get(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>>;
    /// Cancels a job; returns it in its final state.
    fn cancel(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>>;
    fn gpu_use(&self, tenant: &str) -> BoxFuture<'_, BackendResult<GpuUse>>;
    /// Every tenant's jobs waiting to start, longest waiting first, at most
    /// `limit`: (tenant, job) — the admin's "why pending" view.
    fn waiting(&self, limit: usize) -> BoxFuture<'_, BackendResult<Vec<(String, JobView)>>>;
    fn regions(&self) -> BoxFuture<'_, BackendResult<Vec<RegionView>>>;
    /// The backend's clock: what "now" is for month-to-date use, statements
    /// and voucher validity. Default: the wall clock (a real cluster); the
    /// simulated cluster answers its simulated time.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
    /// Makes `quota` (the ledger's, the one truth) the quota the backend's
    /// own scheduler enforces: on a cluster the tenant's `TenantQuota`, on
    /// the simulated cluster its scheduler's quota. Called when the quota is
    /// set and, for every tenant, when the API starts. Default: nothing to
    /// project.
    fn project_quota<'a>(
        &'a self,
        _tenant: &'a str,
        _parent: Option<&'a str>,
        _quota: &'a crate::ledger::Quota,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
}
