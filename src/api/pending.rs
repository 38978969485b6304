//! `GET /v1/pending` (admin): every tenant's jobs waiting to start, longest
//! waiting first, each with why — the operator page's "why pending" table.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::extract::ApiQuery;
use super::jobs::JobView;
use super::openapi::StdErrors;
use super::{ApiError, ApiState};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PendingQuery {
    /// Jobs to return, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

/// A waiting job and its tenant.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PendingJob {
    pub tenant: String,
    pub job: JobView,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PendingList {
    /// Longest waiting first.
    pub jobs: Vec<PendingJob>,
}

/// Every tenant's jobs waiting to start, longest waiting first, with why.
#[utoipa::path(get, path = "/v1/pending", tag = "admin", security(("bearer" = [])),
    params(PendingQuery),
    responses((status = 200, body = PendingList), StdErrors))]
pub async fn pending(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<PendingQuery>,
) -> Result<Json<PendingList>, ApiError> {
    let limit = super::checks::checked_limit(q.limit, "")?;
    let jobs = state
        .jobs()
        .waiting(limit)
        .await?
        .into_iter()
        .map(|(tenant, job)| PendingJob { tenant, job })
        .collect();
    Ok(Json(PendingList { jobs }))
}
