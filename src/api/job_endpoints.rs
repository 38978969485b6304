//! A tenant's jobs: the request (every field checked, naming it and the
//! fix), the quota check before submission, and submit / list / get /
//! cancel.

use crate::jobs::gpus_to_milli;
use crate::ledger::Tier;
use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::TenantCaller;
use super::checks::{check_name, check_text, milli_to_gpus, PageQuery};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::jobs::{GpuUse, JobKind, JobPage, JobSpec, JobView};
use super::openapi::StdErrors;
use super::ApiState;
use crate::ledger::{MonthUse, Quota};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: JobKind,
    /// 1-63 lowercase letters, digits or '-'; unique among the tenant's live jobs.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub name: String,
    /// 1..=1000 pods (a gang: all or nothing).
    #[schema(minimum = 1, maximum = 1000)]
    pub replicas: u32,
    /// Whole GPUs per replica, 1..=64. Give this or `gpu_milli`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub gpus_per_replica: Option<u32>,
    /// A share of one GPU per replica in milli-GPU, 1..=999. Give this or `gpus_per_replica`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 999)]
    pub gpu_milli: Option<u32>,
    /// Allowed accelerator models; absent = any model of the job's vendor.
    #[serde(default)]
    pub gpu_models: Option<Vec<String>>,
    /// The accelerator vendor or software stack: `nvidia` / `cuda`, `huawei` /
    /// `ascend` / `cann`; absent = nvidia (a CUDA image never lands on an NPU).
    #[serde(default)]
    pub accelerator_vendor: Option<String>,
    /// Let a gang's replicas run on different GPU models; absent = false (one
    /// model for the whole gang).
    #[serde(default)]
    pub mixed_models: Option<bool>,
    /// Network topology of a gang: `{"required": "rack"}` runs the whole
    /// gang inside one rack or waits; `{"preferred": "rack"}` puts it into
    /// one rack when one has room, else the smallest block, else anywhere in
    /// the region. Levels: `nvlink`, `rack`, `block` (node labels
    /// `topology.zhisuan.io/…`); absent = anywhere in the region.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub topology: Option<crate::placement::TopologySpec>,
    /// Container image.
    #[schema(min_length = 1, max_length = 512, pattern = "^\\S+$")]
    pub image: String,
    /// Pin to one region; absent = the scheduler chooses.
    #[serde(default)]
    pub region: Option<String>,
    /// Inference only: round-trip budget from `user_region`, 1..=60000 ms.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub latency_slo_ms: Option<u32>,
    /// Inference only: where the users are.
    #[serde(default)]
    pub user_region: Option<String>,
    /// Inference only: token price tier.
    #[serde(default)]
    pub token_tier: Option<Tier>,
    /// Stop after this many seconds, 1..=31536000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub max_runtime_s: Option<u64>,
    /// Training only: the job may start up to this many seconds after it
    /// is submitted, so the green policy may hold it for greener hours
    /// (time shifting; never past it), 1..=604800 (7 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub max_delay_s: Option<u64>,
}

/// The longest start delay a job may allow (`max_delay_s`): 7 days.
const MAX_DELAY_S: u64 = 7 * 86_400;

const MAX_REPLICAS: u32 = 1000;

/// The key of `Quota::gpus` that limits all models together.
const ANY_MODEL: &str = "*";
const MAX_GPUS_PER_REPLICA: u32 = 64;

fn validate_job(tenant: &str, r: JobRequest) -> Result<JobSpec, ApiError> {
    check_name("name", &r.name)?;
    if r.replicas == 0 || r.replicas > MAX_REPLICAS {
        return Err(ApiError::invalid(
            "replicas",
            format!("replicas: must be 1..={MAX_REPLICAS}"),
        ));
    }
    let milli_per_replica = milli_per_replica(&r)?;
    check_models(r.gpu_models.as_deref().unwrap_or_default())?;
    check_image_and_places(&r)?;
    let inference = r.kind == JobKind::Inference;
    check_inference_fields(&r, inference)?;
    check_limits(&r, inference)?;
    let topology = r.topology;
    let vendor = match r.accelerator_vendor.as_deref() {
        None => None,
        Some(v) => Some(
            crate::jobs::accelerator_vendor(v)
                .map_err(|m| {
                    ApiError::invalid("accelerator_vendor", format!("accelerator_vendor: {m}"))
                })?
                .to_string(),
        ),
    };
    Ok(JobSpec {
        tenant: tenant.to_string(),
        kind: r.kind,
        name: r.name,
        replicas: r.replicas,
        milli_per_replica,
        gpu_models: r.gpu_models.unwrap_or_default(),
        vendor,
        mixed_models: r.mixed_models.unwrap_or(false),
        topology,
        image: r.image,
        region: r.region,
        latency_slo_ms: r.latency_slo_ms,
        user_region: r.user_region,
        token_tier: if inference {
            Some(r.token_tier.unwrap_or(Tier::Basic))
        } else {
            None
        },
        max_runtime_s: r.max_runtime_s,
        max_delay_s: r.max_delay_s,
    })
}

/// Milli-GPU a replica asks for: whole GPUs or a share of one, never both.
fn milli_per_replica(r: &JobRequest) -> Result<u32, ApiError> {
    match (r.gpus_per_replica, r.gpu_milli) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "gpu_milli",
            "gpu_milli: give either gpus_per_replica (whole GPUs) or gpu_milli (a share of one GPU), not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "gpus_per_replica",
            "gpus_per_replica: required (or gpu_milli for a share of one GPU)",
        )),
        (Some(g), None) => {
            if g == 0 || g > MAX_GPUS_PER_REPLICA {
                return Err(ApiError::invalid(
                    "gpus_per_replica",
                    format!("gpus_per_replica: must be 1..={MAX_GPUS_PER_REPLICA}"),
                ));
            }
            Ok(g * 1000)
        }
        (None, Some(m)) => {
            if m == 0 || m > 999 {
                return Err(ApiError::invalid(
                    "gpu_milli",
                    "gpu_milli: must be 1..=999 (1000 = one whole GPU: use gpus_per_replica)",
                ));
            }
            Ok(m)
        }
    }
}

/// Each named model is short text, named once.
fn check_models(gpu_models: &[String]) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for (i, m) in gpu_models.iter().enumerate() {
        let field = format!("gpu_models[{i}]");
        check_text(&field, m, 64)?;
        if !seen.insert(m) {
            return Err(ApiError::invalid(
                field.clone(),
                format!("{field}: {m:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_image_and_places(r: &JobRequest) -> Result<(), ApiError> {
    check_text("image", &r.image, 512)?;
    if r.image.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(
            "image",
            "image: must not contain whitespace",
        ));
    }
    if let Some(region) = &r.region {
        check_text("region", region, 64)?;
    }
    if let Some(u) = &r.user_region {
        check_text("user_region", u, 64)?;
    }
    Ok(())
}

/// Latency SLO, user region and token tier are for inference only; an SLO
/// needs the user region it is measured from.
fn check_inference_fields(r: &JobRequest, inference: bool) -> Result<(), ApiError> {
    for (field, given) in [
        ("latency_slo_ms", r.latency_slo_ms.is_some()),
        ("user_region", r.user_region.is_some()),
        ("token_tier", r.token_tier.is_some()),
    ] {
        if given && !inference {
            return Err(ApiError::invalid(
                field,
                format!("{field}: only for kind \"inference\""),
            ));
        }
    }
    if let Some(slo) = r.latency_slo_ms {
        if slo == 0 || slo > 60_000 {
            return Err(ApiError::invalid(
                "latency_slo_ms",
                "latency_slo_ms: must be 1..=60000",
            ));
        }
        if r.user_region.is_none() {
            return Err(ApiError::invalid(
                "user_region",
                "user_region: required with latency_slo_ms (the latency is measured from there)",
            ));
        }
    }
    Ok(())
}

/// The runtime limit, the delay a training job accepts, and the topology ask.
fn check_limits(r: &JobRequest, inference: bool) -> Result<(), ApiError> {
    if let Some(s) = r.max_runtime_s {
        if s == 0 || s > 31_536_000 {
            return Err(ApiError::invalid(
                "max_runtime_s",
                "max_runtime_s: must be 1..=31536000 (one year)",
            ));
        }
    }
    if let Some(d) = r.max_delay_s {
        if inference {
            return Err(ApiError::invalid(
                "max_delay_s",
                "max_delay_s: training only (an inference service serves from the start)",
            ));
        }
        if d == 0 || d > MAX_DELAY_S {
            return Err(ApiError::invalid(
                "max_delay_s",
                format!("max_delay_s: must be 1..={MAX_DELAY_S} (7 days)"),
            ));
        }
    }
    if let Some(t) = &r.topology {
        t.ask()
            .map_err(|m| ApiError::invalid("topology", format!("topology: {m}")))?;
    }
    Ok(())
}

/// The all-models GPU limit of a quota, in milli-GPU.
pub fn gpu_limit_milli(quota: &Quota) -> Option<u64> {
    quota.gpus.get(ANY_MODEL).map(|&n| gpus_to_milli(n))
}

/// 422 naming the first limit the job would exceed. Pure: the plan step of submission.
///
/// `quota.gpus["*"]` limits all models together; `quota.gpus[model]` limits
/// the GPUs of that model, which a job is charged against when it allows it.
pub(crate) fn check_job_quota(
    spec: &JobSpec,
    quota: &Quota,
    held: &GpuUse,
    month: &MonthUse,
    max_pending: u64,
) -> Result<(), ApiError> {
    let want = spec.total_milli();
    if held.pending_jobs >= max_pending {
        return Err(ApiError::quota_exceeded(
            "pending_jobs",
            format!(
                "{} of your jobs are waiting to start, the most one tenant may queue ({max_pending}); wait for some to start, or cancel some",
                held.pending_jobs
            ),
        ));
    }
    if let Some(&max) = quota.gpus.get(ANY_MODEL) {
        let limit = gpus_to_milli(max);
        if held.total_milli + want > limit {
            return Err(ApiError::quota_exceeded(
                "gpus.*",
                format!(
                    "quota gpus.* (all models) {max} would be exceeded: {} GPUs held + {} requested",
                    milli_to_gpus(held.total_milli),
                    milli_to_gpus(want)
                ),
            ));
        }
    }
    for model in &spec.gpu_models {
        if let Some(&max) = quota.gpus.get(model) {
            let limit = gpus_to_milli(max);
            let have = held.by_model_milli.get(model).copied().unwrap_or(0);
            if have + want > limit {
                return Err(ApiError::quota_exceeded(
                    format!("gpus.{model}"),
                    format!(
                        "quota gpus.{model} {max} would be exceeded: {} held + {} requested",
                        milli_to_gpus(have),
                        milli_to_gpus(want)
                    ),
                ));
            }
        }
    }
    if let Some(max) = quota.gpu_hours_any() {
        if month.milli_gpu_seconds >= max.saturating_mul(3_600_000) {
            return Err(ApiError::quota_exceeded(
                "gpu_hours_per_month.*",
                format!(
                    "quota gpu_hours_per_month.* (all models) {max} is used up ({:.2} GPU-hours this month)",
                    month.gpu_hours
                ),
            ));
        }
    }
    if spec.kind == JobKind::Inference {
        if let Some(max) = quota.tokens_any() {
            let used = month.tokens;
            if used >= max {
                return Err(ApiError::quota_exceeded(
                    "tokens_per_month.*",
                    format!("quota tokens_per_month.* (all tiers) {max} is used up ({used} tokens this month)"),
                ));
            }
        }
    }
    Ok(())
}

/// Submit a training job or an inference service.
#[utoipa::path(post, path = "/v1/jobs", tag = "tenant", security(("bearer" = [])),
    request_body = JobRequest,
    responses((status = 201, body = JobView), StdErrors))]
pub async fn submit_job(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let spec = validate_job(&tenant, req)?;
    // Check and reserve under the tenant's admission lock: a job submitted
    // meanwhile is counted in `held` before the next check.
    let admission = state.admission_lock(&tenant);
    let _admitting = admission.lock().await;
    let quota = state.quota_of(&tenant).await?;
    let held = state.jobs().gpu_use(&tenant).await?;
    let month = state.month_usage(&tenant, state.jobs().now()).await?;
    check_job_quota(&spec, &quota, &held, &month, state.max_pending_jobs())?;
    let job = state.jobs().submit(spec).await?;
    let location =
        HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)).map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

/// The caller's jobs, a page at a time in id order (follow `next`).
#[utoipa::path(get, path = "/v1/jobs", tag = "tenant", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = JobPage), StdErrors))]
pub async fn list_jobs(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = q.size()?;
    let page = state
        .jobs()
        .list(&tenant, q.after.as_deref(), limit)
        .await?;
    Ok(Json(page))
}

/// One job: phase, placement, and why it is pending or why it runs where it does.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "tenant", security(("bearer" = [])),
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), StdErrors))]
pub async fn get_job(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs().get(&tenant, &id).await?))
}

/// Cancel a job; returns it in its final state.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "tenant", security(("bearer" = [])),
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), StdErrors))]
pub async fn delete_job(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs().cancel(&tenant, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::api::MAX_PENDING_JOBS;

    fn job() -> JobRequest {
        serde_json::from_value(serde_json::json!({
            "kind": "training", "name": "llm-7b", "replicas": 2,
            "gpus_per_replica": 4, "image": "registry.local/train:1"
        }))
        .unwrap()
    }

    #[test]
    fn valid_job_becomes_a_spec_in_milli_gpus() {
        let spec = validate_job("acme", job()).unwrap();
        assert_eq!(spec.milli_per_replica, 4000);
        assert_eq!(spec.total_milli(), 8000);
        assert_eq!(spec.tenant, "acme");
        assert_eq!(spec.token_tier, None);
    }

    #[test]
    fn each_bad_job_field_is_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"name": "Bad_Name"}), "name"),
            (serde_json::json!({"replicas": 0}), "replicas"),
            (
                serde_json::json!({"gpus_per_replica": 0}),
                "gpus_per_replica",
            ),
            (
                serde_json::json!({"gpus_per_replica": 65}),
                "gpus_per_replica",
            ),
            (serde_json::json!({"gpu_milli": 500}), "gpu_milli"),
            (
                serde_json::json!({"gpu_models": ["H100", "H100"]}),
                "gpu_models[1]",
            ),
            (serde_json::json!({"gpu_models": [""]}), "gpu_models[0]"),
            (serde_json::json!({"image": "a b"}), "image"),
            (serde_json::json!({"image": ""}), "image"),
            (serde_json::json!({"latency_slo_ms": 20}), "latency_slo_ms"),
            (serde_json::json!({"token_tier": "basic"}), "token_tier"),
            (serde_json::json!({"max_runtime_s": 0}), "max_runtime_s"),
            (serde_json::json!({"max_delay_s": 0}), "max_delay_s"),
            (serde_json::json!({"max_delay_s": 604_801}), "max_delay_s"),
            (serde_json::json!({"region": ""}), "region"),
        ];
        for (patch, field) in cases {
            let mut v = serde_json::json!({
                "kind": "training", "name": "llm-7b", "replicas": 2,
                "gpus_per_replica": 4, "image": "registry.local/train:1"
            });
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let req: JobRequest = serde_json::from_value(v).unwrap();
            let err = validate_job("acme", req).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn inference_needs_user_region_with_slo_and_defaults_tier() {
        let mut r = job();
        r.kind = JobKind::Inference;
        r.latency_slo_ms = Some(20);
        assert_eq!(
            validate_job("a", r).unwrap_err().field.as_deref(),
            Some("user_region")
        );
        let mut r = job();
        r.kind = JobKind::Inference;
        let spec = validate_job("a", r).unwrap();
        assert_eq!(spec.token_tier, Some(Tier::Basic));
        // A start delay is training's: a service serves from the start.
        let mut r = job();
        r.kind = JobKind::Inference;
        r.max_delay_s = Some(3600);
        assert_eq!(
            validate_job("a", r).unwrap_err().field.as_deref(),
            Some("max_delay_s")
        );
        let mut r = job();
        r.max_delay_s = Some(3600);
        assert_eq!(validate_job("a", r).unwrap().max_delay_s, Some(3600));
    }

    #[test]
    fn quota_names_the_limit_that_would_be_exceeded() {
        let spec = validate_job("a", job()).unwrap(); // 8 GPUs, any model
        let mut held = GpuUse {
            total_milli: 4000,
            by_model_milli: BTreeMap::from([("H100".to_string(), 4000)]),
            pending_jobs: 2,
        };
        let none = MonthUse::default();
        // A tenant's queue is bounded: the limit is named.
        let open = Quota::default();
        assert!(check_job_quota(&spec, &open, &held, &none, 3).is_ok());
        let e = check_job_quota(&spec, &open, &held, &none, 2).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("pending_jobs"));
        assert!(e.message.contains("(2)"), "{}", e.message);
        held.pending_jobs = 0;
        let limit = |k: &str, n: i64| Quota {
            gpus: BTreeMap::from([(k.to_string(), n)]),
            ..Quota::default()
        };
        assert!(check_job_quota(&spec, &limit("*", 12), &held, &none, MAX_PENDING_JOBS).is_ok());
        let e =
            check_job_quota(&spec, &limit("*", 11), &held, &none, MAX_PENDING_JOBS).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("gpus.*"));
        assert_eq!(e.code, "quota_exceeded");

        let mut h100 = spec.clone();
        h100.gpu_models = vec!["H100".into()];
        let e =
            check_job_quota(&h100, &limit("H100", 11), &held, &none, MAX_PENDING_JOBS).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("gpus.H100"));
        assert!(check_job_quota(&h100, &limit("H100", 12), &held, &none, MAX_PENDING_JOBS).is_ok());
        // A job pinned to another model is not charged to H100's limit.
        let mut a100 = spec.clone();
        a100.gpu_models = vec!["A100".into()];
        assert!(check_job_quota(&a100, &limit("H100", 11), &held, &none, MAX_PENDING_JOBS).is_ok());

        let q = Quota {
            gpu_hours_per_month: BTreeMap::from([("*".to_string(), 10)]),
            ..Quota::default()
        };
        let used = MonthUse {
            milli_gpu_seconds: 10 * 3_600_000,
            gpu_hours: 10.0,
            tokens: 0,
        };
        let e = check_job_quota(&spec, &q, &held, &used, MAX_PENDING_JOBS).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("gpu_hours_per_month.*"));
        let used = MonthUse {
            milli_gpu_seconds: 10 * 3_600_000 - 1,
            ..used
        };
        assert!(check_job_quota(&spec, &q, &held, &used, MAX_PENDING_JOBS).is_ok());

        let q = Quota {
            tokens_per_month: BTreeMap::from([("*".to_string(), 100)]),
            ..Quota::default()
        };
        let used = MonthUse {
            tokens: 100,
            ..MonthUse::default()
        };
        // Tokens limit inference only.
        assert!(check_job_quota(&spec, &q, &held, &used, MAX_PENDING_JOBS).is_ok());
        let mut inf = spec.clone();
        inf.kind = JobKind::Inference;
        let e = check_job_quota(&inf, &q, &held, &used, MAX_PENDING_JOBS).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tokens_per_month.*"));
    }
}
