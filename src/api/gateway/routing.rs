//! A tenant's routing default for its calls through the gateway: the region
//! its users call from and the round trip they accept (`GET`/`PUT
//! /v1/routing` by the tenant, `/v1/tenants/{name}/routing` by the admin;
//! both audited). A call's `X-Zhisuan-Region` / `X-Zhisuan-Latency-Slo-Ms`
//! override it field by field.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::admin::ADMIN_ACTOR;
use crate::api::auth::{Admin, TenantCaller};
use crate::api::extract::ApiJson;
use crate::api::openapi::StdErrors;
use crate::api::{ApiError, ApiState};
use crate::ledger::routing::Routing;

/// A tenant's routing default; `null`: none (routing by load alone unless
/// a call's headers say otherwise).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingDefault {
    pub routing: Option<Routing>,
}

/// The caller's routing default.
#[utoipa::path(get, path = "/v1/routing", tag = "gateway", security(("bearer" = [])),
    responses((status = 200, body = RoutingDefault), StdErrors))]
pub async fn own(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
) -> Result<Json<RoutingDefault>, ApiError> {
    read(&state, tenant).await
}

/// Sets (`null`: clears) the caller's routing default: `{"routing":
/// {"user_region": "beijing", "latency_slo_ms": 40}}`. Audited.
#[utoipa::path(put, path = "/v1/routing", tag = "gateway", security(("bearer" = [])),
    request_body = RoutingDefault,
    responses((status = 200, body = RoutingDefault), StdErrors))]
pub async fn set_own(
    State(state): State<ApiState>,
    TenantCaller(tenant): TenantCaller,
    ApiJson(body): ApiJson<RoutingDefault>,
) -> Result<Json<RoutingDefault>, ApiError> {
    write(&state, tenant.clone(), tenant, body).await
}

/// A tenant's routing default (admin).
#[utoipa::path(get, path = "/v1/tenants/{name}/routing", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant")),
    responses((status = 200, body = RoutingDefault), StdErrors))]
pub async fn of_tenant(
    State(state): State<ApiState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<RoutingDefault>, ApiError> {
    read(&state, name).await
}

/// Sets (`null`: clears) a tenant's routing default (admin). Audited.
#[utoipa::path(put, path = "/v1/tenants/{name}/routing", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant")),
    request_body = RoutingDefault,
    responses((status = 200, body = RoutingDefault), StdErrors))]
pub async fn set_of_tenant(
    State(state): State<ApiState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoutingDefault>,
) -> Result<Json<RoutingDefault>, ApiError> {
    write(&state, ADMIN_ACTOR.to_string(), name, body).await
}

async fn read(state: &ApiState, tenant: String) -> Result<Json<RoutingDefault>, ApiError> {
    let t = tenant.clone();
    let (known, routing) = state
        .blocking(move |l| Ok((l.tenant(&t)?.is_some(), l.routing(&t)?)))
        .await?;
    if !known {
        return Err(ApiError::not_found(format!("no tenant `{tenant}`")));
    }
    Ok(Json(RoutingDefault { routing }))
}

async fn write(
    state: &ApiState,
    actor: String,
    tenant: String,
    body: RoutingDefault,
) -> Result<Json<RoutingDefault>, ApiError> {
    if let Some(r) = &body.routing {
        known_region(state, &r.user_region).await?;
    }
    let (t, routing) = (tenant.clone(), body.routing.clone());
    state
        .blocking(move |l| l.set_routing(&actor, &t, routing.as_ref()))
        .await?;
    state.gateway().forget_tenant(&tenant);
    Ok(Json(body))
}

/// `region` is a user region of the latency table or a region's name.
async fn known_region(state: &ApiState, region: &str) -> Result<(), ApiError> {
    let regions = state.jobs().regions().await?;
    let mut names: Vec<&str> = regions
        .iter()
        .flat_map(|r| {
            std::iter::once(r.name.as_str()).chain(r.latency_ms.keys().map(String::as_str))
        })
        .collect();
    if names.contains(&region) {
        return Ok(());
    }
    names.sort_unstable();
    names.dedup();
    Err(ApiError::invalid(
        "routing.user_region",
        format!(
            "`{region}` is not a region here; one of: {} (GET /v1/regions lists them)",
            names.join(", ")
        ),
    ))
}
