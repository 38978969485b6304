//! The admin's endpoints: tenants, quotas, a tenant's usage, vouchers
//! issued, the audit log. Every change is audited under [`ADMIN_ACTOR`].

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::checks::{check_name, check_text, parse_time, PageQuery};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::handlers::{usage_of, RangeQuery};
use super::jobs::page_of;
use super::openapi::StdErrors;
use super::ApiState;
use crate::ledger::{
    ratio_to_bp, AuditEvent, ChargeKind, Quota, Tenant, UsageSummary, Voucher, VoucherSpec,
};

/// The admin as the ledger's audit log names it.
pub(super) const ADMIN_ACTOR: &str = "admin";

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

/// For a tenant named in the path: unknown is 404, not a bad field.
pub(super) fn unknown_tenant_is_404(e: ApiError) -> ApiError {
    if e.field.as_deref() == Some("tenant") && e.message.contains("unknown tenant") {
        ApiError::not_found(e.message)
    } else {
        e
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
