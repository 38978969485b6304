//! `GET /v1/overview`: the operator page's current values — each region's
//! GPUs (installed, allocated) and green share now, from the job backend;
//! this month's GPU time, energy and carbon by region, each tenant's
//! charges, voucher cover and tokens, and vouchers' balances, from the
//! ledger (the same totals as the statements, kept across restarts); the
//! workloads waiting at the newest pending sample. Who sees tenants' rows
//! follows `/metrics`' rule ([`MetricsReader`]): the admin or scrape key
//! all, a tenant's key its own, no key none.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics_access::MetricsReader;
use super::openapi::StdErrors;
use super::{ApiError, ApiState};
use crate::ledger::pending::PendingNow;
use crate::ledger::totals::{MonthTotals, RegionMonth, TenantMonth};
use crate::ledger::{Month, Voucher};

/// Most tenants one overview lists (the largest by charges).
pub const MAX_TENANTS: usize = 50;
/// Most vouchers one overview lists (the largest spendable balances).
pub const MAX_VOUCHERS: usize = 200;

/// One region now and this month.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegionNow {
    pub name: String,
    /// GPUs installed.
    pub gpus: u64,
    /// GPUs allocated to workloads now (fractional GPUs count their share).
    pub gpus_allocated: f64,
    /// Share of the region's power that is green now, 0..=1.
    pub green_share: f64,
    /// This month's GPU time, milli-GPU-seconds (3,600,000 = one GPU-hour).
    pub milli_gpu_s: i64,
    /// This month's facility energy, joules.
    pub facility_j: i64,
    /// This month's carbon, milligrams CO₂.
    pub carbon_mg: i64,
}

/// A voucher's spendable balance.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct VoucherBalance {
    pub tenant: String,
    pub id: String,
    pub issuer: String,
    /// What charges made now could still draw, fen.
    pub spendable_fen: i64,
    pub valid_until: DateTime<Utc>,
}

/// The operator page's current values.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// `YYYY-MM`: the month the totals cover (by the backend's clock, which
    /// is simulated time in the demo).
    pub month: String,
    pub as_of: DateTime<Utc>,
    /// Regions of the backend, then regions with records only, by name.
    pub regions: Vec<RegionNow>,
    /// Workloads waiting at the newest sample; absent when none was taken
    /// in the last 5 minutes (no controller leading).
    pub pending: Option<PendingNow>,
    /// This month's tenants with records, at most 50 (the largest by
    /// charges), by name; the caller's own only with a tenant key, none
    /// without a key.
    pub tenants: Vec<TenantMonth>,
    /// How many tenants this caller may see had records this month.
    pub tenants_total: usize,
    /// Whether tenants' rows and vouchers were left out for want of a key.
    pub tenants_hidden: bool,
    /// Vouchers with a spendable balance now, at most 200 (the largest), by
    /// tenant and id; the same rule as `tenants`.
    pub vouchers: Vec<VoucherBalance>,
}

/// The operator page's current values: regions now, this month's totals.
#[utoipa::path(get, path = "/v1/overview", tag = "public", security((), ("bearer" = [])),
    responses((status = 200, body = Overview), StdErrors))]
pub async fn overview(
    State(state): State<ApiState>,
    reader: MetricsReader,
) -> Result<Json<Overview>, ApiError> {
    let now = state.jobs().now();
    let month = Month::of(now);
    let live = state.jobs().regions().await?;
    // Only the vouchers this reader may see are read.
    let whose = match &reader {
        MetricsReader::All => Some(None),
        MetricsReader::Public => None,
        MetricsReader::Tenant(own) => Some(Some(own.clone())),
    };
    let (totals, pending, vouchers) = state
        .blocking(move |l| {
            let vouchers = match &whose {
                Some(tenant) => l.vouchers(tenant.as_deref())?,
                None => Vec::new(),
            };
            Ok((
                l.month_totals(month)?,
                l.latest_pending(now.timestamp())?,
                vouchers,
            ))
        })
        .await?;
    let MonthTotals {
        tenants,
        regions: used,
    } = totals;
    let regions = merge_regions(live, used);
    let tenants: Vec<TenantMonth> = tenants
        .into_iter()
        .filter(|t| reader.sees(&t.tenant))
        .collect();
    let tenants_total = tenants.len();
    let vouchers = spendable(vouchers, now);
    Ok(Json(Overview {
        month: month.to_string(),
        as_of: now,
        regions,
        pending,
        tenants: largest(tenants),
        tenants_total,
        tenants_hidden: reader == MetricsReader::Public,
        vouchers,
    }))
}

/// The backend's regions with this month's totals, then regions that
/// have records but are no longer in the backend.
fn merge_regions(live: Vec<super::jobs::RegionView>, used: Vec<RegionMonth>) -> Vec<RegionNow> {
    let mut used: BTreeMap<String, RegionMonth> =
        used.into_iter().map(|r| (r.region.clone(), r)).collect();
    let mut out: Vec<RegionNow> = live
        .into_iter()
        .map(|r| {
            let m = used.remove(&r.name).unwrap_or_default();
            RegionNow {
                gpus_allocated: (r.gpus as f64 - r.gpus_free).max(0.0),
                gpus: r.gpus,
                green_share: r.green_share,
                name: r.name,
                milli_gpu_s: m.milli_gpu_s,
                facility_j: m.facility_j,
                carbon_mg: m.carbon_mg,
            }
        })
        .collect();
    out.extend(used.into_values().map(|m| RegionNow {
        name: m.region,
        gpus: 0,
        gpus_allocated: 0.0,
        green_share: 0.0,
        milli_gpu_s: m.milli_gpu_s,
        facility_j: m.facility_j,
        carbon_mg: m.carbon_mg,
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The [`MAX_TENANTS`] largest by charges (then GPU time), by name.
fn largest(mut tenants: Vec<TenantMonth>) -> Vec<TenantMonth> {
    tenants.sort_by(|a, b| {
        (b.gross_fen, b.milli_gpu_s)
            .cmp(&(a.gross_fen, a.milli_gpu_s))
            .then_with(|| a.tenant.cmp(&b.tenant))
    });
    tenants.truncate(MAX_TENANTS);
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    tenants
}

/// Vouchers with a spendable balance at `now`: the [`MAX_VOUCHERS`]
/// largest, by tenant and id.
fn spendable(vouchers: Vec<Voucher>, now: DateTime<Utc>) -> Vec<VoucherBalance> {
    let mut out: Vec<VoucherBalance> = vouchers
        .into_iter()
        .filter_map(|v| {
            let spendable_fen = v.spendable_at(now);
            (spendable_fen > 0).then_some(VoucherBalance {
                spendable_fen,
                tenant: v.tenant,
                id: v.id,
                issuer: v.issuer,
                valid_until: v.valid_until,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.spendable_fen
            .cmp(&a.spendable_fen)
            .then_with(|| a.id.cmp(&b.id))
    });
    out.truncate(MAX_VOUCHERS);
    out.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
    out
}
