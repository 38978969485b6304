//! The public endpoints (health, metrics, this API's document) and a
//! tenant's own quota, usage, statement, vouchers and regions. The admin's
//! are in [`super::admin`], a tenant's jobs in [`super::job_endpoints`];
//! each endpoint validates its input completely (naming the field and the
//! fix), checks the caller's role, then calls the ledger or the job backend.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::unknown_tenant_is_404;
use super::auth::TenantCaller;
use super::checks::{milli_to_gpus, parse_range, PageQuery};
use super::error::ApiError;
use super::extract::ApiQuery;
use super::jobs::{page_of, RegionView};
use super::metrics_access::MetricsReader;
use super::openapi::StdErrors;
use super::ApiState;
use crate::ledger::{Month, Quota, UsageSummary, Voucher, VoucherStatus};

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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// RFC 3339 or YYYY-MM-DD; absent = since the beginning.
    pub from: Option<String>,
    /// RFC 3339 or YYYY-MM-DD (exclusive); absent = until now.
    pub to: Option<String>,
}

/// A tenant's usage in `[from, to)` (its own, or any for the admin).
pub(super) async fn usage_of(
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
    use chrono::TimeZone;

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
