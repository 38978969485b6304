//! The endpoints. Each validates its input completely (naming the field and
//! the fix), checks the caller's role, then calls the ledger or the job backend.

use crate::jobs::gpus_to_milli;
use crate::ledger::Tier;
use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, TenantCaller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::jobs::{page_of, GpuUse, JobKind, JobPage, JobSpec, JobView, RegionView, MAX_PAGE};
use super::metrics_access::MetricsReader;
use super::openapi::StdErrors;
use super::ApiState;
use crate::ledger::{
    ratio_to_bp, AuditEvent, ChargeKind, Month, MonthUse, Quota, Tenant, UsageSummary, Voucher,
    VoucherSpec, VoucherStatus,
};

/// The admin as the ledger's audit log names it.
pub(super) const ADMIN_ACTOR: &str = "admin";

// ---------- validation helpers ----------

/// Kubernetes-style name (DNS-1123 label): tenants become namespaces, jobs
/// become resources.
pub(super) fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{field}: {value:?} is not a valid name; use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Free text such as an issuer or image: non-empty, bounded, nothing hidden
/// ([`crate::ledger::types::text_problem`]).
fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field}: must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field}: at most {max} bytes"),
        ));
    }
    if let Some(why) = crate::ledger::types::text_problem(value) {
        return Err(ApiError::invalid(field, format!("{field}: {why}")));
    }
    Ok(())
}

/// An instant given as RFC 3339 (`2026-11-01T00:00:00Z`) or a date (`2026-11-01`, midnight UTC).
pub(crate) fn parse_time(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(ApiError::invalid(
        field,
        format!("{field}: {value:?} is not a time; use RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)"),
    ))
}

/// `[from, to)`, either end open.
type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, ApiError> {
    let from = from.map(|v| parse_time("from", v)).transpose()?;
    let to = to.map(|v| parse_time("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if t < f {
            return Err(ApiError::invalid("to", "to: must not be before from"));
        }
    }
    Ok((from, to))
}

// ---------- public ----------

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "public",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
    })
}

/// Prometheus text exposition of the shared registry. Series with a
/// `tenant` label only with a key: the scrape key or the admin key (all),
/// a tenant's key (its own).
#[utoipa::path(get, path = "/metrics", tag = "public",
    responses((status = 200, description = "Prometheus text format; per-tenant series only with a key", content_type = "text/plain", body = String),
              (status = 401, description = "a key was sent that is not the scrape, admin or a tenant key")))]
pub async fn metrics(State(state): State<ApiState>, reader: MetricsReader) -> Response {
    use prometheus::Encoder;
    let families = reader.filter(state.inner.registry.gather());
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut buf) {
        return ApiError::internal(e).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        buf,
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "public",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_json(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET /openapi.json lists them")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new_method_not_allowed()
}

// ---------- admin ----------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1-63 lowercase letters, digits or '-'.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub name: String,
    /// An existing tenant this one nests under.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub parent: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedTenant {
    pub name: String,
    pub parent: Option<String>,
    /// Shown once; only its hash is stored.
    pub api_key: String,
}

/// Create a tenant and its API key (admin).
#[utoipa::path(post, path = "/v1/tenants", tag = "admin", security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = CreatedTenant), StdErrors))]
pub async fn create_tenant(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiJson(req): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    check_name("name", &req.name)?;
    if let Some(p) = &req.parent {
        check_name("parent", p)?;
    }
    let (name, parent) = (req.name.clone(), req.parent.clone());
    let (tenant, api_key) = state
        // One transaction: a lost response never leaves a tenant without a key.
        .blocking(move |l| l.create_tenant_with_key(ADMIN_ACTOR, &name, parent.as_deref()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            name: tenant.name,
            parent: tenant.parent,
            api_key,
        }),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The tenants (admin), a page at a time in name order.
#[utoipa::path(get, path = "/v1/tenants", tag = "admin", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = TenantList), StdErrors))]
pub async fn list_tenants(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<TenantList>, ApiError> {
    let limit = q.size()?;
    let after = q.after.clone();
    let tenants = state
        .blocking(move |l| l.tenants_after(after.as_deref(), limit as i64 + 1))
        .await?;
    let (tenants, next) = page_of(tenants, limit, |t| t.name.clone());
    Ok(Json(TenantList { tenants, next }))
}

/// Set a tenant's quota (admin). Absent limits are unlimited.
#[utoipa::path(put, path = "/v1/tenants/{name}/quota", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant name")),
    request_body = Quota,
    responses((status = 200, body = Quota), StdErrors))]
pub async fn set_quota(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(name): Path<String>,
    ApiJson(quota): ApiJson<Quota>,
) -> Result<Json<Quota>, ApiError> {
    let (q, t) = (quota.clone(), name.clone());
    state
        .blocking(move |l| l.set_quota(ADMIN_ACTOR, &t, &q))
        .await
        .map_err(unknown_tenant_is_404)?;
    state.forget_quota(&name);
    // On a cluster the quota also becomes the tenant's TenantQuota, which the
    // controller's admission enforces (the ledger's quota is the truth); a
    // parent with no quota of its own is projected unlimited, so the child's
    // names an existing one.
    let n = name.clone();
    let projections = state
        .blocking(move |l| l.quota_projections(Some(&n)))
        .await?;
    for (tenant, parent, q) in &projections {
        state
            .jobs()
            .project_quota(tenant, parent.as_deref(), q)
            .await?;
    }
    Ok(Json(quota))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339 or YYYY-MM-DD; absent = since the beginning.
    pub from: Option<String>,
    /// RFC 3339 or YYYY-MM-DD (exclusive); absent = until now.
    pub to: Option<String>,
}

/// For a tenant named in the path: unknown is 404, not a bad field.
pub(super) fn unknown_tenant_is_404(e: ApiError) -> ApiError {
    if e.field.as_deref() == Some("tenant") && e.message.contains("unknown tenant") {
        ApiError::not_found(e.message)
    } else {
        e
    }
}

async fn usage_of(
    state: &ApiState,
    tenant: String,
    q: &RangeQuery,
) -> Result<Json<UsageSummary>, ApiError> {
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    let usage = state
        .blocking(move |l| l.usage_summary(&tenant, from, to))
        .await
        .map_err(unknown_tenant_is_404)?;
    Ok(Json(usage))
}

/// A tenant's usage (admin); same shape as `/v1/usage`.
#[utoipa::path(get, path = "/v1/tenants/{name}/usage", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant name"), RangeQuery),
    responses((status = 200, body = UsageSummary), StdErrors))]
pub async fn tenant_usage(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Json<UsageSummary>, ApiError> {
    usage_of(&state, name, &q).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoucherRequest {
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length = 63)]
    pub tenant: String,
    #[schema(min_length = 1, max_length = 128)]
    pub issuer: String,
    /// Face value in fen (1 CNY = 100 fen), > 0.
    #[schema(minimum = 1)]
    pub face_value_fen: i64,
    /// Largest share of each charge the voucher covers, in (0, 1], at most 4 decimals.
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub copay_ratio: f64,
    /// RFC 3339 or YYYY-MM-DD.
    pub valid_from: String,
    /// RFC 3339 or YYYY-MM-DD; after valid_from.
    pub valid_until: String,
    /// Regions where it may be redeemed; absent or empty = all.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// Charge kinds it may pay (`gpu`, `energy`, `tokens`); absent or empty = all.
    #[serde(default)]
    pub kinds: Option<Vec<ChargeKind>>,
    /// A model voucher (模型券): the token tiers it pays; absent or empty =
    /// any. Naming tiers or models limits the voucher to token charges.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["industry"]))]
    pub tiers: Option<Vec<crate::ledger::Tier>>,
    /// A model voucher: the models whose tokens it pays; absent or empty = any.
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// Basis points of a ratio in (0, 1] with at most 4 decimals.
fn copay_bp(ratio: f64) -> Result<i64, ApiError> {
    let field = "copay_ratio";
    let bp = ratio_to_bp(ratio).filter(|&bp| bp > 0).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("copay_ratio: {ratio} is outside (0, 1]; 0.5 means the voucher covers at most half of each charge"),
        )
    })?;
    if (bp as f64 - ratio * 10_000.0).abs() > 1e-6 {
        return Err(ApiError::invalid(
            field,
            "copay_ratio: at most 4 decimal places (basis points)",
        ));
    }
    Ok(bp)
}

/// Issue a compute voucher (算力券) to a tenant (admin).
#[utoipa::path(post, path = "/v1/vouchers", tag = "admin", security(("bearer" = [])),
    request_body = VoucherRequest,
    responses((status = 201, body = Voucher), StdErrors))]
pub async fn issue_voucher(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiJson(req): ApiJson<VoucherRequest>,
) -> Result<(StatusCode, Json<Voucher>), ApiError> {
    check_name("tenant", &req.tenant)?;
    check_text("issuer", &req.issuer, 128)?;
    if req.face_value_fen <= 0 {
        return Err(ApiError::invalid(
            "face_value_fen",
            "face_value_fen: must be > 0 (integer fen; 100 fen = 1 CNY)",
        ));
    }
    let copay_ratio_bp = copay_bp(req.copay_ratio)?;
    let valid_from = parse_time("valid_from", &req.valid_from)?;
    let valid_until = parse_time("valid_until", &req.valid_until)?;
    if valid_until <= valid_from {
        return Err(ApiError::invalid(
            "valid_until",
            "valid_until: must be after valid_from",
        ));
    }
    let regions = req.regions.clone().unwrap_or_default();
    if !regions.is_empty() {
        let known: BTreeSet<String> = state
            .jobs()
            .regions()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut seen = BTreeSet::new();
        for (i, r) in regions.iter().enumerate() {
            let field = format!("regions[{i}]");
            if !known.contains(r) {
                return Err(ApiError::invalid(
                    field.clone(),
                    format!("{field}: unknown region {r:?}; GET /v1/regions lists them"),
                ));
            }
            if !seen.insert(r) {
                return Err(ApiError::invalid(
                    field.clone(),
                    format!("{field}: {r:?} is listed twice"),
                ));
            }
        }
    }
    let spec = VoucherSpec {
        id: None,
        tenant: req.tenant.clone(),
        issuer: req.issuer.clone(),
        face_value_fen: req.face_value_fen,
        copay_ratio_bp,
        valid_from,
        valid_until,
        regions,
        kinds: req.kinds.clone().unwrap_or_default(),
        tiers: req.tiers.clone().unwrap_or_default(),
        models: req.models.clone().unwrap_or_default(),
    };
    let voucher = state
        .blocking(move |l| l.issue_voucher(ADMIN_ACTOR, &spec))
        .await?;
    Ok((StatusCode::CREATED, Json(voucher)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// A `seq` cursor (entries after it), or a time (RFC 3339 / YYYY-MM-DD:
    /// entries at or after it); absent = from the start.
    pub since: Option<String>,
    /// Most entries to return, 1..=10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEvent>,
    /// Pass as `since` to get the entries after these.
    pub next_since: i64,
}

/// Largest audit page.
const AUDIT_MAX: i64 = 10_000;

/// The audit log (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "admin", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditList), StdErrors))]
pub async fn audit_log(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=AUDIT_MAX).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit: must be 1..={AUDIT_MAX}"),
        ));
    }
    let (cursor, after) = match q.since.as_deref() {
        None => (0, None),
        Some(s) => match s.parse::<i64>() {
            Ok(seq) if seq >= 0 => (seq, None),
            Ok(_) => return Err(ApiError::invalid("since", "since: a cursor is >= 0")),
            Err(_) => (0, Some(parse_time("since", s)?)),
        },
    };
    let entries = state
        .blocking(move |l| {
            // A time filter pages through the log; entries are in time order.
            let mut out = Vec::new();
            let mut seq = cursor;
            loop {
                let page = l.audit_since(seq, AUDIT_MAX)?;
                let done = (page.len() as i64) < AUDIT_MAX;
                seq = page.last().map_or(seq, |e| e.seq);
                out.extend(page.into_iter().filter(|e| after.is_none_or(|t| e.at >= t)));
                if done || out.len() as i64 >= limit {
                    break;
                }
            }
            out.truncate(limit as usize);
            Ok(out)
        })
        .await?;
    let next_since = entries.last().map_or(cursor, |e| e.seq);
    Ok(Json(AuditList {
        entries,
        next_since,
    }))
}

// ---------- tenant ----------

#[derive(Serialize, Deserialize, ToSchema)]
pub struct QuotaUse {
    /// GPUs held now (pending + running), fractional for shared GPUs.
    pub gpus: f64,
    pub gpus_by_model: BTreeMap<String, f64>,
    pub gpu_hours_this_month: f64,
    pub tokens_this_month: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub tenant: String,
    /// `YYYY-MM` the monthly figures are for (UTC).
    pub month: String,
    pub limits: Quota,
    pub used: QuotaUse,
}

fn milli_to_gpus(m: u64) -> f64 {
    m as f64 / 1000.0
}

/// The caller's limits and current use.
#[utoipa::path(get, path = "/v1/quota", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = QuotaView), StdErrors))]
pub async fn own_quota(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
) -> Result<Json<QuotaView>, ApiError> {
    let now = state.jobs().now();
    let limits = state.quota_of(&tenant).await?;
    let gpu_use = state.jobs().gpu_use(&tenant).await?;
    let usage = state.month_usage(&tenant, now).await?;
    Ok(Json(QuotaView {
        tenant,
        month: Month::of(now).to_string(),
        limits,
        used: QuotaUse {
            gpus: milli_to_gpus(gpu_use.total_milli),
            gpus_by_model: gpu_use
                .by_model_milli
                .iter()
                .map(|(m, v)| (m.clone(), milli_to_gpus(*v)))
                .collect(),
            gpu_hours_this_month: usage.gpu_hours,
            tokens_this_month: usage.tokens,
        },
    }))
}

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

/// One page of a list: `limit` items after the cursor `after`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

impl PageQuery {
    /// The page size, checked.
    pub fn size(&self) -> Result<usize, ApiError> {
        checked_limit(self.limit, "; page with `after` for more")
    }
}

/// A list's `limit` query parameter: 1..=[`MAX_PAGE`], default 100; out of
/// range, a 422 naming `limit` (its message ends with `hint`).
pub fn checked_limit(limit: Option<i64>, hint: &str) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE as i64).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit: {limit} is outside 1..={MAX_PAGE}{hint}"),
        ));
    }
    Ok(limit as usize)
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

/// The caller's usage and charges in `[from, to)`.
#[utoipa::path(get, path = "/v1/usage", tag = "tenant", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = UsageSummary), StdErrors))]
pub async fn own_usage(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Json<UsageSummary>, ApiError> {
    usage_of(&state, tenant, &q).await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// `json` (default) or `csv`.
    pub format: Option<StatementFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatementFormat {
    Json,
    Csv,
}

/// The caller's statement for a month (`YYYY-MM`), JSON or CSV.
#[utoipa::path(get, path = "/v1/statements/{month}", tag = "tenant", security(("bearer" = [])),
    params(("month" = String, Path, description = "YYYY-MM", pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$"), StatementQuery),
    responses(
        (status = 200, description = "the statement", content(
            (crate::ledger::Statement = "application/json"),
            (String = "text/csv"))),
        StdErrors))]
pub async fn statement(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    Path(month): Path<String>,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> Result<Response, ApiError> {
    let month = Month::parse(&month).map_err(ApiError::from)?;
    // Dated by the backend's clock: simulated time on the simulated cluster.
    let as_of = state.jobs().now();
    let st = state
        .blocking(move |l| l.statement_as_of(&tenant, month, as_of))
        .await?;
    Ok(match q.format.unwrap_or(StatementFormat::Json) {
        StatementFormat::Json => Json(st).into_response(),
        StatementFormat::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            st.to_csv(),
        )
            .into_response(),
    })
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct VoucherList {
    pub vouchers: Vec<VoucherView>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A voucher as it stands now: the stored balance, and what of it can still
/// be drawn. An expired voucher's balance has lapsed and is never spendable.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct VoucherView {
    #[serde(flatten)]
    pub voucher: Voucher,
    pub status: VoucherStatus,
    /// What charges made now could still draw (0 unless active).
    pub spendable_fen: i64,
    /// The balance that lapsed unused (0 unless expired).
    pub lapsed_fen: i64,
}

impl VoucherView {
    pub fn at(voucher: Voucher, now: DateTime<Utc>) -> Self {
        VoucherView {
            status: voucher.status_at(now),
            spendable_fen: voucher.spendable_at(now),
            lapsed_fen: voucher.lapsed_at(now),
            voucher,
        }
    }
}

/// The caller's vouchers with balances and their status now, a page at a
/// time in id order.
#[utoipa::path(get, path = "/v1/vouchers", tag = "tenant", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = VoucherList), StdErrors))]
pub async fn own_vouchers(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<VoucherList>, ApiError> {
    let limit = q.size()?;
    let mut vouchers = state.blocking(move |l| l.vouchers(Some(&tenant))).await?;
    vouchers.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(after) = &q.after {
        vouchers.retain(|v| v.id > *after);
    }
    vouchers.truncate(limit + 1);
    let (vouchers, next) = page_of(vouchers, limit, |v| v.id.clone());
    let now = state.jobs().now();
    let vouchers = vouchers
        .into_iter()
        .map(|v| VoucherView::at(v, now))
        .collect();
    Ok(Json(VoucherList { vouchers, next }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegionList {
    pub regions: Vec<RegionView>,
}

/// The region catalog: latency, green share, PUE, price, free GPUs.
#[utoipa::path(get, path = "/v1/regions", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = RegionList), StdErrors))]
pub async fn regions(
    State(state): State<ApiState>,
    _caller: super::auth::Principal,
) -> Result<Json<RegionList>, ApiError> {
    let regions = state.jobs().regions().await?;
    Ok(Json(RegionList { regions }))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn copay_ratio_in_basis_points() {
        assert_eq!(copay_bp(0.5).unwrap(), 5000);
        assert_eq!(copay_bp(1.0).unwrap(), 10000);
        assert_eq!(copay_bp(0.1234).unwrap(), 1234);
        for bad in [0.0, -0.1, 1.01, 0.12345, f64::NAN] {
            assert_eq!(
                copay_bp(bad).unwrap_err().field.as_deref(),
                Some("copay_ratio")
            );
        }
    }

    #[test]
    fn times_months_and_ranges() {
        assert_eq!(
            parse_time("from", "2026-11-01").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("from", "2026-11-01T08:00:00+08:00").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("since", "yesterday")
                .unwrap_err()
                .field
                .as_deref(),
            Some("since")
        );
        assert_eq!(
            parse_range(Some("2026-11-02"), Some("2026-11-01"))
                .unwrap_err()
                .field
                .as_deref(),
            Some("to")
        );
    }

    #[test]
    fn voucher_view_shows_an_expired_balance_as_lapsed() {
        let at = |d| Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap();
        let v = Voucher {
            id: "v1".into(),
            tenant: "acme".into(),
            issuer: "gov".into(),
            face_value_fen: 100_000,
            balance_fen: 40_000,
            copay_ratio_bp: 5000,
            valid_from: at(1),
            valid_until: at(20),
            regions: vec![],
            kinds: vec![],
            tiers: vec![],
            models: vec![],
            issued_at: at(1),
            shared_gross_fen: 0,
        };
        let live = VoucherView::at(v.clone(), at(19));
        assert_eq!(live.status, VoucherStatus::Active);
        assert_eq!((live.spendable_fen, live.lapsed_fen), (40_000, 0));
        let gone = VoucherView::at(v, at(20));
        assert_eq!(gone.status, VoucherStatus::Expired);
        assert_eq!((gone.spendable_fen, gone.lapsed_fen), (0, 40_000));
        let json = serde_json::to_value(&gone).unwrap();
        assert_eq!(json["balance_fen"], 40_000);
        assert_eq!(json["status"], "expired");
        assert_eq!(json["lapsed_fen"], 40_000);
    }
}
