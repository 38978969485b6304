//! The gateway's endpoints: the OpenAI-compatible calls, `GET /v1/models`,
//! the call audit `GET /v1/calls` and the admin's model grants.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, Response};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::proxy::{forward, Call};
use super::Gateway;
use crate::api::admin::ADMIN_ACTOR;
use crate::api::auth::{Admin, KeyCaller, Principal};
use crate::api::error::ErrorBody;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::openapi::StdErrors;
use crate::api::{ApiError, ApiState};
use crate::ledger::routing::Routing;
use crate::ledger::{CallQuery, CallRecord, Month};

/// The request header naming the caller's region: upstreams there are
/// preferred (OpenAI clients can send it as an extra header).
pub const REGION_HEADER: &str = "x-zhisuan-region";

/// The request header with the caller's round-trip latency target in ms:
/// upstreams in regions within it (from the caller's region, per the region
/// catalog) are preferred.
pub const SLO_HEADER: &str = "x-zhisuan-latency-slo-ms";

/// Largest request body of a model call (prompts are larger than the rest
/// of the API's bodies).
pub const CALL_BODY_LIMIT: usize = 4 << 20;

/// The OpenAI-compatible paths (no idempotency keys there: each call is
/// its own record).
pub const CALL_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .layer(DefaultBodyLimit::max(CALL_BODY_LIMIT))
        .route("/v1/models", get(models))
        .route("/v1/calls", get(calls))
        .route("/v1/tenants/{name}/models", get(grants).put(set_grants))
        .route(
            "/v1/routing",
            get(super::routing::own).put(super::routing::set_own),
        )
        .route(
            "/v1/tenants/{name}/routing",
            get(super::routing::of_tenant).put(super::routing::set_of_tenant),
        )
}

/// OpenAI chat completions through the gateway (`stream: true` streams
/// server-sent events unbuffered). Billed to the key's tenant.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway", security(("bearer" = [])),
    request_body(content = Object, description = "An OpenAI chat completion request; `model` names a model of GET /v1/models"),
    responses(
        (status = 200, description = "The upstream's answer (JSON, or an event stream when `stream` is true); `X-Request-Id` names the call", body = Object),
        (status = 502, description = "the upstream failed after the call was sent", body = ErrorBody),
        (status = 503, description = "the model has no healthy upstream now", body = ErrorBody),
        (status = 504, description = "the upstream did not start answering in time (--upstream-timeout-s)", body = ErrorBody),
        StdErrors))]
pub async fn chat(
    State(s): State<ApiState>,
    c: KeyCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    call(s, c, "chat/completions", &headers, body).await
}

/// OpenAI text completions through the gateway.
#[utoipa::path(post, path = "/v1/completions", tag = "gateway", security(("bearer" = [])),
    request_body(content = Object, description = "An OpenAI completion request"),
    responses(
        (status = 200, description = "The upstream's answer", body = Object),
        (status = 502, description = "the upstream failed after the call was sent", body = ErrorBody),
        (status = 503, description = "the model has no healthy upstream now", body = ErrorBody),
        (status = 504, description = "the upstream did not start answering in time (--upstream-timeout-s)", body = ErrorBody),
        StdErrors))]
pub async fn completions(
    State(s): State<ApiState>,
    c: KeyCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    call(s, c, "completions", &headers, body).await
}

/// OpenAI embeddings through the gateway (prompt tokens only).
#[utoipa::path(post, path = "/v1/embeddings", tag = "gateway", security(("bearer" = [])),
    request_body(content = Object, description = "An OpenAI embeddings request"),
    responses(
        (status = 200, description = "The upstream's answer", body = Object),
        (status = 502, description = "the upstream failed after the call was sent", body = ErrorBody),
        (status = 503, description = "the model has no healthy upstream now", body = ErrorBody),
        (status = 504, description = "the upstream did not start answering in time (--upstream-timeout-s)", body = ErrorBody),
        StdErrors))]
pub async fn embeddings(
    State(s): State<ApiState>,
    c: KeyCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    call(s, c, "embeddings", &headers, body).await
}

fn tenant_of(c: &KeyCaller) -> Result<&str, ApiError> {
    match &c.principal {
        Principal::Tenant(t) => Ok(t),
        Principal::Admin => Err(ApiError::forbidden(
            "model calls are made and billed as a tenant; use a tenant's key",
        )),
    }
}

/// Checks the call (model, permission, monthly tokens, tokens per minute)
/// and forwards it.
async fn call(
    state: ApiState,
    caller: KeyCaller,
    endpoint: &'static str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let at = Utc::now();
    let gw = state.gateway().clone();
    let tenant = tenant_of(&caller)?.to_string();
    let mut request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    if !request.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let name = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid(
                "model",
                "model: required; GET /v1/models lists the models you may call",
            )
        })?
        .to_string();
    let settings = gw.settings_of(&state, &tenant).await?;
    let model = visible_model(&gw, &tenant, settings.grants.as_deref(), &name)?;
    check_month(&state, &gw, &tenant, &model, at).await?;
    gw.tokens_left(&caller.key_hash, started).map_err(|wait| {
        ApiError::token_limit(
            "tokens_per_minute",
            wait,
            format!(
                "this key used its {} tokens per minute; retry after {wait} s",
                gw.tokens_per_minute
            ),
        )
    })?;
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let body = if stream && endpoint != "embeddings" {
        // Ask for the final usage chunk (servers that know the option send it).
        let opts = request
            .as_object_mut()
            .map(|o| o.entry("stream_options").or_insert_with(|| json!({})));
        if let Some(Value::Object(o)) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
        Bytes::from(request.to_string())
    } else {
        body
    };
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(ApiError::internal)?;
    let (user_region, slo_ms) = route_of(headers, settings.routing.as_ref())?;
    let slo = match slo_ms {
        Some(ms) => Some((ms, gw.latency(state.jobs().as_ref()).await)),
        None => None,
    };
    let call = Call {
        gw,
        model,
        tenant,
        key_hash: caller.key_hash,
        endpoint,
        request_id: format!("call-{}", hex::encode(id)),
        request,
        started,
        at,
        user_region,
        slo,
    };
    forward(call, body, stream).await
}

/// The call's region and latency SLO in ms: each from its header when
/// sent, else from the tenant's routing default; an SLO needs a region.
fn route_of(
    headers: &HeaderMap,
    default: Option<&Routing>,
) -> Result<(Option<String>, Option<f64>), ApiError> {
    let (region, slo) = route_headers(headers)?;
    let region = region.or_else(|| default.map(|d| d.user_region.clone()));
    let slo = slo.or_else(|| default.and_then(|d| d.latency_slo_ms).map(|ms| ms as f64));
    if slo.is_some() && region.is_none() {
        return Err(ApiError::invalid(
            SLO_HEADER,
            format!("{SLO_HEADER}: a latency SLO is measured from the caller's region; send {REGION_HEADER} too, or set a routing default (PUT /v1/routing)"),
        ));
    }
    Ok((region, slo))
}

/// The caller's region (`X-Zhisuan-Region`) and latency SLO in ms
/// (`X-Zhisuan-Latency-Slo-Ms`), each checked.
fn route_headers(headers: &HeaderMap) -> Result<(Option<String>, Option<f64>), ApiError> {
    let user_region = match headers.get(REGION_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|r| !r.is_empty() && r.len() <= 63)
                .ok_or_else(|| {
                    ApiError::invalid(
                        REGION_HEADER,
                        format!(
                            "{REGION_HEADER}: must be a region name (GET /v1/regions lists them)"
                        ),
                    )
                })?
                .to_string(),
        ),
    };
    let slo = match headers.get(SLO_HEADER) {
        None => None,
        Some(v) => {
            let ms = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        SLO_HEADER,
                        format!("{SLO_HEADER}: must be a positive number of milliseconds"),
                    )
                })?;
            Some(ms)
        }
    };
    Ok((user_region, slo))
}

/// The model `name` if `tenant` may call it: 404 when it is not served (or
/// is another tenant's dedicated model), 403 when the tenant's grants leave
/// it out.
fn visible_model(
    gw: &Gateway,
    tenant: &str,
    grants: Option<&[String]>,
    name: &str,
) -> Result<Arc<super::Model>, ApiError> {
    let registry = gw.registry();
    let model = registry
        .get(name)
        .filter(|m| m.owner.as_deref().is_none_or(|o| o == tenant))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "model `{name}` is not served here; GET /v1/models lists the models you may call"
            ))
            .with_field("model")
        })?;
    if !Gateway::may_call(model, tenant, grants) {
        return Err(ApiError::forbidden(format!(
            "tenant `{tenant}` may not call model `{name}`; the admin grants models with PUT /v1/tenants/{tenant}/models"
        ))
        .with_field("model"));
    }
    Ok(model.clone())
}

/// Seconds from `at` to the start of the next UTC month.
fn to_next_month(at: DateTime<Utc>) -> u64 {
    let (y, m) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|next| (next - at).num_seconds().max(1) as u64)
        .unwrap_or(3600)
}

/// A call may start while the tenant's month-to-date tokens are below its
/// `tokens_per_month.*` and `tokens_per_month.<its tier>` (the call that
/// crosses a limit completes; the next is refused).
async fn check_month(
    state: &ApiState,
    gw: &Gateway,
    tenant: &str,
    model: &super::Model,
    at: DateTime<Utc>,
) -> Result<(), ApiError> {
    let quota = state.quota_of(tenant).await?;
    let tier_limit = quota.tokens_of(model.tier);
    if quota.tokens_any().is_none() && tier_limit.is_none() {
        return Ok(());
    }
    let used = gw.month_tokens(state, tenant, Month::of(at)).await?;
    let total: i64 = used.values().sum();
    if let Some(max) = quota.tokens_any().filter(|max| total >= *max) {
        return Err(ApiError::token_limit(
            "tokens_per_month.*",
            to_next_month(at),
            format!(
                "quota tokens_per_month.* (all tiers) {max} is used up ({total} tokens this month)"
            ),
        ));
    }
    let in_tier = used.get(&model.tier).copied().unwrap_or(0);
    if let Some(max) = tier_limit.filter(|max| in_tier >= *max) {
        return Err(ApiError::token_limit(
            &format!("tokens_per_month.{}", model.tier),
            to_next_month(at),
            format!(
                "quota tokens_per_month.{} {max} is used up ({in_tier} {} tokens this month)",
                model.tier, model.tier
            ),
        ));
    }
    Ok(())
}

/// The models this tenant may call (the admin sees all),
/// in the OpenAI list shape plus each model's `tier`.
#[utoipa::path(get, path = "/v1/models", tag = "gateway", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI model list; each model also has its `tier`", body = ModelList), StdErrors))]
pub async fn models(
    State(state): State<ApiState>,
    caller: KeyCaller,
) -> Result<Json<ModelList>, ApiError> {
    let gw = state.gateway();
    let grants = match &caller.principal {
        Principal::Tenant(t) => Some((t.as_str(), gw.settings_of(&state, t).await?.grants)),
        Principal::Admin => None,
    };
    let registry = gw.registry();
    let data: Vec<Value> = registry
        .models()
        .filter(|m| match &grants {
            Some((t, g)) => Gateway::may_call(m, t, g.as_deref()),
            None => true,
        })
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.owner.as_deref().unwrap_or("zhisuan"),
                "tier": m.tier,
            })
        })
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// Query of `GET /v1/calls`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CallsQuery {
    /// RFC 3339; calls at or after.
    from: Option<DateTime<Utc>>,
    /// RFC 3339; calls before.
    to: Option<DateTime<Utc>>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// Rows per page, 1..=1000 (default 100).
    limit: Option<i64>,
    /// Admin only: one tenant's calls.
    tenant: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// One page of the call audit.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallPage {
    pub calls: Vec<CallRecord>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// The OpenAI model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// `{"id", "object": "model", "created", "owned_by", "tier"}` per model.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

fn cursor(c: &CallRecord) -> String {
    format!("{}_{}", c.at.timestamp_millis(), c.request_id)
}

fn parse_cursor(s: &str) -> Result<(i64, String), ApiError> {
    s.split_once('_')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_string())))
        .ok_or_else(|| {
            ApiError::invalid(
                "after",
                "after: pass the `next` value of the previous page unchanged",
            )
        })
}

/// The call audit, oldest first, paged. A tenant sees its
/// own calls only; the admin every tenant's (or one's with `tenant`).
#[utoipa::path(get, path = "/v1/calls", tag = "gateway", security(("bearer" = [])),
    params(CallsQuery),
    responses(
        (status = 200, description = "One page of calls, oldest first (`format=csv`: text/csv, the next cursor in `X-Next-Cursor`)", body = CallPage),
        StdErrors))]
pub async fn calls(
    State(state): State<ApiState>,
    caller: KeyCaller,
    ApiQuery(q): ApiQuery<CallsQuery>,
) -> Result<Response<Body>, ApiError> {
    let tenant = match (&caller.principal, q.tenant) {
        (Principal::Tenant(own), None) => Some(own.clone()),
        (Principal::Tenant(own), Some(t)) if t == *own => Some(t),
        (Principal::Tenant(_), Some(_)) => {
            return Err(
                ApiError::forbidden("a tenant sees only its own calls; leave `tenant` out")
                    .with_field("tenant"),
            )
        }
        (Principal::Admin, t) => t,
    };
    let limit = crate::api::checks::checked_limit(q.limit, "")?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("format: `{other}` is not json or csv"),
            ))
        }
    };
    let query = CallQuery {
        tenant,
        from: q.from,
        to: q.to,
        after: q.after.as_deref().map(parse_cursor).transpose()?,
        limit: limit as i64,
    };
    let rows = state.blocking(move |l| l.calls(&query)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(cursor))
        .flatten();
    if csv {
        let mut out = String::from("request_id,at,tenant,key_prefix,model,tier,upstream,region,endpoint,status,prompt_tokens,completion_tokens,estimated,ttft_ms,latency_ms\n");
        for c in &rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                c.request_id,
                c.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                c.tenant,
                c.key_prefix,
                csv_field(&c.model),
                c.tier,
                csv_field(&c.upstream),
                csv_field(&c.region),
                c.endpoint,
                c.status,
                c.prompt_tokens,
                c.completion_tokens,
                c.estimated,
                c.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                c.latency_ms
            ));
        }
        let mut resp = Response::builder().header(header::CONTENT_TYPE, "text/csv; charset=utf-8");
        if let Some(n) = &next {
            resp = resp.header("x-next-cursor", n.as_str());
        }
        return Ok(resp.body(Body::from(out)).unwrap_or_default());
    }
    Ok(Json(CallPage { calls: rows, next }).into_response())
}

/// Quotes a CSV field that needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Body of `PUT /v1/tenants/{name}/models`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// The shared models the tenant may call; `null` = every shared model.
    models: Option<Vec<String>>,
}

/// `GET /v1/tenants/{name}/models` (admin): the tenant's grants.
#[utoipa::path(get, path = "/v1/tenants/{name}/models", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant")),
    responses((status = 200, body = Grants), StdErrors))]
pub async fn grants(
    State(state): State<ApiState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Grants>, ApiError> {
    let n = name.clone();
    if state.blocking(move |l| l.tenant(&n)).await?.is_none() {
        return Err(ApiError::not_found(format!("no tenant `{name}`")));
    }
    let models = state.blocking(move |l| l.model_grants(&name)).await?;
    Ok(Json(Grants { models }))
}

/// `PUT /v1/tenants/{name}/models` (admin): which shared models the tenant
/// may call (`null`: all of them, the default). Audited.
#[utoipa::path(put, path = "/v1/tenants/{name}/models", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant")),
    request_body = Grants,
    responses((status = 200, body = Grants), StdErrors))]
pub async fn set_grants(
    State(state): State<ApiState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Grants>,
) -> Result<Json<Grants>, ApiError> {
    let (n, models) = (name.clone(), body.models.clone());
    state
        .blocking(move |l| l.set_model_grants(ADMIN_ACTOR, &n, models.as_deref()))
        .await?;
    state.gateway().forget_tenant(&name);
    Ok(Json(body))
}
