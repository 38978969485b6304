//! Use over time — GPU-hours, spend, voucher cover, carbon and tokens per
//! hour or day — from the ledger's records (never from `/metrics`):
//! `GET /v1/usage/series`, the caller's own (the tenant console), and
//! `GET /v1/series?group=tenant|region`, everyone's split by tenant or
//! region (admin; the operator page).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, TenantCaller};
use super::checks::parse_time;
use super::extract::ApiQuery;
use super::openapi::StdErrors;
use super::{ApiError, ApiState};
use crate::ledger::pending::PendingPoint;
use crate::ledger::series::{Bucket, Group, SeriesPoint};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// `hour` or `day` (default `day`).
    pub bucket: Option<Bucket>,
    /// RFC 3339 or YYYY-MM-DD; absent: 30 days (48 hours by hour) before `to`.
    pub from: Option<String>,
    /// RFC 3339 or YYYY-MM-DD (exclusive); absent: the end of the current bucket.
    pub to: Option<String>,
}

impl SeriesQuery {
    /// The bucket and `[from, to)` asked for, defaults filled in ([`span`]).
    fn span(&self, now: DateTime<Utc>) -> Result<(Bucket, i64, i64), ApiError> {
        span(self.bucket, self.from.as_deref(), self.to.as_deref(), now)
    }
}

/// The series and what it covers.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub bucket: Bucket,
    /// One point per bucket, oldest first, zeros included (at most 1,000).
    pub points: Vec<SeriesPoint>,
}

/// The caller's use over time, per hour or day (UTC).
#[utoipa::path(get, path = "/v1/usage/series", tag = "tenant", security(("bearer" = [])),
    params(SeriesQuery),
    responses((status = 200, body = Series), StdErrors))]
pub async fn own_series(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> Result<Json<Series>, ApiError> {
    let (bucket, from, to) = q.span(state.jobs().now())?;
    let points = state
        .blocking(move |l| l.usage_series(&tenant, from, to, bucket))
        .await?;
    Ok(Json(Series { bucket, points }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GroupedQuery {
    /// `tenant` or `region`.
    pub group: Group,
    /// `hour` or `day` (default `day`).
    pub bucket: Option<Bucket>,
    /// RFC 3339 or YYYY-MM-DD; absent: 30 days (48 hours by hour) before `to`.
    pub from: Option<String>,
    /// RFC 3339 or YYYY-MM-DD (exclusive); absent: the end of the current bucket.
    pub to: Option<String>,
}

/// One group's series.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GroupSeries {
    /// The tenant or region.
    pub name: String,
    pub points: Vec<SeriesPoint>,
}

/// Series split by tenant or region.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GroupedSeries {
    pub group: Group,
    pub bucket: Bucket,
    /// The 50 largest groups (by charges, then GPU time), by name; each on
    /// the same buckets.
    pub groups: Vec<GroupSeries>,
}

/// Every tenant's use over time, split by tenant or region (admin).
#[utoipa::path(get, path = "/v1/series", tag = "admin", security(("bearer" = [])),
    params(GroupedQuery),
    responses((status = 200, body = GroupedSeries), StdErrors))]
pub async fn grouped_series(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<GroupedQuery>,
) -> Result<Json<GroupedSeries>, ApiError> {
    let (bucket, from, to) = span(
        q.bucket,
        q.from.as_deref(),
        q.to.as_deref(),
        state.jobs().now(),
    )?;
    let group = q.group;
    let groups = state
        .blocking(move |l| l.grouped_series(group, from, to, bucket))
        .await?
        .into_iter()
        .map(|(name, points)| GroupSeries { name, points })
        .collect();
    Ok(Json(GroupedSeries {
        group,
        bucket,
        groups,
    }))
}

/// One reason's waiting workloads over time.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ReasonSeries {
    /// Why they wait (`QuotaExceeded`, `Unschedulable`, `TimeShifted`, …).
    pub reason: String,
    pub points: Vec<PendingPoint>,
}

/// Workloads waiting over time: each bucket's peak, in total and by reason.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PendingOverTime {
    pub bucket: Bucket,
    pub total: Vec<PendingPoint>,
    pub reasons: Vec<ReasonSeries>,
}

/// Workloads waiting over time, per hour or day (admin; the operator page):
/// sampled once a minute by the leading controller into the ledger.
#[utoipa::path(get, path = "/v1/series/pending", tag = "admin", security(("bearer" = [])),
    params(SeriesQuery),
    responses((status = 200, body = PendingOverTime), StdErrors))]
pub async fn pending_series(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> Result<Json<PendingOverTime>, ApiError> {
    let (bucket, from, to) = q.span(state.jobs().now())?;
    let s = state
        .blocking(move |l| l.pending_series(from, to, bucket))
        .await?;
    Ok(Json(PendingOverTime {
        bucket,
        total: s.total,
        reasons: s
            .reasons
            .into_iter()
            .map(|(reason, points)| ReasonSeries { reason, points })
            .collect(),
    }))
}

/// The bucket (default `day`) and `[from, to)` in unix seconds, defaults
/// filled in: up to the end of the current bucket, 30 days (48 hours by
/// hour) back.
fn span(
    bucket: Option<Bucket>,
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Bucket, i64, i64), ApiError> {
    let bucket = bucket.unwrap_or(Bucket::Day);
    let b = bucket.seconds();
    let to = match to {
        Some(v) => parse_time("to", v)?.timestamp(),
        None => (now.timestamp().div_euclid(b) + 1) * b,
    };
    let from = match from {
        Some(v) => parse_time("from", v)?.timestamp(),
        None => match bucket {
            Bucket::Hour => to - 48 * b,
            Bucket::Day => to - 30 * b,
        },
    };
    Ok((bucket, from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_last_30_days_or_48_hours_up_to_the_current_bucket() {
        let now = DateTime::from_timestamp(1_800_000_123, 0).unwrap();
        let (_, f, t) = span(Some(Bucket::Hour), None, None, now).unwrap();
        assert_eq!(t, 1_800_000_123 / 3600 * 3600 + 3600);
        assert_eq!((t - f) / 3600, 48);
        let (bucket, f, t) = span(None, None, None, now).unwrap();
        assert_eq!(bucket, Bucket::Day);
        assert_eq!((t - f) / 86_400, 30);
        assert!(t > 1_800_000_123);
        let bad = span(None, Some("yesterday"), None, now).unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("from"));
    }
}
